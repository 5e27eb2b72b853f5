/* nbdsnap: the named holds file's format.  See holds.h. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nbdsnap/checksum.h"
#include "nbdsnap/err.h"
#include "holds.h"

#define HOLDS_MAGIC "nbdsnap-holds 1\n"

static uint64_t
holds_checksum (const char *text, size_t len)
{
  return checksum_fnv1a64 (text, len);
}

void
holds_time_text (time_t t, char *buf, size_t len)
{
  struct tm tm;

  gmtime_r (&t, &tm);
  strftime (buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static bool
parse_time (const char *s, time_t *t)
{
  struct tm tm;
  const char *end;

  memset (&tm, 0, sizeof tm);
  end = strptime (s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (end == NULL || *end != '\0')
    return false;
  *t = timegm (&tm);
  return *t != (time_t) -1;
}

/* One "hold TAG NAME CREATED" line (NUL-terminated, no "\n"). */
static bool
parse_line (const char *line, struct hold_record *r)
{
  char tag[NBDSNAP_NAME_MAX + 2], name[NBDSNAP_NAME_MAX + 2], when[32];
  char extra;

  if (sscanf (line, "hold %65s %65s %31s %c", tag, name, when, &extra) != 3)
    return false;
  if (!nbdsnap_name_ok (tag) || !nbdsnap_name_ok (name)
      || !parse_time (when, &r->created))
    return false;
  strcpy (r->tag, tag);
  strcpy (r->name, name);
  return true;
}

static bool
duplicate (const struct hold_record *recs, size_t n,
           const struct hold_record *r)
{
  size_t i;

  for (i = 0; i < n; ++i)
    if (strcmp (recs[i].tag, r->tag) == 0
        && strcmp (recs[i].name, r->name) == 0)
      return true;
  return false;
}

int
holds_parse (const char *text, size_t len, struct hold_record **out,
             size_t *n, char *why, size_t whylen)
{
  struct hold_record *recs = NULL, r;
  size_t cap = 0, count = 0, pos = 0, lineno = 0, bad = 0;
  bool have_sum = false, magic = false, after_sum = false;
  uint64_t want;
  char line[256];

  *out = NULL;
  *n = 0;
  why[0] = '\0';
  while (pos < len) {
    const char *nl = memchr (text + pos, '\n', len - pos);
    size_t l = (nl ? (size_t) (nl - text) : len) - pos;
    size_t start = pos;

    pos += l + (nl != NULL);
    lineno++;
    if (l >= sizeof line || memchr (text + start, '\0', l) != NULL) {
      bad++;
      continue;
    }
    memcpy (line, text + start, l);
    line[l] = '\0';
    if (lineno == 1 && strcmp (line, "nbdsnap-holds 1") == 0) {
      magic = true;
      continue;
    }
    if (strncmp (line, "checksum ", 9) == 0 && !have_sum) {
      have_sum = true;
      if (sscanf (line, "checksum %" SCNx64, &want) != 1
          || want != holds_checksum (text, start)
          || nl == NULL)
        snprintf (why, whylen, "checksum mismatch");
      continue;
    }
    if (have_sum)
      after_sum = true;
    if (!parse_line (line, &r)) {
      bad++;
      continue;
    }
    if (duplicate (recs, count, &r))
      continue;
    if (count == cap) {
      struct hold_record *p;
      cap = cap ? cap * 2 : 16;
      p = realloc (recs, cap * sizeof *recs);
      if (p == NULL) {
        nbdsnap_error ("realloc: %m");
        free (recs);
        return -1;
      }
      recs = p;
    }
    recs[count++] = r;
  }
  *out = recs;
  *n = count;
  if (!magic && why[0] == '\0')
    snprintf (why, whylen, "no \"nbdsnap-holds 1\" first line");
  else if (!have_sum && why[0] == '\0')
    snprintf (why, whylen, "no checksum line (cut short?)");
  else if (after_sum && why[0] == '\0')
    snprintf (why, whylen, "lines after the checksum line");
  if (bad > 0 && why[0] == '\0')
    snprintf (why, whylen, "%zu line(s) that are not holds", bad);
  else if (bad > 0) {
    size_t k = strlen (why);
    snprintf (why + k, whylen - k, ", %zu line(s) that are not holds", bad);
  }
  return why[0] != '\0';
}

char *
holds_format (const struct hold_record *recs, size_t n)
{
  /* "hold " + 2 names + time + spaces + "\n" per line. */
  size_t cap = sizeof HOLDS_MAGIC + n * (2 * NBDSNAP_NAME_MAX + 40) + 32;
  char *buf = malloc (cap), when[32];
  size_t len, i;

  if (buf == NULL) {
    nbdsnap_error ("malloc: %m");
    return NULL;
  }
  len = snprintf (buf, cap, "%s", HOLDS_MAGIC);
  for (i = 0; i < n; ++i) {
    holds_time_text (recs[i].created, when, sizeof when);
    len += snprintf (buf + len, cap - len, "hold %s %s %s\n", recs[i].tag,
                     recs[i].name, when);
  }
  snprintf (buf + len, cap - len, "checksum %016" PRIx64 "\n",
            holds_checksum (buf, len));
  return buf;
}
