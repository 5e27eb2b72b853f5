/* nbdsnap: the snapshot catalog (src/catalog.c) — the control-plane state
 * over one engine: an entry per snapshot with its users, the NBD
 * connections, and what admin connections own.  No nbdkit dependency:
 * the plugin (plugin/nbdsnap.c, plugin/ops.c) and tests/unit/check_catalog.c
 * are its callers.
 *
 * Notes on the design
 *
 * Entries.  Every snapshot of the engine has one entry, in id order
 * (oldest first), in one of three states:
 *
 *   creating  the name is reserved while nbdsnap_snap_create runs (without
 *             the catalog lock); not listed as live, not openable, its
 *             name taken.
 *   live      served: NBD connections may open it; holds, changes,
 *             rollback and delete act on it.
 *   deleting  deferred: delete --defer (or its owner's admin connection
 *             closing, for a temporary one) found it in use; it is marked
 *             deleting on disk (a restart finishes the delete), new
 *             connections are refused, its clients read on, and the
 *             catalog's reaper thread deletes it once clients, holds and
 *             pins are all gone.
 *             moving: the engine delete runs (chunks move into the older
 *             snapshot); progress done/total is shown.
 *             stuck: an engine delete failed after the header said
 *             deleting; any delete retries it, a restart finishes it.
 *   (invalid is the engine's state of a live entry that lost a chunk.)
 *
 * Users.  A snapshot is busy while clients (NBD handles) + holds (admin
 * pins, owned by an admin connection) + named holds + pins (a changes or
 * rollback job running on it) > 0.  delete NOW then fails with busy
 * (after a grace of CATALOG_BUSY_GRACE_SECONDS for clients that are
 * closing), DEFER defers, FORCE revokes the clients and drops the holds
 * (it still fails with busy while a job pins the snapshot).  A named hold
 * makes every mode fail with busy, like zfs destroy of a held snapshot:
 * it is released by its tag only.  The name of an entry is taken in every
 * state, until the entry goes.
 *
 * Named holds.  A hold with a tag (zfs hold TAG SNAP) belongs to no
 * connection and survives restarts: the catalog keeps them in memory and
 * in the state directory's "holds" file (format and damage handling in
 * src/holds.h), rewritten whole, durably, by every hold and release
 * before it answers.  The write runs without cat->lock (an fsync may take
 * long) under cat->holds_lock, which serializes the writers so that the
 * file always ends with every change made (see the lock discipline in
 * catalog.c).  While a hold is being written it already counts (a delete
 * meanwhile is refused), and while a release is being written the hold
 * still counts: a failed write undoes the change in memory, so memory
 * and file differ only on the side of holding.  catalog_new loads the
 * file: a hold on a snapshot that no longer exists is dropped with a
 * message, a damaged file is reported, its holds salvaged and the file
 * kept as holds.damaged.
 *
 * Counters.  Each NBD handle counts its requests (bytes, requests by
 * kind, failures by errno) in atomics of its own; when it closes, the
 * catalog adds them to the server-wide totals under cat->lock, so
 * catalog_totals (closed totals + open handles) never goes down.
 *
 * Connections.  Each NBD handle has its own gate, an rwlock: every data
 * request holds it shared (catalog_enter, a try-lock that fails with
 * ESHUTDOWN once the handle is revoked) until catalog_leave.  Revoking a
 * handle (delete --force on its snapshot, rollback --force on the origin)
 * sets revoked, then takes the gate exclusive once, so the requests
 * already inside finish before the snapshot is freed or the origin is
 * rewritten.  A revoked handle is detached from its entry; it stays in the
 * connection list (listed by catalog_clients with revoked) until it
 * closes.  Per-connection gates mean origin requests share no lock.
 *
 * Long engine calls (create, delete, rollback, changes) never run under
 * the catalog lock: the state is marked under it (creating, deleting +
 * moving, a pin, rollback running), the lock is dropped for the engine
 * call and taken again to finish.  Everything else answers within
 * milliseconds while such a call runs.
 *
 * Reaper.  A delete that becomes due when the last user goes (an NBD close,
 * a release, an admin connection closing, a changes job ending) is never
 * run by the thread that dropped the reference (an nbdkit connection
 * thread, the admin loop): the catalog's own thread does it, started by
 * catalog_start (after nbdkit's fork).
 *
 * Errors.  Every operation that can be refused returns enum catalog_err:
 * CATALOG_OK, or a kind that the admin protocol maps one to one, with
 * errno set as the comment of the kind says and one message recorded
 * through nbdsnap_refuse () (nbdsnap_last_error () in the calling thread
 * has it; the log has it at debug level only: the caller answers it).
 * CATALOG_ERR_SYSTEM: the engine (which reported its own message with
 * nbdsnap_error) or malloc failed; errno says why.  Functions returning a
 * pointer or a count return NULL / -1 with errno set and a message.
 */
#ifndef NBDSNAP_CATALOG_H
#define NBDSNAP_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

#include "nbdsnap/engine.h"

/* How long delete NOW waits for clients that are closing. */
#define CATALOG_BUSY_GRACE_SECONDS 1
/* Holds and temporary snapshots one admin connection may own. */
#define CATALOG_OWNED_MAX 1024
/* Long enough for any description catalog_describe writes. */
#define CATALOG_DESCRIPTION_MAX 192
#define CATALOG_PEER_MAX 128
/* Named holds the catalog keeps, all snapshots together (the file stays
 * a few MiB at most). */
#define CATALOG_NAMED_MAX 65536
/* Failed requests are counted per errno below this; others together. */
#define CATALOG_ERRNO_SLOTS 136

struct catalog;
struct catalog_conn;

enum catalog_err {
  CATALOG_OK = 0,
  CATALOG_ERR_NOT_FOUND,        /* ENOENT: unknown, or not in a state the
                                   operation accepts (the message says) */
  CATALOG_ERR_NOT_HELD,         /* ENOENT: release without a hold */
  CATALOG_ERR_EXISTS,           /* EEXIST: the name is taken */
  CATALOG_ERR_BUSY,             /* EBUSY: in use, or a rollback runs */
  CATALOG_ERR_LIMIT,            /* EAGAIN: CATALOG_OWNED_MAX reached */
  CATALOG_ERR_READONLY,         /* EROFS: the origin is read-only */
  CATALOG_ERR_SYSTEM,           /* errno from the engine or malloc */
};

enum catalog_state {
  CATALOG_STATE_CREATING,
  CATALOG_STATE_LIVE,
  CATALOG_STATE_DELETING,
  CATALOG_STATE_INVALID,        /* live, but the engine says invalid */
};

/* "creating", "live", "deleting", "invalid" (the protocol's words). */
extern const char *catalog_state_name (enum catalog_state state);

enum catalog_delete_mode {
  CATALOG_DELETE_NOW,           /* busy if in use */
  CATALOG_DELETE_DEFER,         /* if in use: deleted after the last user */
  CATALOG_DELETE_FORCE,         /* revoke clients, drop holds, delete */
};

/* Called once a delete or rollback is certain to go on (its state is
 * marked, persisted where that applies), from the calling thread, without
 * the catalog lock. */
typedef void (*catalog_accepted_fn) (struct nbdsnap_progress *p);

/* A copy of one entry (catalog_list, catalog_info, catalog_create). */
struct catalog_snap {
  struct nbdsnap_snap_info info;    /* creating: name and created only;
                                       moving: as of the delete's start */
  enum catalog_state state;
  unsigned clients, holds;
  unsigned named_holds;
  bool deferred;                    /* deleting, waiting for its users */
  bool moving;                      /* deleting, the engine delete runs */
  uint64_t progress_done, progress_total;   /* moving */
  bool rollback;                    /* the target of a running rollback */
  uint64_t rollback_done, rollback_total;
};

/* A copy of one NBD connection (catalog_clients). */
struct catalog_client {
  uint64_t id;
  char export[NBDSNAP_NAME_MAX + 1];    /* "" = the origin */
  char peer[CATALOG_PEER_MAX];
  struct timespec started;              /* CLOCK_REALTIME */
  bool readonly;
  bool revoked;
  uint64_t bytes_read, bytes_written, reads, writes;  /* bytes_written and
                                           writes include zeros and trims */
};

/* What a data request was, for the counters. */
enum catalog_req {
  CATALOG_REQ_READ,
  CATALOG_REQ_WRITE,
  CATALOG_REQ_ZERO,
  CATALOG_REQ_TRIM,
  CATALOG_REQ_FLUSH,
  CATALOG_REQ_OTHER,            /* cache, extents: failures only */
};

/* Server-wide counters since catalog_new (catalog_totals). */
struct catalog_totals {
  uint64_t origin_bytes_read, origin_bytes_written;   /* payload */
  uint64_t origin_zero_bytes, origin_trim_bytes;
  uint64_t origin_reads, origin_writes, origin_zeros, origin_trims;
  uint64_t origin_flushes;
  uint64_t snap_bytes_read, snap_reads;               /* every snapshot */
  uint64_t failed;                                    /* data requests */
  uint64_t errors[CATALOG_ERRNO_SLOTS];               /* by errno; [0]:
                                                         any other */
};

/* A copy of one hold (catalog_holds). */
struct catalog_hold {
  char name[NBDSNAP_NAME_MAX + 1];
  char tag[NBDSNAP_NAME_MAX + 1];   /* "" for a connection hold */
  uint64_t conn;                    /* a connection hold's owner, else 0 */
  time_t created;                   /* UTC seconds */
};

/* One entry per snapshot the engine has.  readonly: the origin cannot
 * change (create and rollback refused). */
extern struct catalog *catalog_new (struct nbdsnap_engine *e, bool readonly);
/* Start the reaper thread (deletes that a release makes due wait until
 * then).  Separate from catalog_new because a thread does not survive a
 * fork: the plugin calls it in .after_fork, after nbdkit daemonized.
 * 0, or -1 with errno and a message. */
extern int catalog_start (struct catalog *cat);
/* Stops the reaper (a move in progress is cancelled: the next open
 * finishes it) and frees everything.  No handle may be open and no call
 * in progress. */
extern void catalog_free (struct catalog *cat);
extern struct nbdsnap_engine *catalog_engine (const struct catalog *cat);
extern bool catalog_readonly (const struct catalog *cat);

/* --- NBD connections -------------------------------------------------- */

/* Open a handle on export ("" = the origin).  peer: a string for
 * "clients" (copied).  A snapshot handle is read-only whatever readonly
 * says.  NULL with errno ENOENT (unknown, creating or deleting snapshot),
 * EBUSY (the origin while a rollback runs) or ENOMEM, reported. */
extern struct catalog_conn *catalog_conn_open (struct catalog *cat,
                                               const char *export,
                                               bool readonly,
                                               const char *peer);
/* The handle goes (no request may be inside it).  May make a deferred
 * delete due (the reaper does it). */
extern void catalog_conn_close (struct catalog *cat, struct catalog_conn *c);

/* Around every data request: 0, or -1 with errno ESHUTDOWN (reported)
 * once the handle is revoked.  Between the two, catalog_conn_snap stays
 * valid.  Takes no catalog lock. */
extern int catalog_enter (struct catalog_conn *c);
extern void catalog_leave (struct catalog_conn *c);

/* These read only what open fixed, and take no lock. */
extern struct nbdsnap_snap *catalog_conn_snap (const struct catalog_conn *c);
extern const char *catalog_conn_export (const struct catalog_conn *c);
extern bool catalog_conn_readonly (const struct catalog_conn *c);
/* A snapshot handle's description as of open, or one saying the handle
 * is revoked; for the origin NULL unless revoked.  Call from the
 * handle's own thread only (it may rewrite the handle's buffer). */
extern const char *catalog_conn_description (struct catalog_conn *c);
/* After every data request (atomics, no lock): r 0 counts a request of
 * kind and its count bytes, r -1 a failure with errno (which it keeps).
 * Returns r.  (catalog_enter counts its own refusals.) */
extern int catalog_conn_done (struct catalog_conn *c, enum catalog_req kind,
                              uint32_t count, int r);
/* The totals: handles closed since catalog_new plus the open ones. */
extern void catalog_totals (struct catalog *cat, struct catalog_totals *out);

/* "snapshot NAME, taken DATE, STATE, N chunks copied" */
extern void catalog_describe (const struct catalog_snap *s, char *buf,
                              size_t n);

/* --- Admin operations --------------------------------------------------
 *
 * owner: the admin connection's identity (never 0).  Holds and temporary
 * snapshots belong to it until catalog_owner_closed (owner).
 */

/* Take a snapshot.  EXISTS (the name is taken by any entry, the message
 * says in what state), READONLY, BUSY (a rollback runs), LIMIT (a
 * temporary one past CATALOG_OWNED_MAX), SYSTEM.  out (may be NULL): the
 * new snapshot. */
extern enum catalog_err catalog_create (struct catalog *cat, uint64_t owner,
                                        const char *name, bool temporary,
                                        struct catalog_snap *out);

struct catalog_delete_result {
  bool deferred;                /* deleted when its last user goes */
  unsigned revoked;             /* handles revoked by FORCE */
  uint64_t moved_bytes;         /* progress done at the end */
};

/* Delete a snapshot (see the notes).  NOT_FOUND (unknown, creating, or
 * already being deleted, except that FORCE finds a deferred one and any
 * mode a stuck one), BUSY (NOW: in use after the grace; any mode: pinned
 * by a job), SYSTEM (engine).  p (may be NULL): the engine's progress;
 * accepted (may be NULL) is called with p once the delete is certain. */
extern enum catalog_err catalog_delete (struct catalog *cat, uint64_t owner,
                                        const char *name,
                                        enum catalog_delete_mode mode,
                                        struct nbdsnap_progress *p,
                                        catalog_accepted_fn accepted,
                                        struct catalog_delete_result *res);

struct catalog_rollback_result {
  uint64_t rolled_back_bytes;
  unsigned revoked;                         /* origin handles */
  char (*destroyed)[NBDSNAP_NAME_MAX + 1];  /* malloc'd */
  size_t ndestroyed;
  char (*kept)[NBDSNAP_NAME_MAX + 1];       /* malloc'd */
  size_t nkept;
};
extern void catalog_rollback_result_free (struct catalog_rollback_result *r);

/* Roll the origin back to snapshot name.  READONLY; NOT_FOUND (unknown,
 * creating, deleting); BUSY (NBD clients on the origin and !force, the
 * message names the count; another rollback runs); SYSTEM (engine).
 * While it runs, origin opens are refused and name cannot be deleted.
 * destroy_newer: afterwards every snapshot newer than name that is not
 * in use is deleted (destroyed), the others are kept.  res is filled on
 * success (free it with catalog_rollback_result_free). */
extern enum catalog_err catalog_rollback (struct catalog *cat,
                                          uint64_t owner, const char *name,
                                          bool force, bool destroy_newer,
                                          struct nbdsnap_progress *p,
                                          catalog_accepted_fn accepted,
                                          struct catalog_rollback_result *res);

/* Holds: NOT_FOUND (not live), LIMIT; release: NOT_FOUND, NOT_HELD.
 * *holds: the snapshot's holds (all owners) afterwards. */
extern enum catalog_err catalog_hold (struct catalog *cat, uint64_t owner,
                                      const char *name, unsigned *holds);
extern enum catalog_err catalog_release (struct catalog *cat, uint64_t owner,
                                         const char *name, unsigned *holds);

/* Named holds (see the notes).  hold: NOT_FOUND (not live), EXISTS (the
 * snapshot has a hold with this tag), LIMIT (CATALOG_NAMED_MAX), SYSTEM
 * (EINVAL: a bad tag; the file could not be written: nothing changed).
 * out (may be NULL): the new hold.  release: NOT_FOUND (no such
 * snapshot), NOT_HELD (no hold with this tag on it), SYSTEM (the file
 * could not be written: the hold stays).  *named: the snapshot's named
 * holds afterwards; *holds (may be NULL): its connection holds.  Both
 * return once the file says so durably. */
extern enum catalog_err catalog_hold_named (struct catalog *cat,
                                            const char *name,
                                            const char *tag,
                                            struct catalog_hold *out,
                                            unsigned *named,
                                            unsigned *holds);
extern enum catalog_err catalog_release_named (struct catalog *cat,
                                               const char *name,
                                               const char *tag,
                                               unsigned *named,
                                               unsigned *holds);
/* Every hold, named ones first (oldest first), then connection holds, of
 * snapshot name only unless it is NULL or "" (NOT_FOUND if there is no
 * such snapshot).  *out malloc'd (caller frees), *n its count. */
extern enum catalog_err catalog_holds (struct catalog *cat, const char *name,
                                       struct catalog_hold **out, size_t *n);

/* The admin connection owner closed: its holds go, its temporary
 * snapshots become deferred deletes (done by the reaper). */
extern void catalog_owner_closed (struct catalog *cat, uint64_t owner);

/* One page of nbdsnap_snap_changes from live snapshot a to live snapshot
 * to (NULL or "": the origin now), both pinned for the page (a deferred
 * delete waits for it).  fn runs under the engine's locks: it must not
 * call the catalog.  NOT_FOUND, SYSTEM (EINVAL: to is not newer). */
extern enum catalog_err catalog_changes (struct catalog *cat,
                                         const char *a, const char *to,
                                         uint64_t *offset, uint64_t max,
                                         nbdsnap_extent_fn fn, void *opaque);

/* Every entry, oldest first, creating and deleting ones included; *out is
 * malloc'd (the caller frees it).  Returns the count, or -1 (ENOMEM). */
extern ssize_t catalog_list (struct catalog *cat, struct catalog_snap **out);
/* One entry in any state.  NOT_FOUND. */
extern enum catalog_err catalog_info (struct catalog *cat, const char *name,
                                      struct catalog_snap *out);
/* Every NBD connection; as catalog_list. */
extern ssize_t catalog_clients (struct catalog *cat,
                                struct catalog_client **out);

/* For tests: wait until the reaper has nothing to do. */
extern void catalog_wait_idle (struct catalog *cat);

#endif /* NBDSNAP_CATALOG_H */
