/* nbdsnap plugin: the admin operations (struct admin_ops, plugin/admin.h)
 * as JSON formatting over the snapshot catalog (src/catalog.h).
 *
 * Notes on the design
 *
 * The catalog owns every piece of state and its lock; this file keeps
 * only the catalog pointer, set once by registry_admin_ops () before the
 * admin loop starts.  Each operation is one catalog call (two for stats)
 * and the formatting of its answer.
 *
 * Threads (plugin/admin.h): create, delete, rollback, changes and named
 * hold and release (they write and sync the holds file) are jobs,
 * called on worker threads; the catalog drops its lock around their engine
 * calls.  list, info, clients, hold, release, stats and conn_closed run on
 * the admin thread: their catalog calls only copy or mark state under the
 * catalog lock, which no job holds across an engine call, so they never
 * wait for a job or for an NBD client.  A delete due when a release or a
 * closing admin connection drops the last user is done by the catalog's
 * reaper thread, not here.
 *
 * Errors: a refused catalog call returns its kind (enum catalog_err), which
 * maps to one protocol kind; CATALOG_ERR_SYSTEM maps through errno.  The
 * message is the one the catalog or the engine reported in this thread
 * (nbdsnap_last_error), cleared before each call.
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
#include "threads.h"
#include "holds.h"

/* Set once before the admin loop starts, read-only afterwards. */
static struct catalog *cat;

/* The answer to a refused catalog call: its kind, with the message
 * reported in this thread (prefixed with "CMD NAME: " for engine
 * failures, whose messages need not name the snapshot). */
static json_t *
refused (enum catalog_err err, int errnum, const char *cmd,
         const char *name)
{
  const char *m = nbdsnap_last_error ();
  enum proto_err kind;

  switch (err) {
  case CATALOG_ERR_NOT_FOUND: kind = PROTO_ERR_NOT_FOUND; break;
  case CATALOG_ERR_NOT_HELD:  kind = PROTO_ERR_NOT_HELD; break;
  case CATALOG_ERR_EXISTS:    kind = PROTO_ERR_EXISTS; break;
  case CATALOG_ERR_BUSY:      kind = PROTO_ERR_BUSY; break;
  case CATALOG_ERR_LIMIT:     kind = PROTO_ERR_LIMIT; break;
  case CATALOG_ERR_READONLY:  kind = PROTO_ERR_READONLY; break;
  default:
    if (errnum == EINVAL && m[0])      /* a refusal that says why */
      return proto_error (PROTO_ERR_BAD_REQUEST, errnum, "%s", m);
    return proto_error_errno (errnum, "%s %s: %s", cmd, name,
                              m[0] ? m : strerror (errnum));
  }
  return proto_error (kind, errnum, "%s", m[0] ? m : strerror (errnum));
}

static void
rfc3339 (const struct timespec *ts, char *buf, size_t n)
{
  struct tm tm;

  gmtime_r (&ts->tv_sec, &tm);
  strftime (buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *
done_total (uint64_t done, uint64_t total)
{
  return json_pack ("{s:I, s:I}", "done", (json_int_t) done,
                    "total", (json_int_t) total);
}

/* SNAP of include/nbdsnap/admin.h. */
static json_t *
snap_json (const struct catalog_snap *s)
{
  const struct nbdsnap_snap_info *info = &s->info;
  char when[32];
  json_t *r;

  rfc3339 (&info->created, when, sizeof when);
  r = json_pack ("{s:s, s:I, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I,"
                 " s:I, s:I, s:I, s:I}",
                 "name", info->name,
                 "id", (json_int_t) info->id,
                 "created", when,
                 "state", catalog_state_name (s->state),
                 "temporary", info->temporary,
                 "clients", (json_int_t) s->clients,
                 "holds", (json_int_t) s->holds,
                 "named_holds", (json_int_t) s->named_holds,
                 "chunks_candidate", (json_int_t) info->chunks_candidate,
                 "chunks_copied", (json_int_t) info->chunks_copied,
                 "store_bytes", (json_int_t) info->store_bytes,
                 "max_store", (json_int_t) info->max_store,
                 "cow_count", (json_int_t) info->cow_count,
                 "sync_ns", (json_int_t) info->sync_ns);
  if (r == NULL)
    return NULL;
  if (s->state == CATALOG_STATE_DELETING)
    json_object_set_new (r, "deferred", json_boolean (s->deferred));
  if (s->moving)
    json_object_set_new (r, "progress",
                         done_total (s->progress_done, s->progress_total));
  if (s->rollback)
    json_object_set_new (r, "rollback",
                         done_total (s->rollback_done, s->rollback_total));
  return r;
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
op_create (uint64_t conn, const char *name, bool temporary)
{
  struct catalog_snap s;
  enum catalog_err err;

  nbdsnap_clear_error ();
  err = catalog_create (cat, conn, name, temporary, &s);
  if (err != CATALOG_OK)
    return refused (err, errno, "create", name);
  return ok_with ("snapshot", snap_json (&s));
}

static json_t *
op_delete (uint64_t conn, const char *name, enum proto_delete_mode mode,
           struct nbdsnap_progress *p)
{
  struct catalog_delete_result res;
  enum catalog_err err;
  json_t *r;

  nbdsnap_clear_error ();
  err = catalog_delete (cat, conn, name,
                        mode == PROTO_DELETE_FORCE ? CATALOG_DELETE_FORCE
                        : mode == PROTO_DELETE_DEFER ? CATALOG_DELETE_DEFER
                        : CATALOG_DELETE_NOW,
                        p, admin_job_accepted, &res);
  if (err != CATALOG_OK)
    return refused (err, errno, "delete", name);
  r = proto_ok ();
  if (r)
    json_object_update_new (r, json_pack ("{s:s, s:b, s:I, s:I}",
                                          "name", name,
                                          "deferred", res.deferred,
                                          "revoked", (json_int_t) res.revoked,
                                          "moved_bytes",
                                          (json_int_t) res.moved_bytes));
  return r;
}

static json_t *
names_json (char (*names)[NBDSNAP_NAME_MAX + 1], size_t n)
{
  json_t *arr = json_array ();
  size_t i;

  for (i = 0; arr && i < n; ++i)
    json_array_append_new (arr, json_string (names[i]));
  return arr;
}

static json_t *
op_rollback (uint64_t conn, const char *name, bool force, bool destroy_newer,
             struct nbdsnap_progress *p)
{
  struct catalog_rollback_result res;
  enum catalog_err err;
  json_t *r;

  nbdsnap_clear_error ();
  err = catalog_rollback (cat, conn, name, force, destroy_newer, p,
                          admin_job_accepted, &res);
  if (err != CATALOG_OK)
    return refused (err, errno, "rollback", name);
  r = proto_ok ();
  if (r)
    json_object_update_new (r, json_pack (
      "{s:s, s:I, s:I, s:o, s:o}",
      "name", name,
      "rolled_back_bytes", (json_int_t) res.rolled_back_bytes,
      "revoked", (json_int_t) res.revoked,
      "destroyed", names_json (res.destroyed, res.ndestroyed),
      "kept", names_json (res.kept, res.nkept)));
  catalog_rollback_result_free (&res);
  return r;
}

static json_t *
op_list (uint64_t conn)
{
  struct catalog_snap *list;
  json_t *arr;
  ssize_t n, i;

  n = catalog_list (cat, &list);
  if (n == -1)
    return NULL;
  arr = json_array ();
  for (i = 0; arr && i < n; ++i)
    json_array_append_new (arr, snap_json (&list[i]));
  free (list);
  return ok_with ("snapshots", arr);
}

static json_t *
op_info (uint64_t conn, const char *name)
{
  struct catalog_snap s;
  enum catalog_err err;

  nbdsnap_clear_error ();
  err = catalog_info (cat, name, &s);
  if (err != CATALOG_OK)
    return refused (err, errno, "info", name);
  return ok_with ("snapshot", snap_json (&s));
}

static json_t *
op_clients (uint64_t conn)
{
  struct catalog_client *list;
  json_t *arr;
  char when[32];
  ssize_t n, i;

  n = catalog_clients (cat, &list);
  if (n == -1)
    return NULL;
  arr = json_array ();
  for (i = 0; arr && i < n; ++i) {
    const struct catalog_client *c = &list[i];
    rfc3339 (&c->started, when, sizeof when);
    json_array_append_new (arr, json_pack (
      "{s:I, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:b, s:b}",
      "id", (json_int_t) c->id,
      "export", c->export,
      "peer", c->peer,
      "started", when,
      "bytes_read", (json_int_t) c->bytes_read,
      "bytes_written", (json_int_t) c->bytes_written,
      "reads", (json_int_t) c->reads,
      "writes", (json_int_t) c->writes,
      "readonly", c->readonly,
      "revoked", c->revoked));
  }
  free (list);
  return ok_with ("clients", arr);
}

static json_t *
holds_reply (const char *name, unsigned holds)
{
  struct catalog_snap s;
  unsigned named = 0;

  if (catalog_info (cat, name, &s) == CATALOG_OK)
    named = s.named_holds;
  nbdsnap_clear_error ();
  return json_pack ("{s:b, s:s, s:I, s:I}", "ok", 1, "name", name,
                    "holds", (json_int_t) holds,
                    "named_holds", (json_int_t) named);
}

static json_t *
op_hold (uint64_t conn, const char *name)
{
  enum catalog_err err;
  unsigned holds;

  nbdsnap_clear_error ();
  err = catalog_hold (cat, conn, name, &holds);
  if (err != CATALOG_OK)
    return refused (err, errno, "hold", name);
  return holds_reply (name, holds);
}

static json_t *
op_release (uint64_t conn, const char *name)
{
  enum catalog_err err;
  unsigned holds;

  nbdsnap_clear_error ();
  err = catalog_release (cat, conn, name, &holds);
  if (err != CATALOG_OK)
    return refused (err, errno, "release", name);
  return holds_reply (name, holds);
}

/* A job: the holds file is written and synced. */
static json_t *
op_hold_named (uint64_t conn, const char *name, const char *tag)
{
  struct catalog_hold h;
  enum catalog_err err;
  unsigned named, holds;
  char when[32];

  nbdsnap_clear_error ();
  err = catalog_hold_named (cat, name, tag, &h, &named, &holds);
  if (err != CATALOG_OK)
    return refused (err, errno, "hold", name);
  holds_time_text (h.created, when, sizeof when);
  return json_pack ("{s:b, s:s, s:s, s:s, s:I, s:I}", "ok", 1,
                    "name", name, "tag", tag, "created", when,
                    "holds", (json_int_t) holds,
                    "named_holds", (json_int_t) named);
}

static json_t *
op_release_named (uint64_t conn, const char *name, const char *tag)
{
  enum catalog_err err;
  unsigned named, holds;

  nbdsnap_clear_error ();
  err = catalog_release_named (cat, name, tag, &named, &holds);
  if (err != CATALOG_OK)
    return refused (err, errno, "release", name);
  return json_pack ("{s:b, s:s, s:s, s:I, s:I}", "ok", 1, "name", name,
                    "tag", tag, "holds", (json_int_t) holds,
                    "named_holds", (json_int_t) named);
}

static json_t *
op_holds (uint64_t conn, const char *name)
{
  struct catalog_hold *list;
  enum catalog_err err;
  size_t n, i;
  json_t *arr;
  char when[32];

  nbdsnap_clear_error ();
  err = catalog_holds (cat, name, &list, &n);
  if (err != CATALOG_OK)
    return refused (err, errno, "holds", name);
  arr = json_array ();
  for (i = 0; arr && i < n; ++i) {
    const struct catalog_hold *h = &list[i];
    holds_time_text (h->created, when, sizeof when);
    if (h->tag[0])
      json_array_append_new (arr, json_pack ("{s:s, s:s, s:s, s:b}",
                                             "name", h->name, "tag", h->tag,
                                             "created", when,
                                             "persistent", 1));
    else
      json_array_append_new (arr, json_pack ("{s:s, s:n, s:I, s:s, s:b}",
                                             "name", h->name, "tag",
                                             "conn", (json_int_t) h->conn,
                                             "created", when,
                                             "persistent", 0));
  }
  free (list);
  return ok_with ("holds", arr);
}

struct changes_ctx {
  json_t *arr;
  uint64_t total, zero;
};

static int
add_change (void *opaque, uint64_t offset, uint64_t length, bool zero)
{
  struct changes_ctx *ctx = opaque;

  ctx->total += length;
  if (zero)
    ctx->zero += length;
  return json_array_append_new (ctx->arr,
                                json_pack ("{s:I, s:I, s:b}",
                                           "offset", (json_int_t) offset,
                                           "length", (json_int_t) length,
                                           "zero", zero));
}

static json_t *
op_changes (uint64_t conn, const char *name, const char *to,
            uint64_t offset, uint64_t limit)
{
  struct nbdsnap_engine *e = catalog_engine (cat);
  struct changes_ctx ctx = { .arr = json_array () };
  uint64_t chunk = nbdsnap_engine_chunk_size (e), size = nbdsnap_engine_size (e);
  uint64_t start = offset & ~(chunk - 1), next = start;
  enum catalog_err err;
  json_t *r = NULL;

  if (ctx.arr == NULL)
    return NULL;
  nbdsnap_clear_error ();
  err = catalog_changes (cat, name, to, &next, limit, add_change, &ctx);
  if (err != CATALOG_OK)
    r = refused (err, errno, "changes", name);
  else {
    r = proto_ok ();
    if (r)
      json_object_update_new (r, json_pack (
        "{s:s, s:o, s:I, s:I, s:I, s:o, s:I, s:I, s:O}",
        "name", name,
        "to", *to ? json_string (to) : json_null (),
        "size", (json_int_t) size,
        "chunk_size", (json_int_t) chunk,
        "offset", (json_int_t) (start < size ? start : size),
        "next", next < size ? json_integer (next) : json_null (),
        "changed_bytes", (json_int_t) ctx.total,
        "zero_bytes", (json_int_t) ctx.zero,
        "extents", ctx.arr));
  }
  json_decref (ctx.arr);
  return r;
}

/* stats' "totals" (include/nbdsnap/admin.h). */
static json_t *
totals_json (const struct catalog_totals *t,
             const struct nbdsnap_engine_counters *ec)
{
  json_t *errors = json_object ();
  char num[16];
  int i;

  for (i = 0; errors && i < CATALOG_ERRNO_SLOTS; ++i) {
    const char *name = i ? proto_errno_name (i) : "other";
    if (t->errors[i] == 0)
      continue;
    if (name == NULL) {
      snprintf (num, sizeof num, "%d", i);
      name = num;
    }
    json_object_set_new (errors, name, json_integer (t->errors[i]));
  }
  return json_pack (
    "{s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I},"
    " s:{s:I, s:I}, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
    "origin",
      "bytes_read", (json_int_t) t->origin_bytes_read,
      "bytes_written", (json_int_t) t->origin_bytes_written,
      "zero_bytes", (json_int_t) t->origin_zero_bytes,
      "trim_bytes", (json_int_t) t->origin_trim_bytes,
      "reads", (json_int_t) t->origin_reads,
      "writes", (json_int_t) t->origin_writes,
      "zeros", (json_int_t) t->origin_zeros,
      "trims", (json_int_t) t->origin_trims,
      "flushes", (json_int_t) t->origin_flushes,
    "snapshots",
      "bytes_read", (json_int_t) t->snap_bytes_read,
      "reads", (json_int_t) t->snap_reads,
    "cow_chunks", (json_int_t) ec->cow_chunks,
    "cow_bytes", (json_int_t) ec->cow_bytes,
    "syncs", (json_int_t) ec->syncs,
    "sync_shared", (json_int_t) ec->sync_shared,
    "invalidations", (json_int_t) ec->invalidations,
    "requests_failed", (json_int_t) t->failed,
    "errors", errors);
}

static json_t *
op_stats (uint64_t conn)
{
  struct catalog_snap *snaps;
  struct catalog_client *clients;
  struct catalog_totals t;
  struct nbdsnap_engine_counters ec;
  uint64_t copied = 0, cows = 0, store = 0, sync_ns = 0, rd = 0, wr = 0;
  ssize_t nsnaps, nclients, i;
  json_t *r;

  nsnaps = catalog_list (cat, &snaps);
  if (nsnaps == -1)
    return NULL;
  nclients = catalog_clients (cat, &clients);
  if (nclients == -1) {
    free (snaps);
    return NULL;
  }
  for (i = 0; i < nsnaps; ++i) {
    copied += snaps[i].info.chunks_copied;
    cows += snaps[i].info.cow_count;
    store += snaps[i].info.store_bytes;
    sync_ns += snaps[i].info.sync_ns;
  }
  free (snaps);
  free (clients);
  catalog_totals (cat, &t);
  nbdsnap_engine_counters (catalog_engine (cat), &ec);
  /* Since start, every client: connected or gone. */
  rd = t.origin_bytes_read + t.snap_bytes_read;
  wr = t.origin_bytes_written + t.origin_zero_bytes + t.origin_trim_bytes;
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
      (json_int_t) nbdsnap_engine_chunk_size (catalog_engine (cat))));
  if (r) {
    json_object_set_new (r, "totals", totals_json (&t, &ec));
    json_object_set_new (r, "threads", json_pack (
      "{s:s, s:s, s:b}",
      "model", threads_model_name (),
      "reason", threads_reason (),
      "short_extents", threads_short_extents ()));
  }
  return r;
}

static void
op_conn_closed (uint64_t conn)
{
  catalog_owner_closed (cat, conn);
}

static const struct admin_ops ops = {
  .create = op_create,
  .delete = op_delete,
  .rollback = op_rollback,
  .list = op_list,
  .info = op_info,
  .clients = op_clients,
  .hold = op_hold,
  .release = op_release,
  .hold_named = op_hold_named,
  .release_named = op_release_named,
  .holds = op_holds,
  .changes = op_changes,
  .nbd_uris = registry_nbd_uris,
  .stats = op_stats,
  .conn_closed = op_conn_closed,
};

const struct admin_ops *
registry_admin_ops (struct catalog *c)
{
  cat = c;
  return &ops;
}
