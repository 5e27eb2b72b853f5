/* nbdsnap: one snapshot, its files and its metadata (src/snap.c).
 *
 * Notes on the design
 *
 * A snapshot is named on disk by its numeric id, never by its user name:
 *
 *   snap-ID.meta     text, replaced atomically (statedir_write_file):
 *                      nbdsnap-snapshot 1
 *                      id 3
 *                      name nightly
 *                      created 1763690400.123456789    (UTC, seconds.ns)
 *                      state live|deleting|invalid
 *                      temporary 0|1
 *                      max-store 0
 *   snap-ID.bitmap   candidate + copied bits (bitmap.h)
 *   snap-ID.store    sparse, the image's size; chunk c's preserved content
 *                    lives at offset c * chunk-size, like fssnap's backing
 *                    file
 *
 * The meta file is written last at create and its existence is what makes
 * the snapshot exist: bitmap or store files without one are leftovers of a
 * create that did not finish, removed at open.  At delete the meta file is
 * rewritten with state "deleting" once the chunks that the next older
 * snapshot needs have been moved (durably); a "deleting" snapshot found at
 * open has its files removed.
 */
#ifndef NBDSNAP_SNAP_H
#define NBDSNAP_SNAP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "nbdsnap/engine.h"
#include "bitmap.h"
#include "gcommit.h"
#include "statedir.h"

struct nbdsnap_snap {
  uint64_t id;
  char name[NBDSNAP_NAME_MAX + 1];
  struct timespec created;
  bool temporary;
  uint64_t max_store;
  int state;                    /* enum nbdsnap_state; atomic */

  struct bitmap_file bm;
  int store_fd;

  /* Group commit of the store data and of the bitmap (power mode). */
  struct gcommit store_gc;
  struct gcommit bitmap_gc;
  /* Unsynced changes, both atomic: dirty is bumped after every change to
   * the store or the bitmap; clean is the value of dirty that a finished
   * sync of both is known to cover.  dirty == clean: nothing to flush. */
  uint64_t dirty;
  uint64_t clean;

  /* Counters, atomic. */
  uint64_t chunks_candidate;    /* fixed after create/open */
  uint64_t chunks_copied;
  uint64_t cow_count;

  /* meta_lock serializes rewrites of the meta file (state changes); taken
   * by snap_set_state only, innermost (see the lock order in engine.h). */
  pthread_mutex_t meta_lock;

  /* The chain, oldest to newest; protected by engine->chain_lock. */
  struct nbdsnap_snap *older, *newer;
};

extern void snap_file_name (char *buf, size_t n, uint64_t id,
                            const char *ext);
extern struct nbdsnap_snap *snap_new (void);
extern void snap_free (struct nbdsnap_snap *s);
/* Write the meta file (atomic, durable). */
extern int snap_write_meta (struct statedir *sd, struct nbdsnap_snap *s);
/* Parse snap-ID.meta into s (id, name, created, state, temporary, max). */
extern int snap_read_meta (struct statedir *sd, uint64_t id,
                           struct nbdsnap_snap *s);
/* Change the state and persist it; messages say why. */
extern int snap_set_state (struct statedir *sd, struct nbdsnap_snap *s,
                           enum nbdsnap_state state);
/* Remove the snapshot's files (meta last) and fsync the directory. */
extern int snap_unlink_files (struct statedir *sd, uint64_t id);

static inline int
snap_state (const struct nbdsnap_snap *s)
{
  return __atomic_load_n (&s->state, __ATOMIC_ACQUIRE);
}

extern const char *snap_state_name (int state);

#endif /* NBDSNAP_SNAP_H */
