/* nbdsnapctl send and receive: what ctl-stream.c, ctl-send.c and
 * ctl-receive.c share.  Internal to those three files.
 *
 * Notes on the design:
 *
 * - The rbd diff v1 format is described in ctl-stream.c (the reference);
 *   its constants and little-endian helpers are here.
 *
 * - Both sides stream over one NBD connection with STREAM_INFLIGHT
 *   requests of at most STREAM_PIECE bytes in flight, in a ring of slots
 *   retired oldest first: send writes its records out in the order of
 *   its reads, receive sends its requests in the stream's order.  The
 *   progress line shows the offset reached (records come in offset
 *   order).
 *
 * - Functions that can fail print one line and return an exit status
 *   (NBDSNAPCTL_EXIT_*), as everywhere in nbdsnapctl; 0 means success.
 */
#ifndef NBDSNAPCTL_STREAM_H
#define NBDSNAPCTL_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <libnbd.h>

#include "nbdsnapctl.h"

#define RBD_DIFF_BANNER "rbd diff v1\n"
#define RBD_DIFF_BANNER_LEN 12
#define RBD_NAME_MAX 4096           /* rbd import-diff reads no longer name */

/* Data bytes in one 'w' record that send writes, and in one NBD request
 * of either side. */
#define STREAM_PIECE (4u << 20)
/* NBD requests in flight, each with a STREAM_PIECE buffer. */
#define STREAM_INFLIGHT 8

static inline void
put_le32 (unsigned char *p, uint32_t v)
{
  int i;

  for (i = 0; i < 4; ++i)
    p[i] = v >> (8 * i);
}

static inline void
put_le64 (unsigned char *p, uint64_t v)
{
  int i;

  for (i = 0; i < 8; ++i)
    p[i] = v >> (8 * i);
}

static inline uint32_t
get_le32 (const unsigned char *p)
{
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24;
}

static inline uint64_t
get_le64 (const unsigned char *p)
{
  uint64_t v = 0;
  int i;

  for (i = 7; i >= 0; --i)
    v = v << 8 | p[i];
  return v;
}

static inline bool
all_zero (const char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

/* The progress line on a terminal.  It has its own struct ctl (only its
 * bar is used): ctl_call, which the changes pages go through, clears
 * and restarts the admin connection's. */
struct stream_progress {
  struct ctl bar;
  bool draw;
  const char *what, *name;
  double last;
};

/* Options of send and receive: --from (send), --nbd-socket, --uri-base;
 * send takes one NAME, receive none. */
struct stream_args {
  const char *from;
  const char *name;
  struct ctl_session s;
};

/* ctl-stream.c */
extern int stream_parse_args (int argc, char **argv, bool send,
                              struct stream_args *a);
extern void stream_progress_init (struct stream_progress *p, struct ctl *c,
                                  const char *what, const char *name);
/* done of total bytes of the image (the offset reached: records come in
 * offset order), drawn at most every 0.25 s. */
extern void stream_progress_update (struct stream_progress *p, uint64_t done,
                                    uint64_t total);
/* "1.5 GiB" */
extern const char *stream_human (uint64_t n, char *buf, size_t len);
/* One request about a snapshot ("hold NAME"...), its answer dropped. */
extern int stream_call_name (struct ctl *c, const char *verb,
                             const char *name);
/* Release a hold, quietly (closing the connection would too, but only
 * eventually: the next command of a script must find it gone).  name
 * NULL: nothing. */
extern void stream_release (struct ctl *c, const char *name);
/* The position of name in list's "snapshots" (oldest first), or -1. */
extern int stream_snap_index (json_t *snaps, const char *name);
/* Connect to the NBD export uri (meta: asking for base:allocation); NULL
 * after a message ("CMD: ..."), *status set. */
extern struct nbd_handle *stream_nbd_open (const char *cmd, const char *uri,
                                           bool meta, int *status);
/* Wait for an aio command of nbd; 0, or -1 if it (or the connection)
 * failed (nbd_get_error says why). */
extern int stream_wait_cookie (struct nbd_handle *nbd, int64_t cookie);

/* ctl-send.c, ctl-receive.c: ctl_send and ctl_receive, in nbdsnapctl.h. */

#endif /* NBDSNAPCTL_STREAM_H */
