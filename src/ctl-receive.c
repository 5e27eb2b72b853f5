/* nbdsnapctl receive: apply an rbd diff v1 stream from standard input to
 * the origin and create the snapshot it ends at (the format is
 * described in ctl-stream.c).
 *
 * Notes on the design:
 *
 * - receive checks everything it can before it touches the origin: the
 *   header, the metadata records, 't' (required, a valid name not taken
 *   on this server), 's' (required, equal to the origin's size: receive
 *   does not resize), and with 'f' A: A is this server's newest
 *   snapshot (deleting ones aside), held for the duration, and the
 *   origin still reads as A (the extents of "changes A" are compared
 *   with A: a chunk written and rolled back since is listed too).  It
 *   refuses an origin with NBD clients (their writes would mix with the
 *   stream's).
 *   Then it applies the data records through NBD to the origin
 *   (pwrite; write zeroes, which may punch) with STREAM_INFLIGHT requests
 *   in flight, checking each record's range and structure as it comes;
 *   an unknown record, a stream that ends before 'e', or bytes after
 *   'e' fail.  On success it flushes, disconnects, and creates 't'.  On
 *   a failure after the origin was touched it rolls the origin back to
 *   'f' (or says it is partly written, and how to restore it); 't' is
 *   created only if the whole stream applied.
 *
 * - SIGINT, SIGTERM and SIGHUP (caught without SA_RESTART while receive
 *   runs) stop it as a failure: the origin is rolled back as above.
 *   While it waits for the stream, it keeps the origin's requests in
 *   flight moving (in_wait): libnbd sends and receives only when called.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/param.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#include "nbdsnapctl.h"
#include "ctl-stream.h"

/* The longest write-zeroes request (NBD counts are 32-bit). */
#define STREAM_ZERO_MAX (1u << 30)

/* ctl_changes_each's callback returns this to say "changed" (no exit
 * status has this value). */
#define CHANGED_SINCE 1000

/* Set by SIGINT, SIGTERM, SIGHUP during receive: stop, undo. */
static volatile sig_atomic_t receive_interrupted;

static void
on_signal (int sig)
{
  receive_interrupted = 1;
}

/* Standard input, buffered; pos counts the bytes consumed.  nbd: the
 * origin, once requests go to it. */
struct in {
  struct nbd_handle *nbd;
  uint64_t pos;
  size_t off, len;
  unsigned char buf[65536];
};

/* Until standard input has bytes, keep the origin's requests moving:
 * libnbd sends (a big write goes out piece by piece) and receives only
 * when called, and the stream may come slowly.  0, or -1 after a
 * message (interrupted).  A failed connection is left to the request
 * waits to report. */
static int
in_wait (struct in *in)
{
  while (in->nbd && nbd_aio_in_flight (in->nbd) > 0) {
    unsigned dir = nbd_aio_get_direction (in->nbd);
    struct pollfd p[2] = {
      { .fd = STDIN_FILENO, .events = POLLIN },
      { .fd = nbd_aio_get_fd (in->nbd),
        .events = (dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0)
                  | (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0) },
    };
    int r;

    if (p[1].fd == -1)
      return 0;
    if (poll (p, 2, -1) == -1) {
      if (errno == EINTR && !receive_interrupted)
        continue;
      if (errno == EINTR) {
        ctl_msg ("receive: interrupted");
        return -1;
      }
      ctl_msg ("receive: poll: %m");
      return -1;
    }
    r = 0;
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR))
      r = nbd_aio_notify_read (in->nbd);
    else if (p[1].revents & POLLOUT)
      r = nbd_aio_notify_write (in->nbd);
    if (r == -1 || p[0].revents)
      return 0;
  }
  return 0;
}

/* Read n bytes into p: n, fewer only at end of input, or -1 after a
 * message. */
static ssize_t
in_read (struct in *in, void *p, size_t n)
{
  size_t got = 0, k;

  while (got < n) {
    if (in->off == in->len) {
      ssize_t r;

      if (receive_interrupted) {
        ctl_msg ("receive: interrupted");
        return -1;
      }
      if (in_wait (in) == -1)
        return -1;
      /* Big reads go straight into p. */
      r = read (STDIN_FILENO, n - got >= sizeof in->buf
                ? (unsigned char *) p + got : in->buf,
                n - got >= sizeof in->buf ? n - got : sizeof in->buf);
      if (r == -1 && errno == EINTR)
        continue;
      if (r == -1) {
        ctl_msg ("receive: reading the stream: %m");
        return -1;
      }
      if (r == 0)
        break;
      if (n - got >= sizeof in->buf) {
        got += r;
        in->pos += r;
        continue;
      }
      in->off = 0;
      in->len = r;
    }
    k = MIN (n - got, in->len - in->off);
    memcpy ((unsigned char *) p + got, in->buf + in->off, k);
    in->off += k;
    got += k;
    in->pos += k;
  }
  return got;
}

/* Read exactly n bytes of a record that began at byte at; 0, or an exit
 * status after a message (truncated: the stream ended). */
static int
in_exact (struct in *in, void *p, size_t n, int tag, uint64_t at)
{
  ssize_t r = in_read (in, p, n);

  if (r == -1)
    return NBDSNAPCTL_EXIT_ERROR;
  if ((size_t) r < n) {
    ctl_msg ("receive: the stream is truncated: it ends inside its '%c' "
             "record at byte %" PRIu64, tag, at);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  return 0;
}

/* The next record's tag: 0, or a status after a message. */
static int
in_tag (struct in *in, int *tag)
{
  unsigned char t;
  ssize_t r = in_read (in, &t, 1);

  if (r == -1)
    return NBDSNAPCTL_EXIT_ERROR;
  if (r == 0) {
    ctl_msg ("receive: the stream is truncated: it ends at byte %" PRIu64
             " without its end record ('e')", in->pos);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  *tag = t;
  return 0;
}

struct meta {
  char *from, *to;              /* 'f', 't', or NULL */
  bool has_size;
  uint64_t size;                /* 's' */
};

static int
read_name (struct in *in, int tag, char **name)
{
  uint64_t at = in->pos - 1;
  unsigned char b[4];
  uint32_t len;
  int status;

  if (*name != NULL) {
    ctl_msg ("receive: the stream is corrupt: a second '%c' record at byte %"
             PRIu64, tag, at);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if ((status = in_exact (in, b, 4, tag, at)) != 0)
    return status;
  len = get_le32 (b);
  if (len == 0 || len > RBD_NAME_MAX) {
    ctl_msg ("receive: the stream is corrupt: its '%c' record at byte %"
             PRIu64 " has a name of %" PRIu32 " bytes", tag, at, len);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if ((*name = calloc (1, len + 1)) == NULL) {
    ctl_msg ("receive: calloc: %m");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if ((status = in_exact (in, *name, len, tag, at)) != 0)
    return status;
  if (strlen (*name) != len || nbdsnap_name_valid (*name) == -1) {
    ctl_msg ("receive: the stream's %s snapshot '%.80s' is not a valid "
             "name here: " NBDSNAP_NAME_RULE,
             tag == 'f' ? "base" : "new", *name);
    return NBDSNAPCTL_EXIT_INVALID_NAME;
  }
  return 0;
}

/* The header and the metadata records; *tag: the first one after them. */
static int
read_meta (struct in *in, struct meta *m, int *tag)
{
  char banner[RBD_DIFF_BANNER_LEN];
  unsigned char b[8];
  ssize_t r;
  int status;

  r = in_read (in, banner, sizeof banner);
  if (r == -1)
    return NBDSNAPCTL_EXIT_ERROR;
  if (r == 0) {
    ctl_msg ("receive: no stream on standard input (it is empty)");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if ((size_t) r < sizeof banner
      || memcmp (banner, RBD_DIFF_BANNER, sizeof banner) != 0) {
    ctl_msg ("receive: not an rbd diff v1 stream (it does not begin with "
             "\"rbd diff v1\\n\")");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  for (;;) {
    if ((status = in_tag (in, tag)) != 0)
      return status;
    switch (*tag) {
    case 'f':
      status = read_name (in, 'f', &m->from);
      break;
    case 't':
      status = read_name (in, 't', &m->to);
      break;
    case 's':
      if (m->has_size) {
        ctl_msg ("receive: the stream is corrupt: a second 's' record at "
                 "byte %" PRIu64, in->pos - 1);
        return NBDSNAPCTL_EXIT_ERROR;
      }
      if ((status = in_exact (in, b, 8, 's', in->pos - 1)) != 0)
        return status;
      m->has_size = true;
      m->size = get_le64 (b);
      break;
    case 'w': case 'z': case 'e':
      return 0;
    default:
      ctl_msg ("receive: the stream is corrupt: unknown record type 0x%02x "
               "at byte %" PRIu64, *tag, in->pos - 1);
      return NBDSNAPCTL_EXIT_ERROR;
    }
    if (status != 0)
      return status;
  }
}

struct recv_slot {
  int64_t cookie;               /* the request's; 0: free */
  uint64_t offset;
  char *buf;                    /* STREAM_PIECE bytes once a write used it */
};

struct receiver {
  struct nbd_handle *nbd;
  struct in in;
  uint64_t size;
  struct recv_slot slot[STREAM_INFLIGHT];
  unsigned head, n;             /* the oldest request in flight, how many */
  bool touched;                 /* a write or zero was sent */
  uint64_t written, zeroed;
  struct stream_progress prog;
};

/* Wait for the oldest request in flight (stoppable: unless a signal
 * came). */
static int
recv_retire (struct receiver *rv, bool stoppable)
{
  struct recv_slot *s = &rv->slot[rv->head];
  bool stopped = false;
  int r = 0;

  while (r == 0 && (r = nbd_aio_command_completed (rv->nbd, s->cookie)) == 0)
    if ((stoppable && (stopped = receive_interrupted))
        || (nbd_poll (rv->nbd, 1000) == -1 && errno != EINTR))
      r = -1;
  s->cookie = 0;
  rv->head = (rv->head + 1) % STREAM_INFLIGHT;
  rv->n--;
  if (r != 1) {
    if (stopped)
      ctl_msg ("receive: interrupted");
    else
      ctl_msg ("receive: writing the origin at offset %" PRIu64 ": %s",
               s->offset, nbd_get_error ());
    return NBDSNAPCTL_EXIT_ERROR;
  }
  return 0;
}

static struct recv_slot *
recv_slot (struct receiver *rv, int *status)
{
  *status = rv->n == STREAM_INFLIGHT ? recv_retire (rv, true) : 0;
  return *status ? NULL : &rv->slot[(rv->head + rv->n) % STREAM_INFLIGHT];
}

/* One 'w' or 'z' record, its tag read at byte at. */
static int
apply_record (struct receiver *rv, int tag, uint64_t at)
{
  unsigned char b[16];
  uint64_t off, len;
  struct recv_slot *s;
  int status;

  if ((status = in_exact (&rv->in, b, 16, tag, at)) != 0)
    return status;
  off = get_le64 (b);
  len = get_le64 (b + 8);
  if (off > rv->size || len > rv->size - off) {
    ctl_msg ("receive: the stream is corrupt: its '%c' record at byte %"
             PRIu64 " (offset %" PRIu64 ", length %" PRIu64 ") goes beyond "
             "the image's %" PRIu64 " bytes", tag, at, off, len, rv->size);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  while (len > 0) {
    uint64_t n = MIN (len, tag == 'w' ? STREAM_PIECE : STREAM_ZERO_MAX);

    if ((s = recv_slot (rv, &status)) == NULL)
      return status;
    if (tag == 'w') {
      if (s->buf == NULL && (s->buf = malloc (STREAM_PIECE)) == NULL) {
        ctl_msg ("receive: malloc: %m");
        return NBDSNAPCTL_EXIT_ERROR;
      }
      if ((status = in_exact (&rv->in, s->buf, n, tag, at)) != 0)
        return status;
      s->cookie = nbd_aio_pwrite (rv->nbd, s->buf, n, off,
                                  NBD_NULL_COMPLETION, 0);
      rv->written += n;
    }
    else {
      /* No NO_HOLE flag: the server may punch. */
      s->cookie = nbd_aio_zero (rv->nbd, n, off, NBD_NULL_COMPLETION, 0);
      rv->zeroed += n;
    }
    rv->touched = true;
    if (s->cookie == -1) {
      s->cookie = 0;
      ctl_msg ("receive: writing the origin at offset %" PRIu64 ": %s", off,
               nbd_get_error ());
      return NBDSNAPCTL_EXIT_ERROR;
    }
    s->offset = off;
    rv->n++;
    off += n;
    len -= n;
    stream_progress_update (&rv->prog, off, rv->size);
  }
  return 0;
}

/* The data records, from tag (already read) to 'e' and the end of the
 * input; then every request is waited for and the origin flushed. */
static int
apply (struct receiver *rv, int tag)
{
  unsigned char extra;
  ssize_t r;
  int status;

  for (;;) {
    uint64_t at = rv->in.pos - 1;

    switch (tag) {
    case 'w': case 'z':
      status = apply_record (rv, tag, at);
      break;
    case 'e':
      r = in_read (&rv->in, &extra, 1);
      if (r == -1)
        return NBDSNAPCTL_EXIT_ERROR;
      if (r == 1) {
        ctl_msg ("receive: the stream is corrupt: data after its end record "
                 "(byte %" PRIu64 ")", at);
        return NBDSNAPCTL_EXIT_ERROR;
      }
      while (rv->n > 0)
        if ((status = recv_retire (rv, true)) != 0)
          return status;
      if (rv->touched && nbd_flush (rv->nbd, 0) == -1) {
        ctl_msg ("receive: flushing the origin: %s", nbd_get_error ());
        return NBDSNAPCTL_EXIT_ERROR;
      }
      return 0;
    case 'f': case 't': case 's':
      ctl_msg ("receive: the stream is corrupt: a '%c' record at byte %"
               PRIu64 ", after the data records", tag, at);
      return NBDSNAPCTL_EXIT_ERROR;
    default:
      ctl_msg ("receive: the stream is corrupt: unknown record type 0x%02x "
               "at byte %" PRIu64, tag, at);
      return NBDSNAPCTL_EXIT_ERROR;
    }
    if (status != 0 || (status = in_tag (&rv->in, &tag)) != 0)
      return status;
  }
}

/* Print the server's message of the last failed call (made quietly). */
static void
report_last (struct ctl *c, const char *what)
{
  enum proto_err kind;
  json_t *r = c->line ? proto_parse_response (c->line, strlen (c->line),
                                              &kind) : NULL;
  const char *msg = json_string_value (json_object_get (r, "message"));

  ctl_msg ("%s: %s", what, msg ? msg : "failed");
  json_decref (r);
}

/* After a failure that touched the origin: roll it back to from, or say
 * what it holds.  Our NBD connection is closed, but the server may not
 * have seen it go yet (rollback is busy while the origin has clients):
 * try for a few seconds. */
static void
undo (struct ctl *c, const struct meta *m)
{
  char req[NBDSNAP_ADMIN_LINE_MAX];
  json_t *resp;
  double until = ctl_now () + 5;
  int status;

  if (m->from == NULL) {
    ctl_msg ("receive: the origin is partly written: it holds neither its "
             "old content nor %s's (receive a full stream of %s again)",
             m->to, m->to);
    return;
  }
  snprintf (req, sizeof req, "rollback %s", m->from);
  c->quiet = true;
  for (;;) {
    status = ctl_call (c, req, &resp);
    json_decref (resp);
    if (status != NBDSNAPCTL_EXIT_BUSY || ctl_now () > until)
      break;
    nanosleep (&(struct timespec) { 0, 100000000 }, NULL);
  }
  c->quiet = false;
  if (status == 0) {
    ctl_msg ("receive: rolled the origin back to snapshot %s", m->from);
    return;
  }
  if (status != NBDSNAPCTL_EXIT_UNREACHABLE)
    report_last (c, "rollback");
  ctl_msg ("receive: the origin is partly written: it holds neither %s's "
           "content nor %s's; restore it with 'nbdsnapctl rollback %s'",
           m->from, m->to, m->from);
}

/* Whether the origin still reads as snapshot A: "changes A" lists the
 * chunks written since A, but a chunk written and then rolled back (a
 * receive that failed, a rollback by hand) is listed too, so each
 * extent is compared: the origin's bytes with A's. */
struct unchanged {
  struct nbd_handle *origin, *snap;
  char *a, *b;                  /* STREAM_PIECE bytes each */
  uint64_t where;               /* the first difference */
};

static int
same_as_snap (void *opaque, uint64_t offset, uint64_t length, bool zero)
{
  struct unchanged *u = opaque;

  while (length > 0) {
    uint64_t n = MIN (length, STREAM_PIECE);

    if (nbd_pread (u->snap, u->a, n, offset, 0) == -1
        || (!zero && nbd_pread (u->origin, u->b, n, offset, 0) == -1)) {
      ctl_msg ("receive: comparing the origin with the base at offset %"
               PRIu64 ": %s", offset, nbd_get_error ());
      return NBDSNAPCTL_EXIT_ERROR;
    }
    if (zero ? !all_zero (u->a, n) : memcmp (u->a, u->b, n) != 0) {
      u->where = offset;
      return CHANGED_SINCE;
    }
    offset += n;
    length -= n;
  }
  return 0;
}

static int
check_unchanged (struct ctl *c, struct stream_args *a, struct receiver *rv,
                 const struct meta *m)
{
  struct unchanged u = { .origin = rv->nbd };
  char *uri;
  int status;

  if ((uri = ctl_nbd_uri (c, &a->s, m->from, &status)) == NULL)
    return status;
  u.snap = stream_nbd_open ("receive", uri, false, &status);
  free (uri);
  if (u.snap == NULL)
    return status;
  u.a = malloc (STREAM_PIECE);
  u.b = malloc (STREAM_PIECE);
  if (u.a == NULL || u.b == NULL) {
    ctl_msg ("receive: malloc: %m");
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  else
    status = ctl_changes_each (c, m->from, NULL, same_as_snap, &u, NULL);
  if (status == CHANGED_SINCE) {
    ctl_msg ("receive: the origin was written since snapshot %s (at offset "
             "%" PRIu64 "): the stream would not make it %s; roll it back "
             "first ('nbdsnapctl rollback %s')", m->from, u.where, m->to,
             m->from);
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  nbd_shutdown (u.snap, 0);
  nbd_close (u.snap);
  free (u.a);
  free (u.b);
  return status;
}

/* What receive checks on the server before it touches the origin; with
 * 'f' A, A is held (*held set) until receive ends: it is the rollback
 * target if the stream fails. */
static int
check_server (struct ctl *c, const struct meta *m, bool *held)
{
  json_t *resp = NULL, *snaps, *clients, *s;
  const char *newest = NULL;
  size_t i, users = 0;
  int status;

  if ((status = ctl_call (c, "list", &resp)) != 0)
    return status;
  snaps = json_object_get (resp, "snapshots");
  if (stream_snap_index (snaps, m->to) >= 0) {
    ctl_msg ("receive: snapshot %s exists on this server: the stream "
             "would create it", m->to);
    status = NBDSNAPCTL_EXIT_EXISTS;
    goto out;
  }
  json_array_foreach (snaps, i, s) {
    const char *state = json_string_value (json_object_get (s, "state"));
    if (state == NULL || strcmp (state, "deleting") != 0)
      newest = json_string_value (json_object_get (s, "name"));
  }
  if (m->from != NULL && (newest == NULL || strcmp (newest, m->from) != 0)) {
    if (newest == NULL)
      ctl_msg ("receive: the stream is for base %s, this server has no "
               "snapshot (receive a full stream first)", m->from);
    else
      ctl_msg ("receive: the stream is for base %s, this server's newest "
               "snapshot is %s", m->from, newest);
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  json_decref (resp);
  resp = NULL;

  if (m->from != NULL) {
    if ((status = stream_call_name (c, "hold", m->from)) != 0)
      goto out;
    *held = true;
  }

  if ((status = ctl_call (c, "clients", &resp)) != 0)
    goto out;
  clients = json_object_get (resp, "clients");
  json_array_foreach (clients, i, s) {
    const char *e = json_string_value (json_object_get (s, "export"));
    if (e && *e == '\0' && !json_is_true (json_object_get (s, "revoked")))
      users++;
  }
  if (users > 0) {
    ctl_msg ("receive: the origin has %zu NBD client%s (see 'nbdsnapctl "
             "clients'): receive needs it to itself", users,
             users == 1 ? "" : "s");
    status = NBDSNAPCTL_EXIT_BUSY;
  }
 out:
  json_decref (resp);
  return status;
}

/* Connect to the origin and check it takes the stream. */
static int
open_origin (struct ctl *c, struct stream_args *a, struct receiver *rv,
             const struct meta *m)
{
  char *uri;
  int64_t size = -1;
  int status;

  if ((uri = ctl_nbd_uri (c, &a->s, "", &status)) == NULL)
    return status;
  rv->nbd = stream_nbd_open ("receive", uri, false, &status);
  if (rv->nbd != NULL && (size = nbd_get_size (rv->nbd)) == -1) {
    ctl_msg ("receive: %s: %s", uri, nbd_get_error ());
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  free (uri);
  if (status != 0)
    return status;
  if ((uint64_t) size != m->size) {
    ctl_msg ("receive: the stream is for an image of %" PRIu64 " bytes, "
             "this server's origin has %" PRIi64 " bytes: receive does not "
             "resize (resizing is not supported)", m->size, size);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if (nbd_is_read_only (rv->nbd) == 1) {
    ctl_msg ("receive: the origin is read-only");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if (nbd_can_zero (rv->nbd) != 1) {
    ctl_msg ("receive: the origin does not take write-zeroes requests");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  rv->size = size;
  return 0;
}

/* Disconnect from the origin; after a failure, in-flight requests are
 * waited for first (their errors ignored): what comes next must come
 * after them. */
static int
close_origin (struct receiver *rv, bool failed)
{
  int status = 0;

  if (rv->nbd == NULL)
    return 0;
  while (failed && rv->n > 0)
    recv_retire (rv, false);
  if (nbd_shutdown (rv->nbd, failed ? LIBNBD_SHUTDOWN_ABANDON_PENDING : 0)
      == -1 && !failed) {
    ctl_msg ("receive: disconnecting from the origin: %s", nbd_get_error ());
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  nbd_close (rv->nbd);
  rv->in.nbd = NULL;
  rv->nbd = NULL;
  return status;
}

int
ctl_receive (struct ctl *c, int argc, char **argv)
{
  static const int sigs[3] = { SIGINT, SIGTERM, SIGHUP };
  struct stream_args a = { NULL };
  struct receiver *rv = NULL;
  struct meta m = { NULL };
  struct sigaction sa = { .sa_handler = on_signal }, old[3];
  char req[NBDSNAP_ADMIN_LINE_MAX], n1[32], n2[32];
  bool held = false;
  json_t *resp;
  int status, tag, i;

  if ((status = stream_parse_args (argc, argv, false, &a)) != 0)
    return status;
  if (isatty (STDIN_FILENO))
    return ctl_usage ("receive: standard input is a terminal: the stream "
                      "comes from a file or a pipe");
  if ((rv = calloc (1, sizeof *rv)) == NULL) {
    ctl_msg ("receive: calloc: %m");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  /* No SA_RESTART: a signal interrupts a read of the stream. */
  signal (SIGPIPE, SIG_IGN);
  receive_interrupted = 0;
  for (i = 0; i < 3; ++i)
    sigaction (sigs[i], &sa, &old[i]);

  /* Nothing is touched until the metadata and the server are checked. */
  if ((status = read_meta (&rv->in, &m, &tag)) != 0)
    goto out;
  if (m.to == NULL) {
    ctl_msg ("receive: the stream names no snapshot to create (no 't' "
             "record: an export of an image's head, not of a snapshot)");
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  if (!m.has_size) {
    ctl_msg ("receive: the stream has no image size ('s' record)");
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  if ((status = check_server (c, &m, &held)) != 0
      || (status = open_origin (c, &a, rv, &m)) != 0
      || (m.from && (status = check_unchanged (c, &a, rv, &m)) != 0))
    goto out;

  stream_progress_init (&rv->prog, c, "receive", m.to);
  rv->in.nbd = rv->nbd;
  status = apply (rv, tag);
  ctl_progress_clear (&rv->prog.bar);
  if (status == 0)
    status = close_origin (rv, false);
  if (status != 0) {
    close_origin (rv, true);
    if (rv->touched)
      undo (c, &m);
    else
      ctl_msg ("receive: nothing was written: the origin is unchanged");
    goto out;
  }

  snprintf (req, sizeof req, "create %s", m.to);
  status = ctl_call (c, req, &resp);
  if (status != 0) {
    ctl_msg ("receive: the origin holds %s's content, but snapshot %s was "
             "not created", m.to, m.to);
    goto out;
  }
  if (c->json)
    puts (c->line);
  else
    printf ("received snapshot %s (%s written, %s zeroed)\n", m.to,
            stream_human (rv->written, n1, sizeof n1),
            stream_human (rv->zeroed, n2, sizeof n2));
  json_decref (resp);

 out:
  close_origin (rv, true);
  for (i = 0; i < STREAM_INFLIGHT; ++i)
    free (rv->slot[i].buf);
  if (held)
    stream_release (c, m.from);
  for (i = 0; i < 3; ++i)
    sigaction (sigs[i], &old[i], NULL);
  free (m.from);
  free (m.to);
  free (rv);
  return status;
}
