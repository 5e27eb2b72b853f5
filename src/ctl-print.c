/* nbdsnapctl: human-readable output of the server's responses.
 *
 * Notes on the design:
 *
 * - Only the fields named in include/nbdsnap/admin.h are put in tables;
 *   a field the server does not send prints as "-", and fields this
 *   version does not know are shown by --json only.  info and stats print
 *   every field, flattened ("admin.connections: 2"), so new counters show
 *   up without a new nbdsnapctl.
 *
 * - Tables size their columns to their contents; sizes are in IEC units
 *   (K = 1024) in tables, exact byte counts in info and --json.
 *
 * - A snapshot's state is shown with what goes with it: the percentage of
 *   a delete moving chunks or of a rollback to it, or who keeps a
 *   deferred delete waiting (ctl_state_text).
 *
 * - The progress line of a delete or rollback is one line on stderr,
 *   rewritten in place with "\r" and padded over the previous one; rate
 *   and ETA come from this client's clock, from the moment the request
 *   was sent.  It is cleared (blanked) before anything else is printed.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nbdsnapctl.h"

#define CELL_MAX 96

enum col_kind { COL_STR, COL_INT, COL_SIZE, COL_BOOL, COL_EXPORT,
                COL_STATE };

struct column {
  const char *header;
  const char *key;
  enum col_kind kind;
};

const char *
ctl_human_size (json_t *v, char *buf, size_t len)
{
  static const char units[] = "KMGTPE";
  double d;
  int u = -1;

  if (!json_is_integer (v))
    return "-";
  if (json_integer_value (v) < 1024) {
    snprintf (buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value (v));
    return buf;
  }
  d = (double) json_integer_value (v);
  while (d >= 1024 && u < 5) {
    d /= 1024;
    u++;
  }
  snprintf (buf, len, d < 10 ? "%.1f%c" : "%.0f%c", d, units[u]);
  return buf;
}

void
ctl_print_value (FILE *fp, json_t *v)
{
  size_t i;
  json_t *e;
  char *s;

  if (v == NULL) {
    fputs ("-", fp);
    return;
  }
  switch (json_typeof (v)) {
  case JSON_STRING:  fputs (json_string_value (v), fp); break;
  case JSON_INTEGER:
    fprintf (fp, "%" JSON_INTEGER_FORMAT, json_integer_value (v));
    break;
  case JSON_REAL:    fprintf (fp, "%g", json_real_value (v)); break;
  case JSON_TRUE:    fputs ("yes", fp); break;
  case JSON_FALSE:   fputs ("no", fp); break;
  case JSON_NULL:    fputs ("-", fp); break;
  case JSON_ARRAY:
    json_array_foreach (v, i, e) {
      if (i > 0)
        fputs (", ", fp);
      ctl_print_value (fp, e);
    }
    break;
  case JSON_OBJECT:
    s = json_dumps (v, JSON_COMPACT);
    fputs (s ? s : "?", fp);
    free (s);
    break;
  }
}

/* Walk obj: print (or, if width is NULL, measure) "key: value" lines. */
static void
flat (const char *prefix, json_t *obj, int *width, int w)
{
  const char *key;
  json_t *v;

  json_object_foreach (obj, key, v) {
    char name[256], label[258];

    if (prefix == NULL && strcmp (key, "ok") == 0)
      continue;
    snprintf (name, sizeof name, "%s%s%s", prefix ? prefix : "",
              prefix ? "." : "", key);
    if (json_is_object (v))
      flat (name, v, width, w);
    else if (width != NULL) {
      if ((int) strlen (name) > *width)
        *width = strlen (name);
    }
    else {
      snprintf (label, sizeof label, "%s:", name);
      printf ("%-*s ", w + 1, label);
      ctl_print_value (stdout, v);
      putchar ('\n');
    }
  }
}

void
ctl_print_flat (const char *prefix, json_t *obj)
{
  int w = 0;

  flat (prefix, obj, &w, 0);
  flat (prefix, obj, NULL, w);
}

static void
cell (char *buf, const struct column *col, json_t *row)
{
  json_t *v = json_object_get (row, col->key);

  if (col->kind == COL_STATE) {
    ctl_state_text (row, buf, CELL_MAX);
    return;
  }
  if (v == NULL || json_is_null (v)) {
    strcpy (buf, "-");
    return;
  }
  switch (col->kind) {
  case COL_SIZE:
    {
      char tmp[32];
      snprintf (buf, CELL_MAX, "%s", ctl_human_size (v, tmp, sizeof tmp));
    }
    break;
  case COL_BOOL:
    strcpy (buf, json_is_true (v) ? "yes" : "no");
    break;
  case COL_EXPORT:
    if (json_is_string (v) && json_string_length (v) == 0) {
      strcpy (buf, "(origin)");
      break;
    }
    /* fall through */
  case COL_STR:
  case COL_INT:
  case COL_STATE:
    if (json_is_string (v))
      snprintf (buf, CELL_MAX, "%s", json_string_value (v));
    else if (json_is_integer (v))
      snprintf (buf, CELL_MAX, "%" JSON_INTEGER_FORMAT,
                json_integer_value (v));
    else
      strcpy (buf, "?");
    break;
  }
}

/* Print the objects of rows as a table with these columns. */
static void
table (const struct column *cols, size_t ncols, json_t *rows)
{
  size_t nrows = json_array_size (rows), r, k;
  char (*cells)[CELL_MAX] = calloc ((nrows + 1) * ncols, CELL_MAX);
  int width[16] = { 0 };

  if (cells == NULL || ncols > 16) {
    ctl_msg ("out of memory");
    free (cells);
    return;
  }
  for (k = 0; k < ncols; ++k)
    snprintf (cells[k], CELL_MAX, "%s", cols[k].header);
  for (r = 0; r < nrows; ++r)
    for (k = 0; k < ncols; ++k)
      cell (cells[(r + 1) * ncols + k], &cols[k], json_array_get (rows, r));
  for (r = 0; r <= nrows; ++r)
    for (k = 0; k < ncols; ++k)
      if ((int) strlen (cells[r * ncols + k]) > width[k])
        width[k] = strlen (cells[r * ncols + k]);
  for (r = 0; r <= nrows; ++r) {
    for (k = 0; k < ncols; ++k) {
      const char *s = cells[r * ncols + k];
      if (k + 1 == ncols)
        printf ("%s\n", s);
      else if (cols[k].kind == COL_STR || cols[k].kind == COL_EXPORT
               || cols[k].kind == COL_BOOL || cols[k].kind == COL_STATE)
        printf ("%-*s  ", width[k], s);
      else
        printf ("%*s  ", width[k], s);
    }
  }
  free (cells);
}

void
ctl_print_list (json_t *resp)
{
  static const struct column cols[] = {
    { "NAME", "name", COL_STR }, { "CREATED", "created", COL_STR },
    { "STATE", "state", COL_STATE }, { "TEMP", "temporary", COL_BOOL },
    { "CLIENTS", "clients", COL_INT }, { "HOLDS", "holds", COL_INT },
    { "COPIED", "chunks_copied", COL_INT },
    { "STORE", "store_bytes", COL_SIZE },
  };
  table (cols, sizeof cols / sizeof cols[0],
         json_object_get (resp, "snapshots"));
}

void
ctl_print_clients (json_t *resp)
{
  static const struct column cols[] = {
    { "ID", "id", COL_INT }, { "EXPORT", "export", COL_EXPORT },
    { "PEER", "peer", COL_STR }, { "STARTED", "started", COL_STR },
    { "READ", "bytes_read", COL_SIZE },
    { "WRITTEN", "bytes_written", COL_SIZE },
    { "REVOKED", "revoked", COL_BOOL },
  };
  table (cols, sizeof cols / sizeof cols[0],
         json_object_get (resp, "clients"));
}

/* done/total as a whole percentage, never 100 before the end. */
static int
percent (uint64_t done, uint64_t total)
{
  if (total == 0)
    return 0;
  if (done >= total)
    return 100;
  return (int) ((double) done * 100 / total);
}

/* An integer field of obj, or 0. */
static uint64_t
uint_field (json_t *obj, const char *key)
{
  json_int_t v = json_integer_value (json_object_get (obj, key));

  return v > 0 ? (uint64_t) v : 0;
}

const char *
ctl_state_text (json_t *snap, char *buf, size_t len)
{
  const char *state = json_string_value (json_object_get (snap, "state"));
  json_t *moving = json_object_get (snap, "progress");
  json_t *rollback = json_object_get (snap, "rollback");

  if (state == NULL)
    state = "?";
  if (strcmp (state, "deleting") == 0
      && json_is_true (json_object_get (snap, "deferred"))) {
    uint64_t clients = uint_field (snap, "clients");
    uint64_t holds = uint_field (snap, "holds");

    snprintf (buf, len, "deleting (deferred: %" PRIu64 " client%s, %"
              PRIu64 " hold%s)", clients, clients == 1 ? "" : "s",
              holds, holds == 1 ? "" : "s");
  }
  else if (strcmp (state, "deleting") == 0 && json_is_object (moving)
           && uint_field (moving, "total") > 0)
    snprintf (buf, len, "deleting %d%%",
              percent (uint_field (moving, "done"),
                       uint_field (moving, "total")));
  else if (json_is_object (rollback))
    snprintf (buf, len, "%s (rollback %d%%)", state,
              percent (uint_field (rollback, "done"),
                       uint_field (rollback, "total")));
  else
    snprintf (buf, len, "%s", state);
  return buf;
}

double
ctl_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* "512.0 MiB", "17 B". */
static void
iec (char *buf, size_t len, double v)
{
  static const char units[] = "KMGTPE";
  int u = -1;

  if (v < 1024) {
    snprintf (buf, len, "%.0f B", v);
    return;
  }
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  snprintf (buf, len, "%.1f %ciB", v, units[u]);
}

/* "3 s", "2 min 5 s", "1 h 20 min". */
static void
duration (char *buf, size_t len, double secs)
{
  uint64_t s = secs < 0 ? 0 : (uint64_t) (secs + 0.5);

  if (s < 60)
    snprintf (buf, len, "%" PRIu64 " s", s);
  else if (s < 3600)
    snprintf (buf, len, "%" PRIu64 " min %" PRIu64 " s", s / 60, s % 60);
  else
    snprintf (buf, len, "%" PRIu64 " h %" PRIu64 " min", s / 3600,
              s / 60 % 60);
}

void
ctl_progress_draw (struct ctl *c, json_t *p)
{
  const char *what = json_string_value (json_object_get (p, "progress"));
  const char *name = json_string_value (json_object_get (p, "name"));
  uint64_t done = uint_field (p, "done"), total = uint_field (p, "total");
  double elapsed = ctl_now () - c->bar.start;
  char line[256], d[32], t[32], r[32], eta[32];
  int n;

  if (total == 0)
    n = snprintf (line, sizeof line, "%s %s: starting", what, name);
  else {
    iec (d, sizeof d, done);
    iec (t, sizeof t, total);
    n = snprintf (line, sizeof line, "%s %s: %s of %s (%d%%)", what, name,
                  d, t, percent (done, total));
    if (done > 0 && elapsed > 0.1 && n < (int) sizeof line) {
      double rate = done / elapsed;

      iec (r, sizeof r, rate);
      duration (eta, sizeof eta, done < total ? (total - done) / rate : 0);
      n += snprintf (line + n, sizeof line - n, ", %s/s, ETA %s", r, eta);
    }
  }
  if (n >= (int) sizeof line)
    n = sizeof line - 1;
  /* Pad over a longer previous line. */
  fprintf (stderr, "\r%s%*s", line, c->bar.width > n ? c->bar.width - n : 0,
           "");
  fflush (stderr);
  c->bar.width = n;
}

void
ctl_progress_clear (struct ctl *c)
{
  if (c->bar.width == 0)
    return;
  fprintf (stderr, "\r%*s\r", c->bar.width, "");
  fflush (stderr);
  c->bar.width = 0;
}
