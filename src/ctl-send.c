/* nbdsnapctl send: a snapshot, or what changed since an older one, as
 * an rbd diff v1 stream on standard output (the format is described in
 * ctl-stream.c).
 *
 * Notes on the design:
 *
 * - send holds B (and A) on its admin connection for the whole stream,
 *   so that a rotation cannot delete them underneath, and reads B's
 *   content from B's NBD export.  With --from A it sends the extents of
 *   "changes A B" (ctl_changes_each): zero extents as 'z', the others
 *   read and sent as 'w' records of at most STREAM_PIECE bytes, their
 *   all-zero STREAM_ZERO_BLOCKs as 'z' (what rbd does too).  Without
 *   --from it sends all of B: block status on B's export finds the holes
 *   and zeroes ('z'), the rest is read ('w'); zeroes are sent too, so
 *   that applying the stream makes any image equal to B.  Reads are
 *   issued with libnbd's aio, STREAM_INFLIGHT at once, and written out
 *   in order.
 *
 * - A reader of the stream that goes away is an error to report (exit
 *   status 1), not a signal: SIGPIPE is ignored.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/param.h>
#include <sys/uio.h>
#include <unistd.h>

#include <libnbd.h>

#include "nbdsnapctl.h"
#include "ctl-stream.h"

/* All-zero blocks of this size in read data become 'z' records (rbd's
 * default sparse size). */
#define STREAM_ZERO_BLOCK 4096
/* Block status asked for this much at a time. */
#define STREAM_STATUS_MAX (1u << 30)

struct send_slot {
  uint64_t offset, length;
  int64_t cookie;               /* the read's; 0: a 'z' record, no read */
  char *buf;                    /* STREAM_PIECE bytes, allocated once */
};

struct sender {
  struct nbd_handle *nbd;
  uint64_t size;
  struct send_slot slot[STREAM_INFLIGHT];
  unsigned head, n;             /* the oldest queued slot, how many */
  uint64_t zoff, zlen;          /* a 'z' not written yet: the next one
                                   may continue it */
  uint64_t data_bytes, zero_bytes, out_bytes;
  struct stream_progress prog;
};

/* Write iov to standard output, all of it. */
static int
out_write (struct sender *sd, struct iovec *iov, int n)
{
  while (n > 0) {
    ssize_t r = writev (STDOUT_FILENO, iov, n);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      ctl_msg ("send: writing the stream: %m");
      return NBDSNAPCTL_EXIT_ERROR;
    }
    sd->out_bytes += r;
    while (n > 0 && (size_t) r >= iov->iov_len) {
      r -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *) iov->iov_base + r;
      iov->iov_len -= r;
    }
  }
  return 0;
}

static int
flush_zero (struct sender *sd)
{
  unsigned char rec[17];
  struct iovec iov = { rec, sizeof rec };

  if (sd->zlen == 0)
    return 0;
  rec[0] = 'z';
  put_le64 (rec + 1, sd->zoff);
  put_le64 (rec + 9, sd->zlen);
  sd->zero_bytes += sd->zlen;
  sd->zlen = 0;
  return out_write (sd, &iov, 1);
}

static int
emit_zero (struct sender *sd, uint64_t offset, uint64_t length)
{
  int status;

  if (sd->zlen > 0 && sd->zoff + sd->zlen == offset) {
    sd->zlen += length;
    return 0;
  }
  if ((status = flush_zero (sd)) != 0)
    return status;
  sd->zoff = offset;
  sd->zlen = length;
  return 0;
}

static int
emit_data (struct sender *sd, uint64_t offset, char *buf, uint64_t length)
{
  unsigned char rec[17];
  struct iovec iov[2] = { { rec, sizeof rec }, { buf, length } };
  int status;

  if ((status = flush_zero (sd)) != 0)
    return status;
  rec[0] = 'w';
  put_le64 (rec + 1, offset);
  put_le64 (rec + 9, length);
  sd->data_bytes += length;
  return out_write (sd, iov, 2);
}

/* Read data: its runs of all-zero blocks as 'z', the rest as 'w'. */
static int
emit_block (struct sender *sd, uint64_t offset, char *buf, uint64_t length)
{
  uint64_t pos = 0, start;
  int status;

  while (pos < length) {
    bool zero;

    start = pos;
    zero = all_zero (buf + pos, MIN (STREAM_ZERO_BLOCK, length - pos));
    do
      pos += MIN (STREAM_ZERO_BLOCK, length - pos);
    while (pos < length
           && all_zero (buf + pos, MIN (STREAM_ZERO_BLOCK, length - pos))
              == zero);
    status = zero ? emit_zero (sd, offset + start, pos - start)
      : emit_data (sd, offset + start, buf + start, pos - start);
    if (status != 0)
      return status;
  }
  return 0;
}

/* Write out the oldest queued slot (waiting for its read). */
static int
retire (struct sender *sd)
{
  struct send_slot *s = &sd->slot[sd->head];
  int status;

  if (s->cookie != 0) {
    if (stream_wait_cookie (sd->nbd, s->cookie) == -1) {
      ctl_msg ("send: reading the snapshot at offset %" PRIu64 ": %s",
               s->offset, nbd_get_error ());
      return NBDSNAPCTL_EXIT_ERROR;
    }
    s->cookie = 0;
    status = emit_block (sd, s->offset, s->buf, s->length);
  }
  else
    status = emit_zero (sd, s->offset, s->length);
  sd->head = (sd->head + 1) % STREAM_INFLIGHT;
  sd->n--;
  stream_progress_update (&sd->prog, s->offset + s->length, sd->size);
  return status;
}

static struct send_slot *
next_slot (struct sender *sd, int *status)
{
  *status = sd->n == STREAM_INFLIGHT ? retire (sd) : 0;
  return *status ? NULL : &sd->slot[(sd->head + sd->n) % STREAM_INFLIGHT];
}

/* An extent of B: zero (reads as zeroes) or to be read; queued in
 * order behind the reads in flight. */
static int
send_extent (void *opaque, uint64_t offset, uint64_t length, bool zero)
{
  struct sender *sd = opaque;
  struct send_slot *s;
  int status;

  if (offset > sd->size || length > sd->size - offset) {
    ctl_msg ("send: changes: extent %" PRIu64 "+%" PRIu64 " is beyond the "
             "image's %" PRIu64 " bytes", offset, length, sd->size);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if (zero) {
    if (sd->n == 0)
      return emit_zero (sd, offset, length);
    s = &sd->slot[(sd->head + sd->n - 1) % STREAM_INFLIGHT];
    if (s->cookie == 0 && s->offset + s->length == offset) {
      s->length += length;
      return 0;
    }
    if ((s = next_slot (sd, &status)) == NULL)
      return status;
    *s = (struct send_slot) { offset, length, 0, s->buf };
    sd->n++;
    return 0;
  }
  while (length > 0) {
    uint64_t n = MIN (length, STREAM_PIECE);

    if ((s = next_slot (sd, &status)) == NULL)
      return status;
    if (s->buf == NULL && (s->buf = malloc (STREAM_PIECE)) == NULL) {
      ctl_msg ("send: malloc: %m");
      return NBDSNAPCTL_EXIT_ERROR;
    }
    s->offset = offset;
    s->length = n;
    s->cookie = nbd_aio_pread (sd->nbd, s->buf, n, offset,
                               NBD_NULL_COMPLETION, 0);
    if (s->cookie == -1) {
      s->cookie = 0;
      ctl_msg ("send: reading the snapshot at offset %" PRIu64 ": %s",
               offset, nbd_get_error ());
      return NBDSNAPCTL_EXIT_ERROR;
    }
    sd->n++;
    offset += n;
    length -= n;
  }
  return 0;
}

/* Block status of one request, as (length, zero) pairs. */
struct status_list {
  uint64_t (*ext)[2];
  size_t n, cap;
};

static int
status_cb (void *opaque, const char *context, uint64_t offset,
           uint32_t *entries, size_t nr, int *error)
{
  struct status_list *l = opaque;
  size_t i;

  if (strcmp (context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  for (i = 0; i + 1 < nr; i += 2) {
    if (l->n == l->cap) {
      size_t cap = l->cap ? 2 * l->cap : 256;
      void *p = realloc (l->ext, cap * sizeof *l->ext);

      if (p == NULL) {
        *error = ENOMEM;
        return -1;
      }
      l->ext = p;
      l->cap = cap;
    }
    l->ext[l->n][0] = entries[i];
    l->ext[l->n][1] = (entries[i + 1] & LIBNBD_STATE_ZERO) != 0;
    l->n++;
  }
  return 0;
}

/* All of B: holes and zeroes as 'z' (block status), the rest read. */
static int
send_full (struct sender *sd)
{
  struct status_list l = { NULL };
  uint64_t off = 0;
  size_t i;
  int status = 0;

  if (nbd_can_meta_context (sd->nbd, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1)
    return send_extent (sd, 0, sd->size, false);
  while (off < sd->size && status == 0) {
    uint64_t end = off + MIN (sd->size - off, STREAM_STATUS_MAX);

    l.n = 0;
    if (nbd_block_status (sd->nbd, end - off, off,
                          (nbd_extent_callback) { .callback = status_cb,
                                                  .user_data = &l },
                          0) == -1) {
      ctl_msg ("send: block status of the snapshot at offset %" PRIu64
               ": %s", off, nbd_get_error ());
      status = NBDSNAPCTL_EXIT_ERROR;
      break;
    }
    for (i = 0; i < l.n && off < end && status == 0; ++i) {
      uint64_t len = MIN (l.ext[i][0], end - off);

      if (len == 0)
        break;
      status = send_extent (sd, off, len, l.ext[i][1]);
      off += len;
    }
    if (status == 0 && i == 0) {
      ctl_msg ("send: block status of the snapshot at offset %" PRIu64
               ": no extent", off);
      status = NBDSNAPCTL_EXIT_ERROR;
    }
  }
  free (l.ext);
  return status;
}

/* The header and the metadata records. */
static int
send_header (struct sender *sd, const char *from, const char *to)
{
  size_t lf = from ? strlen (from) : 0, lt = strlen (to);
  unsigned char *h = malloc (RBD_DIFF_BANNER_LEN + 2 * 5 + lf + lt + 9), *p;
  struct iovec iov;
  int status;

  if (h == NULL) {
    ctl_msg ("send: malloc: %m");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  p = h;
  memcpy (p, RBD_DIFF_BANNER, RBD_DIFF_BANNER_LEN);
  p += RBD_DIFF_BANNER_LEN;
  if (from) {
    *p++ = 'f';
    put_le32 (p, lf);
    memcpy (p + 4, from, lf);
    p += 4 + lf;
  }
  *p++ = 't';
  put_le32 (p, lt);
  memcpy (p + 4, to, lt);
  p += 4 + lt;
  *p++ = 's';
  put_le64 (p, sd->size);
  p += 8;
  iov = (struct iovec) { h, p - h };
  status = out_write (sd, &iov, 1);
  free (h);
  return status;
}

int
ctl_send (struct ctl *c, int argc, char **argv)
{
  struct stream_args a = { NULL };
  struct sender sd = { NULL };
  const char *held_from = NULL, *held_to = NULL;
  struct iovec iov;
  char *uri = NULL, n1[32], n2[32], n3[32];
  json_t *resp = NULL, *snaps;
  int status, ia, ib;
  int64_t size;
  unsigned i;

  if ((status = stream_parse_args (argc, argv, true, &a)) != 0)
    return status;
  if (isatty (STDOUT_FILENO))
    return ctl_usage ("send: standard output is a terminal: redirect the "
                      "stream to a file or a pipe");
  /* A reader that goes away is an error to report, not a signal. */
  signal (SIGPIPE, SIG_IGN);

  /* Pin both snapshots for the duration of the stream. */
  if ((status = stream_call_name (c, "hold", a.name)) != 0)
    goto out;
  held_to = a.name;
  if (a.from) {
    if ((status = stream_call_name (c, "hold", a.from)) != 0)
      goto out;
    held_from = a.from;
    /* "changes A B" would refuse it too, but only once the header is
     * written: say it before anything goes out. */
    if ((status = ctl_call (c, "list", &resp)) != 0)
      goto out;
    snaps = json_object_get (resp, "snapshots");
    ia = stream_snap_index (snaps, a.from);
    ib = stream_snap_index (snaps, a.name);
    if (ia >= ib) {
      status = ctl_usage ("send: --from %s: not older than %s", a.from,
                          a.name);
      goto out;
    }
  }

  if ((uri = ctl_nbd_uri (c, &a.s, a.name, &status)) == NULL)
    goto out;
  if ((sd.nbd = stream_nbd_open ("send", uri, a.from == NULL, &status)) == NULL)
    goto out;
  if ((size = nbd_get_size (sd.nbd)) == -1) {
    ctl_msg ("send: %s: %s", uri, nbd_get_error ());
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  sd.size = size;
  stream_progress_init (&sd.prog, c, "send", a.name);

  if ((status = send_header (&sd, a.from, a.name)) != 0)
    goto out;
  if (a.from)
    status = ctl_changes_each (c, a.from, a.name, send_extent, &sd, NULL);
  else
    status = send_full (&sd);
  while (status == 0 && sd.n > 0)
    status = retire (&sd);
  if (status == 0)
    status = flush_zero (&sd);
  if (status == 0) {
    iov = (struct iovec) { "e", 1 };
    status = out_write (&sd, &iov, 1);
  }
  ctl_progress_clear (&sd.prog.bar);
  if (status == 0 && sd.prog.draw)
    ctl_msg ("sent %s%s%s: %s of data, %s of zeroes, %s stream",
             a.from ? a.from : "", a.from ? ".." : "", a.name,
             stream_human (sd.data_bytes, n1, sizeof n1),
             stream_human (sd.zero_bytes, n2, sizeof n2),
             stream_human (sd.out_bytes, n3, sizeof n3));

 out:
  ctl_progress_clear (&sd.prog.bar);
  if (sd.nbd) {
    /* Reads still in flight after a failure are abandoned. */
    nbd_shutdown (sd.nbd, LIBNBD_SHUTDOWN_ABANDON_PENDING);
    nbd_close (sd.nbd);
  }
  for (i = 0; i < STREAM_INFLIGHT; ++i)
    free (sd.slot[i].buf);
  free (uri);
  json_decref (resp);
  stream_release (c, held_from);
  stream_release (c, held_to);
  return status;
}

