/* nbdsnapctl send and receive: rbd diff v1 streams.
 *
 * The format is Ceph's "RBD Incremental Backup" stream, version 1, as
 * documented in Ceph's doc/dev/rbd-diff.rst
 * (https://docs.ceph.com/en/latest/dev/rbd-diff/) and checked against the
 * code that writes and reads it, src/tools/rbd/action/ExportDiff.cc and
 * Import.cc (rbd export-diff, rbd import-diff).  Integers are
 * little-endian; names are a le32 length and that many bytes, no NUL:
 *
 *   header  the 12 bytes "rbd diff v1\n"
 *   'f'     le32 LEN, LEN bytes      the snapshot the diff starts from
 *   't'     le32 LEN, LEN bytes      the snapshot it ends at
 *   's'     le64 SIZE                the image's size at the end
 *   'w'     le64 OFFSET, le64 LENGTH, LENGTH bytes of data
 *   'z'     le64 OFFSET, le64 LENGTH (reads as zeroes)
 *   'e'     the end
 *
 * Every record is a one-byte tag and its fields.  The metadata records
 * 'f', 't', 's' come first, in any order; then the data records; then
 * 'e'.  rbd export-diff writes 'f' only with --from-snap, 't' only when
 * it exports a snapshot (not the image's head), 's' always, then one
 * record per changed extent of an object (4 MiB by default) in offset
 * order, a 'w' whose data are all zeroes written as a 'z'.  rbd
 * import-diff reads names of at most 4096 bytes, refuses a stream whose
 * 'f' snapshot does not exist or whose 't' snapshot does, resizes the
 * image to 's', and creates 't' once every record is applied.  (Version
 * 2, "rbd diff v2\n", adds a le64 length after each tag but 'e'; we
 * neither write nor read it.)
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
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/param.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

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
/* send: all-zero blocks of this size in read data become 'z' records
 * (rbd's default sparse size). */
#define STREAM_ZERO_BLOCK 4096
/* receive: the longest write-zeroes request (NBD counts are 32-bit). */
#define STREAM_ZERO_MAX (1u << 30)
/* send: block status asked for this much at a time. */
#define STREAM_STATUS_MAX (1u << 30)

/* ctl_changes_each's callback returns this to say "changed" (no exit
 * status has this value). */
#define CHANGED_SINCE 1000

static void
put_le32 (unsigned char *p, uint32_t v)
{
  int i;

  for (i = 0; i < 4; ++i)
    p[i] = v >> (8 * i);
}

static void
put_le64 (unsigned char *p, uint64_t v)
{
  int i;

  for (i = 0; i < 8; ++i)
    p[i] = v >> (8 * i);
}

static uint32_t
get_le32 (const unsigned char *p)
{
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24;
}

static uint64_t
get_le64 (const unsigned char *p)
{
  uint64_t v = 0;
  int i;

  for (i = 7; i >= 0; --i)
    v = v << 8 | p[i];
  return v;
}

/* Wait for an aio command of nbd; 0, or -1 if it (or the connection)
 * failed (nbd_get_error says why). */
static int
wait_cookie (struct nbd_handle *nbd, int64_t cookie)
{
  int r;

  while ((r = nbd_aio_command_completed (nbd, cookie)) == 0)
    if (nbd_poll (nbd, -1) == -1)
      return -1;
  return r == 1 ? 0 : -1;
}

/* "1.5 GiB" */
static const char *
human (uint64_t n, char *buf, size_t len)
{
  json_t *v = json_integer ((json_int_t) n);

  ctl_human_size (v, buf, len);
  json_decref (v);
  return buf;
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

static void
progress_init (struct stream_progress *p, struct ctl *c, const char *what,
               const char *name)
{
  memset (p, 0, sizeof *p);
  p->draw = !c->json && isatty (STDERR_FILENO);
  p->what = what;
  p->name = name;
  p->bar.bar.start = ctl_now ();
}

/* done of total bytes of the image (the offset reached: records come in
 * offset order), drawn at most every 0.25 s. */
static void
progress (struct stream_progress *p, uint64_t done, uint64_t total)
{
  json_t *o;
  double now;

  if (!p->draw)
    return;
  now = ctl_now ();
  if (now - p->last < 0.25)
    return;
  p->last = now;
  o = json_pack ("{s:s, s:s, s:I, s:I}", "progress", p->what, "name",
                 p->name, "done", (json_int_t) done,
                 "total", (json_int_t) total);
  if (o != NULL)
    ctl_progress_draw (&p->bar, o);
  json_decref (o);
}

/* Options of send and receive: --from (send), --nbd-socket, --uri-base;
 * send takes one NAME, receive none. */
struct stream_args {
  const char *from;
  const char *name;
  struct ctl_session s;
};

static int
check_name (const char *cmd, const char *name)
{
  if (nbdsnap_name_valid (name) == -1) {
    ctl_msg ("%s: invalid snapshot name '%.80s': " NBDSNAP_NAME_RULE, cmd,
             name);
    return NBDSNAPCTL_EXIT_INVALID_NAME;
  }
  return 0;
}

static int
parse_stream_args (int argc, char **argv, bool send, struct stream_args *a)
{
  static const struct option longopts[] = {
    { "from", required_argument, NULL, 'f' },
    { "nbd-socket", required_argument, NULL, 'N' },
    { "uri-base", required_argument, NULL, 'U' },
    { NULL },
  };
  const char *cmd = argv[0];
  int opt, status;

  a->s.nbd_socket = getenv ("NBDSNAP_NBD_SOCKET");
  optind = 0;                   /* glibc: start over, from argv[1] */
  opterr = 0;
  while ((opt = getopt_long (argc, argv, ":", longopts, NULL)) != -1) {
    switch (opt) {
    case 'f':
      if (!send)
        return ctl_usage ("%s: unknown option %s", cmd, argv[optind - 1]);
      a->from = optarg;
      break;
    case 'N': a->s.nbd_socket = optarg; break;
    case 'U': a->s.uri_base = optarg; break;
    case ':':
      return ctl_usage ("%s: option %s needs an argument", cmd,
                        argv[optind - 1]);
    default:
      return ctl_usage ("%s: unknown option %s", cmd, argv[optind - 1]);
    }
  }
  if (!send) {
    if (optind < argc)
      return ctl_usage ("%s: unexpected argument '%s' (the stream comes "
                        "from standard input)", cmd, argv[optind]);
    return 0;
  }
  if (optind >= argc)
    return ctl_usage ("%s: missing snapshot NAME", cmd);
  a->name = argv[optind++];
  if (optind < argc)
    return ctl_usage ("%s: unexpected argument '%s'", cmd, argv[optind]);
  if ((status = check_name (cmd, a->name)) != 0
      || (a->from && (status = check_name (cmd, a->from)) != 0))
    return status;
  if (a->from && strcmp (a->from, a->name) == 0)
    return ctl_usage ("%s: --from %s: the same snapshot as the one to send",
                      cmd, a->from);
  return 0;
}

/* One request about a snapshot, its answer dropped. */
static int
call_name (struct ctl *c, const char *verb, const char *name)
{
  char req[NBDSNAP_ADMIN_LINE_MAX];
  json_t *resp;
  int status;

  snprintf (req, sizeof req, "%s %s", verb, name);
  status = ctl_call (c, req, &resp);
  json_decref (resp);
  return status;
}

/* Release a hold, quietly (closing the connection would too, but only
 * eventually: the next command of a script must find it gone). */
static void
release (struct ctl *c, const char *name)
{
  bool quiet = c->quiet;

  if (name == NULL || c->fd == -1)
    return;
  c->quiet = true;
  call_name (c, "release", name);
  c->quiet = quiet;
}

/* The position of name in list's "snapshots" (oldest first), or -1. */
static int
snap_index (json_t *snaps, const char *name)
{
  size_t i;
  json_t *s;

  json_array_foreach (snaps, i, s) {
    const char *n = json_string_value (json_object_get (s, "name"));
    if (n && strcmp (n, name) == 0)
      return i;
  }
  return -1;
}

/* Connect to the NBD export uri; NULL after a message. */
static struct nbd_handle *
nbd_open (const char *cmd, const char *uri, bool meta, int *status)
{
  struct nbd_handle *nbd = nbd_create ();

  if (nbd == NULL) {
    ctl_msg ("%s: %s", cmd, nbd_get_error ());
    *status = NBDSNAPCTL_EXIT_ERROR;
    return NULL;
  }
  if ((meta && nbd_add_meta_context (nbd, LIBNBD_CONTEXT_BASE_ALLOCATION)
       == -1)
      || nbd_connect_uri (nbd, uri) == -1) {
    ctl_msg ("%s: NBD connection to %s: %s", cmd, uri, nbd_get_error ());
    nbd_close (nbd);
    *status = NBDSNAPCTL_EXIT_UNREACHABLE;
    return NULL;
  }
  return nbd;
}

/* ------------------------------------------------------------------ */
/* send */

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

static bool
all_zero (const char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
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
    if (wait_cookie (sd->nbd, s->cookie) == -1) {
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
  progress (&sd->prog, s->offset + s->length, sd->size);
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

  if ((status = parse_stream_args (argc, argv, true, &a)) != 0)
    return status;
  if (isatty (STDOUT_FILENO))
    return ctl_usage ("send: standard output is a terminal: redirect the "
                      "stream to a file or a pipe");
  /* A reader that goes away is an error to report, not a signal. */
  signal (SIGPIPE, SIG_IGN);

  /* Pin both snapshots for the duration of the stream. */
  if ((status = call_name (c, "hold", a.name)) != 0)
    goto out;
  held_to = a.name;
  if (a.from) {
    if ((status = call_name (c, "hold", a.from)) != 0)
      goto out;
    held_from = a.from;
    /* "changes A B" would refuse it too, but only once the header is
     * written: say it before anything goes out. */
    if ((status = ctl_call (c, "list", &resp)) != 0)
      goto out;
    snaps = json_object_get (resp, "snapshots");
    ia = snap_index (snaps, a.from);
    ib = snap_index (snaps, a.name);
    if (ia >= ib) {
      status = ctl_usage ("send: --from %s: not older than %s", a.from,
                          a.name);
      goto out;
    }
  }

  if ((uri = ctl_nbd_uri (c, &a.s, a.name, &status)) == NULL)
    goto out;
  if ((sd.nbd = nbd_open ("send", uri, a.from == NULL, &status)) == NULL)
    goto out;
  if ((size = nbd_get_size (sd.nbd)) == -1) {
    ctl_msg ("send: %s: %s", uri, nbd_get_error ());
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  sd.size = size;
  progress_init (&sd.prog, c, "send", a.name);

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
             human (sd.data_bytes, n1, sizeof n1),
             human (sd.zero_bytes, n2, sizeof n2),
             human (sd.out_bytes, n3, sizeof n3));

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
  release (c, held_from);
  release (c, held_to);
  return status;
}

/* ------------------------------------------------------------------ */
/* receive */

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
    progress (&rv->prog, off, rv->size);
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
  u.snap = nbd_open ("receive", uri, false, &status);
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
  if (snap_index (snaps, m->to) >= 0) {
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
    if ((status = call_name (c, "hold", m->from)) != 0)
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
  rv->nbd = nbd_open ("receive", uri, false, &status);
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

  if ((status = parse_stream_args (argc, argv, false, &a)) != 0)
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

  progress_init (&rv->prog, c, "receive", m.to);
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
            human (rv->written, n1, sizeof n1),
            human (rv->zeroed, n2, sizeof n2));
  json_decref (resp);

 out:
  close_origin (rv, true);
  for (i = 0; i < STREAM_INFLIGHT; ++i)
    free (rv->slot[i].buf);
  if (held)
    release (c, m.from);
  for (i = 0; i < 3; ++i)
    sigaction (sigs[i], &old[i], NULL);
  free (m.from);
  free (m.to);
  free (rv);
  return status;
}
