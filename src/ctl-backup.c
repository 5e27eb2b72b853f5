/* nbdsnapctl backup: a snapshot, or what changed since an older one, into
 * a file or block device, over libnbd.
 *
 * Notes on the design:
 *
 * - The admin connection takes "hold SNAP" (and "hold OLD") before
 *   anything else and keeps it open for the whole copy, so a rotation
 *   cannot delete them underneath it; the holds are released explicitly
 *   at the end (a script's next command finds them gone), and by the
 *   server if nbdsnapctl dies.
 *
 * - Everything that can be refused is checked before DEST is written:
 *   the snapshots (hold), OLD older than SNAP (a first pass over
 *   "changes OLD SNAP", which also gives the total for the progress
 *   line), the NBD connections, then DEST's type and size.  A full backup
 *   goes into a new file (created 0600, with the image's size), an empty
 *   one (extended), or a file or block device of the image's size; an
 *   incremental one only into a file or device of that size, which must
 *   hold the backup of OLD (that cannot be checked: --verify checks the
 *   result).
 *
 * - The work is a queue of items (struct item): for a full copy or a
 *   verify, segments of the image whose extents the worker asks the
 *   snapshot export for (NBD block status, base:allocation); for an
 *   incremental copy, the extents of "changes OLD SNAP" (ctl_changes_each,
 *   page by page: memory stays bounded), data to read or zeros to make.
 *   The main thread fills the queue (bounded: it waits when full) and
 *   draws the progress line; one worker thread per NBD connection takes
 *   items and keeps up to INFLIGHT reads of at most REQUEST bytes in
 *   flight on its own handle (libnbd aio and nbd_poll), the block status
 *   of its next segment fetched while reads of the current one go on.
 *
 * - Writing: a read's completion callback (in its worker) writes the
 *   buffer to DEST with pwrite, SPARSE-sized blocks that read as all
 *   zeros excepted: those, and the ranges the snapshot reports as zeros,
 *   are made to read as zeros (punched with PUNCH_HOLE|KEEP_SIZE, else
 *   FALLOC_FL_ZERO_RANGE, else written zeros) - unless DEST was new or
 *   empty, when they are sparse zeros already and nothing is done.  So a
 *   full copy leaves every byte of DEST as the snapshot's, and DEST
 *   sparse.  fdatasync at the end; its error fails the backup.
 *
 * - Interrupted and re-run with the same arguments, a backup finishes
 *   correctly: a full one rewrites every range (DEST has the image's size
 *   now, so it is not taken as new), an incremental one applies the same
 *   changes again (writing extents of SNAP in place is idempotent).
 *
 * - --verify reads the whole of DEST and of the snapshot again, after
 *   fdatasync, and compares the bytes directly (no checksum: comparing
 *   is as strong, and needs nothing more).  Ranges the snapshot reports
 *   as zeros are checked to read as zeros in DEST, skipping DEST's holes
 *   (SEEK_DATA).  The first differing offset is reported.
 *
 * - Threads: struct backup is shared; its queue and first error are
 *   protected by backup.lock (taken by the main thread and the workers,
 *   never while calling libnbd or doing I/O), its counters are atomics.
 *   Each worker owns its handle, its ranges and its buffers.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "nbdsnap/io.h"
#include "nbdsnapctl.h"

#define REQUEST (512u << 10)    /* bytes per NBD read */
#define INFLIGHT 16             /* reads in flight per connection (both
                                   measured: bench/README.md) */
#define SPARSE 4096             /* zero-detection block */
#define SEGMENT_MAX (64u << 20) /* bytes per item */
#define QUEUE_MAX 256           /* items waiting */
#define CONNECTIONS_MAX 16
#define TICK 0.25               /* seconds between progress lines */

enum item_kind {
  ITEM_STATUS,                  /* ask block status, then data or zeros */
  ITEM_DATA,                    /* read from the snapshot */
  ITEM_ZERO,                    /* reads as zeros in the snapshot */
};

struct item {
  uint64_t offset, length;
  enum item_kind kind;
};

enum mode { MODE_COPY, MODE_VERIFY };

struct run;
static void tick_run (struct run *r, bool force);

struct backup {
  const char *name, *since, *dest;
  enum mode mode;
  int fd;                       /* DEST */
  bool fresh;                   /* DEST is new or was empty: zeros
                                   already */
  bool regular;                 /* DEST is a regular file (SEEK_DATA) */
  uint64_t size;
  unsigned nconn;
  struct nbd_handle *h[CONNECTIONS_MAX];

  /* How DEST can be zeroed; cleared once the kernel said no. */
  atomic_bool can_punch, can_zero_range;

  pthread_mutex_t lock;         /* protects the fields up to the next
                                   comment; main thread and workers */
  pthread_cond_t cond;          /* queue changed */
  struct item queue[QUEUE_MAX];
  size_t qhead, qlen;
  bool producing;               /* more items may come */
  bool failed;
  int status;                   /* the first error's exit status */
  char *error;                  /* its message */
  uint64_t diff;                /* verify: lowest differing offset, or
                                   UINT64_MAX */
  unsigned running;             /* workers not finished */

  struct run *run;              /* the main thread's progress line */

  /* Counters, updated by the workers. */
  atomic_uint_fast64_t done;    /* bytes of the items finished */
  atomic_uint_fast64_t copied;  /* written with pwrite */
  atomic_uint_fast64_t zeroed;  /* made (or left) zeros */
  atomic_uint_fast64_t compared; /* verify: read from both */
  atomic_uint_fast64_t zero_checked; /* verify: read from DEST only */
  atomic_uint_fast64_t holes;   /* verify: zeros, a hole in DEST */
};

/* One read in flight. */
struct slot {
  struct worker *w;
  char *buf, *dbuf;             /* the snapshot's bytes; verify: DEST's */
  uint64_t offset;
  uint32_t length;
  bool busy;
};

/* A range of the current item, known to be data or zeros. */
struct range {
  uint64_t offset, length;
  bool zero;
};

struct worker {
  struct backup *b;
  struct nbd_handle *h;
  pthread_t thread;
  struct slot slot[INFLIGHT];
  unsigned inflight;
  char *zbuf;                   /* verify: DEST's bytes at zero ranges */
  struct range *ranges;         /* ranges[rhead..rlen) to do */
  size_t rhead, rlen, rcap;
  uint64_t rbytes;              /* their bytes */
  uint64_t bs_next, bs_end;     /* block status still to ask for */
  uint64_t bs_asked;            /* bs_next when the last one was sent */
  bool bs_busy;                 /* a block status is in flight */
  bool no_more;                 /* the queue is empty for good */
};

static void __attribute__ ((format (printf, 3, 4)))
fail (struct backup *b, int status, const char *fmt, ...)
{
  va_list args;
  char *msg = NULL;

  va_start (args, fmt);
  if (vasprintf (&msg, fmt, args) == -1)
    msg = NULL;
  va_end (args);
  pthread_mutex_lock (&b->lock);
  if (!b->failed) {
    b->failed = true;
    b->status = status;
    b->error = msg;
    msg = NULL;
  }
  pthread_cond_broadcast (&b->cond);
  pthread_mutex_unlock (&b->lock);
  free (msg);
}

/* Failed with a message printed already. */
static void
fail_reported (struct backup *b, int status)
{
  pthread_mutex_lock (&b->lock);
  if (!b->failed) {
    b->failed = true;
    b->status = status;
  }
  pthread_cond_broadcast (&b->cond);
  pthread_mutex_unlock (&b->lock);
}

static bool
failed (struct backup *b)
{
  bool r;

  pthread_mutex_lock (&b->lock);
  r = b->failed;
  pthread_mutex_unlock (&b->lock);
  return r;
}

static bool
is_zero (const char *p, size_t n)
{
  static const char z[16];

  if (n <= 16)
    return memcmp (p, z, n) == 0;
  return memcmp (p, z, 16) == 0 && memcmp (p, p + 16, n - 16) == 0;
}

/* ---- DEST ---- */

static int
write_all (struct backup *b, const char *buf, size_t n, uint64_t off)
{
  if (io_pwrite_full (b->fd, buf, n, off) == -1) {
    fail (b, NBDSNAPCTL_EXIT_ERROR, "writing %s at %" PRIu64 ": %m",
          b->dest, off);
    return -1;
  }
  return 0;
}

/* A short read (DEST shrank under us) fails with EIO: see io.h. */
static int
read_all (struct backup *b, char *buf, size_t n, uint64_t off)
{
  if (io_pread_full (b->fd, buf, n, off) == -1) {
    fail (b, NBDSNAPCTL_EXIT_ERROR, "reading %s at %" PRIu64 ": %m",
          b->dest, off);
    return -1;
  }
  return 0;
}

/* The fallocate modes that cannot work on this DEST. */
static bool
not_supported (int err)
{
  return err == EOPNOTSUPP || err == ENOSYS || err == EINVAL
    || err == ENODEV;
}

/* Make [off, off+n) of DEST read as zeros; nothing to do if it is new. */
static int
dest_zero (struct backup *b, uint64_t off, uint64_t n)
{
  static const char zeros[65536];

  atomic_fetch_add (&b->zeroed, n);
  if (b->fresh || n == 0)
    return 0;
  if (atomic_load (&b->can_punch)) {
    if (fallocate (b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   off, n) == 0)
      return 0;
    if (!not_supported (errno))
      goto err;
    atomic_store (&b->can_punch, false);
  }
  if (atomic_load (&b->can_zero_range)) {
    if (fallocate (b->fd, FALLOC_FL_ZERO_RANGE, off, n) == 0)
      return 0;
    if (!not_supported (errno))
      goto err;
    atomic_store (&b->can_zero_range, false);
  }
  while (n > 0) {
    size_t k = n < sizeof zeros ? n : sizeof zeros;

    if (write_all (b, zeros, k, off) == -1)
      return -1;
    off += k;
    n -= k;
  }
  return 0;

 err:
  fail (b, NBDSNAPCTL_EXIT_ERROR, "zeroing %s at %" PRIu64 ": %m", b->dest,
        off);
  return -1;
}

/* Write a buffer read from the snapshot: its all-zero SPARSE blocks
 * (counted from offset 0 of the image) as zeros, the rest as data. */
static int
dest_write (struct backup *b, const char *buf, uint64_t off, size_t n)
{
  size_t i = 0, j, k;

  while (i < n) {
    bool zero = false, first = true;

    /* A run of blocks of one kind. */
    for (j = i; j < n; j += k) {
      bool z;

      k = SPARSE - (off + j) % SPARSE;
      if (k > n - j)
        k = n - j;
      z = is_zero (buf + j, k);
      if (!first && z != zero)
        break;
      zero = z;
      first = false;
    }
    if (zero ? dest_zero (b, off + i, j - i) == -1
        : write_all (b, buf + i, j - i, off + i) == -1)
      return -1;
    if (!zero)
      atomic_fetch_add (&b->copied, j - i);
    i = j;
  }
  return 0;
}

/* Verify: [off, off+n) of DEST reads as zeros; its holes are skipped. */
static int
verify_zero (struct worker *w, uint64_t off, uint64_t n)
{
  struct backup *b = w->b;
  uint64_t end = off + n;

  while (off < end) {
    uint64_t data = off, k;

    if (b->regular) {
      off_t d = lseek (b->fd, off, SEEK_DATA);

      if (d == -1 && errno == ENXIO)
        d = end;                /* a hole to the end of the file */
      else if (d == -1) {
        d = off;                /* no SEEK_DATA: read it all */
      }
      data = (uint64_t) d < end ? (uint64_t) d : end;
      atomic_fetch_add (&b->holes, data - off);
      off = data;
      if (off == end)
        break;
    }
    k = end - off < REQUEST ? end - off : REQUEST;
    if (read_all (b, w->zbuf, k, off) == -1)
      return -1;
    atomic_fetch_add (&b->zero_checked, k);
    if (!is_zero (w->zbuf, k)) {
      uint64_t i = 0;

      while (w->zbuf[i] == 0)
        i++;
      pthread_mutex_lock (&b->lock);
      if (off + i < b->diff)
        b->diff = off + i;
      pthread_mutex_unlock (&b->lock);
    }
    off += k;
  }
  return 0;
}

/* ---- the work queue ---- */

/* Wait on b->cond (b->lock held) for at most TICK seconds. */
static void
wait_tick (struct backup *b)
{
  struct timespec ts;

  clock_gettime (CLOCK_REALTIME, &ts);
  ts.tv_nsec += (long) (TICK * 1e9);
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_cond_timedwait (&b->cond, &b->lock, &ts);
}

/* Called by the main thread; waits while the queue is full, drawing the
 * progress line.  -1 if the backup failed meanwhile. */
static int
queue_push (struct backup *b, const struct item *it)
{
  pthread_mutex_lock (&b->lock);
  while (b->qlen == QUEUE_MAX && !b->failed) {
    wait_tick (b);
    pthread_mutex_unlock (&b->lock);
    tick_run (b->run, false);
    pthread_mutex_lock (&b->lock);
  }
  if (b->failed) {
    pthread_mutex_unlock (&b->lock);
    return -1;
  }
  b->queue[(b->qhead + b->qlen) % QUEUE_MAX] = *it;
  b->qlen++;
  pthread_cond_broadcast (&b->cond);
  pthread_mutex_unlock (&b->lock);
  return 0;
}

enum take { TAKE_ITEM, TAKE_NONE, TAKE_END };

/* Called by a worker: the next item; if wait, wait for one while more
 * may come. */
static enum take
queue_take (struct backup *b, struct item *it, bool wait)
{
  enum take r;

  pthread_mutex_lock (&b->lock);
  while (wait && b->qlen == 0 && b->producing && !b->failed)
    pthread_cond_wait (&b->cond, &b->lock);
  if (b->failed)
    r = TAKE_END;
  else if (b->qlen > 0) {
    *it = b->queue[b->qhead];
    b->qhead = (b->qhead + 1) % QUEUE_MAX;
    b->qlen--;
    pthread_cond_broadcast (&b->cond);
    r = TAKE_ITEM;
  }
  else
    r = b->producing ? TAKE_NONE : TAKE_END;
  pthread_mutex_unlock (&b->lock);
  return r;
}

/* ---- a worker ---- */

static int
range_add (struct worker *w, uint64_t off, uint64_t n, bool zero)
{
  struct range *last = w->rlen > w->rhead ? &w->ranges[w->rlen - 1] : NULL;

  if (n == 0)
    return 0;
  w->rbytes += n;
  if (last && last->zero == zero && last->offset + last->length == off) {
    last->length += n;
    return 0;
  }
  if (w->rhead > 0 && w->rhead == w->rlen)
    w->rhead = w->rlen = 0;
  if (w->rlen == w->rcap) {
    size_t cap = w->rcap ? w->rcap * 2 : 64;
    struct range *p;

    if (w->rhead > 0) {         /* room at the front: move down */
      memmove (w->ranges, &w->ranges[w->rhead],
               (w->rlen - w->rhead) * sizeof *p);
      w->rlen -= w->rhead;
      w->rhead = 0;
    }
    else {
      p = realloc (w->ranges, cap * sizeof *p);
      if (p == NULL) {
        fail (w->b, NBDSNAPCTL_EXIT_ERROR, "out of memory");
        return -1;
      }
      w->ranges = p;
      w->rcap = cap;
    }
  }
  w->ranges[w->rlen++] = (struct range) { off, n, zero };
  return 0;
}

static int
extent_cb (void *opaque, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t n, int *error)
{
  struct worker *w = opaque;
  size_t i;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0
      || *error || offset != w->bs_next)
    return 0;
  for (i = 0; i + 1 < n && w->bs_next < w->bs_end; i += 2) {
    uint64_t len = entries[i];

    if (len > w->bs_end - w->bs_next)
      len = w->bs_end - w->bs_next;
    if (range_add (w, w->bs_next, len,
                   entries[i + 1] & LIBNBD_STATE_ZERO) == -1)
      return -1;
    w->bs_next += len;
  }
  return 0;
}

static int
status_done (void *opaque, int *error)
{
  struct worker *w = opaque;

  /* An error, or an answer that covers nothing: the rest of the item is
   * read as data. */
  if (*error || w->bs_next == w->bs_asked) {
    range_add (w, w->bs_next, w->bs_end - w->bs_next, false);
    w->bs_next = w->bs_end;
  }
  w->bs_busy = false;
  return 1;
}

static int
read_done (void *opaque, int *error)
{
  struct slot *s = opaque;
  struct worker *w = s->w;
  struct backup *b = w->b;

  s->busy = false;
  w->inflight--;
  if (*error) {
    fail (b, NBDSNAPCTL_EXIT_ERROR, "reading snapshot %s at %" PRIu64
          ": %s", b->name, s->offset, strerror (*error));
    return 1;
  }
  if (failed (b))
    return 1;
  if (b->mode == MODE_COPY) {
    if (dest_write (b, s->buf, s->offset, s->length) == -1)
      return 1;
  }
  else {
    if (read_all (b, s->dbuf, s->length, s->offset) == -1)
      return 1;
    atomic_fetch_add (&b->compared, s->length);
    if (memcmp (s->buf, s->dbuf, s->length) != 0) {
      uint32_t i = 0;

      while (s->buf[i] == s->dbuf[i])
        i++;
      pthread_mutex_lock (&b->lock);
      if (s->offset + i < b->diff)
        b->diff = s->offset + i;
      pthread_mutex_unlock (&b->lock);
    }
  }
  atomic_fetch_add (&b->done, s->length);
  return 1;
}

/* Start reads (and do zero ranges) while there is room. */
static int
issue (struct worker *w)
{
  struct backup *b = w->b;

  while (w->rhead < w->rlen && !failed (b)) {
    struct range *r = &w->ranges[w->rhead];
    struct slot *s = NULL;
    uint64_t n;
    unsigned i;

    if (r->zero) {
      if (b->mode == MODE_COPY ? dest_zero (b, r->offset, r->length) == -1
          : verify_zero (w, r->offset, r->length) == -1)
        return -1;
      atomic_fetch_add (&b->done, r->length);
      w->rbytes -= r->length;
      w->rhead++;
      continue;
    }
    for (i = 0; i < INFLIGHT; ++i)
      if (!w->slot[i].busy) {
        s = &w->slot[i];
        break;
      }
    if (s == NULL)
      return 0;
    /* Reads end at multiples of REQUEST: aligned writes. */
    n = REQUEST - r->offset % REQUEST;
    if (n > r->length)
      n = r->length;
    s->offset = r->offset;
    s->length = n;
    s->busy = true;
    w->inflight++;
    if (nbd_aio_pread (w->h, s->buf, n, s->offset,
                       (nbd_completion_callback) { .callback = read_done,
                                                   .user_data = s }, 0)
        == -1) {
      s->busy = false;
      w->inflight--;
      fail (b, NBDSNAPCTL_EXIT_ERROR, "reading snapshot %s at %" PRIu64
            ": %s", b->name, r->offset, nbd_get_error ());
      return -1;
    }
    r->offset += n;
    r->length -= n;
    w->rbytes -= n;
    if (r->length == 0)
      w->rhead++;
  }
  return 0;
}

/* Keep ranges ahead of the reads: the next item, its block status. */
static int
refill (struct worker *w)
{
  struct backup *b = w->b;
  struct item it;

  while (!w->bs_busy && w->rbytes < (uint64_t) INFLIGHT * REQUEST
         && !failed (b)) {
    if (w->bs_next == w->bs_end) {
      bool idle = w->inflight == 0 && w->rhead == w->rlen;

      if (w->no_more)
        return 0;
      switch (queue_take (b, &it, idle)) {
      case TAKE_END: w->no_more = true; return 0;
      case TAKE_NONE: return 0;
      case TAKE_ITEM: break;
      }
      if (it.kind != ITEM_STATUS) {
        if (range_add (w, it.offset, it.length, it.kind == ITEM_ZERO) == -1)
          return -1;
        continue;
      }
      if (!nbd_can_meta_context (w->h, LIBNBD_CONTEXT_BASE_ALLOCATION)) {
        if (range_add (w, it.offset, it.length, false) == -1)
          return -1;
        continue;
      }
      w->bs_next = it.offset;
      w->bs_end = it.offset + it.length;
    }
    w->bs_busy = true;
    w->bs_asked = w->bs_next;
    if (nbd_aio_block_status (w->h, w->bs_end - w->bs_next, w->bs_next,
                              (nbd_extent_callback) { .callback = extent_cb,
                                                      .user_data = w },
                              (nbd_completion_callback) {
                                .callback = status_done, .user_data = w },
                              0) == -1) {
      w->bs_busy = false;
      fail (b, NBDSNAPCTL_EXIT_ERROR, "block status of snapshot %s: %s",
            b->name, nbd_get_error ());
      return -1;
    }
  }
  return 0;
}

static void *
worker_run (void *opaque)
{
  struct worker *w = opaque;
  struct backup *b = w->b;

  while (!failed (b)) {
    if (refill (w) == -1 || issue (w) == -1)
      break;
    if (w->inflight == 0 && !w->bs_busy) {
      if (w->rhead < w->rlen)
        continue;
      if (w->no_more && w->bs_next == w->bs_end)
        break;
      continue;                 /* refill waits for an item */
    }
    if (nbd_poll (w->h, -1) == -1) {
      fail (b, NBDSNAPCTL_EXIT_ERROR, "NBD connection to snapshot %s: %s",
            b->name, nbd_get_error ());
      break;
    }
  }
  /* Let reads in flight end before their buffers go. */
  while (nbd_aio_in_flight (w->h) > 0)
    if (nbd_poll (w->h, -1) == -1)
      break;
  pthread_mutex_lock (&b->lock);
  b->running--;
  pthread_cond_broadcast (&b->cond);
  pthread_mutex_unlock (&b->lock);
  return NULL;
}

/* ---- the main thread ---- */

struct run {
  struct backup *b;
  struct ctl line;              /* only its progress line (bar): the
                                   admin connection's ctl_call resets
                                   its own at every page of changes */
  bool json, draw;
  uint64_t total;
  uint64_t last_done;
  double last_tick, start;
  const char *what;             /* "backup", "verify" */
};

static void
tick_run (struct run *r, bool force)
{
  uint64_t done = atomic_load (&r->b->done);
  double now = ctl_now ();
  json_t *p;

  if (!r->json && !r->draw)
    return;
  if (!force && now - r->last_tick < TICK)
    return;
  if (r->json && done == r->last_done && !force)
    return;
  r->last_tick = now;
  r->last_done = done;
  p = json_pack ("{s:s,s:s,s:I,s:I}", "progress", r->what, "name",
                 r->b->name, "done", (json_int_t) done,
                 "total", (json_int_t) r->total);
  if (p == NULL)
    return;
  if (r->json) {
    char *s = json_dumps (p, JSON_COMPACT);
    if (s)
      printf ("%s\n", s);
    fflush (stdout);
    free (s);
  }
  else
    ctl_progress_draw (&r->line, p);
  json_decref (p);
}

static int
push_change (void *opaque, uint64_t off, uint64_t len, bool zero)
{
  struct backup *b = opaque;

  while (len > 0) {
    uint64_t n = len < SEGMENT_MAX ? len : SEGMENT_MAX;
    struct item it = { off, n, zero ? ITEM_ZERO : ITEM_DATA };

    if (queue_push (b, &it) == -1)
      return NBDSNAPCTL_EXIT_ERROR;
    off += n;
    len -= n;
  }
  return 0;
}

/* Run the workers over the items (a ctl_changes_each pass if since,
 * else the whole image); 0 or an exit status, the message printed. */
static int
run_pass (struct ctl *c, struct backup *b, struct run *r, const char *since)
{
  struct worker w[CONNECTIONS_MAX];
  unsigned i, started = 0;
  uint64_t seg;
  int status = 0;

  memset (w, 0, sizeof w);
  b->producing = true;
  b->qhead = b->qlen = 0;
  atomic_store (&b->done, 0);
  for (i = 0; i < b->nconn; ++i) {
    unsigned k;

    w[i].b = b;
    w[i].h = b->h[i];
    w[i].zbuf = malloc (REQUEST);
    if (w[i].zbuf == NULL)
      goto nomem;
    for (k = 0; k < INFLIGHT; ++k) {
      w[i].slot[k].w = &w[i];
      w[i].slot[k].buf = malloc (REQUEST);
      w[i].slot[k].dbuf = b->mode == MODE_VERIFY ? malloc (REQUEST) : NULL;
      if (w[i].slot[k].buf == NULL
          || (b->mode == MODE_VERIFY && w[i].slot[k].dbuf == NULL))
        goto nomem;
    }
  }
  for (i = 0; i < b->nconn; ++i) {
    int err;

    pthread_mutex_lock (&b->lock);
    b->running++;
    pthread_mutex_unlock (&b->lock);
    err = pthread_create (&w[i].thread, NULL, worker_run, &w[i]);
    if (err) {
      pthread_mutex_lock (&b->lock);
      b->running--;
      pthread_mutex_unlock (&b->lock);
      errno = err;
      fail (b, NBDSNAPCTL_EXIT_ERROR, "pthread_create: %m");
      break;
    }
    started++;
  }

  r->start = r->last_tick = ctl_now ();
  r->last_done = UINT64_MAX;
  r->line.bar.start = r->start;
  b->run = r;
  tick_run (r, true);

  if (since != NULL) {
    status = ctl_changes_each (c, since, b->name, push_change, b, NULL);
    if (status != 0 && !failed (b))
      fail_reported (b, status);
  }
  else {
    /* Segments: a few per worker at least, at most SEGMENT_MAX. */
    seg = b->size / (b->nconn * 8);
    seg = (seg + (1 << 20) - 1) / (1 << 20) * (1 << 20);
    if (seg < (1 << 20))
      seg = 1 << 20;
    if (seg > SEGMENT_MAX)
      seg = SEGMENT_MAX;
    for (uint64_t off = 0; off < b->size; off += seg) {
      struct item it = { off, b->size - off < seg ? b->size - off : seg,
                         ITEM_STATUS };
      if (queue_push (b, &it) == -1)
        break;
    }
  }

  pthread_mutex_lock (&b->lock);
  b->producing = false;
  pthread_cond_broadcast (&b->cond);
  pthread_mutex_unlock (&b->lock);

  /* Wait for the workers, drawing progress. */
  pthread_mutex_lock (&b->lock);
  while (b->running > 0) {
    wait_tick (b);
    pthread_mutex_unlock (&b->lock);
    tick_run (r, false);
    pthread_mutex_lock (&b->lock);
  }
  pthread_mutex_unlock (&b->lock);
  for (i = 0; i < started; ++i)
    pthread_join (w[i].thread, NULL);
  if (!failed (b))
    tick_run (r, true);
  if (r->draw)
    ctl_progress_clear (&r->line);
  goto out;

 nomem:
  fail (b, NBDSNAPCTL_EXIT_ERROR, "out of memory");
 out:
  for (i = 0; i < b->nconn; ++i) {
    unsigned k;

    for (k = 0; k < INFLIGHT; ++k) {
      free (w[i].slot[k].buf);
      free (w[i].slot[k].dbuf);
    }
    free (w[i].zbuf);
    free (w[i].ranges);
  }
  pthread_mutex_lock (&b->lock);
  status = b->failed ? b->status : 0;
  pthread_mutex_unlock (&b->lock);
  return status;
}

/* ---- set-up ---- */

static int
count_change (void *opaque, uint64_t off, uint64_t len, bool zero)
{
  return 0;
}

/* Open DEST and check it fits; nothing is written.  For a full backup a
 * missing DEST is created only later (create_dest): *missing. */
static int
open_dest (struct backup *b, bool verify, bool *missing)
{
  struct stat st;
  uint64_t dsize;

  *missing = false;
  b->fd = open (b->dest, (verify ? O_RDWR : O_WRONLY) | O_CLOEXEC);
  if (b->fd == -1 && errno == ENOENT && b->since == NULL) {
    *missing = true;
    return 0;
  }
  if (b->fd == -1) {
    ctl_msg ("backup: %s: %m%s", b->dest,
             errno == ENOENT ? " (--since needs the backup of the older "
             "snapshot there)" : "");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if (fstat (b->fd, &st) == -1) {
    ctl_msg ("backup: %s: fstat: %m", b->dest);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if (S_ISREG (st.st_mode)) {
    b->regular = true;
    dsize = st.st_size;
  }
  else if (S_ISBLK (st.st_mode)) {
    if (ioctl (b->fd, BLKGETSIZE64, &dsize) == -1) {
      ctl_msg ("backup: %s: BLKGETSIZE64: %m", b->dest);
      return NBDSNAPCTL_EXIT_ERROR;
    }
  }
  else {
    ctl_msg ("backup: %s: not a regular file or a block device", b->dest);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if (dsize == 0 && b->regular && b->since == NULL && b->size > 0) {
    b->fresh = true;            /* extended in create_dest */
    return 0;
  }
  if (dsize != b->size) {
    ctl_msg ("backup: %s is %" PRIu64 " bytes, snapshot %s is %" PRIu64
             " bytes: refusing to write (%s)", b->dest, dsize, b->name,
             b->size, b->since ? "--since needs the backup of the older "
             "snapshot" : "a full backup goes into a new or empty file or "
             "one of the snapshot's size");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  return 0;
}

static int
create_dest (struct backup *b, bool verify, bool missing)
{
  if (missing) {
    b->fd = open (b->dest, (verify ? O_RDWR : O_WRONLY) | O_CREAT | O_EXCL
                  | O_CLOEXEC, 0600);
    if (b->fd == -1) {
      ctl_msg ("backup: %s: %m", b->dest);
      return NBDSNAPCTL_EXIT_ERROR;
    }
    b->fresh = true;
    b->regular = true;
  }
  if (b->fresh && ftruncate (b->fd, b->size) == -1) {
    ctl_msg ("backup: %s: ftruncate to %" PRIu64 " bytes: %m", b->dest,
             b->size);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  return 0;
}

static int
connect_nbd (struct backup *b, const char *uri)
{
  unsigned i;

  for (i = 0; i < b->nconn; ++i) {
    struct nbd_handle *h = nbd_create ();

    if (h == NULL) {
      ctl_msg ("backup: nbd_create: %s", nbd_get_error ());
      return NBDSNAPCTL_EXIT_ERROR;
    }
    b->h[i] = h;
    if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1
        || nbd_connect_uri (h, uri) == -1) {
      ctl_msg ("backup: cannot connect to the NBD server at %s: %s", uri,
               nbd_get_error ());
      return NBDSNAPCTL_EXIT_UNREACHABLE;
    }
  }
  {
    int64_t size = nbd_get_size (b->h[0]);
    if (size < 0) {
      ctl_msg ("backup: %s: %s", uri, nbd_get_error ());
      return NBDSNAPCTL_EXIT_ERROR;
    }
    b->size = size;
  }
  return 0;
}

/* "512.0 MiB" */
static const char *
human (char *buf, size_t len, double v)
{
  static const char units[] = "KMGTPE";
  int u = -1;

  if (v < 1024) {
    snprintf (buf, len, "%.0f B", v);
    return buf;
  }
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  snprintf (buf, len, "%.1f %ciB", v, units[u]);
  return buf;
}


/* With --json: the failure as a final object. */
static void
json_failure (struct ctl *c, struct backup *b, const char *kind)
{
  json_t *o;
  char *s;

  if (!c->json)
    return;
  o = json_pack ("{s:b,s:s,s:s,s:s?,s:s,s:s?}", "ok", 0, "error", kind,
                 "name", b->name, "since", b->since, "dest", b->dest,
                 "message", b->error);
  if (o && b->diff != UINT64_MAX)
    json_object_set_new (o, "offset", json_integer (b->diff));
  s = o ? json_dumps (o, JSON_COMPACT) : NULL;
  if (s)
    printf ("%s\n", s);
  free (s);
  json_decref (o);
}

int
ctl_backup (struct ctl *c, int argc, char **argv)
{
  static const struct option longopts[] = {
    { "since", required_argument, NULL, 'S' },
    { "connections", required_argument, NULL, 'C' },
    { "verify", no_argument, NULL, 'V' },
    { "nbd-socket", required_argument, NULL, 'N' },
    { "uri-base", required_argument, NULL, 'U' },
    { NULL },
  };
  struct ctl_session s = { .name = NULL }; /* ctl_nbd_uri reads
                                              $NBDSNAP_NBD_SOCKET */
  struct backup b = {
    .fd = -1, .nconn = 4, .diff = UINT64_MAX,
    .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
  };
  struct run r = { .b = &b, .what = "backup" };
  struct ctl_changes_info info = { 0 };
  char req[NBDSNAP_ADMIN_LINE_MAX];
  bool verify = false, missing = false, held_snap = false, held_old = false;
  char *uri = NULL, *end;
  json_t *resp;
  double secs = 0, vsecs = 0;
  int opt, status;
  unsigned i;
  long n;

  optind = 0;
  opterr = 0;
  while ((opt = getopt_long (argc, argv, ":", longopts, NULL)) != -1) {
    switch (opt) {
    case 'S': b.since = optarg; break;
    case 'V': verify = true; break;
    case 'N': s.nbd_socket = optarg; break;
    case 'U': s.uri_base = optarg; break;
    case 'C':
      errno = 0;
      n = strtol (optarg, &end, 10);
      if (errno || *end || end == optarg || n < 1 || n > CONNECTIONS_MAX)
        return ctl_usage ("backup: --connections: a number from 1 to %d, "
                          "not '%.40s'", CONNECTIONS_MAX, optarg);
      b.nconn = n;
      break;
    case ':':
      return ctl_usage ("backup: option %s needs an argument",
                        argv[optind - 1]);
    default:
      return ctl_usage ("backup: unknown option %s", ctl_bad_option (argv));
    }
  }
  if (argc - optind < 2)
    return ctl_usage ("backup: needs SNAP and DEST");
  if (argc - optind > 2)
    return ctl_usage ("backup: unexpected argument '%s'", argv[optind + 2]);
  b.name = argv[optind];
  b.dest = argv[optind + 1];
  if ((status = ctl_check_name (b.name)) != 0
      || (b.since && (status = ctl_check_name (b.since)) != 0))
    return status;
  if (*b.dest == '\0')
    return ctl_usage ("backup: DEST is empty");
  atomic_store (&b.can_punch, true);
  atomic_store (&b.can_zero_range, true);

  /* Pin the snapshots for the whole copy. */
  snprintf (req, sizeof req, "hold %s", b.name);
  if ((status = ctl_call (c, req, &resp)) != 0)
    goto out;
  json_decref (resp);
  held_snap = true;
  if (b.since) {
    snprintf (req, sizeof req, "hold %s", b.since);
    if ((status = ctl_call (c, req, &resp)) != 0)
      goto out;
    json_decref (resp);
    held_old = true;
    /* OLD older than SNAP, and the total for the progress line. */
    if ((status = ctl_changes_each (c, b.since, b.name, count_change, NULL,
                                    &info)) != 0)
      goto out;
  }

  s.name = b.name;
  uri = ctl_nbd_uri (c, &s, b.name, &status);
  if (uri == NULL)
    goto out;
  if ((status = connect_nbd (&b, uri)) != 0)
    goto out;
  if (b.since && info.size != 0 && info.size != b.size) {
    ctl_msg ("backup: snapshot %s is %" PRIu64 " bytes over NBD but %"
             PRIu64 " in changes", b.name, b.size, info.size);
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  if ((status = open_dest (&b, verify, &missing)) != 0
      || (status = create_dest (&b, verify, missing)) != 0)
    goto out;

  /* Copy. */
  r.json = c->json;
  r.draw = !c->json && isatty (STDERR_FILENO);
  r.total = b.since ? info.changed_bytes : b.size;
  b.mode = MODE_COPY;
  status = run_pass (c, &b, &r, b.since);
  if (status == 0 && fdatasync (b.fd) == -1) {
    fail (&b, NBDSNAPCTL_EXIT_ERROR, "fdatasync %s: %m", b.dest);
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  secs = ctl_now () - r.start;
  if (status != 0) {
    if (b.error)
      ctl_msg ("backup: %s", b.error);
    json_failure (c, &b, "io");
    goto out;
  }

  if (verify) {
    struct run v = { .b = &b, .json = r.json, .draw = r.draw,
                     .total = b.size, .what = "verify" };

    b.mode = MODE_VERIFY;
    status = run_pass (c, &b, &v, NULL);
    vsecs = ctl_now () - v.start;
    if (status == 0 && b.diff != UINT64_MAX) {
      fail (&b, NBDSNAPCTL_EXIT_ERROR, "%s differs from snapshot %s at "
            "offset %" PRIu64, b.dest, b.name, b.diff);
      status = NBDSNAPCTL_EXIT_ERROR;
    }
    if (status != 0) {
      if (b.error)
        ctl_msg ("backup: verify: %s", b.error);
      json_failure (c, &b, "verify");
      goto out;
    }
  }

  if (c->json) {
    json_t *o = json_pack ("{s:b,s:s,s:s?,s:s,s:I,s:I,s:I,s:f,s:i,s:b}",
                           "ok", 1, "name", b.name, "since", b.since,
                           "dest", b.dest, "size", (json_int_t) b.size,
                           "bytes_copied", (json_int_t) b.copied,
                           "bytes_zeroed", (json_int_t) b.zeroed,
                           "seconds", secs, "connections", (int) b.nconn,
                           "verified", verify);
    char *js;

    if (o && verify)
      json_object_set_new (o, "verify", json_pack (
        "{s:I,s:I,s:I,s:f}",
        "compared_bytes", (json_int_t) b.compared,
        "zero_checked_bytes", (json_int_t) b.zero_checked,
        "hole_bytes", (json_int_t) b.holes, "seconds", vsecs));
    js = o ? json_dumps (o, JSON_COMPACT) : NULL;
    if (js)
      printf ("%s\n", js);
    free (js);
    json_decref (o);
  }
  else {
    char t[32], cp[32], z[32], rate[32];

    printf ("backup %s%s%s -> %s: %s (%s copied, %s zeroed) in %.1f s, "
            "%s/s\n", b.name, b.since ? " since " : "",
            b.since ? b.since : "", b.dest,
            human (t, sizeof t, b.since ? info.changed_bytes : b.size),
            human (cp, sizeof cp, b.copied), human (z, sizeof z, b.zeroed),
            secs, human (rate, sizeof rate,
                         secs > 0 ? r.total / secs : 0));
    if (verify)
      printf ("verify: %s equals snapshot %s (%s compared, %s checked to "
              "be zeros, %s holes in both) in %.1f s\n", b.dest, b.name,
              human (t, sizeof t, b.compared),
              human (cp, sizeof cp, b.zero_checked),
              human (z, sizeof z, b.holes), vsecs);
  }

 out:
  for (i = 0; i < b.nconn; ++i)
    if (b.h[i]) {
      nbd_shutdown (b.h[i], 0);
      nbd_close (b.h[i]);
    }
  if (b.fd >= 0 && close (b.fd) == -1 && status == 0) {
    ctl_msg ("backup: close %s: %m", b.dest);
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  /* Release explicitly: the next command of a script finds them gone. */
  if (c->fd >= 0 && (held_snap || held_old)) {
    c->quiet = true;
    if (held_old) {
      snprintf (req, sizeof req, "release %s", b.since);
      if (ctl_call (c, req, &resp) == 0)
        json_decref (resp);
    }
    if (held_snap) {
      snprintf (req, sizeof req, "release %s", b.name);
      if (ctl_call (c, req, &resp) == 0)
        json_decref (resp);
    }
    c->quiet = false;
  }
  free (uri);
  free (b.error);
  return status;
}
