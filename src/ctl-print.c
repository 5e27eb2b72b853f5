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
 * - Tables (ctl_table, also used by the holds command) size their
 *   columns to their contents; sizes are in IEC units (K = 1024) in
 *   tables, exact byte counts in info and --json.  -H: no heading, cells
 *   joined by one tab (a tab or newline in a cell becomes a space); -o:
 *   the columns named, in that order, by heading, any case; -p: sizes in
 *   bytes and RFC 3339 times as epoch seconds.  Hand-written rather than
 *   libsmartcols: its raw mode escapes blanks ("\x20"), not zfs -H's
 *   plain tab-separated fields, it buffers whole tables where changes
 *   streams page by page, and its JSON mode would duplicate --json.
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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "nbdsnapctl.h"

#define CELL_MAX 96

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

long long
ctl_epoch (const char *s)
{
  struct tm tm = { 0 };
  const char *end;

  if (s == NULL)
    return -1;
  end = strptime (s, "%Y-%m-%dT%H:%M:%S", &tm);
  if (end == NULL)
    return -1;
  if (*end == '.')              /* fractions of a second: dropped */
    for (end++; *end >= '0' && *end <= '9'; ++end)
      ;
  if (strcmp (end, "Z") != 0 && strcmp (end, "+00:00") != 0)
    return -1;
  return (long long) timegm (&tm);
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

/* The "key: value" lines of a flattened object. */
struct flat {
  struct ctl *c;
  char **keys;                  /* flattened names */
  json_t **vals;
  size_t n, cap;
};

static int
flat_collect (struct flat *f, const char *prefix, json_t *obj)
{
  const char *key;
  json_t *v;

  json_object_foreach (obj, key, v) {
    char *name;

    if (prefix == NULL && strcmp (key, "ok") == 0)
      continue;
    if (asprintf (&name, "%s%s%s", prefix ? prefix : "", prefix ? "." : "",
                  key) == -1)
      return -1;
    if (json_is_object (v)) {
      int r = flat_collect (f, name, v);
      free (name);
      if (r == -1)
        return -1;
      continue;
    }
    if (f->n == f->cap) {
      size_t cap = f->cap ? f->cap * 2 : 32;
      char **k = realloc (f->keys, cap * sizeof *k);
      json_t **vv = k ? realloc (f->vals, cap * sizeof *vv) : NULL;

      if (k)
        f->keys = k;
      if (vv == NULL) {
        free (name);
        return -1;
      }
      f->vals = vv;
      f->cap = cap;
    }
    f->keys[f->n] = name;
    f->vals[f->n++] = v;
  }
  return 0;
}

/* Is name one of -o's comma-separated words (case-insensitive)? */
static bool
selected (const char *list, const char *name)
{
  size_t n = strlen (name);
  const char *p = list;

  while (*p) {
    size_t w = strcspn (p, ",");

    if (w == n && strncasecmp (p, name, n) == 0)
      return true;
    p += w;
    if (*p == ',')
      p++;
  }
  return false;
}

/* -o's words that name none of the n names: a usage error listing them. */
static int
check_columns (const char *list, const char *const *names, size_t n,
               const char *what)
{
  const char *p = list;
  size_t i;

  while (*p) {
    size_t w = strcspn (p, ",");
    bool found = false;

    for (i = 0; i < n && !found; ++i)
      found = strlen (names[i]) == w && strncasecmp (p, names[i], w) == 0;
    if (!found) {
      char valid[2048] = "";
      size_t len = 0;

      for (i = 0; i < n && len < sizeof valid; ++i)
        len += snprintf (valid + len, sizeof valid - len, "%s%s",
                         i ? "," : "", names[i]);
      return ctl_usage ("-o: unknown %s '%.*s' (valid: %s)", what, (int) w,
                        p, valid);
    }
    p += w;
    if (*p == ',')
      p++;
  }
  return 0;
}

/* A value as text: -p turns RFC 3339 times into epoch seconds. */
static void
flat_value (struct ctl *c, json_t *v)
{
  long long t;

  if (c->exact && json_is_string (v)
      && (t = ctl_epoch (json_string_value (v))) != -1)
    printf ("%lld", t);
  else
    ctl_print_value (stdout, v);
}

int
ctl_print_flat (struct ctl *c, const char *prefix, json_t *obj)
{
  struct flat f = { .c = c };
  const char *p;
  size_t i, k;
  int w = 0, status = 0;

  if (flat_collect (&f, prefix, obj) == -1) {
    ctl_msg ("out of memory");
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  if (c->columns != NULL
      && (status = check_columns (c->columns, (const char *const *) f.keys,
                                  f.n, "field")) != 0)
    goto out;
  for (i = 0; i < f.n; ++i)
    if ((int) strlen (f.keys[i]) > w
        && (c->columns == NULL || selected (c->columns, f.keys[i])))
      w = strlen (f.keys[i]);
  /* In -o's order when given, else the object's. */
  p = c->columns;
  for (k = 0; c->columns ? *p != '\0' : k < f.n; ++k) {
    size_t j = k;

    if (c->columns) {
      size_t len = strcspn (p, ",");

      for (j = 0; j < f.n; ++j)
        if (strlen (f.keys[j]) == len && strncasecmp (p, f.keys[j], len) == 0)
          break;
      p += len;
      if (*p == ',')
        p++;
      if (j == f.n)
        continue;
    }
    if (c->no_headings)
      printf ("%s\t", f.keys[j]);
    else
      printf ("%s:%*s ", f.keys[j], w - (int) strlen (f.keys[j]), "");
    flat_value (c, f.vals[j]);
    putchar ('\n');
  }
 out:
  for (i = 0; i < f.n; ++i)
    free (f.keys[i]);
  free (f.keys);
  free (f.vals);
  return status;
}

static void
cell (struct ctl *c, char *buf, const struct ctl_column *col, json_t *row)
{
  json_t *v = json_object_get (row, col->key);
  long long t;
  char *p;

  if (col->kind == CTL_COL_STATE) {
    ctl_state_text (row, buf, CELL_MAX);
    return;
  }
  if (v == NULL || json_is_null (v)) {
    strcpy (buf, "-");
    return;
  }
  switch (col->kind) {
  case CTL_COL_SIZE:
    if (!c->exact) {
      char tmp[32];
      snprintf (buf, CELL_MAX, "%s", ctl_human_size (v, tmp, sizeof tmp));
      break;
    }
    goto plain;
  case CTL_COL_BOOL:
    strcpy (buf, json_is_true (v) ? "yes" : "no");
    break;
  case CTL_COL_TIME:
    if (c->exact && (t = ctl_epoch (json_string_value (v))) != -1) {
      snprintf (buf, CELL_MAX, "%lld", t);
      break;
    }
    goto plain;
  case CTL_COL_EXPORT:
    if (json_is_string (v) && json_string_length (v) == 0) {
      strcpy (buf, "(origin)");
      break;
    }
    /* fall through */
  case CTL_COL_STR:
  case CTL_COL_INT:
  case CTL_COL_STATE:
  plain:
    if (json_is_string (v))
      snprintf (buf, CELL_MAX, "%s", json_string_value (v));
    else if (json_is_integer (v))
      snprintf (buf, CELL_MAX, "%" JSON_INTEGER_FORMAT,
                json_integer_value (v));
    else if (json_is_boolean (v))
      strcpy (buf, json_is_true (v) ? "yes" : "no");
    else
      strcpy (buf, "?");
    break;
  }
  /* -H's fields are tab-separated lines: keep them so. */
  for (p = buf; *p; ++p)
    if (*p == '\t' || *p == '\n' || *p == '\r')
      *p = ' ';
}

int
ctl_table_select (struct ctl *c, const struct ctl_column *cols, size_t ncols,
                  size_t *idx, size_t *n)
{
  const char *names[CTL_COLUMNS_MAX];
  const char *p;
  size_t k;
  int status;

  if (ncols > CTL_COLUMNS_MAX)
    ncols = CTL_COLUMNS_MAX;
  *n = 0;
  if (c->columns == NULL) {
    for (k = 0; k < ncols; ++k)
      idx[(*n)++] = k;
    return 0;
  }
  for (k = 0; k < ncols; ++k)
    names[k] = cols[k].header;
  if (*c->columns == '\0')
    return ctl_usage ("-o: no column named");
  if ((status = check_columns (c->columns, names, ncols, "column")) != 0)
    return status;
  for (p = c->columns; *p && *n < CTL_COLUMNS_MAX; ) {
    size_t w = strcspn (p, ",");

    for (k = 0; k < ncols; ++k)
      if (strlen (cols[k].header) == w
          && strncasecmp (p, cols[k].header, w) == 0) {
        idx[(*n)++] = k;
        break;
      }
    p += w;
    if (*p == ',')
      p++;
  }
  return 0;
}

int
ctl_table (struct ctl *c, const struct ctl_column *cols, size_t ncols,
           json_t *rows)
{
  size_t nrows = json_array_size (rows), r, k, idx[CTL_COLUMNS_MAX], n;
  char (*cells)[CELL_MAX];
  int width[CTL_COLUMNS_MAX] = { 0 }, status;

  if ((status = ctl_table_select (c, cols, ncols, idx, &n)) != 0)
    return status;
  cells = calloc ((nrows + 1) * n + 1, CELL_MAX);
  if (cells == NULL) {
    ctl_msg ("out of memory");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  for (k = 0; k < n; ++k)
    snprintf (cells[k], CELL_MAX, "%s", cols[idx[k]].header);
  for (r = 0; r < nrows; ++r)
    for (k = 0; k < n; ++k)
      cell (c, cells[(r + 1) * n + k], &cols[idx[k]],
            json_array_get (rows, r));
  for (r = 0; r <= nrows; ++r)
    for (k = 0; k < n; ++k)
      if ((int) strlen (cells[r * n + k]) > width[k])
        width[k] = strlen (cells[r * n + k]);
  for (r = c->no_headings ? 1 : 0; r <= nrows; ++r) {
    for (k = 0; k < n; ++k) {
      const char *s = cells[r * n + k];
      enum ctl_col_kind kind = cols[idx[k]].kind;

      if (c->no_headings)
        printf ("%s%c", s, k + 1 == n ? '\n' : '\t');
      else if (k + 1 == n && (kind != CTL_COL_INT && kind != CTL_COL_SIZE))
        printf ("%s\n", s);
      else if (kind == CTL_COL_INT || kind == CTL_COL_SIZE)
        printf ("%*s%s", width[k], s, k + 1 == n ? "\n" : "  ");
      else
        printf ("%-*s  ", width[k], s);
    }
  }
  free (cells);
  return 0;
}

int
ctl_print_list (struct ctl *c, json_t *resp)
{
  static const struct ctl_column cols[] = {
    { "NAME", "name", CTL_COL_STR }, { "CREATED", "created", CTL_COL_TIME },
    { "STATE", "state", CTL_COL_STATE },
    { "TEMP", "temporary", CTL_COL_BOOL },
    { "CLIENTS", "clients", CTL_COL_INT }, { "HOLDS", "holds", CTL_COL_INT },
    { "COPIED", "chunks_copied", CTL_COL_INT },
    { "STORE", "store_bytes", CTL_COL_SIZE },
  };
  return ctl_table (c, cols, sizeof cols / sizeof cols[0],
                    json_object_get (resp, "snapshots"));
}

int
ctl_print_clients (struct ctl *c, json_t *resp)
{
  static const struct ctl_column cols[] = {
    { "ID", "id", CTL_COL_INT }, { "EXPORT", "export", CTL_COL_EXPORT },
    { "PEER", "peer", CTL_COL_STR }, { "STARTED", "started", CTL_COL_TIME },
    { "READ", "bytes_read", CTL_COL_SIZE },
    { "WRITTEN", "bytes_written", CTL_COL_SIZE },
    { "REVOKED", "revoked", CTL_COL_BOOL },
  };
  return ctl_table (c, cols, sizeof cols / sizeof cols[0],
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
