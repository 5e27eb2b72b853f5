/* nbdsnap: the admin loop (plugin/admin.c) and the operations it calls.
 *
 * The admin loop owns the control socket and every admin connection; it
 * parses requests (src/proto.c) and calls one operation of the table below
 * per request.  The table is implemented by plugin/ops.c, which formats
 * the answers of the snapshot catalog (src/catalog.h), the owner of what
 * the operations act on.
 *
 * Life cycle, one call per nbdkit callback:
 *
 *   .get_ready   admin_set_ops (&ops); admin_bind (path)
 *   .after_fork  admin_start ()
 *   .cleanup     admin_stop ()      -- before the engine is closed: it calls
 *                                      conn_closed for every connection
 *
 * Threads: the admin loop never runs a long operation itself.  create,
 * delete, rollback, changes, and hold and release with a tag ("jobs") are called on worker threads
 * (plugin/admin-job.c), any number at once, from different connections;
 * they may take seconds to minutes.  Every other operation (list, info,
 * clients, holds, hold and release without a tag, stats,
 * conn_opened, conn_closed) is called on
 * the admin thread and must answer within milliseconds: it must never
 * wait for a job (nor for an NBD client).  Operations must be safe to
 * call concurrently with each other and with themselves, and must not
 * call back into admin_*.  A connection with a job in flight reads no
 * more requests until the job has answered, so responses stay in request
 * order.
 *
 * Progress: delete and rollback get a struct nbdsnap_progress (engine.h)
 * owned by the admin loop, which reads done/total for progress lines and
 * sets cancel when the server stops.  Such an operation calls
 * admin_job_accepted (p) once its checks have passed and the job is
 * certain to go on (its state is persisted): a request with "nowait" is
 * answered then, and the job runs on without its connection.
 *
 * Return values: each request operation returns a new reference to a
 * response object: proto_ok () with its fields added (see the field list
 * in include/nbdsnap/admin.h), or proto_error () / proto_error_errno ().
 * NULL means out of memory and is answered with an "internal" error.
 *
 * conn is the admin connection's identity: unique for the life of the
 * process, never 0, never reused.  Holds and temporary snapshots made
 * through conn belong to it until conn_closed (conn).
 */
#ifndef NBDSNAP_PLUGIN_ADMIN_H
#define NBDSNAP_PLUGIN_ADMIN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "nbdsnap/admin.h"

struct admin_ops {
  /* A peer was accepted (its credentials are checked already).  Optional:
   * lets "clients" list admin connections.  uid/pid from SO_PEERCRED. */
  void (*conn_opened) (uint64_t conn, uid_t uid, pid_t pid);

  /* Take a point-in-time snapshot (a job).  temporary: it belongs to
   * conn and is deleted when conn closes.  Errors: exists, invalid-name,
   * readonly, no-space, io.  Success: "snapshot": SNAP. */
  json_t *(*create) (uint64_t conn, const char *name, bool temporary);

  /* Delete a snapshot (a job; see enum proto_delete_mode).  Errors:
   * not-found, busy (mode NOW while clients or holds exist), io.
   * Success: "name", "deferred", "revoked". */
  json_t *(*delete) (uint64_t conn, const char *name,
                     enum proto_delete_mode mode,
                     struct nbdsnap_progress *p);

  /* Roll the origin back to a snapshot (a job).  Errors: not-found, busy
   * (NBD clients on the origin and !force; another rollback running),
   * io.  force revokes the origin's clients first; destroy_newer deletes
   * the snapshots newer than name afterwards (those that are busy are
   * kept and named in "kept").  Success: "name", "rolled_back_bytes",
   * "revoked", "destroyed": [names], "kept": [names]. */
  json_t *(*rollback) (uint64_t conn, const char *name, bool force,
                       bool destroy_newer, struct nbdsnap_progress *p);

  /* Every live snapshot, oldest first.  Success: "snapshots": [SNAP]. */
  json_t *(*list) (uint64_t conn);

  /* One snapshot, with everything known about it.  Errors: not-found.
   * Success: "snapshot": SNAP. */
  json_t *(*info) (uint64_t conn, const char *name);

  /* Every NBD client connection (and, optionally, admin connections).
   * Success: "clients": [...]. */
  json_t *(*clients) (uint64_t conn);

  /* Pin a snapshot for conn: delete without force fails with busy until
   * released.  A connection may hold a snapshot more than once; each hold
   * needs its release.  Errors: not-found.  Success: "name", "holds". */
  json_t *(*hold) (uint64_t conn, const char *name);

  /* Drop one of conn's holds on a snapshot.  Errors: not-found, not-held
   * (conn holds none: holds of other connections are theirs).  Success:
   * "name", "holds". */
  json_t *(*release) (uint64_t conn, const char *name);

  /* Named holds (jobs: each writes and syncs the holds file).  hold:
   * errors not-found, exists (the tag is on it already), invalid-name,
   * limit, io; success "name", "tag", "created", "holds",
   * "named_holds".  release: errors not-found, not-held (no hold with
   * that tag), io; success "name", "holds", "named_holds". */
  json_t *(*hold_named) (uint64_t conn, const char *name, const char *tag);
  json_t *(*release_named) (uint64_t conn, const char *name,
                            const char *tag);

  /* Every hold (of name only, unless it is ""): named and connection
   * holds.  Errors: not-found.  Success: "holds": [...]. */
  json_t *(*holds) (uint64_t conn, const char *name);

  /* One page of the changes from name to `to` (a job).  Errors:
   * not-found, io (invalid snapshot), bad-request (to not newer).
   * Success: see "changes" in include/nbdsnap/admin.h. */
  /* One page: to "" is the origin now (see "changes" in admin.h). */
  json_t *(*changes) (uint64_t conn, const char *name, const char *to,
                      uint64_t offset, uint64_t limit);

  /* hello's "nbd": where nbdkit listens for NBD clients (a new array of
   * URI strings). */
  json_t *(*nbd_uris) (void);

  /* Server-wide counters.  The admin loop adds its own under "admin". */
  json_t *(*stats) (uint64_t conn);

  /* conn has closed, for any reason (EOF, error, refused after being
   * accepted, too slow, server shutdown): release its holds, delete its
   * temporary snapshots (deferred if clients still read them).  Must not
   * fail; report problems with nbdkit_error. */
  void (*conn_closed) (uint64_t conn);
};

/* Install the operations.  Call before admin_start; ops must stay valid
 * until admin_stop returns.  Missing operations answer "internal". */
extern void admin_set_ops (const struct admin_ops *ops);

/* Create the control socket at path (mode 0600), replacing a stale socket
 * file that nobody listens on.  Returns 0, or -1 after nbdkit_error. */
extern int admin_bind (const char *path);

/* Start the admin thread.  Returns 0, or -1 after nbdkit_error.  A no-op
 * (returning 0) if admin_bind was not called. */
extern int admin_start (void);

/* Stop the admin thread: wakes it with ev_async_send, waits for it to
 * close every connection (calling conn_closed), then removes the socket
 * file.  Safe to call if admin_bind or admin_start never ran or failed. */
extern void admin_stop (void);

/* Descriptors.  The most admin connections at once: a quarter of the soft
 * RLIMIT_NOFILE, at least 1, at most 512 (16 under a limit of 64, 256
 * under 1024).  A function of the limit only, which is fixed once
 * .config_complete has raised it (plugin/fdlimit.h). */
extern unsigned admin_conn_limit (void);

/* The most descriptors the admin loop holds at once: admin_conn_limit ()
 * connections plus its fixed ones (listening socket, epoll, ev_async, one
 * socket being refused).  A descriptor budget for the rest of the process
 * (snapshots) must leave this many free for the admin loop, or admin
 * connections wait in the listen queue (accept pauses; see admin.c). */
extern unsigned admin_fd_reserve (void);

/* Called by a delete or rollback operation, from its worker thread, once
 * the job is accepted (see "Progress" above).  Safe from any thread;
 * calling it twice is harmless. */
extern void admin_job_accepted (struct nbdsnap_progress *p);

#endif /* NBDSNAP_PLUGIN_ADMIN_H */
