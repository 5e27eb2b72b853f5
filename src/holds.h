/* nbdsnap: the named holds file (src/holds.c): its format, parsed and
 * written.  The catalog (src/catalog.c) owns the holds themselves, under
 * its lock, and decides when the file is written; this module only turns
 * records into text and back.  No state, no locks, no I/O.
 *
 * Notes on the design
 *
 * The file "holds" in the state directory, text:
 *
 *   nbdsnap-holds 1
 *   hold TAG NAME CREATED          one line per named hold, CREATED in
 *   ...                            RFC 3339 UTC (2024-05-01T10:00:00Z)
 *   checksum 0123456789abcdef      FNV-1a 64 of every byte before this
 *                                  line, 16 hex digits
 *
 * TAG and NAME follow the snapshot name rule, so they contain no space.
 * It is always replaced whole (statedir_write_file: holds.tmp, fsync,
 * rename, fsync of the directory), so a crash leaves the old file or the
 * new one, never a mix.  A missing file means no holds.
 *
 * Damage (a checksum that does not match, a bad line, no checksum line: a
 * disk error or an edit by hand) cannot come from a crash.  holds_parse
 * then salvages every line that still reads as a valid hold, and says so:
 * a hold kept by mistake only refuses a delete until someone releases it,
 * while a hold lost by mistake lets the snapshot a backup chain depends on
 * be deleted.  So damage errs on the side of holding.
 */
#ifndef NBDSNAP_HOLDS_H
#define NBDSNAP_HOLDS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "nbdsnap/engine.h"

#define HOLDS_FILE "holds"
/* Where a damaged file is copied before it is replaced, for the operator. */
#define HOLDS_DAMAGED_FILE "holds.damaged"

struct hold_record {
  char tag[NBDSNAP_NAME_MAX + 1];
  char name[NBDSNAP_NAME_MAX + 1];
  time_t created;               /* UTC seconds */
};

/* Parse text (len bytes, need not be NUL-terminated).  *out: malloc'd
 * records (caller frees, may be NULL when *n is 0).  Returns 0 if the
 * file is intact, 1 if it is damaged (why says how, in words; *out holds
 * the lines that still read as holds, duplicates dropped), -1 on ENOMEM
 * (reported). */
extern int holds_parse (const char *text, size_t len,
                        struct hold_record **out, size_t *n,
                        char *why, size_t whylen);

/* The file's text for n records, malloc'd (NULL: ENOMEM, reported). */
extern char *holds_format (const struct hold_record *recs, size_t n);

/* 2024-05-01T10:00:00Z into buf (at least 21 bytes). */
extern void holds_time_text (time_t t, char *buf, size_t len);

#endif /* NBDSNAP_HOLDS_H */
