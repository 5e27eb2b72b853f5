/* nbdsnap: the snapshot engine's API (src/, no nbdkit dependency).
 *
 * An engine owns one state directory and the origin (the base image) it
 * belongs to.  It serves origin writes through copy-on-write and reads of
 * every snapshot, and creates and deletes snapshots.  The catalog
 * (src/catalog.h), the plugin and the Check suites are its callers.
 *
 * Conventions: functions return 0 (or a pointer) on success and -1 (or NULL)
 * on error, with errno set to something an NBD client understands (EIO,
 * ENOSPC, EINVAL, EEXIST, ENOENT, EBUSY, EROFS) and one message reported
 * through nbdsnap_error () (see nbdsnap/err.h) where the cause is known.
 *
 * Lock order for the whole program (outermost first; see each lock's
 * comment where it is defined):
 *
 *   catalog: cat->holds_lock (src/catalog.c, mutex: serializes named
 *            hold changes with their writes of the holds file; held
 *            across that write and its fsync, without cat->lock; takes
 *            cat->lock briefly inside)
 *   catalog: cat->lock (src/catalog.c, mutex: entries, NBD connections,
 *            admin ownership, the running rollback; bookkeeping only:
 *            never held across an engine create, delete, rollback,
 *            changes or mark_deleting; under it only nbdsnap_snap_info)
 *   catalog: conn->gate (src/catalog.c, rwlock per NBD handle, origin
 *            included: each data request shared (try-lock), a revoker
 *            exclusive once; never held together with cat->lock)
 *     engine->create_lock  (src/engine-internal.h, mutex: one create at a
 *                           time, held for the whole create)
 *       engine->job_lock   (src/engine-internal.h, mutex: one delete or
 *                           rollback at a time, held for the whole job;
 *                           create takes it only to undo a failed create)
 *         engine->chain_lock (src/engine-internal.h, rwlock: the list of
 *                           snapshots; origin writes, snapshot reads, a
 *                           delete's chunk moves (per batch) and a
 *                           rollback's writes hold it shared; create and
 *                           delete hold it exclusive only for a moment:
 *                           to open a create's window, to install or
 *                           unlink a snapshot, to drain the writes that
 *                           saw a deleted snapshot live; this is how
 *                           in-flight origin writes drain at create)
 *           chunk lock stripe (src/engine-internal.h, rwlock per stripe
 *                           of chunks: held exclusive while a chunk is
 *                           being copied or moved, shared while a snapshot
 *                           reads it from the origin, or changes looks
 *                           whether the origin holds data there)
 *             snap->meta_lock (src/snap.h, mutex: rewrites of the meta
 *                           file and of the bitmap header's state)
 *             group commit  (src/gcommit.c, mutex + condvar per sync
 *                           target)
 *             bitmap word lock (src/bitmap.h, mutex per word stripe of one
 *                           bitmap file: compute, pwrite, store of one
 *                           word of bits; held by bitmap_or_word only)
 *             (these three are leaves: none is held while taking another)
 *
 * Apart, leaves that may be taken under any of the above: the admin jobs'
 * lock (plugin/admin-job.c, jobs.lock), which admin_job_accepted takes
 * from an operation's worker thread; and the seal's lock (src/seal.h,
 * mutex: writes of the seal record), which origin writes take before any
 * engine lock (a rollback's, under job_lock) and the seal's thread takes
 * alone.
 *
 * No lock is taken while holding a lock below it in this list.
 */

#ifndef NBDSNAP_ENGINE_H
#define NBDSNAP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

#define NBDSNAP_NAME_MAX 64               /* [A-Za-z0-9][A-Za-z0-9._-]{0,63} */
#define NBDSNAP_CHUNK_MIN 4096u
#define NBDSNAP_CHUNK_MAX (1024u * 1024u)
#define NBDSNAP_CHUNK_DEFAULT (16u * 1024u)  /* bench/README.md, "chunk size" */

enum nbdsnap_durability {
  NBDSNAP_DURABILITY_POWER = 0,     /* data + bitmap synced before overwrite */
  NBDSNAP_DURABILITY_PROCESS = 1,   /* no syncs on the copy path */
};

/* A snapshot's state, persisted in its bitmap header (src/snap.h). */
enum nbdsnap_state {
  NBDSNAP_STATE_LIVE = 0,
  NBDSNAP_STATE_DELETING = 1,       /* its chunks are being moved into the
                                       next older snapshot: never read;
                                       an open finishes the delete */
  NBDSNAP_STATE_INVALID = 2,        /* lost a chunk, or found damaged at
                                       open: reads fail with EIO */
  NBDSNAP_STATE_CREATING = 3,       /* installed, not yet durable: never
                                       read; an open removes it (moving
                                       any chunk it took into the next
                                       older one first) */
};

/* Progress and cancellation of a long engine operation (the chunk moves of
 * a delete, a rollback).  The operation sets total once it knows it and
 * raises done as it goes, both in bytes (atomics: any thread may read
 * them).  Another thread may set cancel: the operation then stops at the
 * next chunk and fails with ECANCELED, leaving on disk what the next open
 * finishes. */
struct nbdsnap_progress {
  uint64_t done;
  uint64_t total;
  bool cancel;
};

struct nbdsnap_engine;
struct nbdsnap_snap;

struct nbdsnap_origin;                 /* include/nbdsnap/origin.h */

struct nbdsnap_engine_config {
  struct nbdsnap_origin *origin;    /* opened by the caller, who closes it
                                       after nbdsnap_engine_close () */
  const char *statedir;             /* created if missing */
  uint32_t chunk_size;              /* 0 = the directory's, or the default
                                       for a new directory */
  enum nbdsnap_durability durability;
  uint64_t max_store;               /* default per-snapshot limit in bytes,
                                       0 = none */
  unsigned fd_reserve;              /* file descriptors kept free for
                                       clients and everything else: create
                                       refuses snapshots that would eat
                                       into them (EMFILE), open warns;
                                       0 = NBDSNAP_FD_RESERVE_DEFAULT */
  bool adopt;                       /* an image whose identity differs from
                                       the state directory's record is the
                                       same disk (adopt=1; src/statedir.h),
                                       and its bytes are those the server
                                       left, whatever the seal says
                                       (src/seal.h) */
  unsigned seal_lease_ms;           /* the seal's lease (src/seal.h); 0 =
                                       SEAL_LEASE_NS (tests shorten it) */
  bool invalidate_changed;          /* an image changed while no server had
                                       it open (src/seal.h): every snapshot
                                       is made invalid (image-changed=
                                       invalidate); otherwise open refuses
                                       (EINVAL) */
};

/* Every snapshot keeps NBDSNAP_FDS_PER_SNAPSHOT descriptors open (its
 * bitmap and its store). */
#define NBDSNAP_FDS_PER_SNAPSHOT 2
#define NBDSNAP_FD_RESERVE_DEFAULT 64u
/* Open refuses a state directory whose snapshots would leave fewer than
 * this; between it and fd_reserve it warns and starts. */
#define NBDSNAP_FD_RESERVE_MIN 32u

/* What info / list show about one snapshot. */
struct nbdsnap_snap_info {
  uint64_t id;
  char name[NBDSNAP_NAME_MAX + 1];
  struct timespec created;          /* UTC */
  enum nbdsnap_state state;
  bool temporary;
  uint64_t chunks_candidate;        /* chunks that held data at creation */
  uint64_t chunks_copied;           /* chunks copied into this store */
  uint64_t store_bytes;             /* bytes allocated by the store file */
  uint64_t max_store;               /* 0 = none */
  uint64_t cow_count;               /* copy-on-writes done since open */
  uint64_t sync_ns;                 /* time spent syncing since open */
  bool delete_pending;              /* its header says deleting (a deferred
                                       delete: still read while its state
                                       is live; the next open finishes the
                                       delete if nothing does before) */
  uint64_t progress_done;           /* bytes moved so far and to move, */
  uint64_t progress_total;          /* while its state is deleting */
};

/* Open or create the state directory, take its lock and the image's,
 * check its header against the image and load every snapshot (finishing
 * half-done creates and deletes; damaged snapshots are kept, invalid,
 * with a message saying what is wrong).  Errors: "state directory in use"
 * or "image in use" (EBUSY), a header mismatch saying what differs
 * (EINVAL), an image changed while no server had it open and snapshots
 * that would read it (EINVAL, src/seal.h; unless adopt or
 * invalidate_changed), more snapshots than the open file limit allows
 * (EMFILE), I/O errors.
 */
extern struct nbdsnap_engine *
nbdsnap_engine_open (const struct nbdsnap_engine_config *cfg);
extern void nbdsnap_engine_close (struct nbdsnap_engine *e);

/* Start the engine's thread (the seal's lease keeper, src/seal.h) in the
 * process that serves: after nbdkit's fork into the background.  -1
 * (reported) if it cannot start; the engine works without it. */
extern int nbdsnap_engine_start (struct nbdsnap_engine *e);
/* Close after a failed start (the server never served): as close, and
 * remove what the open created in the state directory, the directory
 * itself if it made it, unless snapshots were made (statedir_abandon). */
extern void nbdsnap_engine_abandon (struct nbdsnap_engine *e);

extern uint32_t nbdsnap_engine_chunk_size (const struct nbdsnap_engine *e);
extern uint64_t nbdsnap_engine_size (const struct nbdsnap_engine *e);

/* Origin data path.  Every call that changes the origin copies the old
 * chunks first.  fua: make the write durable before returning.
 * nbdsnap_engine_zero: may_trim lets it punch holes; fast: see
 * nbdsnap_origin_zero ().
 */
extern int nbdsnap_engine_pwrite (struct nbdsnap_engine *e, const void *buf,
                                  uint32_t count, uint64_t offset, bool fua);
extern int nbdsnap_engine_zero (struct nbdsnap_engine *e, uint32_t count,
                                uint64_t offset, bool may_trim, bool fua,
                                bool fast);
extern int nbdsnap_engine_trim (struct nbdsnap_engine *e, uint32_t count,
                                uint64_t offset, bool fua);
/* Flush stores and bitmaps, then the origin. */
extern int nbdsnap_engine_flush (struct nbdsnap_engine *e);

/* Validate a snapshot name, [A-Za-z0-9][A-Za-z0-9._-]{0,63}: 0 if good,
 * else -1 with errno EINVAL and a message.  nbdsnap_name_ok reports
 * nothing (for parsers that answer the client themselves). */
extern bool nbdsnap_name_ok (const char *name);
extern int nbdsnap_name_valid (const char *name);

/* Snapshots.  Pointers stay valid until the snapshot is deleted.
 * nbdsnap_snap_create fails with EEXIST (name taken), EMFILE (the open
 * file limit, see fd_reserve), or an I/O error.  It holds chain_lock
 * exclusive only to drain in-flight origin writes and install the
 * snapshot (state creating); it returns once the snapshot is durable and
 * live (in power mode that includes an origin flush, done outside the
 * exclusive section).  Creates are serialized among themselves. */
extern struct nbdsnap_snap *nbdsnap_snap_create (struct nbdsnap_engine *e,
                                                 const char *name,
                                                 bool temporary);
extern struct nbdsnap_snap *nbdsnap_snap_lookup (struct nbdsnap_engine *e,
                                                 const char *name);
/* Deletes the snapshot: its header becomes deleting (in place, no free
 * space needed), then the chunks the next older one reads through it are
 * moved into it with chain_lock shared and each chunk's stripe exclusive
 * (origin writes and other snapshots' reads go on), then chain_lock is
 * taken exclusive only to unlink it, and its files are removed.  The
 * caller guarantees nobody reads it any more.  Deletes and rollbacks are
 * serialized among themselves (job_lock).  p (may be NULL): progress in
 * bytes moved; cancel stops it with ECANCELED, the snapshot left deleting
 * (unreadable; the next open finishes the delete).  A delete that fails
 * before its header says deleting changes nothing. */
extern int nbdsnap_snap_delete (struct nbdsnap_engine *e,
                                struct nbdsnap_snap *s);
extern int nbdsnap_snap_delete_progress (struct nbdsnap_engine *e,
                                         struct nbdsnap_snap *s,
                                         struct nbdsnap_progress *p);
/* A deferred delete: write "deleting" into the header (in place, synced;
 * no free space needed) but keep serving the snapshot: its state in
 * memory stays as it was, and it takes copies as before, for the clients
 * still reading it.  The caller calls nbdsnap_snap_delete once they are
 * gone; if the server stops first, the next open finishes the delete. */
extern int nbdsnap_snap_mark_deleting (struct nbdsnap_engine *e,
                                       struct nbdsnap_snap *s);

/* Rollback: make the origin read exactly as s.  For every chunk in s's
 * changes set, s's view of the chunk is written to the origin through the
 * ordinary write path (so every newer snapshot keeps its own point in
 * time); all-zero chunks are written as zeroes (holes where the origin
 * supports it).  The caller guarantees nothing else writes the origin
 * meanwhile.  Recorded in the state directory ("rollback" file) before the
 * first write and removed after the last one is flushed: an open that
 * finds it finishes the rollback before it returns.  Fails with EIO if s
 * is invalid, EBUSY if s is creating or deleting, ECANCELED if cancelled
 * (the record stays: the next open finishes it).  p: bytes written of the
 * changes set's. */
extern int nbdsnap_rollback (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
                             struct nbdsnap_progress *p);
/* Every snapshot, oldest first; returns the count (or -1); *out is
 * malloc'd and the caller frees it. */
extern ssize_t nbdsnap_snap_list (struct nbdsnap_engine *e,
                                  struct nbdsnap_snap_info **out);
extern int nbdsnap_snap_info (struct nbdsnap_engine *e,
                              struct nbdsnap_snap *s,
                              struct nbdsnap_snap_info *info);

/* Snapshot data path.  Reads fail with EIO if the snapshot is invalid. */
extern int nbdsnap_snap_pread (struct nbdsnap_engine *e,
                               struct nbdsnap_snap *s, void *buf,
                               uint32_t count, uint64_t offset);

/* Extents: calls fn for consecutive ranges covering [offset, offset+count);
 * hole = reads as zeros.  fn returns 0 to go on, > 0 to stop (the call
 * then returns 0), < 0 for an error it has reported (the call returns -1).
 */
typedef int (*nbdsnap_extent_fn) (void *opaque, uint64_t offset,
                                  uint64_t length, bool hole);
extern int nbdsnap_snap_extents (struct nbdsnap_engine *e,
                                 struct nbdsnap_snap *s, uint64_t offset,
                                 uint64_t count, nbdsnap_extent_fn fn,
                                 void *opaque);

/* Changes between two instants: the chunks that differ between snapshot
 * a's instant and snapshot b's (b newer than a), or the origin now (b
 * NULL) -- the union of the copied bits of a and of every snapshot newer
 * than a and older than b -- merged into maximal ranges, in order, each
 * with hole = b's view (or the origin's) reads as zeros there (the chunk
 * is no candidate of b, or its source, store or origin, has no data in
 * it: found with SEEK_DATA; a chunk only partly a hole is reported as
 * data).  One page at a time: starts at *offset (rounded down to a
 * chunk), calls fn for at most max ranges, and sets *offset to where the
 * next page starts (the image size after the last).  chain_lock is held
 * shared for one page only; the caller keeps a and b from being deleted
 * (the catalog's pins).  Fails with EIO if a or b is not live, EINVAL if
 * b is not newer than a (a == b: no changes). */
#define NBDSNAP_CHANGES_PAGED 1  /* this signature (bench/scale-bench.c
                                    builds against older engines too) */
extern int nbdsnap_snap_changes (struct nbdsnap_engine *e,
                                 struct nbdsnap_snap *a,
                                 struct nbdsnap_snap *b,
                                 uint64_t *offset, uint64_t max,
                                 nbdsnap_extent_fn fn, void *opaque);

/* Small files of the state directory that belong to the engine's callers
 * (the catalog's named holds, src/holds.h), by name (no "/").
 * nbdsnap_engine_read_state: the whole content, malloc'd and NUL-ended
 * (*len without the NUL), or NULL with errno (ENOENT, not reported: no
 * such file; others reported).  nbdsnap_engine_write_state: replace it
 * atomically and durably (name.tmp, fsync, rename, fsync of the
 * directory); 0, or -1 with errno, reported.  Neither takes an engine
 * lock; they may block for as long as the disk takes (fsync). */
extern char *nbdsnap_engine_read_state (struct nbdsnap_engine *e,
                                        const char *name, size_t *len);
extern int nbdsnap_engine_write_state (struct nbdsnap_engine *e,
                                       const char *name,
                                       const char *content);

/* Counters since open that never go down (atomics, any thread), for
 * stats: nbdsnap_engine_counters. */
struct nbdsnap_engine_counters {
  uint64_t cow_chunks;              /* copies into a store before an
                                       origin write (all-zero chunks
                                       included: a hole, no data) */
  uint64_t cow_bytes;               /* their bytes */
  uint64_t syncs;                   /* store and bitmap syncs run (group
                                       commit leaders) */
  uint64_t sync_shared;             /* callers covered by a sync another
                                       caller ran (group commit followers) */
  uint64_t invalidations;           /* snapshots that turned invalid while
                                       open (not those found invalid at
                                       open) */
};
extern void nbdsnap_engine_counters (struct nbdsnap_engine *e,
                                     struct nbdsnap_engine_counters *out);

/* Test hook: a delete's move runs fn (opaque) after each batch of batch
 * chunks (0: the default batch), and a rollback after each word of 64
 * chunks it wrote back, with no lock held, on the job's thread; fn NULL:
 * off.  The model test runs other operations there; -D
 * nbdsnap.job_delay_ms slows jobs down with it (tests). */
extern void nbdsnap_engine_test_move_hook (struct nbdsnap_engine *e,
                                           unsigned batch,
                                           void (*fn) (void *),
                                           void *opaque);

/* Test hook: create runs fn (opaque) after it scanned the origin's data
 * extents and before it installs the snapshot, with no lock held (writes
 * made there happen before the snapshot's instant); NULL: off. */
extern void nbdsnap_engine_test_create_hook (struct nbdsnap_engine *e,
                                             void (*fn) (void *),
                                             void *opaque);

/* Test hook: when set, a store write fails with this errno (0 = off). */
extern void nbdsnap_engine_inject_store_error (struct nbdsnap_engine *e,
                                               int err);

#endif /* NBDSNAP_ENGINE_H */
