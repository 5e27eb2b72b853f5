/* nbdsnap: the engine's private state, shared by engine.c (open, create,
 * delete, list) and cow.c (the data path).
 *
 * Notes on the design: see include/nbdsnap/engine.h for the lock order and
 * cow.c for the copy-on-write and read rules.
 */
#ifndef NBDSNAP_ENGINE_INTERNAL_H
#define NBDSNAP_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"
#include "snap.h"
#include "seal.h"
#include "statedir.h"

#define CHUNK_STRIPES 256

struct nbdsnap_engine {
  struct nbdsnap_origin *origin;
  struct statedir sd;
  struct seal seal;                 /* the image as the server left it
                                       (seal.h); its own lock, a leaf */
  uint32_t chunk_size;
  unsigned chunk_shift;
  uint64_t size;
  uint64_t nchunks;
  enum nbdsnap_durability durability;
  uint64_t max_store;
  unsigned fd_reserve;

  /* create_lock: creates one at a time (the next id, the files made
   * before the snapshot is installed).  job_lock: deletes and rollbacks
   * one at a time (a delete's move reads its older neighbour, which no
   * other delete may free meanwhile; a rollback writes the origin through
   * the chain).  Held across the whole operation, outside chain_lock;
   * create takes job_lock (inside create_lock) only to undo a create that
   * failed after its snapshot was installed. */
  pthread_mutex_t create_lock;
  pthread_mutex_t job_lock;

  /* chain_lock protects the chain (oldest/newest and every snap's
   * older/newer links, the set of snapshots; next_id is create_lock's).
   * Origin writes and snapshot reads hold it shared for the whole
   * request; create and delete hold it exclusive only for a moment: to
   * open a create's window, to install or unlink a snapshot (which drains
   * in-flight writes and reads: how a snapshot is taken at one instant),
   * to drain the writes that saw a snapshot being deleted live; a
   * delete's chunk moves and a rollback hold it shared.  Writer
   * preferring, so creates are not starved; never taken recursively. */
  pthread_rwlock_t chain_lock;
  struct nbdsnap_snap *oldest, *newest;
  size_t nsnaps;
  uint64_t next_id;

  /* Chunk lock stripes: chunk c uses stripes[c % CHUNK_STRIPES].  Held
   * exclusive by a writer while it copies the chunk into a store and sets
   * its copied bit; held shared by a snapshot reader while it reads the
   * chunk from the origin, and by changes while it looks whether the
   * origin holds data there (cow.c: chunk_zero).  So a reader never sees
   * the origin half overwritten, and writers of one chunk copy it once. */
  pthread_rwlock_t stripes[CHUNK_STRIPES];

  /* Power mode: copy-on-writes in progress (atomic).  Bumped by a writer
   * after it takes a chunk's stripe exclusive and before it sets any
   * copied bit, dropped after its bits are durable, before it releases the
   * stripe.  A writer whose lock-free fast path sees a copied bit while
   * this is non-zero waits for the chunk's stripe: the bit may not be on
   * disk yet. */
  int cow_inflight;

  /* While a create scans the origin's data extents outside the
   * exclusive section: where origin writes land meanwhile (create.c's
   * window; NULL otherwise).  Set and cleared with chain_lock exclusive;
   * read by writers with it shared. */
  struct create_window *window;

  /* Atomic: copy-on-writes copy by hand (cow.c: copy_chunk), not with
   * copy_file_range: set at open in process mode on a file system that
   * reflinks (engine.c: fs_reflinks), or once copy_file_range failed as
   * not possible here (cow.c: copy_kernel). */
  bool copy_by_hand;

  /* Counters for stats (nbdsnap_engine_counters), atomics: cow.c counts
   * copies and invalidations, every snapshot's two group commits
   * (gcommit.c, through the pointers engine.c sets on them) syncs and
   * followers. */
  struct nbdsnap_engine_counters counters;

  int inject_errno;             /* atomic; test hook */
  /* Test hooks (nbdsnap_engine_test_*_hook); set while no delete or
   * create runs. */
  unsigned move_batch;
  void (*move_hook) (void *);
  void *move_hook_opaque;
  void (*create_hook) (void *);
  void *create_hook_opaque;
};

/* The chunk ranges origin writes touched while a create scanned the
 * origin's data extents without pausing them (engine.c).  Writers append
 * with chain_lock shared; the create reads it with chain_lock exclusive,
 * when no writer is inside.  Past WINDOW_RANGES ranges, overflow: the
 * create scans again with writes paused. */
#define WINDOW_RANGES 1024
struct create_window {
  uint64_t n;                   /* atomic: ranges claimed */
  uint64_t first[WINDOW_RANGES], last[WINDOW_RANGES];
};

/* cow.c */
/* Delete's move of `from`'s chunks into `to` (from->older), in batches,
 * each with chain_lock shared; from's state is deleting.  progress: see
 * engine.h (may be NULL).  job_lock held, or the engine still opening. */
extern int cow_move_chunks (struct nbdsnap_engine *e,
                            struct nbdsnap_snap *from,
                            struct nbdsnap_snap *to,
                            struct nbdsnap_progress *p);
/* Rollback's pass: write s's view of every chunk in its changes set to
 * the origin through the write path.  job_lock held (or the engine still
 * opening), chain_lock not. */
extern int cow_rollback (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                         struct nbdsnap_progress *p);
extern int cow_sync_snap (struct nbdsnap_engine *e, struct nbdsnap_snap *s);
/* Does s (older than x) read some chunk through x's store: a chunk that s
 * needs (candidate), x holds data for, and no snapshot from s up to x
 * (exclusive) copied?  chain_lock held. */
extern bool cow_depends (struct nbdsnap_snap *s, struct nbdsnap_snap *x);

#endif /* NBDSNAP_ENGINE_INTERNAL_H */
