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
 *                      checksum 0123456789abcdef
 *                    (checksum: FNV-1a 64 of the lines before it; files
 *                    written before it existed have none and are read)
 *   snap-ID.bitmap   header (with the id and the state) + candidate and
 *                    copied bits (bitmap.h)
 *   snap-ID.store    sparse, the image's size; chunk c's preserved content
 *                    lives at offset c * chunk-size, like fssnap's backing
 *                    file
 *
 * The state that counts is the one in the bitmap header, rewritten in
 * place (no free space needed) and synced whenever it changes: creating ->
 * live -> invalid and/or deleting.  The meta file's state line is what the
 * state was when the meta file was last written (at create, when open
 * renames a snapshot, or when the bitmap header could not take "invalid":
 * snap_record_invalid_in_meta); at open the worse of the two wins.
 *
 * Create writes the bitmap (state creating) and the store, installs the
 * snapshot (writes may copy into it from then on), makes them durable in
 * power mode, then writes the meta file, then the header says live.  At
 * open, a header saying creating means the create did not finish: the
 * snapshot is removed as a delete removes it (chunks that older
 * snapshots read through it are moved into the next older one first).
 * Files without a meta file whose bitmap has no header yet are leftovers
 * of a create that never installed its snapshot, removed at open; a
 * bitmap that says live or invalid without a meta file lost its meta
 * file, and the snapshot is kept (invalid, named lost-ID): older
 * snapshots may read through its store.
 *
 * Delete writes "deleting" into the bitmap header (synced) first, then
 * moves the chunks that the next older snapshot needs (durably), then
 * removes the meta file, the store and last the bitmap, whose header says
 * "deleting" until it goes.  At open, deleting with a meta file: the move
 * may be unfinished, so it is finished, then the files go; deleting
 * without one: the move was done, the files go.
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
  int state;                    /* enum nbdsnap_state; atomic.  In memory:
                                   it changes first, then the bitmap
                                   header (snap_set_state) */
  /* A delete is pending (atomic; set under meta_lock, never cleared):
   * the header says deleting whatever the state in memory is, so the
   * next open finishes the delete.  Set by a deferred delete while
   * clients still read the snapshot, and by delete itself before its
   * state becomes deleting. */
  bool delete_pending;
  /* While a delete moves this snapshot's chunks (atomics, bytes). */
  uint64_t move_done, move_total;
  /* The meta file says invalid (snap_record_invalid_in_meta): durable
   * although the bitmap header could not take it.  Under meta_lock. */
  bool meta_invalid;
  /* damaged: found at open with its store or bitmap unusable (wrong size,
   * unreadable, missing): its data is never moved, and the older
   * snapshots that might read through it are invalid too.  Fixed after
   * open. */
  enum { SNAP_DAMAGE_NONE, SNAP_DAMAGE_STORE, SNAP_DAMAGE_BITMAP } damaged;
  /* Made invalid by open's checks (damage, a lost meta file, a duplicate
   * name), which find the same again at every open: the invalid state
   * needs no record on disk (one is written if it can be).  Fixed after
   * open. */
  bool invalid_at_open;

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

  /* meta_lock serializes rewrites of the meta file and of the bitmap
   * header (state changes), and guards bm.state; taken by snap_set_state,
   * snap_state_durable and nbdsnap_snap_mark_temporary, innermost (see
   * the lock order in engine.h). */
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
/* Change the state in memory, then persist it in the bitmap header
 * (in place, synced; needs no free space).  -1 if it could not be
 * persisted (reported): the state in memory has changed all the same, and
 * snap_state_durable says false until a later call succeeds. */
extern int snap_set_state (struct nbdsnap_snap *s, enum nbdsnap_state state);
/* The bitmap header could not take "invalid": record it in the meta file
 * instead (open takes the worse of the two states), under meta_lock.  0:
 * recorded, snap_state_durable says true from then on; -1 (reported):
 * no durable place took it. */
extern int snap_record_invalid_in_meta (struct statedir *sd,
                                        struct nbdsnap_snap *s);
/* Whether the state in memory is the one on disk; if not, try to write it
 * again.  The copy-on-write path calls this before it changes a chunk
 * that an invalid snapshot would need. */
extern bool snap_state_durable (struct nbdsnap_snap *s);
/* Record a pending delete: "deleting" in the header, in place and
 * synced; the state in memory does not change (a deferred delete's
 * snapshot is still read).  -1 if it could not be written (reported):
 * nothing changed. */
extern int snap_mark_delete_pending (struct nbdsnap_snap *s);
/* Remove the snapshot's files (meta first, bitmap last) and fsync the
 * directory. */
extern int snap_unlink_files (struct statedir *sd, uint64_t id);

static inline int
snap_state (const struct nbdsnap_snap *s)
{
  return __atomic_load_n (&s->state, __ATOMIC_ACQUIRE);
}

extern const char *snap_state_name (int state);

#endif /* NBDSNAP_SNAP_H */
