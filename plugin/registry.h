/* nbdsnap plugin: the registry of snapshot exports, NBD connections and
 * admin ownership (plugin/registry.c), and the admin operations built on
 * it (plugin/ops.c).
 *
 * Notes on the design
 *
 * Every snapshot the engine holds has one entry here: its busy state in
 * the manner of fssnap's SID_BUSY — the NBD handles open on it (clients)
 * and the admin pins on it (holds) — and its gate.  A snapshot is busy
 * while clients + holds > 0; plain delete then fails with EBUSY.
 *
 * hidden:  deleted with --defer while busy: not listed, new connections
 *          refused; the engine deletes it when clients and holds reach 0
 *          (and, if the server stops first, at its next start: the
 *          snapshot is marked temporary on disk).
 * revoked: deleted with --force (Linux libunload): every data callback
 *          enters through registry_enter (), a try-lock on the gate that
 *          fails with ESHUTDOWN once revoked is set; the deleter sets
 *          revoked, takes the gate exclusive (so requests already inside
 *          finish), deletes, and the entry lives on, empty, until its
 *          last handle closes.
 *
 * Who may read entry->snap (the engine snapshot, freed by a delete):
 * holders of registry_lock, and data callbacks between registry_enter ()
 * and registry_leave () — a forced delete frees it only with the gate held
 * exclusive, other deletes only when no handle is open.  Nothing else:
 * a handle's other callbacks (.export_description in particular) use what
 * .open copied into its struct conn, so a forced delete cannot free what
 * they read.
 *
 * Locks (see the program's lock order in include/nbdsnap/engine.h):
 *   registry_lock  mutex, protects the entry list, every entry's clients,
 *                  holds, hidden, snap pointer and the list of connections
 *                  and admin ownership records.  Taken by .open, .close,
 *                  .list_exports and every admin operation; never by a
 *                  data callback nor by .export_description (a snapshot's
 *                  description is copied into its connection at .open).
 *                  Held across engine create/delete (so an entry and its
 *                  engine snapshot change together).
 *   entry->gate    rwlock: data callbacks hold it shared (try-lock) for one
 *                  request; force-delete holds it exclusive, inside
 *                  registry_lock.  Nothing takes registry_lock while
 *                  holding a gate.
 * Counters on the data path (bytes, requests) are atomics.
 */
#ifndef NBDSNAP_PLUGIN_REGISTRY_H
#define NBDSNAP_PLUGIN_REGISTRY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "nbdsnap/engine.h"
#include "admin.h"

struct snap_entry {
  char name[NBDSNAP_NAME_MAX + 1];
  struct nbdsnap_snap *snap;    /* NULL once deleted (revoked entries) */
  unsigned clients;
  unsigned holds;
  bool hidden;
  bool revoked;                 /* also read atomically under the gate */
  pthread_rwlock_t gate;
  struct snap_entry *next;
};

/* Long enough for any description registry_describe_unlocked writes: a
 * name of NBDSNAP_NAME_MAX, a date, a state and a 20-digit count. */
#define REGISTRY_DESCRIPTION_MAX 192

/* One NBD connection (one handle). */
struct conn {
  uint64_t id;
  char export[NBDSNAP_NAME_MAX + 1];
  char peer[128];
  struct timespec started;
  struct snap_entry *entry;     /* NULL for the origin; the entry lives
                                   at least until this handle closes */
  bool readonly;
  /* A snapshot's description as of .open (written under registry_lock
   * there), then read and rewritten only by registry_conn_description on
   * the connection's own thread: .export_description never reads
   * entry->snap, which delete --force frees. */
  char description[REGISTRY_DESCRIPTION_MAX];
  uint64_t bytes_read, bytes_written, reads, writes;   /* atomic */
  struct conn *next;
};

/* A hold or a temporary snapshot owned by an admin connection. */
struct owned {
  uint64_t conn;
  struct snap_entry *en;
  bool temporary;               /* else a hold */
  struct owned *next;
};

extern struct nbdsnap_engine *registry_engine;

/* Load one entry per snapshot of the engine. */
extern int registry_init (struct nbdsnap_engine *e, bool readonly);
extern void registry_free (void);

/* .open / .close: register a connection to export name ("" = origin).
 * Unknown, hidden or revoked snapshots are refused (ENOENT, reported). */
extern struct conn *registry_conn_open (const char *name, bool readonly);
extern void registry_conn_close (struct conn *c);

/* Data callbacks on a snapshot handle: enter (0, or -1 with errno
 * ESHUTDOWN if revoked) ... leave. */
extern int registry_enter (struct snap_entry *en);
extern void registry_leave (struct snap_entry *en);

/* .list_exports: the origin and every visible snapshot. */
struct nbdkit_exports;
/* "" with origin_description, then every visible snapshot. */
extern int registry_list_exports (struct nbdkit_exports *exports,
                                  const char *origin_description);

/* .export_description of a snapshot handle: its description as of .open,
 * or, once the handle is revoked, one saying so.  Takes no lock and
 * touches only c and c->entry's name and revoked flag, which live until
 * c closes. */
extern const char *registry_conn_description (struct conn *c);

/* "snapshot NAME, taken DATE, STATE, N chunks copied" into buf (at most
 * REGISTRY_DESCRIPTION_MAX bytes are needed).  Called with registry_lock
 * held, for an entry whose snap is not NULL. */
extern void registry_describe_unlocked (const struct snap_entry *en,
                                        char *buf, size_t n);

/* The admin operations (plugin/ops.c). */
extern const struct admin_ops registry_admin_ops;

/* For plugin/ops.c, all called with registry_lock held. */
extern pthread_mutex_t registry_lock;
/* Broadcast (with registry_lock held) when a snapshot loses a client. */
extern pthread_cond_t registry_cond;
extern struct snap_entry *registry_entries;
extern struct conn *registry_conns;
extern struct owned *registry_owned;
extern int registry_owned_add (uint64_t conn, struct snap_entry *en,
                               bool temporary);
extern bool registry_readonly;
extern struct snap_entry *registry_find (const char *name);
extern struct snap_entry *registry_add (struct nbdsnap_snap *s);
/* Delete en's engine snapshot and forget every owned record about it; the
 * entry is freed unless handles remain (revoked). */
extern int registry_delete_entry (struct snap_entry *en);
extern void registry_maybe_finish (struct snap_entry *en);

#endif /* NBDSNAP_PLUGIN_REGISTRY_H */
