/* nbdsnap plugin: the admin operations (struct admin_ops, plugin/admin.h)
 * on the registry and the engine.
 *
 * Notes on the design
 *
 * Called from the admin thread only, one at a time; each takes
 * registry_lock for its whole length (see registry.h).
 *
 * Ownership (ZFS zfs_onexit): each hold and each temporary snapshot is an
 * `owned' record (registry.h) naming the admin connection that made it.
 * conn_closed takes that connection's records: holds are dropped,
 * temporary snapshots deleted, deferred if clients still read them.  A
 * deferred delete marks the snapshot temporary on disk, so a restart
 * finishes it.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "nbdsnap/admin.h"
#include "nbdsnap/err.h"
#include "registry.h"

/* Why an engine call failed, for the admin client: the engine's own
 * message (which says what to do), else strerror.  The caller cleared it
 * with nbdsnap_clear_error () before the call. */
static const char *
cause (int err)
{
  const char *m = nbdsnap_last_error ();
  return m[0] ? m : strerror (err);
}

static void
rfc3339 (const struct timespec *ts, char *buf, size_t n)
{
  struct tm tm;

  gmtime_r (&ts->tv_sec, &tm);
  strftime (buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *
snap_json (struct snap_entry *en)
{
  struct nbdsnap_snap_info info;
  char when[32];

  nbdsnap_snap_info (registry_engine, en->snap, &info);
  rfc3339 (&info.created, when, sizeof when);
  return json_pack ("{s:s, s:I, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I,"
                    " s:I, s:I, s:I}",
                    "name", info.name,
                    "id", (json_int_t) info.id,
                    "created", when,
                    "state", info.state == NBDSNAP_STATE_INVALID
                    ? "invalid" : en->hidden ? "deleting" : "live",
                    "temporary", info.temporary,
                    "clients", (json_int_t) en->clients,
                    "holds", (json_int_t) en->holds,
                    "chunks_candidate", (json_int_t) info.chunks_candidate,
                    "chunks_copied", (json_int_t) info.chunks_copied,
                    "store_bytes", (json_int_t) info.store_bytes,
                    "max_store", (json_int_t) info.max_store,
                    "cow_count", (json_int_t) info.cow_count,
                    "sync_ns", (json_int_t) info.sync_ns);
}

static json_t *
ok_with (const char *key, json_t *value)
{
  json_t *r = proto_ok ();

  if (r == NULL || value == NULL) {
    json_decref (r);
    json_decref (value);
    return NULL;
  }
  json_object_set_new (r, key, value);
  return r;
}

static json_t *
not_found (const char *name)
{
  return proto_error (PROTO_ERR_NOT_FOUND, ENOENT,
                      "snapshot %s does not exist", name);
}

/* A visible snapshot by name, or NULL. */
static struct snap_entry *
find_visible (const char *name)
{
  struct snap_entry *en = registry_find (name);

  return en && !en->hidden ? en : NULL;
}

/* Holds and temporary snapshots one admin connection may own: enough for
 * any script, and a bound on the memory a client can make us keep. */
#define MAX_OWNED_PER_CONN 1024

static json_t *
limit_error (void)
{
  return proto_error (PROTO_ERR_LIMIT, EAGAIN,
                      "this connection already owns %d pins and temporary "
                      "snapshots, the most one connection may",
                      MAX_OWNED_PER_CONN);
}

static int
owned_count (uint64_t conn)
{
  struct owned *o;
  int n = 0;

  for (o = registry_owned; o != NULL; o = o->next)
    n += o->conn == conn;
  return n;
}

static json_t *
op_create (uint64_t conn, const char *name, bool temporary)
{
  struct nbdsnap_snap *s;
  struct snap_entry *en;
  json_t *r;

  if (registry_readonly)
    return proto_error (PROTO_ERR_READONLY, EROFS,
                        "the origin is read-only (nbdkit -r or an image "
                        "opened read-only): it cannot change, so there is "
                        "nothing to snapshot");
  pthread_mutex_lock (&registry_lock);
  en = registry_find (name);
  if (en != NULL) {
    /* A snapshot deleted with --defer is no longer listed, but the
     * engine keeps its name until its last client goes: say so, or
     * "exists" contradicts "list" and "info". */
    r = en->hidden
      ? proto_error (PROTO_ERR_EXISTS, EEXIST,
                     "snapshot %s is being deleted (deferred) and still "
                     "in use (%u client(s), %u hold(s)): its name is free "
                     "once they are gone", name, en->clients, en->holds)
      : proto_error (PROTO_ERR_EXISTS, EEXIST,
                     "snapshot %s already exists", name);
    pthread_mutex_unlock (&registry_lock);
    return r;
  }
  if (temporary && owned_count (conn) >= MAX_OWNED_PER_CONN) {
    pthread_mutex_unlock (&registry_lock);
    return limit_error ();
  }
  nbdsnap_clear_error ();
  s = nbdsnap_snap_create (registry_engine, name, temporary);
  if (s == NULL) {
    int err = errno;
    pthread_mutex_unlock (&registry_lock);
    return proto_error_errno (err, "create %s: %s", name, cause (err));
  }
  en = registry_add (s);
  if (en && temporary)
    registry_owned_add (conn, en, true);
  r = en ? ok_with ("snapshot", snap_json (en)) : NULL;
  pthread_mutex_unlock (&registry_lock);
  return r;
}

#define BUSY_GRACE_SECONDS 1

static json_t *
op_delete (uint64_t conn, const char *name, enum proto_delete_mode mode)
{
  struct snap_entry *en;
  json_t *r = NULL;
  unsigned revoked = 0;
  bool deferred = false;

  nbdsnap_clear_error ();
  pthread_mutex_lock (&registry_lock);
  /* --force also finds a snapshot hidden by an earlier --defer: it is how
   * to get rid of one whose last client does not go away. */
  en = mode == PROTO_DELETE_FORCE ? registry_find (name)
    : find_visible (name);
  if (en == NULL) {
    r = not_found (name);
    goto out;
  }
  /* A client that has just disconnected (nbdcopy ... && nbdsnapctl
   * delete) may not be unregistered yet: give connections that are closing
   * up to BUSY_GRACE_SECONDS before answering busy. */
  if (mode == PROTO_DELETE_NOW && en->holds == 0 && en->clients > 0) {
    struct timespec deadline;

    clock_gettime (CLOCK_REALTIME, &deadline);
    deadline.tv_sec += BUSY_GRACE_SECONDS;
    while (en != NULL && en->clients > 0 && en->holds == 0
           && pthread_cond_timedwait (&registry_cond, &registry_lock,
                                      &deadline) == 0)
      en = find_visible (name);
    if (en == NULL) {
      r = not_found (name);
      goto out;
    }
  }
  if (en->clients + en->holds > 0) {
    switch (mode) {
    case PROTO_DELETE_NOW:
      r = proto_error (PROTO_ERR_BUSY, EBUSY,
                       "snapshot %s is busy: %u client(s) connected, %u "
                       "hold(s); use --defer or --force", name,
                       en->clients, en->holds);
      goto out;
    case PROTO_DELETE_DEFER:
      if (nbdsnap_snap_mark_deleting (registry_engine, en->snap) == -1) {
        r = proto_error_errno (errno, "delete %s: %s", name,
                               cause (errno));
        goto out;
      }
      en->hidden = true;
      deferred = true;
      break;
    case PROTO_DELETE_FORCE:
      if (en->clients == 0)     /* only holds: nothing to revoke */
        goto delete_now;
      /* Revoke: new requests fail, requests inside drain. */
      __atomic_store_n (&en->revoked, true, __ATOMIC_RELEASE);
      pthread_rwlock_wrlock (&en->gate);
      revoked = en->clients;
      if (registry_delete_entry (en) == -1) {
        int err = errno;
        __atomic_store_n (&en->revoked, false, __ATOMIC_RELEASE);
        pthread_rwlock_unlock (&en->gate);
        r = proto_error_errno (err, "delete %s: %s", name, cause (err));
        goto out;
      }
      /* The entry stays, empty, until its last handle closes. */
      pthread_rwlock_unlock (&en->gate);
      break;
    }
  }
  else {
  delete_now:
    if (registry_delete_entry (en) == -1) {
      r = proto_error_errno (errno, "delete %s: %s", name, cause (errno));
      goto out;
    }
  }
  r = proto_ok ();
  if (r)
    json_object_update_new (r, json_pack ("{s:s, s:b, s:I}", "name", name,
                                          "deferred", deferred,
                                          "revoked", (json_int_t) revoked));
 out:
  pthread_mutex_unlock (&registry_lock);
  return r;
}

static json_t *
op_list (uint64_t conn)
{
  struct snap_entry *en;
  json_t *arr = json_array ();

  pthread_mutex_lock (&registry_lock);
  for (en = registry_entries; en != NULL && arr; en = en->next)
    if (en->snap != NULL && !en->hidden)
      json_array_append_new (arr, snap_json (en));
  pthread_mutex_unlock (&registry_lock);
  return ok_with ("snapshots", arr);
}

static json_t *
op_info (uint64_t conn, const char *name)
{
  struct snap_entry *en;
  json_t *r;

  pthread_mutex_lock (&registry_lock);
  en = find_visible (name);
  r = en ? ok_with ("snapshot", snap_json (en)) : not_found (name);
  pthread_mutex_unlock (&registry_lock);
  return r;
}

static json_t *
op_clients (uint64_t conn)
{
  struct conn *c;
  json_t *arr = json_array ();
  char when[32];

  pthread_mutex_lock (&registry_lock);
  for (c = registry_conns; c != NULL && arr; c = c->next) {
    rfc3339 (&c->started, when, sizeof when);
    json_array_append_new (arr, json_pack (
      "{s:I, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:b, s:b}",
      "id", (json_int_t) c->id,
      "export", c->export,
      "peer", c->peer,
      "started", when,
      "bytes_read", (json_int_t) __atomic_load_n (&c->bytes_read,
                                                  __ATOMIC_RELAXED),
      "bytes_written", (json_int_t) __atomic_load_n (&c->bytes_written,
                                                     __ATOMIC_RELAXED),
      "reads", (json_int_t) __atomic_load_n (&c->reads, __ATOMIC_RELAXED),
      "writes", (json_int_t) __atomic_load_n (&c->writes, __ATOMIC_RELAXED),
      "readonly", c->readonly,
      "revoked", c->entry && c->entry->revoked));
  }
  pthread_mutex_unlock (&registry_lock);
  return ok_with ("clients", arr);
}

static json_t *
holds_reply (struct snap_entry *en)
{
  return json_pack ("{s:b, s:s, s:I}", "ok", 1, "name", en->name,
                    "holds", (json_int_t) en->holds);
}

static json_t *
op_hold (uint64_t conn, const char *name)
{
  struct snap_entry *en;
  json_t *r;

  pthread_mutex_lock (&registry_lock);
  en = find_visible (name);
  if (en == NULL)
    r = not_found (name);
  else if (owned_count (conn) >= MAX_OWNED_PER_CONN)
    r = limit_error ();
  else if (registry_owned_add (conn, en, false) == -1)
    r = NULL;
  else {
    en->holds++;
    r = holds_reply (en);
  }
  pthread_mutex_unlock (&registry_lock);
  return r;
}

/* Drop one hold of conn on en; false if conn holds none. */
static bool
drop_hold (uint64_t conn, struct snap_entry *en)
{
  struct owned **p, *o;

  for (p = &registry_owned; (o = *p) != NULL; p = &o->next)
    if (o->conn == conn && o->en == en && !o->temporary) {
      *p = o->next;
      free (o);
      en->holds--;
      return true;
    }
  return false;
}

static json_t *
op_release (uint64_t conn, const char *name)
{
  struct snap_entry *en;
  json_t *r;

  pthread_mutex_lock (&registry_lock);
  en = registry_find (name);
  if (en == NULL)
    r = not_found (name);
  else if (!drop_hold (conn, en))
    r = proto_error (PROTO_ERR_NOT_HELD, ENOENT,
                     "this connection holds no pin on snapshot %s", name);
  else {
    r = holds_reply (en);
    registry_maybe_finish (en);
  }
  pthread_mutex_unlock (&registry_lock);
  return r;
}

struct changes_ctx {
  json_t *arr;
  uint64_t total;
};

static int
add_change (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  struct changes_ctx *ctx = opaque;

  ctx->total += length;
  return json_array_append_new (ctx->arr,
                                json_pack ("{s:I, s:I}",
                                           "offset", (json_int_t) offset,
                                           "length", (json_int_t) length));
}

static json_t *
op_changes (uint64_t conn, const char *name)
{
  struct snap_entry *en;
  struct changes_ctx ctx = { .arr = json_array () };
  json_t *r = NULL;

  pthread_mutex_lock (&registry_lock);
  en = find_visible (name);
  if (en == NULL)
    r = not_found (name);
  else if (ctx.arr == NULL)
    ;
  else if (nbdsnap_snap_changes (registry_engine, en->snap, add_change,
                                 &ctx) == -1)
    r = proto_error_errno (errno, "changes %s: %s", name, strerror (errno));
  else {
    r = proto_ok ();
    if (r)
      json_object_update_new (r, json_pack (
        "{s:s, s:I, s:I, s:I, s:O}",
        "name", name,
        "size", (json_int_t) nbdsnap_engine_size (registry_engine),
        "chunk_size", (json_int_t) nbdsnap_engine_chunk_size (registry_engine),
        "changed_bytes", (json_int_t) ctx.total,
        "extents", ctx.arr));
  }
  pthread_mutex_unlock (&registry_lock);
  json_decref (ctx.arr);
  return r;
}

static json_t *
op_stats (uint64_t conn)
{
  struct snap_entry *en;
  struct conn *c;
  uint64_t nsnaps = 0, nclients = 0, copied = 0, cows = 0, store = 0;
  uint64_t sync_ns = 0, rd = 0, wr = 0;
  struct nbdsnap_snap_info info;
  json_t *r;

  pthread_mutex_lock (&registry_lock);
  for (en = registry_entries; en != NULL; en = en->next) {
    if (en->snap == NULL)
      continue;
    nsnaps++;
    nbdsnap_snap_info (registry_engine, en->snap, &info);
    copied += info.chunks_copied;
    cows += info.cow_count;
    store += info.store_bytes;
    sync_ns += info.sync_ns;
  }
  for (c = registry_conns; c != NULL; c = c->next) {
    nclients++;
    rd += __atomic_load_n (&c->bytes_read, __ATOMIC_RELAXED);
    wr += __atomic_load_n (&c->bytes_written, __ATOMIC_RELAXED);
  }
  pthread_mutex_unlock (&registry_lock);
  r = proto_ok ();
  if (r)
    json_object_update_new (r, json_pack (
      "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
      "snapshots", (json_int_t) nsnaps,
      "clients", (json_int_t) nclients,
      "chunks_copied", (json_int_t) copied,
      "cow_count", (json_int_t) cows,
      "store_bytes", (json_int_t) store,
      "sync_ns", (json_int_t) sync_ns,
      "bytes_read", (json_int_t) rd,
      "bytes_written", (json_int_t) wr,
      "chunk_size",
      (json_int_t) nbdsnap_engine_chunk_size (registry_engine)));
  return r;
}

static void
op_conn_closed (uint64_t conn)
{
  struct owned **p, *o;
  struct snap_entry *en;
  bool temporary;

  pthread_mutex_lock (&registry_lock);
  /* Take this connection's records one at a time, from the head each
   * time: finishing a snapshot forgets every record about it. */
  for (;;) {
    for (p = &registry_owned; (o = *p) != NULL; p = &o->next)
      if (o->conn == conn)
        break;
    if (o == NULL)
      break;
    *p = o->next;
    en = o->en;
    temporary = o->temporary;
    free (o);
    if (temporary) {
      nbdkit_debug ("admin connection %" PRIu64 " closed: deleting its "
                    "temporary snapshot %s", conn, en->name);
      en->hidden = true;        /* on disk it is temporary already */
    }
    else
      en->holds--;
    registry_maybe_finish (en);
  }
  pthread_mutex_unlock (&registry_lock);
}

static json_t *
op_delete_stub (uint64_t conn, const char *name, enum proto_delete_mode mode,
                struct nbdsnap_progress *p)
{
  return op_delete (conn, name, mode);
}

const struct admin_ops registry_admin_ops = {
  .create = op_create,
  .delete = op_delete_stub,
  .list = op_list,
  .info = op_info,
  .clients = op_clients,
  .hold = op_hold,
  .release = op_release,
  .changes = op_changes,
  .stats = op_stats,
  .conn_closed = op_conn_closed,
};
