/* nbdsnap: what the pieces of nbdsnapctl share.
 *
 *   nbdsnapctl.c    main, options, the command table
 *   ctl-client.c    the admin connection: connect, request, response
 *   ctl-client.c    also: finding the socket (-s, -i, --image,
 *                   $NBDSNAP_SOCKET), messages, --json error objects
 *   ctl-print.c     human-readable output (tables with -H/-o/-p), the
 *                   progress line
 *   ctl-prometheus.c stats --prometheus
 *   ctl-session.c   commands that keep the connection open (run, hold,
 *                   create --temporary) and the child command they run;
 *                   where the NBD server is (ctl_nbd_uri)
 *   ctl-changes.c   the changes set, page by page (changes, and the
 *                   commands below)
 *   ctl-backup.c    backup: a snapshot, or what changed since an older
 *                   one, into a file or device, over libnbd
 *   ctl-stream.c    send and receive: the rbd diff v1 format, what both
 *                   sides share (ctl-stream.h, internal to the three)
 *   ctl-send.c      send: a snapshot, or what changed since an older
 *                   one, as a stream on standard output
 *   ctl-receive.c   receive: a stream from standard input, applied to
 *                   the origin, and the snapshot it ends at
 *   ctl-holds.c     named holds: hold TAG NAME, release TAG NAME, holds
 *
 * Convention: functions that can fail print one line on stderr
 * ("nbdsnapctl: ...") and return an exit status (NBDSNAPCTL_EXIT_*, see
 * include/nbdsnap/admin.h); 0 means success.  Nothing calls exit () except
 * main and a forked child.
 */
#ifndef NBDSNAPCTL_H
#define NBDSNAPCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "nbdsnap/admin.h"

/* The progress line drawn on stderr (ctl-print.c). */
struct ctl_progress {
  double start;                 /* when the request was sent (monotonic s) */
  int width;                    /* characters drawn, 0: no line */
};

struct ctl {
  const char *socket;           /* the admin socket's path, or NULL: found
                                   by ctl_connect (ctl_find_socket) */
  const char *socket_from;      /* where it came from, for messages */
  const char *instance;         /* -i, --instance NAME */
  const char *image;            /* --image IMAGE */
  char *socket_buf;             /* socket, when built here (freed by
                                   ctl_close) */
  bool json;                    /* --json: print the server's lines,
                                   progress lines included */
  bool json_done;               /* stdout has this run's answer already
                                   (a server's error line, or CMD's own
                                   output): main prints no error object */
  bool no_headings;             /* -H: no headings, fields tab-separated */
  const char *columns;          /* -o COLS: comma-separated, or NULL */
  bool exact;                   /* -p: bytes and epoch seconds */
  bool draw_progress;           /* draw progress lines on stderr */
  int fd;                       /* the admin connection, or -1 */
  char *buf;                    /* bytes received, not yet consumed */
  size_t buflen, bufcap;
  char *line;                   /* the last response line, NUL-ended */
  bool quiet;                   /* ctl_call: don't report server errors
                                   (nor print progress lines) */
  struct ctl_progress bar;
};

/* ctl-client.c */
extern void ctl_msg (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
extern int ctl_usage (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
/* Find the admin socket if c->socket is NULL: -i, --image, else
 * $NBDSNAP_SOCKET (-s was put in c->socket by main).  Returns an exit
 * status after a message saying what was tried. */
extern int ctl_find_socket (struct ctl *c);
/* Connect (finding the socket first).  EACCES/EPERM: exit 8. */
extern int ctl_connect (struct ctl *c);
/* With --json, for a failure (status != 0) whose answer is not on stdout
 * yet: one error object in the protocol's shape, {"ok":false,"error":
 * KIND,"errno":NAME,"message":TEXT}, TEXT the last message printed. */
extern void ctl_json_error (struct ctl *c, int status);
extern void ctl_close (struct ctl *c);
/* Check a request line locally (the same parser as the server), send it,
 * read the response.  On success *resp is the response (caller decrefs).
 * Errors from the server are reported with their exit status; with
 * --json the error line is printed on stdout too.  Progress lines before
 * the response are printed on stdout with --json, else drawn on stderr if
 * draw_progress; the drawn line is cleared before ctl_call returns. */
extern int ctl_call (struct ctl *c, const char *line, json_t **resp);
/* Read one line sent by the server; 0, or -1 on EOF/error (errno). */
extern int ctl_read_line (struct ctl *c);

/* ctl-print.c */

/* Tables, for list, clients, holds (src/ctl-holds.c) and anything that
 * prints rows: one column per field of the rows' objects.  The header is
 * also the name -o selects it by (case-insensitive). */
enum ctl_col_kind {
  CTL_COL_STR,                  /* a string, left-aligned */
  CTL_COL_INT,                  /* an integer, right-aligned */
  CTL_COL_SIZE,                 /* bytes: "1.5G", with -p "1610612736" */
  CTL_COL_BOOL,                 /* yes/no */
  CTL_COL_TIME,                 /* RFC 3339 UTC; with -p epoch seconds */
  CTL_COL_EXPORT,               /* an export name, "" is "(origin)" */
  CTL_COL_STATE,                /* a snapshot object's ctl_state_text */
};
struct ctl_column {
  const char *header;           /* "NAME" */
  const char *key;              /* the field of a row: "name" */
  enum ctl_col_kind kind;
};
/* Print rows (a JSON array of objects; NULL: none) with these columns
 * (at most CTL_COLUMNS_MAX) as c says: aligned with a heading line, or
 * with -H tab-separated without; -o picks and orders columns; -p exact
 * numbers.  A missing or null field prints as "-".  Returns 0, or
 * NBDSNAPCTL_EXIT_USAGE after a message naming the valid columns if -o
 * names another. */
#define CTL_COLUMNS_MAX 16
extern int ctl_table (struct ctl *c, const struct ctl_column *cols,
                      size_t ncols, json_t *rows);
/* Which of cols -o selects, in its order: indexes into idx (room for
 * CTL_COLUMNS_MAX), their number in *n.  Without -o all of them. */
extern int ctl_table_select (struct ctl *c, const struct ctl_column *cols,
                             size_t ncols, size_t *idx, size_t *n);

extern void ctl_print_value (FILE *fp, json_t *v);
/* "key: value" lines of obj, nested keys joined with "." (-H: "key\t
 * value"; -o: only these keys; -p: exact times). */
extern int ctl_print_flat (struct ctl *c, const char *prefix, json_t *obj);
extern int ctl_print_list (struct ctl *c, json_t *resp);
extern int ctl_print_clients (struct ctl *c, json_t *resp);
/* stats --prometheus: the stats object in the text exposition format. */
extern int ctl_print_prometheus (struct ctl *c, json_t *resp);
/* An RFC 3339 UTC time ("2024-05-01T12:00:00Z") as epoch seconds, or -1. */
extern long long ctl_epoch (const char *rfc3339);
extern const char *ctl_human_size (json_t *v, char *buf, size_t len);
/* A snapshot's state for people: "live", "deleting 42%",
 * "deleting (deferred: 1 client, 0 holds)", "live (rollback 7%)"... */
extern const char *ctl_state_text (json_t *snap, char *buf, size_t len);
/* Draw a progress line (an object proto_parse_progress accepted) on
 * stderr, over the last one; clear it. */
extern void ctl_progress_draw (struct ctl *c, json_t *progress);
extern void ctl_progress_clear (struct ctl *c);
extern double ctl_now (void);

/* ctl-session.c */
struct ctl_session {
  const char *name;             /* the snapshot */
  char **argv;                  /* the command, or NULL: wait */
  const char *uri_base;         /* --uri-base, or NULL */
  const char *nbd_socket;       /* --nbd-socket / $NBDSNAP_NBD_SOCKET */
  char *uri;                    /* NBDSNAP_URI (ctl_export_uri), or NULL */
  char undo[NBDSNAP_ADMIN_LINE_MAX]; /* request that ends it: "release N" */
};
/* After a successful create-temporary or hold: run the command (or wait
 * for a signal or stdin EOF) while the connection stays open, then undo.
 * Returns the command's exit status (128+N if killed by signal N). */
extern int ctl_session_run (struct ctl *c, const struct ctl_session *s);
/* NBDSNAP_URI for s->name from s->uri_base or s->nbd_socket, or NULL:
 * with *status set after a message if the base is not a usable URI, with
 * *status 0 if nothing says where the NBD server is.  Caller frees. */
extern char *ctl_export_uri (const struct ctl_session *s, int *status);

/* Where the NBD server is: the URI of export `export` ("" for the
 * origin) from s->uri_base, else s->nbd_socket, else
 * $NBDSNAP_NBD_SOCKET, else the first of the server's "nbd" URIs (hello;
 * c is connected if it is not yet).  s may be NULL.  NULL with *status set after a message if none
 * is known or the base is not usable.  Caller frees. */
extern char *ctl_nbd_uri (struct ctl *c, const struct ctl_session *s,
                          const char *export, int *status);

/* nbdsnapctl.c: after getopt returned '?' or ':', the word it stopped at
 * ("-bad", not the command before it): for "unknown option %s". */
extern const char *ctl_bad_option (char **argv);

/* nbdsnapctl.c: 0, or exit 6 after a message if name is no valid
 * snapshot name. */
extern int ctl_check_name (const char *name);

/* ctl-changes.c */
/* An extent of a changes set; zero: the newer instant reads as zeros
 * there.  Returns 0 to go on, else that value ends ctl_changes_each. */
typedef int (*ctl_extent_fn) (void *opaque, uint64_t offset,
                              uint64_t length, bool zero);
struct ctl_changes_info {
  uint64_t size;                /* image bytes */
  uint64_t chunk_size;
  uint64_t changed_bytes;       /* the sum of the lengths, at the end */
  uint64_t zero_bytes;          /* of which zero */
  uint64_t extents;             /* how many fn was called for */
};
/* "changes a [b]" page by page on c's connection (connected here if it
 * is not yet; b NULL: until now), calling fn for each extent in order,
 * with adjacent extents of the same kind merged (a server that split
 * one at a page end would be read right too).  Memory stays bounded by
 * one page.  info (may be NULL) is filled from the pages.  Returns an
 * exit status (server errors reported as ctl_call does), or fn's
 * non-zero value. */
extern int ctl_changes_each (struct ctl *c, const char *a, const char *b,
                             ctl_extent_fn fn, void *opaque,
                             struct ctl_changes_info *info);
/* The changes command: argv[0] is "changes". */
extern int ctl_changes (struct ctl *c, int argc, char **argv);

/* ctl-backup.c: argv[0] is "backup". */
extern int ctl_backup (struct ctl *c, int argc, char **argv);

/* ctl-send.c: argv[0] is "send". */
extern int ctl_send (struct ctl *c, int argc, char **argv);
/* ctl-receive.c: argv[0] is "receive". */
extern int ctl_receive (struct ctl *c, int argc, char **argv);

/* ctl-holds.c: named holds.  Does argv ("hold", "release", "holds"...)
 * go to ctl_holds: holds, release, and hold with two words (TAG NAME)? */
extern bool ctl_holds_wants (int argc, char **argv);
extern int ctl_holds (struct ctl *c, int argc, char **argv);

#endif /* NBDSNAPCTL_H */
