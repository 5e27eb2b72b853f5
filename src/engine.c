/* nbdsnap: the engine — open and recovery, create, delete, list.
 *
 * Notes on the design
 *
 * The engine keeps the snapshots of one state directory in a chain, oldest
 * to newest (cow.c has the data path and the rules that make the chain
 * correct).  The data path holds chain_lock shared; create and delete
 * take it exclusive only for a moment (to install or unlink a snapshot),
 * so that neither stalls origin writes for longer than it takes the
 * writes in flight to drain.  Creates are serialized by create_lock,
 * deletes and rollbacks by job_lock (engine-internal.h).
 *
 * Create: outside the exclusive section, make the files (bitmap with
 * header "creating", sparse store) and fill the candidate bits from
 * SEEK_DATA/SEEK_HOLE on the origin while writes go on (on ext4 the cost
 * follows the number of data extents; on tmpfs it walks every page: 20
 * ms for 2 GiB), noting in a window where writes land meanwhile (the
 * window opens in a moment of exclusive chain_lock, so no write can miss
 * both the scan and the window).  Inside the exclusive section (in-flight
 * writes have drained: this is the snapshot's instant): add the window's
 * chunks to the candidates (a superset is harmless), share candidate
 * pages with the next older snapshot, link the snapshot in, state
 * creating: from here on writes copy into it, nobody reads it.  Writes
 * wait for that section only, microseconds (-D nbdsnap.engine=1 logs it
 * for each create) -- except that on tmpfs the kernel holds the file's
 * lock while SEEK_HOLE walks its pages, and origin writes wait for that
 * (bench/README.md, stall).
 * Outside again: write the candidate pages; in power mode flush the
 * origin (what the snapshot reads
 * from the origin must survive a power cut) and sync its files; in
 * process mode nothing is synced (kill -9 keeps the page cache).  Then
 * write the meta file (atomic rename) and the header "live": the
 * snapshot exists.  Why the flush can wait until after the lock: until
 * the header says live the snapshot is not served, and an open that finds
 * a "creating" header removes the snapshot as a delete does (moving into
 * the older one what writes copied into it), so a power cut before the
 * flush loses nothing anyone was promised.  Create is refused (EMFILE)
 * when one more snapshot would eat into the file descriptors kept for
 * clients (fd_reserve): every snapshot keeps two open.
 *
 * Delete: write "deleting" into the bitmap header in place (no free space
 * needed: deleting is how users free space); state deleting in memory (no
 * reads; writes take no new copies into it, but stop at the chunks it
 * holds); drain the writes that saw it live (a moment of chain_lock
 * exclusive); move into the next older snapshot the chunks it reads
 * through this one, in batches with chain_lock shared (cow_move_chunks:
 * data synced before bits); unlink it (chain_lock exclusive, a moment);
 * remove the files, meta first, bitmap last.  A crash anywhere leaves a
 * header saying deleting: the next open moves what is left and removes
 * it.  A delete that fails before the header is written changes nothing;
 * one that fails while moving (ENOSPC, EIO) leaves the snapshot deleting
 * (unreadable, still serving its chunks to the older ones) until a later
 * delete or the next open finishes it; an obvious lack of space for the
 * move is refused up front (check_move_space).  A deferred delete
 * (nbdsnap_snap_mark_deleting) writes the header first and keeps the
 * snapshot readable until the caller deletes it.
 *
 * Rollback: write a record naming the target (atomic, durable), write the
 * target's view of every chunk of its changes set to the origin through
 * the write path (cow_rollback: each newer snapshot takes its copy
 * first), flush, remove the record.  An open that finds the record
 * finishes the rollback before it returns (before the origin is served);
 * if the target is gone or invalid the open fails, saying so.
 *
 * Open (recovery and checks): every id with any file is looked at (see
 * snap.h for what the header state says).  Files of a create that never
 * installed its snapshot, or of a delete that had moved its chunks, are
 * removed; a header saying creating or deleting otherwise makes a delete
 * to finish.  Anything else is kept, because older snapshots
 * may read through it, and checked: a missing or damaged meta file (name
 * unknown: it becomes lost-ID), a bitmap that cannot be read or belongs
 * to another id, a store that cannot be opened or is not the image's size
 * make it invalid, with a message saying what was wrong; a damaged bitmap
 * or store makes invalid the older snapshots that may read through it
 * too; a name used twice keeps the older snapshot's, the newer becomes
 * lost-ID.  Damage never stops the open.  Then unfinished deletes and
 * creates are finished (as deletes), an interrupted rollback is finished,
 * and temporary snapshots, which belonged to an admin connection of a
 * process that is gone, are deleted; every other snapshot is loaded as it
 * was.
 */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <sys/vfs.h>

#include "nbdsnap/err.h"
#include "nbdsnap/io.h"
#include "engine-internal.h"

bool
nbdsnap_name_ok (const char *name)
{
  size_t i, len = strlen (name);

  if (len == 0 || len > NBDSNAP_NAME_MAX)
    return false;
  for (i = 0; i < len; ++i) {
    unsigned char ch = name[i];
    if (isascii (ch) && isalnum (ch))
      continue;
    if (i > 0 && (ch == '.' || ch == '_' || ch == '-'))
      continue;
    return false;
  }
  return true;
}

int
nbdsnap_name_valid (const char *name)
{
  if (nbdsnap_name_ok (name))
    return 0;
  errno = EINVAL;
  nbdsnap_error ("invalid snapshot name \"%.80s\": 1 to %d letters, "
                 "digits, '.', '_' and '-', starting with a letter or digit",
                 name, NBDSNAP_NAME_MAX);
  return -1;
}

uint32_t
nbdsnap_engine_chunk_size (const struct nbdsnap_engine *e)
{
  return e->chunk_size;
}

uint64_t
nbdsnap_engine_size (const struct nbdsnap_engine *e)
{
  return e->size;
}

void
nbdsnap_engine_counters (struct nbdsnap_engine *e,
                         struct nbdsnap_engine_counters *out)
{
  const struct nbdsnap_engine_counters *c = &e->counters;

  out->cow_chunks = __atomic_load_n (&c->cow_chunks, __ATOMIC_RELAXED);
  out->cow_bytes = __atomic_load_n (&c->cow_bytes, __ATOMIC_RELAXED);
  out->syncs = __atomic_load_n (&c->syncs, __ATOMIC_RELAXED);
  out->sync_shared = __atomic_load_n (&c->sync_shared, __ATOMIC_RELAXED);
  out->invalidations = __atomic_load_n (&c->invalidations,
                                        __ATOMIC_RELAXED);
}

/* A new snapshot's group commits count into the engine's counters. */
static void
count_syncs (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  s->store_gc.count_syncs = s->bitmap_gc.count_syncs = &e->counters.syncs;
  s->store_gc.count_shared = s->bitmap_gc.count_shared
    = &e->counters.sync_shared;
}

char *
nbdsnap_engine_read_state (struct nbdsnap_engine *e, const char *name,
                           size_t *len)
{
  struct stat st;
  char *buf;
  int fd;

  fd = openat (e->sd.dirfd, name, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    if (errno != ENOENT)
      nbdsnap_error ("%s/%s: %m", e->sd.path, name);
    return NULL;
  }
  if (fstat (fd, &st) == -1) {
    nbdsnap_error ("fstat %s/%s: %m", e->sd.path, name);
    goto err;
  }
  buf = malloc (st.st_size + 1);
  if (buf == NULL) {
    nbdsnap_error ("malloc: %m");
    goto err;
  }
  if (io_pread_full (fd, buf, st.st_size, 0) == -1) {
    nbdsnap_error ("read %s/%s: %m", e->sd.path, name);
    free (buf);
    goto err;
  }
  close (fd);
  buf[st.st_size] = '\0';
  *len = st.st_size;
  return buf;

 err:
  {
    int err = errno;
    close (fd);
    errno = err;
  }
  return NULL;
}

int
nbdsnap_engine_write_state (struct nbdsnap_engine *e, const char *name,
                            const char *content)
{
  return statedir_write_file (&e->sd, name, content);
}

void
nbdsnap_engine_inject_store_error (struct nbdsnap_engine *e, int err)
{
  __atomic_store_n (&e->inject_errno, err, __ATOMIC_RELAXED);
}

void
nbdsnap_engine_test_move_hook (struct nbdsnap_engine *e, unsigned batch,
                               void (*fn) (void *), void *opaque)
{
  e->move_batch = batch;
  e->move_hook = fn;
  e->move_hook_opaque = opaque;
}

void
nbdsnap_engine_test_create_hook (struct nbdsnap_engine *e,
                                 void (*fn) (void *), void *opaque)
{
  e->create_hook = fn;
  e->create_hook_opaque = opaque;
}

static void
chain_append (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  s->older = e->newest;
  s->newer = NULL;
  if (e->newest)
    e->newest->newer = s;
  else
    e->oldest = s;
  e->newest = s;
  e->nsnaps++;
}

static void
chain_remove (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  if (s->older)
    s->older->newer = s->newer;
  else
    e->oldest = s->newer;
  if (s->newer)
    s->newer->older = s->older;
  else
    e->newest = s->older;
  e->nsnaps--;
}

static int
open_store (struct nbdsnap_engine *e, struct nbdsnap_snap *s, bool create)
{
  char name[64];

  snap_file_name (name, sizeof name, s->id, "store");
  s->store_fd = openat (e->sd.dirfd, name,
                        O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0),
                        0600);
  if (s->store_fd == -1) {
    nbdsnap_error ("%s/%s: %m", e->sd.path, name);
    return -1;
  }
  if (create && ftruncate (s->store_fd, e->size) == -1) {
    nbdsnap_error ("ftruncate %s/%s: %m", e->sd.path, name);
    return -1;
  }
  return 0;
}

/* Set candidate bits for every chunk that holds data in the origin, and
 * count them: the cost follows the number of data extents, and the
 * untouched parts of the (sparse) bitmap are never read.  Writes may run
 * meanwhile (create's window records them): the extents may change
 * between two lseeks, and nothing here may trust them to be consistent. */
static int
fill_candidates (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  int fd = e->origin->fd;
  off_t data, hole = 0;
  uint64_t prev_last = UINT64_MAX;

  s->chunks_candidate = 0;
  if (e->origin->is_blockdev) {
    s->chunks_candidate = e->nchunks;
    return bitmap_set_range (&s->bm.candidate, 0, e->nchunks);
  }
  while ((uint64_t) hole < e->size) {
    data = lseek (fd, hole, SEEK_DATA);
    if (data == -1) {
      if (errno == ENXIO)
        break;                  /* no data after hole */
      if (errno == EINVAL || errno == EOPNOTSUPP) {
        /* No SEEK_DATA here: everything is a candidate. */
        s->chunks_candidate = e->nchunks;
        return bitmap_set_range (&s->bm.candidate, 0, e->nchunks);
      }
      nbdsnap_error ("lseek SEEK_DATA %s: %m", e->origin->path);
      return -1;
    }
    hole = lseek (fd, data, SEEK_HOLE);
    if (hole == -1) {
      nbdsnap_error ("lseek SEEK_HOLE %s: %m", e->origin->path);
      return -1;
    }
    /* Writes go on during the scan: a hole may have been punched at data
     * since.  Count that byte's chunk as data (a candidate too many is
     * harmless; the create's window holds every chunk written meanwhile)
     * and go on past it. */
    if (hole <= data)
      hole = data + 1;
    if ((uint64_t) hole > e->size)
      hole = e->size;
    if ((uint64_t) data >= e->size)
      break;
    {
      uint64_t first = (uint64_t) data >> e->chunk_shift;
      uint64_t last = ((uint64_t) hole - 1) >> e->chunk_shift;
      if (bitmap_set_range (&s->bm.candidate, first, last - first + 1)
          == -1)
        return -1;
      /* Extents are in order; two may share a chunk. */
      s->chunks_candidate += last - first + 1 - (first == prev_last);
      prev_last = last;
    }
  }
  return 0;
}

/* Would nsnaps snapshots fit in the open file limit, with reserve
 * descriptors left for clients and everything else?  EMFILE and a message
 * saying what to do if not. */
static int
check_fd_budget (struct nbdsnap_engine *e, uint64_t nsnaps, unsigned reserve)
{
  struct rlimit rl;
  uint64_t need = nsnaps * NBDSNAP_FDS_PER_SNAPSHOT + reserve;

  if (nsnaps == 0 || getrlimit (RLIMIT_NOFILE, &rl) == -1
      || rl.rlim_cur == RLIM_INFINITY || need <= rl.rlim_cur)
    return 0;
  errno = EMFILE;
  nbdsnap_error ("too many snapshots for the open file limit: %" PRIu64
                 " snapshots need %" PRIu64 " file descriptors (%d each, "
                 "plus %u kept for clients), RLIMIT_NOFILE is %llu; raise "
                 "it (ulimit -n, or LimitNOFILE= in a systemd unit) or "
                 "delete snapshots", nsnaps, need, NBDSNAP_FDS_PER_SNAPSHOT,
                 reserve, (unsigned long long) rl.rlim_cur);
  return -1;
}

/* lost-DIGITS: what open names a snapshot whose name it could not read. */
static bool
name_reserved (const char *name)
{
  return strncmp (name, "lost-", 5) == 0 && name[5] != '\0'
         && strspn (name + 5, "0123456789") == strlen (name + 5);
}

static struct nbdsnap_snap *
find_name (struct nbdsnap_engine *e, const char *name)
{
  struct nbdsnap_snap *s;

  for (s = e->oldest; s != NULL; s = s->newer)
    if (strcmp (s->name, name) == 0)
      return s;
  return NULL;
}

static int finish_delete (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                          struct nbdsnap_progress *p);

/* Make the files of snapshot s before it is installed: its bitmap
 * (header "creating") and its sparse store.  Nothing reads them yet. */
static int
create_files (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  char bmname[64];

  snap_file_name (bmname, sizeof bmname, s->id, "bitmap");
  if (bitmap_create (&s->bm, e->sd.dirfd, bmname, e->nchunks, s->id) == -1
      || open_store (e, s, true) == -1)
    return -1;
  return 0;
}

/* Install s at this instant; chain_lock held exclusive (in-flight origin
 * writes have drained).  The candidate bits were filled from the origin's
 * data extents before, while writes went on (scan_candidates); here only
 * the chunks those writes touched are added (a superset is harmless: a
 * candidate chunk that is a hole is "copied" as zeros, which writes
 * nothing), its pages are shared with the next older snapshot's, and it
 * is linked in. */
static int
install (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
         struct create_window *w)
{
  uint64_t i, n;

  if (find_name (e, s->name) != NULL) {
    errno = EEXIST;
    nbdsnap_error ("snapshot %s already exists", s->name);
    return -1;
  }
  n = __atomic_load_n (&w->n, __ATOMIC_RELAXED);
  if (n > WINDOW_RANGES) {
    /* Too many writes to note: scan again, with writes paused. */
    if (fill_candidates (e, s) == -1)
      return -1;
  }
  else
    for (i = 0; i < n; ++i)
      if (bitmap_set_range (&s->bm.candidate, w->first[i],
                            w->last[i] - w->first[i] + 1) == -1)
        return -1;
  if (e->newest)
    bitmap_share (&s->bm, &e->newest->bm);
  chain_append (e, s);
  return 0;
}

/* Before install: fill s's candidate bits from the origin's data extents
 * without pausing writes (on tmpfs SEEK_HOLE walks every page: 20 ms for
 * 2 GiB), with the window open so that install can add what writes
 * change meanwhile.  The window opens with chain_lock exclusive (a
 * moment): every write that could have missed it has finished, and its
 * data is there for the scan to see. */
static int
scan_candidates (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                 struct create_window *w)
{
  pthread_rwlock_wrlock (&e->chain_lock);
  __atomic_store_n (&e->window, w, __ATOMIC_RELEASE);
  pthread_rwlock_unlock (&e->chain_lock);
  return fill_candidates (e, s);
}

/* After install, outside the exclusive section: make s durable, then
 * live.  Power mode flushes the origin (what s reads from it must
 * survive a power cut) and syncs s's files; process mode syncs nothing
 * here.  The meta file (atomic rename) names the snapshot; the header
 * then says live.  If a writer made s invalid meanwhile, that state is
 * on disk already and stays. */
static int
make_live (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  int creating = NBDSNAP_STATE_CREATING;

  if (bitmap_write_pages (&s->bm, &s->bm.candidate) == -1) {
    nbdsnap_error ("create %s: write %s/snap-%06" PRIu64 ".bitmap: %m",
                   s->name, e->sd.path, s->id);
    return -1;
  }
  if (e->durability == NBDSNAP_DURABILITY_POWER) {
    if (nbdsnap_origin_flush (e->origin) == -1)
      return -1;
    if (bitmap_sync (&s->bm) == -1 || fsync (s->store_fd) == -1) {
      nbdsnap_error ("create %s: sync: %m", s->name);
      return -1;
    }
  }
  if (snap_write_meta (&e->sd, s) == -1)
    return -1;
  __atomic_compare_exchange_n (&s->state, &creating, NBDSNAP_STATE_LIVE,
                               false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  if (!snap_state_durable (s))
    return -1;
  return 0;
}

static double
ms_between (const struct timespec *a, const struct timespec *b)
{
  return (b->tv_sec - a->tv_sec) * 1e3 + (b->tv_nsec - a->tv_nsec) / 1e6;
}

struct nbdsnap_snap *
nbdsnap_snap_create (struct nbdsnap_engine *e, const char *name,
                     bool temporary)
{
  struct nbdsnap_snap *s = NULL;
  struct create_window *w = NULL;
  struct timespec t0, t1, t2;
  bool installed = false;
  int r;

  if (nbdsnap_name_valid (name) == -1)
    return NULL;
  if (name_reserved (name)) {
    errno = EINVAL;
    nbdsnap_error ("snapshot name %s is reserved: lost-ID names the "
                   "snapshots whose metadata was lost", name);
    return NULL;
  }

  pthread_mutex_lock (&e->create_lock);
  if (nbdsnap_snap_lookup (e, name) != NULL) {
    errno = EEXIST;
    nbdsnap_error ("snapshot %s already exists", name);
    goto out;
  }
  pthread_rwlock_rdlock (&e->chain_lock);
  if (check_fd_budget (e, e->nsnaps + 1, e->fd_reserve) == -1) {
    pthread_rwlock_unlock (&e->chain_lock);
    goto out;
  }
  pthread_rwlock_unlock (&e->chain_lock);

  s = snap_new ();
  if (s == NULL)
    goto out;
  count_syncs (e, s);
  s->id = e->next_id++;
  strcpy (s->name, name);
  s->temporary = temporary;
  s->max_store = e->max_store;
  s->state = NBDSNAP_STATE_CREATING;
  if (create_files (e, s) == -1)
    goto err;
  w = calloc (1, sizeof *w);
  if (w == NULL) {
    nbdsnap_error ("calloc: %m");
    goto err;
  }

  r = scan_candidates (e, s, w);
  if (e->create_hook)
    e->create_hook (e->create_hook_opaque);
  clock_gettime (CLOCK_MONOTONIC, &t0);
  pthread_rwlock_wrlock (&e->chain_lock);
  clock_gettime (CLOCK_MONOTONIC, &t1);
  clock_gettime (CLOCK_REALTIME, &s->created);
  installed = r == 0 && install (e, s, w) == 0;
  __atomic_store_n (&e->window, NULL, __ATOMIC_RELEASE);
  pthread_rwlock_unlock (&e->chain_lock);
  clock_gettime (CLOCK_MONOTONIC, &t2);
  free (w);
  if (!installed)
    goto err;
  /* Atomic: info may read it now (the candidate bits no longer change). */
  __atomic_store_n (&s->chunks_candidate,
                    bitmap_count (&s->bm.candidate, NULL), __ATOMIC_RELAXED);

  if (make_live (e, s) == -1) {
    /* Installed: writes may have copied chunks into it that older
     * snapshots now read through it.  Undo it as a delete does. */
    int saved = errno;
    nbdsnap_debug ("create %s failed; removing it", name);
    pthread_mutex_lock (&e->job_lock);
    if (finish_delete (e, s, NULL) == -1)
      nbdsnap_error ("snapshot %s (id %" PRIu64 ") stays, deleting: the "
                     "next start finishes removing it", name, s->id);
    pthread_mutex_unlock (&e->job_lock);
    errno = saved;
    s = NULL;
    goto out;
  }
  if (nbdsnap_debug_engine)
    nbdsnap_debug ("created snapshot %s (id %" PRIu64 ", %" PRIu64
                   " candidate chunks): %.3f ms waiting for writes in "
                   "flight, %.3f ms installing with writes paused", name,
                   s->id, s->chunks_candidate, ms_between (&t0, &t1),
                   ms_between (&t1, &t2));
  goto out;

 err:
  {
    int saved = errno;
    snap_unlink_files (&e->sd, s->id);
    snap_free (s);
    s = NULL;
    errno = saved;
  }
 out:
  pthread_mutex_unlock (&e->create_lock);
  return s;
}

struct nbdsnap_snap *
nbdsnap_snap_lookup (struct nbdsnap_engine *e, const char *name)
{
  struct nbdsnap_snap *s;

  pthread_rwlock_rdlock (&e->chain_lock);
  s = find_name (e, name);
  pthread_rwlock_unlock (&e->chain_lock);
  if (s == NULL)
    errno = ENOENT;
  return s;
}

/* Finish deleting s, whose delete is pending (its header says deleting,
 * or it was never made live): state deleting (no reads, no new copies),
 * move into the next older snapshot the chunks it reads through s, unlink
 * s from the chain (chain_lock exclusive, briefly), remove its files
 * (meta first, bitmap last).  job_lock held, or the engine still
 * opening (no other thread).  If the move fails, s stays in the chain,
 * deleting (its chunks still serve the older snapshots): a later delete
 * or the next open finishes it. */
static int
finish_delete (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
               struct nbdsnap_progress *p)
{
  struct nbdsnap_snap *older;

  __atomic_store_n (&s->state, NBDSNAP_STATE_DELETING, __ATOMIC_RELEASE);
  /* Writers that saw it live may still be copying into it: wait for them
   * (readers, refused by the catalog already, too). */
  pthread_rwlock_wrlock (&e->chain_lock);
  older = s->older;
  pthread_rwlock_unlock (&e->chain_lock);
  if (older && cow_move_chunks (e, s, older, p) == -1)
    return -1;

  pthread_rwlock_wrlock (&e->chain_lock);
  chain_remove (e, s);
  pthread_rwlock_unlock (&e->chain_lock);
  if (snap_unlink_files (&e->sd, s->id) == -1)
    nbdsnap_error ("snapshot %s: files left behind; they are removed at the "
                   "next start", s->name);
  if (nbdsnap_debug_engine)
    nbdsnap_debug ("deleted snapshot %s (id %" PRIu64 ")", s->name, s->id);
  snap_free (s);
  return 0;
}

/* Is there clearly not enough free space to move s's chunks into the
 * next older snapshot?  Then the delete is refused before it changes
 * anything (ENOSPC, saying how much is needed).  Only a rough check:
 * a file system that clones blocks may need less, and the move itself
 * may still fail (the snapshot then stays deleting). */
static int
check_move_space (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  struct statvfs sv;
  uint64_t w, need = 0, avail;

  if (s->older == NULL || s->damaged || fstatvfs (e->sd.dirfd, &sv) == -1)
    return 0;
  for (w = 0; w < s->bm.nwords; ++w)
    need += __builtin_popcountll (bitmap_word (&s->bm.copied, w)
                                  & ~bitmap_word (&s->older->bm.copied, w)
                                  & bitmap_word (&s->older->bm.candidate,
                                                 w));
  need *= e->chunk_size;
  avail = (uint64_t) sv.f_bavail * sv.f_frsize;
  if (need <= avail)
    return 0;
  errno = ENOSPC;
  nbdsnap_error ("delete %s: its %" PRIu64 " MiB of chunks that %s still "
                 "needs must move into %s's store, and %s has only %" PRIu64
                 " MiB free: free some space, or delete %s first", s->name,
                 need >> 20, s->older->name, s->older->name, e->sd.path,
                 avail >> 20, s->older->name);
  return -1;
}

int
nbdsnap_snap_delete_progress (struct nbdsnap_engine *e,
                              struct nbdsnap_snap *s,
                              struct nbdsnap_progress *p)
{
  int r = -1;

  pthread_mutex_lock (&e->job_lock);
  if (!s->delete_pending) {
    pthread_rwlock_rdlock (&e->chain_lock);
    r = check_move_space (e, s);
    pthread_rwlock_unlock (&e->chain_lock);
    if (r == -1)
      goto out;
  }
  /* In place in the bitmap header: works on a full file system.  A
   * snapshot whose bitmap could not be read at open has no header to
   * write: its files go at once (meta first; whatever a crash leaves is
   * found damaged again, and it is invalid already, and so is every
   * older one).  If the header cannot be written, nothing changed. */
  if (s->bm.fd >= 0 && snap_mark_delete_pending (s) == -1) {
    r = -1;
    goto out;
  }
  r = finish_delete (e, s, p);
 out:
  pthread_mutex_unlock (&e->job_lock);
  return r;
}

int
nbdsnap_snap_delete (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  return nbdsnap_snap_delete_progress (e, s, NULL);
}

int
nbdsnap_snap_mark_deleting (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  if (s->bm.fd < 0)
    return 0;                   /* damaged: nothing to record; the delete
                                   removes its files at once */
  return snap_mark_delete_pending (s);
}

/* The rollback record: "rollback" in the state directory, naming the
 * target by id, written (atomic, durable) before the first origin write
 * and removed after the last one is flushed. */
#define ROLLBACK_FILE "rollback"

static int
rollback_run (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
              struct nbdsnap_progress *p)
{
  if (cow_rollback (e, s, p) == -1 || nbdsnap_engine_flush (e) == -1)
    return -1;
  if (unlinkat (e->sd.dirfd, ROLLBACK_FILE, 0) == -1 && errno != ENOENT) {
    nbdsnap_error ("unlink %s/%s: %m", e->sd.path, ROLLBACK_FILE);
    return -1;
  }
  if (fsync (e->sd.dirfd) == -1) {
    nbdsnap_error ("fsync %s: %m", e->sd.path);
    return -1;
  }
  if (nbdsnap_debug_engine)
    nbdsnap_debug ("rolled the origin back to snapshot %s", s->name);
  return 0;
}

int
nbdsnap_rollback (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                  struct nbdsnap_progress *p)
{
  char rec[64];
  int r = -1, st;

  pthread_mutex_lock (&e->job_lock);
  st = snap_state (s);
  if (st == NBDSNAP_STATE_INVALID) {
    errno = EIO;
    nbdsnap_error ("rollback to %s: the snapshot is invalid: it does not "
                   "know its own bytes", s->name);
    goto out;
  }
  if (st != NBDSNAP_STATE_LIVE || s->delete_pending) {
    errno = EBUSY;
    nbdsnap_error ("rollback to %s: the snapshot is %s", s->name,
                   s->delete_pending ? "being deleted" : snap_state_name (st));
    goto out;
  }
  snprintf (rec, sizeof rec, "nbdsnap-rollback 1\nid %" PRIu64 "\n", s->id);
  if (statedir_write_file (&e->sd, ROLLBACK_FILE, rec) == -1)
    goto out;
  r = rollback_run (e, s, p);
 out:
  pthread_mutex_unlock (&e->job_lock);
  return r;
}

/* Open: finish a rollback that a stop or crash interrupted, before the
 * origin is served.  -1 if it cannot be finished. */
static int
resume_rollback (struct nbdsnap_engine *e)
{
  char buf[128];
  struct nbdsnap_snap *s;
  uint64_t id;
  ssize_t n;
  int fd;

  fd = openat (e->sd.dirfd, ROLLBACK_FILE, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    if (errno == ENOENT)
      return 0;
    nbdsnap_error ("%s/%s: %m", e->sd.path, ROLLBACK_FILE);
    return -1;
  }
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (n < 0 || (buf[n] = '\0',
                sscanf (buf, "nbdsnap-rollback 1\nid %" SCNu64, &id) != 1)) {
    errno = EINVAL;
    nbdsnap_error ("%s/%s: unreadable: a rollback was interrupted and its "
                   "target is unknown; the origin may be partly rolled "
                   "back.  Remove the file to serve it as it is",
                   e->sd.path, ROLLBACK_FILE);
    return -1;
  }
  for (s = e->oldest; s != NULL && s->id != id; s = s->newer)
    ;
  if (s == NULL || snap_state (s) != NBDSNAP_STATE_LIVE) {
    errno = EIO;
    nbdsnap_error ("a rollback to snapshot id %" PRIu64 " was interrupted "
                   "and cannot finish: the snapshot is %s.  The origin may "
                   "be partly rolled back: remove %s/%s to serve it as it "
                   "is", id, s ? snap_state_name (snap_state (s)) : "gone",
                   e->sd.path, ROLLBACK_FILE);
    return -1;
  }
  nbdsnap_error ("finishing the interrupted rollback to snapshot %s",
                 s->name);
  return rollback_run (e, s, NULL);
}

static void
fill_info (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
           struct nbdsnap_snap_info *info)
{
  struct stat st;

  memset (info, 0, sizeof *info);
  info->id = s->id;
  strcpy (info->name, s->name);
  info->created = s->created;
  info->state = snap_state (s);
  info->temporary = s->temporary;
  info->chunks_candidate = __atomic_load_n (&s->chunks_candidate,
                                            __ATOMIC_RELAXED);
  info->chunks_copied = __atomic_load_n (&s->chunks_copied, __ATOMIC_RELAXED);
  if (fstat (s->store_fd, &st) == 0)
    info->store_bytes = (uint64_t) st.st_blocks * 512;
  info->max_store = s->max_store;
  info->cow_count = __atomic_load_n (&s->cow_count, __ATOMIC_RELAXED);
  pthread_mutex_lock (&s->store_gc.lock);
  info->sync_ns = s->store_gc.sync_ns;
  pthread_mutex_unlock (&s->store_gc.lock);
  pthread_mutex_lock (&s->bitmap_gc.lock);
  info->sync_ns += s->bitmap_gc.sync_ns;
  pthread_mutex_unlock (&s->bitmap_gc.lock);
  info->delete_pending = __atomic_load_n (&s->delete_pending,
                                          __ATOMIC_ACQUIRE);
  if (info->state == NBDSNAP_STATE_DELETING) {
    info->progress_done = __atomic_load_n (&s->move_done, __ATOMIC_RELAXED);
    info->progress_total = __atomic_load_n (&s->move_total,
                                            __ATOMIC_RELAXED);
  }
}

int
nbdsnap_snap_info (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                   struct nbdsnap_snap_info *info)
{
  pthread_rwlock_rdlock (&e->chain_lock);
  fill_info (e, s, info);
  pthread_rwlock_unlock (&e->chain_lock);
  return 0;
}

ssize_t
nbdsnap_snap_list (struct nbdsnap_engine *e, struct nbdsnap_snap_info **out)
{
  struct nbdsnap_snap *s;
  ssize_t n = 0;

  pthread_rwlock_rdlock (&e->chain_lock);
  *out = calloc (e->nsnaps ? e->nsnaps : 1, sizeof **out);
  if (*out == NULL) {
    nbdsnap_error ("calloc: %m");
    pthread_rwlock_unlock (&e->chain_lock);
    return -1;
  }
  for (s = e->oldest; s != NULL; s = s->newer)
    fill_info (e, s, &(*out)[n++]);
  pthread_rwlock_unlock (&e->chain_lock);
  return n;
}

static bool
file_exists (struct nbdsnap_engine *e, uint64_t id, const char *ext)
{
  char name[64];
  struct stat st;

  snap_file_name (name, sizeof name, id, ext);
  return fstatat (e->sd.dirfd, name, &st, 0) == 0;
}

/* Open found s unusable or untrustworthy: invalid, with a message saying
 * why, recorded in its bitmap header if that can be written. */
static void
open_invalid (struct nbdsnap_snap *s, const char *why)
{
  nbdsnap_error ("snapshot %s (id %" PRIu64 ") is invalid: %s", s->name,
                 s->id, why);
  s->invalid_at_open = true;
  if (snap_state (s) == NBDSNAP_STATE_INVALID)
    return;
  __atomic_store_n (&s->state, NBDSNAP_STATE_INVALID, __ATOMIC_RELEASE);
  if (s->bm.fd >= 0 && !s->delete_pending)
    bitmap_set_state (&s->bm, BITMAP_STATE_INVALID);
}

static void
lost_name (struct nbdsnap_engine *e, struct nbdsnap_snap *s)
{
  snprintf (s->name, sizeof s->name, "lost-%" PRIu64, s->id);
}

/* Load snapshot id, whatever of its files exist.  *out is NULL when
 * nothing is kept (an unfinished create or delete, whose files are
 * removed).  Damage never stops the open: the snapshot is kept, invalid,
 * because older snapshots may read through it.  -1 only when memory runs
 * out. */
static int
load_snap (struct nbdsnap_engine *e, uint64_t id, struct nbdsnap_snap **out)
{
  struct nbdsnap_snap *s;
  char bmname[64], why[160];
  bool have_meta = file_exists (e, id, "meta");
  const char *meta_problem = NULL;
  uint32_t hstate = BITMAP_STATE_NONE;
  uint64_t hid;
  int peek_err = 0;
  struct stat st;

  *out = NULL;
  snap_file_name (bmname, sizeof bmname, id, "bitmap");
  if (bitmap_peek (e->sd.dirfd, bmname, &hid, &hstate) == -1)
    peek_err = errno;
  if (!have_meta
      && (peek_err == ENOENT || peek_err == EINVAL
          || (peek_err == 0 && hstate != BITMAP_STATE_LIVE
              && hstate != BITMAP_STATE_INVALID
              && hstate != BITMAP_STATE_CREATING))) {
    /* No meta file, and the bitmap says (or its blank header shows) that
     * the snapshot was never installed, or was being deleted and its
     * chunks have moved (the meta file goes first, after the move). */
    nbdsnap_debug ("removing the leftovers of snapshot id %" PRIu64
                   " (an unfinished %s)", id,
                   hstate == BITMAP_STATE_DELETING ? "delete" : "create");
    snap_unlink_files (&e->sd, id);     /* reports; tried again next time */
    return 0;
  }

  s = snap_new ();
  if (s == NULL)
    return -1;
  count_syncs (e, s);
  s->id = id;
  s->state = NBDSNAP_STATE_LIVE;
  if (!have_meta)
    meta_problem = "its meta file is missing (its data is kept: older "
                   "snapshots may need it)";
  else if (snap_read_meta (&e->sd, id, s) == -1) {
    meta_problem = "its meta file is damaged";
    s->state = NBDSNAP_STATE_LIVE;
    s->temporary = false;
    s->max_store = 0;
  }
  if (peek_err == 0 && hstate == BITMAP_STATE_CREATING) {
    /* Installed but never made live (or an older version's create that
     * stopped between its meta file and its header): writes may have
     * copied chunks into it that older snapshots read through it.
     * Deleted after the chain is loaded, as a delete is. */
    meta_problem = NULL;
    s->delete_pending = true;
  }
  else if (snap_state (s) == NBDSNAP_STATE_DELETING
           || (peek_err == 0 && hstate == BITMAP_STATE_DELETING)) {
    /* A delete that had not moved all its chunks yet (the meta file is
     * there): finished after the chain is loaded. */
    meta_problem = NULL;
    s->delete_pending = true;
  }
  if (meta_problem || !have_meta) {
    lost_name (e, s);
    s->id = id;
    s->created.tv_sec = 0;
    s->created.tv_nsec = 0;
  }
  if (s->delete_pending)
    s->state = NBDSNAP_STATE_DELETING;

  if (bitmap_open (&s->bm, e->sd.dirfd, bmname, e->nchunks) == -1) {
    if (bitmap_blank (&s->bm, e->nchunks) == -1) {
      snap_free (s);
      return -1;
    }
    s->damaged = SNAP_DAMAGE_BITMAP;
    snprintf (why, sizeof why, "its bitmap %s cannot be used", bmname);
  }
  else if (s->bm.version >= 2 && s->bm.id != id) {
    bitmap_close (&s->bm);
    if (bitmap_blank (&s->bm, e->nchunks) == -1) {
      snap_free (s);
      return -1;
    }
    s->damaged = SNAP_DAMAGE_BITMAP;
    snprintf (why, sizeof why, "its bitmap %s belongs to snapshot id %"
              PRIu64, bmname, s->bm.id);
  }
  else if (open_store (e, s, false) == -1) {
    s->damaged = SNAP_DAMAGE_STORE;
    snprintf (why, sizeof why, "its store cannot be opened: %s",
              strerror (errno));
  }
  else if (fstat (s->store_fd, &st) == -1) {
    s->damaged = SNAP_DAMAGE_STORE;
    snprintf (why, sizeof why, "fstat of its store: %s", strerror (errno));
  }
  else if ((uint64_t) st.st_size != e->size) {
    s->damaged = SNAP_DAMAGE_STORE;
    snprintf (why, sizeof why, "its store is %" PRIu64 " bytes, not the "
              "image's %" PRIu64 " (truncated?)", (uint64_t) st.st_size,
              e->size);
  }
  if (s->damaged)
    open_invalid (s, why);
  else if (meta_problem)
    open_invalid (s, meta_problem);
  else if (s->bm.state == BITMAP_STATE_INVALID)
    __atomic_store_n (&s->state, NBDSNAP_STATE_INVALID, __ATOMIC_RELEASE);
  else if (snap_state (s) == NBDSNAP_STATE_INVALID)
    snap_state_durable (s);     /* a version 1 file: record it */
  else if (s->bm.state != BITMAP_STATE_LIVE)
    snap_state_durable (s);     /* creating (the meta file exists) or a
                                   version 1 header: now live */
  if (e->newest && !s->damaged)
    bitmap_share (&s->bm, &e->newest->bm);      /* the next older one */
  s->chunks_candidate = bitmap_count (&s->bm.candidate, NULL);
  s->chunks_copied = bitmap_count (&s->bm.copied, &s->bm.candidate);
  *out = s;
  return 0;
}

/* Invalidate the snapshots older than x that may read through x, damaged
 * at open: all of them if x's bitmap is unknown; if only x's store is,
 * those that read some chunk from it (cow_depends). */
static void
invalidate_dependents (struct nbdsnap_engine *e, struct nbdsnap_snap *x)
{
  struct nbdsnap_snap *s;
  char why[160];

  snprintf (why, sizeof why, "it may read through snapshot %s (id %"
            PRIu64 "), which is damaged", x->name, x->id);
  for (s = x->older; s != NULL; s = s->older)
    if (snap_state (s) != NBDSNAP_STATE_INVALID
        && (x->damaged == SNAP_DAMAGE_BITMAP || cow_depends (s, x)))
      open_invalid (s, why);
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* Scan the directory: every id that has any file, in order. */
static int
scan_ids (struct nbdsnap_engine *e, uint64_t **out, size_t *nout)
{
  DIR *dir;
  struct dirent *d;
  uint64_t *ids = NULL, id;
  size_t n = 0, cap = 0, i, j;
  int dfd, len;
  char ext[16];

  dfd = dup (e->sd.dirfd);
  if (dfd == -1 || (dir = fdopendir (dfd)) == NULL) {
    nbdsnap_error ("opendir %s: %m", e->sd.path);
    if (dfd >= 0)
      close (dfd);
    return -1;
  }
  /* The dup shares the directory's file offset with sd.dirfd: an
   * earlier scan through it may have left it at the end. */
  rewinddir (dir);
  while ((d = readdir (dir)) != NULL) {
    if (sscanf (d->d_name, "snap-%" SCNu64 ".%15s%n", &id, ext, &len) != 2)
      continue;
    if (strstr (d->d_name, ".tmp")) {  /* a rename that did not happen */
      unlinkat (e->sd.dirfd, d->d_name, 0);
      continue;
    }
    if (strcmp (ext, "meta") != 0 && strcmp (ext, "bitmap") != 0
        && strcmp (ext, "store") != 0)
      continue;
    if (n == cap) {
      uint64_t *p = realloc (ids, (cap = cap ? cap * 2 : 16) * sizeof *ids);
      if (p == NULL) {
        nbdsnap_error ("realloc: %m");
        free (ids);
        closedir (dir);
        return -1;
      }
      ids = p;
    }
    ids[n++] = id;
  }
  closedir (dir);
  if (n > 0)                    /* ids is NULL then: qsort (NULL) is UB */
    qsort (ids, n, sizeof *ids, cmp_u64);
  for (i = j = 0; i < n; ++i)   /* unique */
    if (j == 0 || ids[j - 1] != ids[i])
      ids[j++] = ids[i];
  *out = ids;
  *nout = j;
  return 0;
}

/* Load every snapshot in id order, then check the chain as a whole:
 * names unique, and nothing older reads through a damaged snapshot. */
static int
load_all (struct nbdsnap_engine *e)
{
  struct nbdsnap_snap *s, *t;
  uint64_t *ids;
  size_t n, i;
  char why[160];

  if (scan_ids (e, &ids, &n) == -1)
    return -1;
  /* Every id counts: a snapshot kept without its meta file holds its
   * descriptors too.  Refuse only if they cannot all be opened with a
   * few to spare; if they eat into the clients' reserve, say so (create
   * refuses then) and go on: deleting them needs a running server. */
  if (check_fd_budget (e, n, NBDSNAP_FD_RESERVE_MIN) == -1) {
    free (ids);
    return -1;
  }
  if (check_fd_budget (e, n, e->fd_reserve) == -1)
    nbdsnap_error ("starting all the same: clients may find no file "
                   "descriptors, and create is refused");
  for (i = 0; i < n; ++i) {
    if (load_snap (e, ids[i], &s) == -1) {
      free (ids);
      return -1;
    }
    if (s)
      chain_append (e, s);
    if (ids[i] >= e->next_id)
      e->next_id = ids[i] + 1;
  }
  free (ids);

  for (s = e->oldest; s != NULL; s = s->newer)
    for (t = e->oldest; t != s; t = t->newer)
      if (strcmp (t->name, s->name) == 0) {
        snprintf (why, sizeof why, "its name %s is also snapshot id %"
                  PRIu64 "'s; renamed", s->name, t->id);
        lost_name (e, s);
        open_invalid (s, why);
        snap_write_meta (&e->sd, s);
        break;
      }
  for (s = e->newest; s != NULL; s = s->older)
    if (s->damaged)
      invalidate_dependents (e, s);
  return 0;
}

/* Does fd's file system share blocks on copy_file_range (reflink)?
 * There copy_file_range writes back the source range's dirty pages
 * before it shares them: about 10 us for a clean 64 KiB chunk on XFS
 * here, 165 us for a dirty one (bench/README.md, "chunk copies").  In
 * power mode the origin is flushed at every create, so a chunk's first
 * copy-on-write finds it clean; in process mode it may well be dirty. */
static bool
fs_reflinks (int fd)
{
  struct statfs st;

  if (fstatfs (fd, &st) == -1)
    return false;
  return st.f_type == 0x58465342          /* XFS_SUPER_MAGIC */
         || st.f_type == 0x9123683e;      /* BTRFS_SUPER_MAGIC */
}

/* Was the image changed while no server had it open (seal.h)?  Its
 * snapshots read it wherever they copied nothing: refuse, or with
 * invalidate_changed make them invalid; adopt=1 takes it as it is (and
 * both record it as it is now, so that the next start agrees).  The
 * running record comes with the first origin write (seal_lease). */
static int
check_image (struct nbdsnap_engine *e,
             const struct nbdsnap_engine_config *cfg)
{
  enum seal_verdict v;
  struct nbdsnap_snap *s;
  char why[400];
  unsigned n = 0;

  if (seal_check (&e->seal, e->sd.dirfd, e->origin, e->durability,
                  cfg->seal_lease_ms * INT64_C (1000000), &v, why,
                  sizeof why) == -1)
    return -1;
  for (s = e->oldest; s != NULL; s = s->newer)
    if (snap_state (s) != NBDSNAP_STATE_INVALID && !s->delete_pending)
      n++;
  switch (v) {
  case SEAL_NONE:
  case SEAL_SAME:
    nbdsnap_debug ("%s: %s", e->origin->path,
                   v == SEAL_SAME ? "as the server left it" : why);
    break;
  case SEAL_UNCHECKED:
    if (n > 0)
      nbdsnap_error ("%s: not checked for writes made while no server had "
                     "it open: %s", e->origin->path, why);
    break;
  case SEAL_CHANGED:
    if (n == 0)
      nbdsnap_debug ("%s: %s (no snapshot reads it)", e->origin->path, why);
    else if (cfg->adopt) {
      nbdsnap_error ("%s: %s; adopt=1: taken as the bytes the server left, "
                     "%u snapshots kept", e->origin->path, why, n);
      return seal_running (&e->seal);
    }
    else if (cfg->invalidate_changed) {
      nbdsnap_error ("%s: %s; image-changed=invalidate: its %u snapshots "
                     "are now invalid (reads fail with EIO; delete them)",
                     e->origin->path, why, n);
      for (s = e->oldest; s != NULL; s = s->newer)
        if (snap_state (s) != NBDSNAP_STATE_INVALID && !s->delete_pending)
          open_invalid (s, "the image was changed while no server had it "
                        "open");
      return seal_running (&e->seal);
    }
    else {
      errno = EINVAL;
      nbdsnap_error ("%s: the image was changed while no server had it "
                     "open: %s.  Its %u snapshots would read the new bytes "
                     "wherever they copied nothing.  Put the image back as "
                     "the server left it; or start with "
                     "image-changed=invalidate to serve it and make every "
                     "snapshot invalid; or, only if its bytes are exactly "
                     "those the server last served (a chmod, a copy), "
                     "adopt=1", e->origin->path, why, n);
      return -1;
    }
    break;
  }
  return 0;
}

struct nbdsnap_engine *
nbdsnap_engine_open (const struct nbdsnap_engine_config *cfg)
{
  struct nbdsnap_engine *e;
  struct nbdsnap_snap *s, *next;
  pthread_rwlockattr_t attr;
  size_t i;

  if (cfg->chunk_size != 0
      && (cfg->chunk_size < NBDSNAP_CHUNK_MIN
          || cfg->chunk_size > NBDSNAP_CHUNK_MAX
          || (cfg->chunk_size & (cfg->chunk_size - 1)) != 0)) {
    errno = EINVAL;
    nbdsnap_error ("chunk-size=%" PRIu32 ": must be a power of two from 4K "
                   "to 1M", cfg->chunk_size);
    return NULL;
  }
  e = calloc (1, sizeof *e);
  if (e == NULL) {
    nbdsnap_error ("calloc: %m");
    return NULL;
  }
  e->seal.fd = -1;
  e->origin = cfg->origin;
  e->size = cfg->origin->size;
  e->durability = cfg->durability;
  e->max_store = cfg->max_store;
  e->fd_reserve = cfg->fd_reserve ? cfg->fd_reserve
                                  : NBDSNAP_FD_RESERVE_DEFAULT;
  e->next_id = 1;
  e->copy_by_hand = cfg->durability == NBDSNAP_DURABILITY_PROCESS
                    && fs_reflinks (cfg->origin->fd);
  if (e->copy_by_hand)
    nbdsnap_debug ("%s is on a file system that reflinks: with "
                   "durability=process, copy-on-write copies by hand (a "
                   "reflink would first write back the chunk's dirty "
                   "pages)", cfg->origin->path);
  if (statedir_open (&e->sd, cfg->statedir, cfg->origin, cfg->chunk_size,
                     cfg->adopt) == -1) {
    free (e);
    return NULL;
  }
  e->chunk_size = e->sd.chunk_size;
  e->chunk_shift = __builtin_ctz (e->chunk_size);
  e->nchunks = (e->size + e->chunk_size - 1) >> e->chunk_shift;

  pthread_rwlockattr_init (&attr);
  pthread_rwlockattr_setkind_np (&attr,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&e->chain_lock, &attr);
  pthread_rwlockattr_destroy (&attr);
  pthread_mutex_init (&e->create_lock, NULL);
  pthread_mutex_init (&e->job_lock, NULL);
  for (i = 0; i < CHUNK_STRIPES; ++i)
    pthread_rwlock_init (&e->stripes[i], NULL);

  if (load_all (e) == -1 || check_image (e, cfg) == -1) {
    nbdsnap_engine_abandon (e);
    return NULL;
  }
  /* Deletes that did not finish (and creates that did not: the same
   * thing).  One that fails again stays, deleting (it still holds chunks
   * older snapshots need), and can be deleted once the cause is gone. */
  for (s = e->oldest; s != NULL; s = next) {
    next = s->newer;
    if (s->delete_pending) {
      nbdsnap_debug ("finishing the deletion of snapshot %s (id %" PRIu64
                     ")", s->name, s->id);
      if (finish_delete (e, s, NULL) == -1)
        nbdsnap_error ("snapshot %s stays, deleting: its delete could not "
                       "be finished", s->name);
    }
  }
  /* Before the origin is served, and before temporary snapshots go (the
   * target may be one). */
  if (resume_rollback (e) == -1) {
    nbdsnap_engine_abandon (e);
    return NULL;
  }
  /* Temporary snapshots died with the admin connection that owned them. */
  for (s = e->oldest; s != NULL; s = next) {
    next = s->newer;
    if (s->temporary && !s->delete_pending
        && nbdsnap_snap_delete (e, s) == -1)
      nbdsnap_error ("temporary snapshot %s could not be deleted; it "
                     "stays, deleting", s->name);
  }
  return e;
}

static void engine_close (struct nbdsnap_engine *e, bool abandon);

int
nbdsnap_engine_start (struct nbdsnap_engine *e)
{
  return seal_start (&e->seal);
}

void
nbdsnap_engine_close (struct nbdsnap_engine *e)
{
  engine_close (e, false);
}

void
nbdsnap_engine_abandon (struct nbdsnap_engine *e)
{
  engine_close (e, true);
}

static void
engine_close (struct nbdsnap_engine *e, bool abandon)
{
  struct nbdsnap_snap *s, *next;
  size_t i;

  if (e == NULL)
    return;
  /* After the last origin write (nbdkit has closed every connection and
   * the admin loop's jobs are done).  A failed start writes nothing: the
   * record it found stays (a refused image stays refused), or goes with a
   * state directory the start created. */
  if (!abandon)
    seal_clean (&e->seal);
  else {
    seal_close (&e->seal);
    if (e->sd.created_dir || e->sd.created_header)
      unlinkat (e->sd.dirfd, "seal", 0);
  }
  for (s = e->oldest; s != NULL; s = next) {
    next = s->newer;
    snap_free (s);
  }
  pthread_rwlock_destroy (&e->chain_lock);
  pthread_mutex_destroy (&e->create_lock);
  pthread_mutex_destroy (&e->job_lock);
  for (i = 0; i < CHUNK_STRIPES; ++i)
    pthread_rwlock_destroy (&e->stripes[i]);
  if (abandon)
    statedir_abandon (&e->sd);
  else
    statedir_close (&e->sd);
  free (e);
}
