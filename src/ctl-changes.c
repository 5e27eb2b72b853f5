/* nbdsnapctl: the changes set between two instants, page by page.
 *
 * Notes on the design:
 *
 * - The server answers "changes A [B] offset=N" with one page of extents
 *   and the offset of the next page (include/nbdsnap/admin.h); this file
 *   asks for pages until there is none, so neither side ever holds more
 *   than one page, whatever the number of extents.
 *
 * - Between two pages the server pins A and B only while it computes a
 *   page; a caller that must not lose them between pages (backup, send)
 *   holds them on the same connection first.
 *
 * - The changes command prints as it goes: a table line per extent
 *   (columns OFFSET, LENGTH, CONTENT; -o picks, -H drops the heading and
 *   the summary line and separates fields with tabs), or
 *   with --json one JSON document whose "extents" array is written piece
 *   by piece (the same shape as one big answer would have).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnap/err.h"
#include "nbdsnapctl.h"

/* One extent held back: the next one may continue it. */
struct pending {
  bool have;
  uint64_t offset, length;
  bool zero;
};

static int
flush_pending (struct pending *p, ctl_extent_fn fn, void *opaque,
               struct ctl_changes_info *info)
{
  if (!p->have)
    return 0;
  p->have = false;
  info->extents++;
  info->changed_bytes += p->length;
  if (p->zero)
    info->zero_bytes += p->length;
  return fn (opaque, p->offset, p->length, p->zero);
}

static uint64_t
uint_of (json_t *v)
{
  json_int_t i = json_integer_value (v);

  return i > 0 ? (uint64_t) i : 0;
}

int
ctl_changes_each (struct ctl *c, const char *a, const char *b,
                  ctl_extent_fn fn, void *opaque,
                  struct ctl_changes_info *info)
{
  struct ctl_changes_info local;
  struct pending p = { .have = false };
  char req[NBDSNAP_ADMIN_LINE_MAX];
  uint64_t offset = 0;
  json_t *resp, *next, *ext;
  size_t i;
  int status;

  if (info == NULL)
    info = &local;
  memset (info, 0, sizeof *info);
  for (;;) {
    snprintf (req, sizeof req, "changes %s%s%s offset=%" PRIu64, a,
              b ? " " : "", b ? b : "", offset);
    if ((status = ctl_call (c, req, &resp)) != 0)
      return status;
    info->size = uint_of (json_object_get (resp, "size"));
    info->chunk_size = uint_of (json_object_get (resp, "chunk_size"));
    ext = json_object_get (resp, "extents");
    next = json_object_get (resp, "next");
    if (!json_is_array (ext) || !(json_is_null (next)
                                  || json_is_integer (next))) {
      ctl_msg ("changes: malformed page from the server");
      json_decref (resp);
      return NBDSNAPCTL_EXIT_ERROR;
    }
    for (i = 0; i < json_array_size (ext); ++i) {
      json_t *e = json_array_get (ext, i);
      uint64_t off = uint_of (json_object_get (e, "offset"));
      uint64_t len = uint_of (json_object_get (e, "length"));
      bool zero = json_is_true (json_object_get (e, "zero"));

      if (len == 0 || off < offset || off + len > info->size
          || (p.have && off < p.offset + p.length)) {
        ctl_msg ("changes: bad extent %" PRIu64 "+%" PRIu64 " from the "
                 "server", off, len);
        json_decref (resp);
        return NBDSNAPCTL_EXIT_ERROR;
      }
      if (p.have && off == p.offset + p.length && zero == p.zero) {
        p.length += len;
        continue;
      }
      if ((status = flush_pending (&p, fn, opaque, info)) != 0) {
        json_decref (resp);
        return status;
      }
      p = (struct pending) { true, off, len, zero };
    }
    if (json_is_null (next)) {
      json_decref (resp);
      return flush_pending (&p, fn, opaque, info);
    }
    if (uint_of (next) <= offset) {
      ctl_msg ("changes: the server's next page does not move on");
      json_decref (resp);
      return NBDSNAPCTL_EXIT_ERROR;
    }
    offset = uint_of (next);
    json_decref (resp);
  }
}

/* The changes command's output, printed as the pages come. */
struct show {
  struct ctl *c;
  const char *a, *b;
  const struct ctl_changes_info *info;  /* size, chunk_size: known when
                                           the first extent comes */
  bool started;
  uint64_t n;
  size_t idx[CTL_COLUMNS_MAX], ncols;    /* -o's columns */
};

static const struct ctl_column columns[] = {
  { "OFFSET", "offset", CTL_COL_INT }, { "LENGTH", "length", CTL_COL_INT },
  { "CONTENT", "zero", CTL_COL_STR },
};

/* One row: the selected columns of these cells. */
static void
show_row (struct show *s, const char *const cells[3])
{
  size_t k;

  for (k = 0; k < s->ncols; ++k) {
    size_t i = s->idx[k];
    bool last = k + 1 == s->ncols;

    if (s->c->no_headings)
      printf ("%s%s", cells[i], last ? "\n" : "\t");
    else if (i == 2)
      printf ("%s%s", cells[i], last ? "\n" : "  ");
    else
      printf ("%18s%s", cells[i], last ? "\n" : k + 1 < s->ncols
              && s->idx[k + 1] != 2 ? " " : "  ");
  }
}

static void
show_start (struct show *s)
{
  json_t *head = json_pack ("{s:b, s:s, s:o, s:I, s:I}", "ok", 1,
                            "name", s->a,
                            "to", s->b ? json_string (s->b) : json_null (),
                            "size", (json_int_t) s->info->size,
                            "chunk_size", (json_int_t) s->info->chunk_size);
  char *text = head ? json_dumps (head, JSON_COMPACT) : NULL;

  s->started = true;
  if (s->c->json) {
    /* The head object without its closing brace, then the extents. */
    if (text != NULL)
      printf ("%.*s,\"extents\":[", (int) strlen (text) - 1, text);
  }
  else if (!s->c->no_headings) {
    const char *const titles[3] = { "OFFSET", "LENGTH", "CONTENT" };
    show_row (s, titles);
  }
  free (text);
  json_decref (head);
}

static int
show_extent (void *opaque, uint64_t offset, uint64_t length, bool zero)
{
  struct show *s = opaque;

  if (!s->started)
    show_start (s);
  if (s->c->json)
    printf ("%s{\"offset\":%" PRIu64 ",\"length\":%" PRIu64
            ",\"zero\":%s}", s->n ? "," : "", offset, length,
            zero ? "true" : "false");
  else {
    char off[24], len[24];
    const char *const cells[3] = { off, len, zero ? "zero" : "data" };

    snprintf (off, sizeof off, "%" PRIu64, offset);
    snprintf (len, sizeof len, "%" PRIu64, length);
    show_row (s, cells);
  }
  s->n++;
  return ferror (stdout) ? NBDSNAPCTL_EXIT_ERROR : 0;
}

static void
show_end (struct show *s)
{
  char size[32], changed[32];
  const struct ctl_changes_info *info = s->info;
  json_t *jsize, *jchanged;

  if (!s->started)
    show_start (s);
  if (s->c->json) {
    printf ("],\"changed_bytes\":%" PRIu64 ",\"zero_bytes\":%" PRIu64
            ",\"extent_count\":%" PRIu64 "}\n", info->changed_bytes,
            info->zero_bytes, info->extents);
    return;
  }
  if (s->c->no_headings)
    return;
  if (s->c->exact) {
    printf ("%" PRIu64 " extents, %" PRIu64 " bytes changed (of which %"
            PRIu64 " zero) of %" PRIu64 "\n", info->extents,
            info->changed_bytes, info->zero_bytes, info->size);
    return;
  }
  jsize = json_integer ((json_int_t) info->size);
  jchanged = json_integer ((json_int_t) info->changed_bytes);
  printf ("%" PRIu64 " extents, %s changed (%" PRIu64 " bytes, of which %"
          PRIu64 " zero) of %s\n", info->extents,
          ctl_human_size (jchanged, changed, sizeof changed),
          info->changed_bytes, info->zero_bytes,
          ctl_human_size (jsize, size, sizeof size));
  json_decref (jsize);
  json_decref (jchanged);
}

int
ctl_changes (struct ctl *c, int argc, char **argv)
{
  struct ctl_changes_info info;
  struct show s = { .c = c, .info = &info };
  const char *names[2] = { NULL, NULL };
  bool opts = true;
  int i, n = 0, status;

  for (i = 1; i < argc; ++i) {
    if (opts && strcmp (argv[i], "--") == 0) {
      opts = false;
      continue;
    }
    if (opts && argv[i][0] == '-' && argv[i][1] != '\0')
      return ctl_usage ("changes: unknown option %s", argv[i]);
    if (n == 2)
      return ctl_usage ("changes: unexpected argument '%s' (it takes A "
                        "[B])", argv[i]);
    names[n++] = argv[i];
  }
  if (n == 0)
    return ctl_usage ("changes: missing snapshot NAME");
  for (i = 0; i < n; ++i)
    if (nbdsnap_name_valid (names[i]) == -1) {
      ctl_msg ("invalid snapshot name '%.80s': " NBDSNAP_NAME_RULE,
               names[i]);
      return NBDSNAPCTL_EXIT_INVALID_NAME;
    }
  s.a = names[0];
  s.b = names[1];
  if ((status = ctl_table_select (c, columns, 3, s.idx, &s.ncols)) != 0)
    return status;
  status = ctl_changes_each (c, s.a, s.b, show_extent, &s, &info);
  if (status != 0)
    return status;        /* what was printed stops short: the status says */
  show_end (&s);
  return 0;
}
