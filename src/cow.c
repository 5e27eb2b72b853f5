/* nbdsnap: the data path — copy-on-write of origin writes, snapshot reads,
 * extents, changes, flush and the chunk moves of delete.
 *
 * Notes on the design
 *
 * The chain runs oldest to newest.  For every snapshot S and chunk c:
 *
 *   candidate(S, c)  c held data when S was taken;
 *   copied(S, c)     S's store holds c as it was when S was taken (for a
 *                    non-candidate chunk that is zeros: the store is a hole
 *                    there and nothing was written).
 *
 * Write rule (origin write, zero or trim of chunk c), before the origin is
 * touched: walk from the newest snapshot X towards older ones:
 *   copied(X, c)      stop: the content is preserved for X and for every
 *                     older snapshot that needs it;
 *   X invalid         it takes no more copies: go on to the next older;
 *   X deleting        the same (its chunks are moving into the next older
 *                     one; one it holds already stopped the walk above);
 *   !candidate(X, c)  mark copied(X, c) (nothing to copy: it read as zeros
 *                     and so it still does) and stop;
 *   else              copy c into X's store, then set copied(X, c); stop,
 *                     or, if the copy fails, mark X invalid and go on.
 * While the newest snapshot is valid this touches one snapshot only, so a
 * write costs the same with 1 or 64 snapshots, and a chunk is copied at
 * most once.  The first test (copied(newest, c)) is a lock-free atomic load:
 * the steady-state write takes no lock but the shared chain lock.  (In
 * power mode a bit seen set while some copy-on-write is in progress may
 * not be durable yet: such a writer waits for the chunk's stripe, which
 * the writer that set the bit holds until it is; see cow_inflight.)
 *
 * Why the older snapshots are right: if candidate(S, c) and the origin's c
 * changed after S was taken, the first such change happened while some
 * snapshot X >= S was the newest valid one and copied c into X.  So a read
 * of S takes c from the first snapshot in S, S+1, ..., newest that copied
 * it, else from the origin; a non-candidate chunk reads as zeros.
 *
 * Durability (power mode): the store data is synced, then the copied bit
 * is written (pwrite of its word, bitmap.h) and the bitmap synced, and
 * only then is the origin written; each sync is a group commit
 * (gcommit.h) shared by concurrent writers.  In process mode nothing is
 * synced on this path (a FUA write still syncs what it copied).  Ordering
 * in the page cache is what kill -9 needs: the bit's word is written after
 * the store pwrite returned, the origin after the bit.
 *
 * Invalid means durably invalid.  A snapshot that cannot take a copy
 * (max-store, ENOSPC, EIO) is marked invalid in its bitmap header, in
 * place and synced, before the origin write goes on; if even that fails,
 * the origin write fails with EIO (the chunk keeps its old bytes, so the
 * snapshot stays right whatever happens next), and so does every later
 * write that would change a chunk the snapshot needs, until the mark is
 * on disk.  Otherwise a restart would find it live and serve new bytes.
 *
 * Reads against invalidation.  A read of chunk c from the origin holds c's
 * stripe shared and checks the snapshot's state under it: the writer that
 * could not copy c marked the snapshot invalid while holding the stripe
 * exclusive, and overwrites the origin only after releasing it.
 *
 * A failed sync (flush, FUA) of a snapshot's store or bitmap leaves its
 * recent copies unsure: it turns invalid, and so does every older
 * snapshot that reads some chunk through it (cow_depends); the flush then
 * goes on, and fails only if those marks cannot be written.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdsnap/err.h"
#include "nbdsnap/io.h"
#include "engine-internal.h"

static pthread_rwlock_t *
stripe (struct nbdsnap_engine *e, uint64_t c)
{
  return &e->stripes[c % CHUNK_STRIPES];
}

static uint32_t
chunk_len (struct nbdsnap_engine *e, uint64_t c)
{
  uint64_t start = c << e->chunk_shift;
  uint64_t left = e->size - start;

  return left < e->chunk_size ? (uint32_t) left : e->chunk_size;
}

static bool
all_zero (const char *buf, size_t len)
{
  return len == 0 || (buf[0] == 0 && memcmp (buf, buf + 1, len - 1) == 0);
}

static int
sync_store (void *opaque)
{
  struct nbdsnap_snap *s = opaque;
  return fdatasync (s->store_fd);
}

static int
sync_bitmap (void *opaque)
{
  struct nbdsnap_snap *s = opaque;
  return bitmap_sync (&s->bm);
}

/* Mark a snapshot invalid after a failed copy, durably (in place in its
 * bitmap header, whatever the durability mode: invalidation is rare; if
 * the bitmap file fails, in its meta file instead, which open reads too).
 * Caller holds the chunk's stripe exclusive.  0: the caller goes on; -1
 * (errno EIO): the mark is in no durable place, and the origin write that
 * made it necessary must fail, or the snapshot would be live again after
 * a restart and read the new bytes. */
static int
invalidate (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
            const char *why, int err)
{
  if (snap_state (s) == NBDSNAP_STATE_INVALID)
    return snap_state_durable (s) ? 0 : (errno = EIO, -1);
  __atomic_fetch_add (&e->counters.invalidations, 1, __ATOMIC_RELAXED);
  errno = err;
  nbdsnap_error ("snapshot %s is now invalid: %s: %m", s->name, why);
  if (snap_set_state (s, NBDSNAP_STATE_INVALID) == -1
      && snap_record_invalid_in_meta (&e->sd, s) == -1) {
    errno = EIO;
    return -1;
  }
  return 0;
}

/* Set copied(X, c), durably in power mode. */
static int
mark_copied (struct nbdsnap_engine *e, struct nbdsnap_snap *x, uint64_t c)
{
  if (bitmap_set (&x->bm, &x->bm.copied, c) == -1)
    return -1;
  __atomic_add_fetch (&x->dirty, 1, __ATOMIC_RELEASE);
  if (e->durability == NBDSNAP_DURABILITY_POWER
      && gcommit_sync (&x->bitmap_gc, sync_bitmap, x) == -1)
    return -1;
  return 0;
}

/* Copy [off, off+len) from the origin into x's store inside the kernel:
 * copy_file_range, which reflinks where the file system can share blocks
 * (XFS with reflink=1, btrfs: a metadata operation; the file system then
 * copies just the blocks the origin write touches) and elsewhere copies
 * page to page without a trip through user space.  0; 1 if it cannot be
 * used here (different file systems, a block device origin, an old
 * kernel: the caller copies by hand, as it does for every later chunk);
 * -1 with errno if it failed.  A partial copy is harmless: the chunk is
 * copied again in full, and its bit is set only after a full copy. */
static int
copy_kernel (struct nbdsnap_engine *e, struct nbdsnap_snap *x, uint64_t off,
             uint32_t len)
{
  loff_t in = off, out = off;

  while (len > 0) {
    ssize_t n = copy_file_range (e->origin->fd, &in, x->store_fd, &out,
                                 len, 0);
    if (n > 0) {
      len -= n;
      continue;
    }
    if (n == 0) {               /* the origin ends early: by hand, which
                                   says so */
      return 1;
    }
    if (errno == EINTR)
      continue;
    if (errno == EXDEV || errno == EINVAL || errno == ENOSYS
        || errno == EOPNOTSUPP || errno == EBADF || errno == ETXTBSY
        || errno == EPERM)
      return 1;
    return -1;
  }
  return 0;
}

/* Copy chunk c from the origin into X's store.  Returns 0, -1 if the copy
 * into X failed (X is now invalid, durably), -2 if the write must fail
 * (errno EIO): the origin could not be read, or X's invalid mark could
 * not be made durable.
 *
 * In the kernel first (copy_kernel); by hand (read, then write unless the
 * chunk is all zeros, which leaves the store a hole) where that is not
 * possible, and to tell the origin's read errors from the store's write
 * errors when the kernel copy fails with anything but a full store: only
 * the store's make X invalid. */
static int
copy_chunk (struct nbdsnap_engine *e, struct nbdsnap_snap *x, uint64_t c,
            char **buf)
{
  uint32_t len = chunk_len (e, c);
  uint64_t off = c << e->chunk_shift;
  int err, r = 1;

  if (x->max_store != 0
      && (__atomic_load_n (&x->chunks_copied, __ATOMIC_RELAXED) + 1)
         * (uint64_t) e->chunk_size > x->max_store) {
    return invalidate (e, x, "max-store reached", ENOSPC) == 0 ? -1 : -2;
  }
  err = __atomic_load_n (&e->inject_errno, __ATOMIC_RELAXED);
  if (err != 0)
    return invalidate (e, x, "store write (injected)", err) == 0 ? -1 : -2;
  if (!__atomic_load_n (&e->copy_by_hand, __ATOMIC_RELAXED)) {
    r = copy_kernel (e, x, off, len);
    if (r == -1 && (errno == ENOSPC || errno == EDQUOT || errno == EFBIG))
      return invalidate (e, x, "store write", errno) == 0 ? -1 : -2;
    if (r == 1 && !__atomic_exchange_n (&e->copy_by_hand, true,
                                        __ATOMIC_RELAXED))
      nbdsnap_debug ("copy-on-write: copy_file_range from %s to the "
                     "stores is not possible here (%m): copying by hand",
                     e->origin->path);
  }
  if (r != 0) {
    if (*buf == NULL && (*buf = malloc (e->chunk_size)) == NULL) {
      nbdsnap_error ("malloc: %m");
      errno = EIO;
      return -2;
    }
    if (io_pread_full (e->origin->fd, *buf, len, off) == -1) {
      nbdsnap_error ("copy-on-write: read %s at %" PRIu64 ": %m",
                     e->origin->path, off);
      errno = EIO;
      return -2;
    }
    /* An all-zero chunk needs no data: the store is a hole there. */
    if (all_zero (*buf, len))
      goto mark;
    if (io_pwrite_full (x->store_fd, *buf, len, off) == -1)
      return invalidate (e, x, "store write", errno) == 0 ? -1 : -2;
  }
  __atomic_add_fetch (&x->dirty, 1, __ATOMIC_RELEASE);
  if (e->durability == NBDSNAP_DURABILITY_POWER
      && gcommit_sync (&x->store_gc, sync_store, x) == -1) {
    return invalidate (e, x, "store fdatasync", errno) == 0 ? -1 : -2;
  }
 mark:
  if (mark_copied (e, x, c) == -1)
    return invalidate (e, x, "bitmap write", errno) == 0 ? -1 : -2;
  __atomic_fetch_add (&x->chunks_copied, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add (&x->cow_count, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add (&e->counters.cow_chunks, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add (&e->counters.cow_bytes, len, __ATOMIC_RELAXED);
  return 0;
}

/* Preserve chunk c for every snapshot before it is overwritten.
 * Caller holds chain_lock shared.  *copied is set if a copy was made. */
static int
cow_chunk (struct nbdsnap_engine *e, uint64_t c, char **buf, bool *copied)
{
  struct nbdsnap_snap *x = e->newest;
  bool power = e->durability == NBDSNAP_DURABILITY_POWER;
  int r = 0;

  if (x == NULL)
    return 0;
  if (bitmap_test (&x->bm.copied, c)) {
    /* The fast path, lock-free.  In power mode the bit may have been set
     * by a writer that is still syncing it (or, if that fails, copying
     * into an older snapshot): it holds the stripe until it is done. */
    if (power && __atomic_load_n (&e->cow_inflight, __ATOMIC_SEQ_CST) != 0) {
      pthread_rwlock_rdlock (stripe (e, c));
      pthread_rwlock_unlock (stripe (e, c));
    }
    return 0;
  }

  pthread_rwlock_wrlock (stripe (e, c));
  if (power)
    __atomic_add_fetch (&e->cow_inflight, 1, __ATOMIC_SEQ_CST);
  for (; x != NULL; x = x->older) {
    if (bitmap_test (&x->bm.copied, c))
      break;
    if (snap_state (x) == NBDSNAP_STATE_DELETING)
      continue;                 /* its chunks are moving into the next
                                   older one, which takes c's copy */
    if (snap_state (x) == NBDSNAP_STATE_INVALID) {
      /* It takes no more copies; but if its invalid mark is not on disk
       * yet, changing c would make it lie after a restart. */
      if (invalidate (e, x, "", 0) == -1) {
        r = -1;
        break;
      }
      continue;
    }
    if (!bitmap_test (&x->bm.candidate, c)) {
      if (mark_copied (e, x, c) == 0)
        break;
      if (invalidate (e, x, "bitmap write", errno) == -1) {
        r = -1;
        break;
      }
      continue;                 /* the next older one may need c */
    }
    r = copy_chunk (e, x, c, buf);
    if (r == 0) {
      *copied = true;
      break;
    }
    if (r == -2) {
      r = -1;                   /* errno is EIO */
      break;
    }
    r = 0;                      /* x is invalid now: try the next older */
  }
  if (power)
    __atomic_sub_fetch (&e->cow_inflight, 1, __ATOMIC_SEQ_CST);
  pthread_rwlock_unlock (stripe (e, c));
  return r;
}

/* A create is scanning the origin's extents: note chunks first..last,
 * which this write may turn from a hole into data.  chain_lock held
 * shared. */
static void
window_note (struct nbdsnap_engine *e, uint64_t first, uint64_t last)
{
  struct create_window *w = __atomic_load_n (&e->window, __ATOMIC_ACQUIRE);
  uint64_t i;

  if (w == NULL)
    return;
  i = __atomic_fetch_add (&w->n, 1, __ATOMIC_RELAXED);
  if (i < WINDOW_RANGES) {
    w->first[i] = first;
    w->last[i] = last;
  }
}

/* Copy-on-write for [offset, offset+count); chain_lock held shared. */
static int
cow_range (struct nbdsnap_engine *e, uint32_t count, uint64_t offset,
           bool fua)
{
  uint64_t c, first, last;
  char *buf = NULL;
  bool copied = false;
  int r = 0;

  if (count == 0)
    return 0;
  first = offset >> e->chunk_shift;
  last = (offset + count - 1) >> e->chunk_shift;
  window_note (e, first, last);
  if (e->newest == NULL)
    return 0;
  for (c = first; c <= last && r == 0; ++c)
    r = cow_chunk (e, c, &buf, &copied);
  free (buf);

  /* A FUA write in process mode must not become durable before what it
   * displaced. */
  if (r == 0 && fua && copied
      && e->durability == NBDSNAP_DURABILITY_PROCESS) {
    struct nbdsnap_snap *s;
    /* The copies went into the newest valid snapshot, which need not be
     * the newest one: sync whichever is dirty. */
    for (s = e->newest; s != NULL && r == 0; s = s->older)
      r = cow_sync_snap (e, s);
  }
  return r;
}

static int
check_range (struct nbdsnap_engine *e, uint64_t count, uint64_t offset)
{
  if (offset > e->size || count > e->size - offset) {
    errno = EINVAL;
    nbdsnap_error ("request at %" PRIu64 "+%" PRIu64 " is past the end of "
                   "the image (%" PRIu64 " bytes)", offset, count, e->size);
    return -1;
  }
  return 0;
}

int
nbdsnap_engine_pwrite (struct nbdsnap_engine *e, const void *buf,
                       uint32_t count, uint64_t offset, bool fua)
{
  int r;

  if (check_range (e, count, offset) == -1)
    return -1;
  seal_lease (&e->seal);
  pthread_rwlock_rdlock (&e->chain_lock);
  r = cow_range (e, count, offset, fua);
  if (r == 0)
    r = nbdsnap_origin_pwrite (e->origin, buf, count, offset, fua);
  pthread_rwlock_unlock (&e->chain_lock);
  return r;
}

int
nbdsnap_engine_zero (struct nbdsnap_engine *e, uint32_t count,
                     uint64_t offset, bool may_trim, bool fua, bool fast)
{
  int r;

  if (check_range (e, count, offset) == -1)
    return -1;
  seal_lease (&e->seal);
  pthread_rwlock_rdlock (&e->chain_lock);
  r = cow_range (e, count, offset, fua);
  if (r == 0)
    r = nbdsnap_origin_zero (e->origin, count, offset, may_trim, fua, fast);
  pthread_rwlock_unlock (&e->chain_lock);
  return r;
}

int
nbdsnap_engine_trim (struct nbdsnap_engine *e, uint32_t count,
                     uint64_t offset, bool fua)
{
  int r;

  if (check_range (e, count, offset) == -1)
    return -1;
  seal_lease (&e->seal);
  pthread_rwlock_rdlock (&e->chain_lock);
  r = cow_range (e, count, offset, fua);
  if (r == 0)
    r = nbdsnap_origin_trim (e->origin, count, offset, fua);
  pthread_rwlock_unlock (&e->chain_lock);
  return r;
}

bool
cow_depends (struct nbdsnap_snap *s, struct nbdsnap_snap *x)
{
  struct nbdsnap_snap *t;
  uint64_t pg, w;

  for (pg = 0; pg < x->bm.copied.npages; ++pg) {
    if (bitmap_page (&x->bm.copied, pg) == NULL
        || bitmap_page (&x->bm.candidate, pg) == NULL
        || bitmap_page (&s->bm.candidate, pg) == NULL)
      continue;
    for (w = pg * BITMAP_PAGE_WORDS; w < (pg + 1) * BITMAP_PAGE_WORDS; ++w) {
      uint64_t need = bitmap_word (&x->bm.copied, w)
                      & bitmap_word (&x->bm.candidate, w)
                      & bitmap_word (&s->bm.candidate, w);
      for (t = s; need != 0 && t != x; t = t->newer)
        need &= ~bitmap_word (&t->bm.copied, w);
      if (need != 0)
        return true;
    }
  }
  return false;
}

/* s's store or bitmap could not be synced: what was copied into it since
 * its last good sync may be lost at a power cut.  So s is invalid, and so
 * is every older snapshot that reads some chunk through s, durably.
 * chain_lock held shared.  -1 (EIO) if a mark could not be made
 * durable. */
static int
invalidate_unsynced (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                     int err)
{
  struct nbdsnap_snap *t;
  char why[NBDSNAP_NAME_MAX + 64];
  int r;

  r = invalidate (e, s, "sync", err);
  snprintf (why, sizeof why, "it reads through %s, which could not be "
            "synced", s->name);
  for (t = s->older; t != NULL; t = t->older)
    if (snap_state (t) != NBDSNAP_STATE_INVALID && cow_depends (t, s)
        && invalidate (e, t, why, err) == -1)
      r = -1;
  return r;
}

/* Sync one snapshot's store and bitmap if it has unsynced copies.  If
 * that fails, the snapshots whose content it may have lost turn invalid
 * (durably), and it returns 0: the flush goes on, honest. */
int
cow_sync_snap (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  uint64_t d = __atomic_load_n (&s->dirty, __ATOMIC_ACQUIRE), c;

  /* Return at once only if a *finished* sync covered every change so far
   * (not merely one that another caller has started). */
  if (d == __atomic_load_n (&s->clean, __ATOMIC_ACQUIRE))
    return 0;
  if (gcommit_sync (&s->store_gc, sync_store, s) == -1
      || gcommit_sync (&s->bitmap_gc, sync_bitmap, s) == -1) {
    int err = errno;
    nbdsnap_error ("flush snapshot %s: %m", s->name);
    if (invalidate_unsynced (e, s, err) == -1) {
      errno = EIO;
      return -1;
    }
    return 0;
  }
  c = __atomic_load_n (&s->clean, __ATOMIC_ACQUIRE);
  while (c < d && !__atomic_compare_exchange_n (&s->clean, &c, d, false,
                                                __ATOMIC_ACQ_REL,
                                                __ATOMIC_ACQUIRE))
    ;
  return 0;
}

int
nbdsnap_engine_flush (struct nbdsnap_engine *e)
{
  struct nbdsnap_snap *s;
  int r = 0;

  pthread_rwlock_rdlock (&e->chain_lock);
  for (s = e->newest; s != NULL && r == 0; s = s->older)
    r = cow_sync_snap (e, s);
  pthread_rwlock_unlock (&e->chain_lock);
  if (r == 0)
    r = nbdsnap_origin_flush (e->origin);
  return r;
}

/* The snapshot at or newer than s that holds chunk c, or NULL. */
static struct nbdsnap_snap *
find_copy (struct nbdsnap_snap *s, uint64_t c)
{
  for (; s != NULL; s = s->newer)
    if (bitmap_test (&s->bm.copied, c))
      return s;
  return NULL;
}

static int
read_piece (struct nbdsnap_engine *e, struct nbdsnap_snap *s, char *buf,
            uint32_t len, uint64_t off, uint64_t c)
{
  struct nbdsnap_snap *x;
  int r;

  if (!bitmap_test (&s->bm.candidate, c)) {
    memset (buf, 0, len);
    return 0;
  }
  x = find_copy (s, c);
  if (x != NULL)
    r = io_pread_full (x->store_fd, buf, len, off);
  else {
    /* Not preserved anywhere: the origin still holds it.  The stripe
     * keeps a copy-on-write of c from overwriting it under us, and orders
     * this read after any copy-or-invalidate decision for c: a writer
     * that failed to copy c for s marked s invalid before it released
     * the stripe and only then wrote the origin, so s must be checked
     * again here, after taking the stripe, or the new bytes would be
     * served as the old ones. */
    pthread_rwlock_rdlock (stripe (e, c));
    x = find_copy (s, c);
    if (x != NULL)
      r = io_pread_full (x->store_fd, buf, len, off);
    else if (snap_state (s) != NBDSNAP_STATE_LIVE) {
      pthread_rwlock_unlock (stripe (e, c));
      errno = EIO;
      nbdsnap_error ("snapshot %s became %s during a read", s->name,
                     snap_state_name (snap_state (s)));
      return -1;
    }
    else
      r = io_pread_full (e->origin->fd, buf, len, off);
    pthread_rwlock_unlock (stripe (e, c));
  }
  if (r == -1) {
    nbdsnap_error ("snapshot %s: read at %" PRIu64 ": %m", s->name, off);
    errno = EIO;
  }
  return r;
}

int
nbdsnap_snap_pread (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                    void *vbuf, uint32_t count, uint64_t offset)
{
  char *buf = vbuf;
  int r = 0;

  if (check_range (e, count, offset) == -1)
    return -1;
  pthread_rwlock_rdlock (&e->chain_lock);
  if (snap_state (s) != NBDSNAP_STATE_LIVE) {
    errno = EIO;
    nbdsnap_error ("snapshot %s is %s: it cannot be read", s->name,
                   snap_state_name (snap_state (s)));
    r = -1;
  }
  while (r == 0 && count > 0) {
    uint64_t c = offset >> e->chunk_shift;
    uint64_t end = (c + 1) << e->chunk_shift;
    uint32_t len = end - offset < count ? end - offset : count;

    r = read_piece (e, s, buf, len, offset, c);
    buf += len;
    offset += len;
    count -= len;
  }
  pthread_rwlock_unlock (&e->chain_lock);
  return r;
}

int
nbdsnap_snap_extents (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                      uint64_t offset, uint64_t count, nbdsnap_extent_fn fn,
                      void *opaque)
{
  uint64_t end, c, start;
  bool hole;
  int r = 0;

  if (check_range (e, count, offset) == -1)
    return -1;
  end = offset + count;
  pthread_rwlock_rdlock (&e->chain_lock);
  if (snap_state (s) != NBDSNAP_STATE_LIVE) {
    /* Like a read: an invalid snapshot answers nothing about its data. */
    errno = EIO;
    nbdsnap_error ("snapshot %s is %s: it cannot be read", s->name,
                   snap_state_name (snap_state (s)));
    r = -1;
  }
  while (offset < end && r == 0) {
    c = offset >> e->chunk_shift;
    hole = !bitmap_test (&s->bm.candidate, c);
    start = offset;
    do {
      ++c;
      offset = c << e->chunk_shift;
    } while (offset < end && !bitmap_test (&s->bm.candidate, c) == hole);
    if (offset > end)
      offset = end;
    r = fn (opaque, start, offset - start, hole);
  }
  pthread_rwlock_unlock (&e->chain_lock);
  return r < 0 ? -1 : 0;
}

/* Does fd hold no data in [off, off+len)?  SEEK_DATA: a file system
 * that cannot tell says data (the answer errs towards "may hold data"). */
static bool
no_data (int fd, uint64_t off, uint64_t len)
{
  off_t d = lseek (fd, off, SEEK_DATA);

  if (d == -1)
    return errno == ENXIO;      /* no data from off to the end */
  return (uint64_t) d >= off + len;
}

/* Does b's view of chunk c (the origin's now, b NULL) read as zeros?
 * chain_lock held shared. */
static bool
chunk_zero (struct nbdsnap_engine *e, struct nbdsnap_snap *b, uint64_t c)
{
  uint64_t off = c << e->chunk_shift;
  uint32_t len = chunk_len (e, c);
  struct nbdsnap_snap *x;
  bool zero;

  if (b == NULL)
    return no_data (e->origin->fd, off, len);
  if (!bitmap_test (&b->bm.candidate, c))
    return true;
  x = find_copy (b, c);
  if (x != NULL)                /* a store chunk never changes once set */
    return no_data (x->store_fd, off, len);
  /* The origin, as read_piece: under the stripe, checked again, so that a
   * copy-on-write of c cannot move b's bytes into a store and trim the
   * origin between the test and the lseek. */
  pthread_rwlock_rdlock (stripe (e, c));
  x = find_copy (b, c);
  zero = no_data (x ? x->store_fd : e->origin->fd, off, len);
  pthread_rwlock_unlock (stripe (e, c));
  return zero;
}

/* Word w of the changes set from a up to b (exclusive; NULL: newest). */
static uint64_t
changed_word (struct nbdsnap_snap *a, struct nbdsnap_snap *b, uint64_t w)
{
  struct nbdsnap_snap *x;
  uint64_t bits = 0;

  for (x = a; x != b && bits != UINT64_MAX; x = x->newer)
    bits |= bitmap_word (&x->bm.copied, w);
  return bits;
}

int
nbdsnap_snap_changes (struct nbdsnap_engine *e, struct nbdsnap_snap *a,
                      struct nbdsnap_snap *b, uint64_t *offset, uint64_t max,
                      nbdsnap_extent_fn fn, void *opaque)
{
  struct nbdsnap_snap *x, *bad = NULL;
  uint64_t nwords = (e->nchunks + 63) / 64, w, c, n = 0;
  uint64_t run_start = 0, run_end = 0;  /* chunks [run_start, run_end) */
  bool in_run = false, run_zero = false;
  int r = 0;

  if (*offset >= e->size) {
    *offset = e->size;
    return 0;
  }
  pthread_rwlock_rdlock (&e->chain_lock);
  if (snap_state (a) != NBDSNAP_STATE_LIVE)
    bad = a;
  else if (b != NULL && snap_state (b) != NBDSNAP_STATE_LIVE)
    bad = b;
  if (bad != NULL) {
    pthread_rwlock_unlock (&e->chain_lock);
    errno = EIO;
    nbdsnap_error ("snapshot %s is %s: its changes are unknown", bad->name,
                   snap_state_name (snap_state (bad)));
    return -1;
  }
  for (x = a; x != NULL && x != b; x = x->newer)
    ;
  if (x != b) {
    pthread_rwlock_unlock (&e->chain_lock);
    errno = EINVAL;
    nbdsnap_refuse ("snapshot %s is not newer than %s: changes go from "
                    "the older snapshot to the newer", b->name, a->name);
    return -1;
  }

  c = *offset >> e->chunk_shift;
  for (w = c / 64; w < nwords && r == 0; ++w) {
    uint64_t bits = a == b ? 0 : changed_word (a, b, w);

    if (c > w * 64)             /* the first word: from c on */
      bits &= ~0ull << (c & 63);
    if (bits == 0)
      continue;
    for (; bits != 0 && r == 0; bits &= bits - 1) {
      bool zero;

      c = w * 64 + __builtin_ctzll (bits);
      if (c >= e->nchunks)
        break;
      zero = chunk_zero (e, b, c);
      if (in_run && c == run_end && zero == run_zero) {
        run_end++;
        continue;
      }
      if (in_run) {
        if (n == max)           /* the page is full: the next starts at c */
          break;
        r = fn (opaque, run_start << e->chunk_shift,
                (run_end - run_start) << e->chunk_shift, run_zero);
        n++;
      }
      in_run = true;
      run_start = c;
      run_end = c + 1;
      run_zero = zero;
    }
    if (bits != 0)
      break;
  }
  if (r == 0 && in_run && n == max) {
    *offset = run_start << e->chunk_shift;
    pthread_rwlock_unlock (&e->chain_lock);
    return 0;
  }
  if (r == 0 && in_run) {
    uint64_t end = run_end << e->chunk_shift;

    r = fn (opaque, run_start << e->chunk_shift,
            (end < e->size ? end : e->size) - (run_start << e->chunk_shift),
            run_zero);
  }
  pthread_rwlock_unlock (&e->chain_lock);
  *offset = e->size;
  return r < 0 ? -1 : 0;
}

/* Copy chunk c's bytes from one store to the other at the same offset. */
static int
move_data (struct nbdsnap_engine *e, struct nbdsnap_snap *from,
           struct nbdsnap_snap *to, uint64_t c)
{
  uint64_t off = c << e->chunk_shift;
  loff_t in = off, out = off;
  size_t left = chunk_len (e, c);

  while (left > 0) {
    ssize_t n = copy_file_range (from->store_fd, &in, to->store_fd, &out,
                                 left, 0);
    if (n <= 0) {
      char *buf;
      int r;
      if (n == 0 || (errno != EXDEV && errno != EINVAL
                     && errno != ENOSYS && errno != EOPNOTSUPP))
        return -1;
      /* No copy_file_range here: copy by hand. */
      buf = malloc (left);
      if (buf == NULL)
        return -1;
      r = io_pread_full (from->store_fd, buf, left, in);
      if (r == 0)
        r = io_pwrite_full (to->store_fd, buf, left, out);
      free (buf);
      return r;
    }
    left -= n;
  }
  return 0;
}

/* How many chunks a delete moves between two syncs: each batch holds
 * chain_lock shared (a create waiting for it exclusive waits for one
 * batch at most, and origin writes that queue behind that create wait as
 * long), and each chunk's stripe exclusive while its bytes move. */
#define MOVE_BATCH 256

/* The chunks `to` reads through `from` in word w: from holds them, to
 * does not. */
static uint64_t
move_need (struct nbdsnap_snap *from, struct nbdsnap_snap *to, uint64_t w)
{
  return bitmap_word (&from->bm.copied, w) & ~bitmap_word (&to->bm.copied, w);
}

static bool
cancelled (struct nbdsnap_progress *p)
{
  return p != NULL && __atomic_load_n (&p->cancel, __ATOMIC_RELAXED);
}

static void
progress_add (struct nbdsnap_progress *p, uint64_t *done, uint64_t n)
{
  __atomic_add_fetch (done, n, __ATOMIC_RELAXED);
  if (p != NULL)
    __atomic_add_fetch (&p->done, n, __ATOMIC_RELAXED);
}

/* Set the copied bits of `to` for words [w0, w1) of the batch just moved
 * (the data is synced).  The bits are what `from` holds and `to` did not
 * when the batch was moved; neither changes meanwhile: writers stop at
 * from's copied bits, and only this delete adds bits to `to` there. */
static int
move_mark (struct nbdsnap_snap *from, struct nbdsnap_snap *to,
           uint64_t w0, uint64_t w1)
{
  uint64_t w, need;

  for (w = w0; w < w1; ++w) {
    need = move_need (from, to, w);
    if (need == 0)
      continue;
    if (bitmap_or_word (&to->bm, &to->bm.copied, w, need) == -1)
      return -1;
    __atomic_fetch_add (&to->chunks_copied,
                        __builtin_popcountll
                          (need & bitmap_word (&to->bm.candidate, w)),
                        __ATOMIC_RELAXED);
  }
  __atomic_add_fetch (&to->dirty, 1, __ATOMIC_RELEASE);
  return 0;
}

/* Delete's move: every chunk that `to` (the next older snapshot) reads
 * through `from` is copied into `to` (copy_file_range, so the kernel may
 * share or clone blocks).  from is deleting: writers take no copies into
 * it, but stop at the chunks it holds, so those never change and `to`
 * takes no copy of them but this one.  In batches of MOVE_BATCH chunks:
 * chain_lock shared and each chunk's stripe exclusive while its bytes
 * move; then to's store is synced, then its bits are written; at the end
 * to's bitmap is synced.  Until a bit is written `to` reads that chunk
 * through `from`, whose files stay until the delete unlinks it, so a
 * crash (or power cut) at any point leaves both right, and the next open
 * moves what is left (the move is idempotent). */
int
cow_move_chunks (struct nbdsnap_engine *e, struct nbdsnap_snap *from,
                 struct nbdsnap_snap *to, struct nbdsnap_progress *p)
{
  uint64_t w, w0, c, need, total = 0, batch;
  uint64_t max = e->move_batch ? e->move_batch : MOVE_BATCH;
  bool any = false;

  if (from->damaged)
    return 0;                   /* nothing trustworthy to move; the older
                                   ones that needed it are invalid */
  for (w = 0; w < from->bm.nwords; ++w) {
    need = move_need (from, to, w);
    if (need != 0) {
      any = true;
      total += __builtin_popcountll (need
                                     & bitmap_word (&to->bm.candidate, w));
    }
  }
  if (!any)
    return 0;
  total *= e->chunk_size;
  __atomic_store_n (&from->move_total, total, __ATOMIC_RELAXED);
  if (p != NULL)
    __atomic_store_n (&p->total, total, __ATOMIC_RELAXED);

  for (w = 0; w < from->bm.nwords; ) {
    if (cancelled (p)) {
      errno = ECANCELED;
      nbdsnap_error ("delete %s: cancelled; the next start finishes it",
                     from->name);
      return -1;
    }
    /* One batch: whole words, until MOVE_BATCH chunks have moved. */
    w0 = w;
    batch = 0;
    pthread_rwlock_rdlock (&e->chain_lock);
    for (; w < from->bm.nwords && batch < max; ++w) {
      need = move_need (from, to, w);
      while (need != 0) {
        c = w * 64 + __builtin_ctzll (need);
        need &= need - 1;
        if (!bitmap_test (&to->bm.candidate, c))
          continue;             /* to reads it as zeros: just the bit */
        pthread_rwlock_wrlock (stripe (e, c));
        if (move_data (e, from, to, c) == -1) {
          pthread_rwlock_unlock (stripe (e, c));
          pthread_rwlock_unlock (&e->chain_lock);
          goto err;
        }
        pthread_rwlock_unlock (stripe (e, c));
        batch++;
      }
    }
    pthread_rwlock_unlock (&e->chain_lock);
    /* Data before bits, in both modes (delete is rare). */
    if (batch > 0 && fdatasync (to->store_fd) == -1)
      goto err;
    if (move_mark (from, to, w0, w) == -1)
      goto err;
    progress_add (p, &from->move_done, batch * (uint64_t) e->chunk_size);
    if (e->move_hook)
      e->move_hook (e->move_hook_opaque);
  }
  if (bitmap_sync (&to->bm) == -1)
    goto err;
  return 0;

 err:
  nbdsnap_error ("delete %s: moving chunks into %s: %m", from->name,
                 to->name);
  return -1;
}

/* Rollback: for every chunk in s's changes set (the copied bits of s and
 * every newer snapshot), read s's view and write it to the origin through
 * the ordinary write path, so that each newer snapshot first takes its
 * copy.  Nothing else writes the origin meanwhile (the caller sees to
 * it), so the set only grows by the chunks written here, which are in it
 * already, and one pass is enough.  All-zero chunks are written as zeroes
 * that may punch holes. */
int
cow_rollback (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
              struct nbdsnap_progress *p)
{
  struct nbdsnap_snap *x;
  uint64_t w, bits, c, total = 0, done = 0;
  uint32_t len;
  char *buf;
  int r = 0;

  buf = malloc (e->chunk_size);
  if (buf == NULL) {
    nbdsnap_error ("malloc: %m");
    return -1;
  }
  /* The set, word by word, under chain_lock shared (not held while
   * reading or writing: those take it themselves). */
  pthread_rwlock_rdlock (&e->chain_lock);
  for (w = 0; w < s->bm.nwords; ++w) {
    for (bits = 0, x = s; x != NULL; x = x->newer)
      bits |= bitmap_word (&x->bm.copied, w);
    total += __builtin_popcountll (bits);
  }
  pthread_rwlock_unlock (&e->chain_lock);
  if (p != NULL)
    __atomic_store_n (&p->total, total * e->chunk_size, __ATOMIC_RELAXED);

  for (w = 0; w < s->bm.nwords && r == 0; ++w) {
    pthread_rwlock_rdlock (&e->chain_lock);
    for (bits = 0, x = s; x != NULL; x = x->newer)
      bits |= bitmap_word (&x->bm.copied, w);
    pthread_rwlock_unlock (&e->chain_lock);
    while (bits != 0 && r == 0) {
      c = w * 64 + __builtin_ctzll (bits);
      bits &= bits - 1;
      if (cancelled (p)) {
        errno = ECANCELED;
        nbdsnap_error ("rollback to %s: cancelled; the next start "
                       "finishes it", s->name);
        r = -1;
        break;
      }
      len = chunk_len (e, c);
      r = nbdsnap_snap_pread (e, s, buf, len, c << e->chunk_shift);
      if (r == 0 && all_zero (buf, len))
        r = nbdsnap_engine_zero (e, len, c << e->chunk_shift, true, false,
                                 false);
      else if (r == 0)
        r = nbdsnap_engine_pwrite (e, buf, len, c << e->chunk_shift, false);
      if (r == 0) {
        done += e->chunk_size;      /* the unit of total */
        if (p != NULL)
          __atomic_store_n (&p->done, done, __ATOMIC_RELAXED);
      }
      if (bits == 0 && r == 0 && e->move_hook)
        e->move_hook (e->move_hook_opaque); /* the word is done */
    }
  }
  free (buf);
  return r;
}
