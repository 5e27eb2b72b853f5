/* nbdsnap plugin: the nbdkit callbacks (nbdkit-nbdsnap-plugin(1)).
 *
 * Notes on the design:
 *
 * - .config_complete first raises the soft RLIMIT_NOFILE to the hard
 *   limit (plugin/fdlimit.c): NBD connections, snapshots and admin
 *   connections all cost descriptors.
 *
 * - The base image (the origin) is opened once, in .config_complete, so
 *   that a missing, unreadable, empty or wrong kind of file is an error at
 *   start-up; every connection shares that one descriptor (the origin
 *   layer uses pread/pwrite only and needs no lock).
 *
 * - The thread model is PARALLEL at most and chosen in .thread_model
 *   (plugin/threads.c, parameter parallel=): on an nbdkit that aborts when
 *   a client dies with requests in flight (1.32.4 to 1.33.9, Debian 12's
 *   included) it is SERIALIZE_REQUESTS and .extents returns one extent per
 *   call.  Nothing else depends on the model: every callback is safe in
 *   PARALLEL.
 *
 * - The snapshot engine (src/engine.c) is opened in .get_ready, with the
 *   admin socket (plugin/admin.c) and the catalog, so that their errors
 *   reach the user before nbdkit forks; the threads (the catalog's reaper,
 *   the admin loop) start in .after_fork, since threads do not survive the
 *   fork into the background, and stop in .cleanup, before the engine
 *   closes.
 *
 * - Export routing: "" is the origin, read/write; any other name is a
 *   snapshot, read-only.  .open opens a handle in the snapshot catalog
 *   (src/catalog.h), which counts it as a client of the snapshot (busy)
 *   until .close, and refuses unknown, creating and deleting snapshots
 *   (and the origin while a rollback runs) with a message naming them.
 *
 * - The data callbacks are thin, and every one of them (origin or
 *   snapshot, reads, writes, zero, trim, flush, cache, extents) runs
 *   between catalog_enter and catalog_leave, the handle's own gate that
 *   delete --force (snapshots) and rollback --force (the origin) revoke:
 *   later requests fail with ESHUTDOWN, requests inside finish first.
 *   Origin writes, zeroes and trims go to the engine (copy-on-write first,
 *   then the origin); origin reads go to the origin layer; snapshot reads
 *   and extents go to the engine.  Each sets errno and reports once.
 *   Bytes and requests are counted per handle for "clients".
 *
 * - Who reads catalog state: only the data callbacks read the engine
 *   snapshot (catalog_conn_snap), inside the gate.  .export_description
 *   uses the description .open copied (or the revoked one), .get_size the
 *   origin, .list_exports a copy of the catalog's list (catalog_list,
 *   under the catalog lock): none of them can see a snapshot that a forced
 *   delete frees.  The can_* callbacks use only what .open fixed.
 *
 * - A failed start removes what it created.  .get_ready undoes its own
 *   steps when one fails (the admin socket, the catalog, the engine,
 *   which removes a state directory it made: nbdsnap_engine_abandon).
 *   nbdkit may still fail after .get_ready and before .after_fork (the
 *   NBD socket in use, the pid file, changing user) and then calls exit
 *   without .cleanup: an atexit handler, registered in .get_ready, does
 *   the same undoing then.  It acts only in the process that owns the
 *   server and before .after_fork: nbdkit's fork into the background and
 *   its --run fork exit in the parent while the child serves, so a
 *   pthread_atfork handler hands the ownership to the child.
 *
 * - Messages from src/ go through nbdsnap_set_log_handlers () to
 *   nbdkit_verror / nbdkit_vdebug, installed in .load.
 */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/err.h"
#include "nbdsnap/origin.h"
#include "admin.h"
#include "fdlimit.h"
#include "params.h"
#include "registry.h"
#include "threads.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* The base image; opened in .config_complete, closed in .unload. */
static struct nbdsnap_origin origin = { .fd = -1 };

/* The snapshot engine and its catalog; opened in .get_ready, closed in
 * .cleanup. */
static struct nbdsnap_engine *engine;
static struct catalog *catalog;

/* "origin: PATH", interned once in .get_ready (it lives until .unload),
 * not once per NBD_OPT_INFO. */
/* The origin's export description, read/write and read-only (nbdkit -r,
 * a read-only image): its base name only, never a server path. */
static const char *origin_description_rw, *origin_description_ro;

/* Per connection. */
struct handle {
  struct catalog_conn *conn;    /* export, peer, gate, counters */
  struct nbdsnap_snap *snap;    /* NULL for the origin; read only between
                                   catalog_enter and catalog_leave */
  bool readonly;                /* nbdkit -r, the image is read-only, or a
                                   snapshot */
};

/* -D nbdsnap.engine=1 sets nbdsnap_debug_engine (src/err.c, linked in and
 * exported from this module). */

static void
nbdsnap_load (void)
{
  nbdsnap_set_log_handlers (nbdkit_verror, nbdkit_vdebug);
}

static void
nbdsnap_unload (void)
{
  nbdsnap_origin_close (&origin);
  config_free ();
}

static int
nbdsnap_config (const char *key, const char *value)
{
  return config_set (key, value);
}

/* While the image is opened at start-up, messages from src/origin.c
 * ("PATH: REASON") are prefixed with the parameter that named it. */
static void
file_param_verror (const char *fmt, va_list args)
{
  char *msg;

  if (vasprintf (&msg, fmt, args) == -1) {
    nbdkit_error ("file=%s: cannot be opened", nbdsnap_cfg.file);
    return;
  }
  nbdkit_error ("file=%s", msg);
  free (msg);
}

static int
nbdsnap_config_complete (void)
{
  int r;

  fdlimit_raise ();
  if (config_check_file () == -1)
    return -1;
  nbdsnap_set_log_handlers (file_param_verror, nbdkit_vdebug);
  r = nbdsnap_origin_open (&origin, nbdsnap_cfg.file,
                           nbdsnap_cfg.file_readonly);
  nbdsnap_set_log_handlers (nbdkit_verror, nbdkit_vdebug);
  if (r == -1)
    return -1;
  return config_finish (origin.is_blockdev);
}

/* After .config_complete: the model nbdkit runs us in (see threads.h). */
static int
nbdsnap_thread_model (void)
{
  int model = threads_decide (nbdsnap_cfg.parallel,
                              threads_running_version ());

  nbdkit_debug ("thread model %s: %s", threads_model_name (),
                threads_reason ());
  if (nbdsnap_cfg.parallel == THREADS_ON
      && threads_version_affected (threads_running_version ()))
    fprintf (stderr, "nbdkit: nbdsnap: warning: %s\n", threads_reason ());
  return model;
}

#define NBD_CONN_FDS_RESERVED (3 * 32 + 32)

/* The failed-start undoing (see the notes at the top).  ready_owner: the
 * pid of the process that owns the engine and admin socket opened by
 * .get_ready and may undo them, 0 for none (not ready, a parent of a fork,
 * or .after_fork reached).  Only the main thread touches it, before any
 * thread of ours exists: no lock. */
static pid_t ready_owner;

/* Undo .get_ready: the admin socket, the catalog, the engine (and a state
 * directory this start made). */
static void
undo_ready (void)
{
  admin_stop ();
  catalog_free (catalog);
  catalog = NULL;
  nbdsnap_engine_abandon (engine);
  engine = NULL;
}

static void
failed_start_atexit (void)
{
  if (ready_owner != 0 && ready_owner == getpid ()) {
    ready_owner = 0;
    nbdkit_debug ("the server did not start: removing what it created");
    undo_ready ();
  }
}

static void
atfork_parent (void)
{
  ready_owner = 0;
}

static void
atfork_child (void)
{
  if (ready_owner != 0)
    ready_owner = getpid ();
}

/* -D nbdsnap.seal_lease_ms=N: the seal's lease is N ms, not 5 s (tests;
 * src/seal.h). */
NBDKIT_DLL_PUBLIC int nbdsnap_debug_seal_lease_ms;

/* -D nbdsnap.job_delay_ms=N: deletes and rollbacks sleep N ms after each
 * 64 chunks (the engine's move hook), so that tests can watch or kill
 * them in the middle however fast the machine is. */
NBDKIT_DLL_PUBLIC int nbdsnap_debug_job_delay_ms;

static void
job_delay (void *unused)
{
  struct timespec t = { nbdsnap_debug_job_delay_ms / 1000,
                        (nbdsnap_debug_job_delay_ms % 1000) * 1000000L };

  nanosleep (&t, NULL);
}

/* Open the engine and bind the admin socket: errors reach the user. */
static int
nbdsnap_get_ready (void)
{
  struct nbdsnap_engine_config ec = {
    .origin = &origin,
    .statedir = nbdsnap_cfg.statedir,
    .chunk_size = nbdsnap_cfg.chunk_size,
    .durability = nbdsnap_cfg.durability,
    .max_store = nbdsnap_cfg.max_store,
    /* What snapshots must leave of the open file limit: the admin loop's
     * most, and room for NBD_CONN_FDS_RESERVED (nbdkit's connections take
     * 3 each, and nbdkit and libraries hold a few). */
    .fd_reserve = admin_fd_reserve () + NBD_CONN_FDS_RESERVED,
    .adopt = nbdsnap_cfg.adopt,
    .invalidate_changed = nbdsnap_cfg.invalidate_changed,
    .seal_lease_ms = nbdsnap_debug_seal_lease_ms > 0
                     ? (unsigned) nbdsnap_debug_seal_lease_ms : 0,
  };

  {
    const char *base = strrchr (origin.path, '/');
    base = base && base[1] ? base + 1 : origin.path;
    origin_description_rw =
      nbdkit_printf_intern ("origin: %s (read/write)", base);
    origin_description_ro =
      nbdkit_printf_intern ("origin: %s (read-only)", base);
    if (origin_description_rw == NULL || origin_description_ro == NULL)
      return -1;
  }
  {
    static bool registered;
    if (!registered) {
      if (atexit (failed_start_atexit) != 0
          || pthread_atfork (NULL, atfork_parent, atfork_child) != 0) {
        nbdkit_error ("atexit: cannot register the failed-start handler");
        return -1;
      }
      registered = true;
    }
  }
  registry_note_cwd ();        /* before nbdkit may chdir (-U a/b) */
  engine = nbdsnap_engine_open (&ec);
  if (engine == NULL)
    return -1;
  if (nbdsnap_debug_job_delay_ms > 0)
    nbdsnap_engine_test_move_hook (engine, 64, job_delay, NULL);
  catalog = catalog_new (engine, origin.readonly);
  if (catalog == NULL)
    goto err;
  admin_set_ops (registry_admin_ops (catalog));
  if (admin_bind (nbdsnap_cfg.admin) == -1)
    goto err;
  ready_owner = getpid ();
  return 0;

 err:
  undo_ready ();
  return -1;
}

static int
nbdsnap_after_fork (void)
{
  /* Serving: from here on .cleanup undoes what .get_ready made. */
  ready_owner = 0;
  /* Threads start here, not in .get_ready: they would not survive the
   * fork into the background. */
  if (catalog_start (catalog) == -1)
    return -1;
  nbdsnap_engine_start (engine); /* failure reported; writers renew */
  registry_find_listeners (nbdsnap_cfg.admin);
  return admin_start ();
}

static void
nbdsnap_cleanup (void)
{
  admin_stop ();                /* releases holds, temporary snapshots */
  catalog_free (catalog);       /* stops the reaper */
  catalog = NULL;
  nbdsnap_engine_close (engine);
  engine = NULL;
}

static void
nbdsnap_dump_plugin (void)
{
  printf ("nbdsnap_version=%s\n", PACKAGE_VERSION);
  /* nbdkit printed thread_model= above, having called .thread_model. */
  printf ("nbdsnap_thread_model_reason=%s\n", threads_reason ());
}

static void *
nbdsnap_open (int readonly)
{
  const char *name = nbdkit_export_name ();
  char peer[CATALOG_PEER_MAX];
  struct handle *h;

  if (name == NULL)
    return NULL;                /* reported by nbdkit */
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->readonly = readonly || origin.readonly || name[0] != '\0';
  registry_peer_string (peer, sizeof peer);
  nbdsnap_clear_error ();
  h->conn = catalog_conn_open (catalog, name, h->readonly, peer);
  if (h->conn == NULL) {
    /* A refusal is only recorded by the catalog (nbdsnap_refuse): the
     * client sees the errno alone, so the log says why. */
    int err = errno;
    nbdkit_error ("%s", nbdsnap_last_error ()[0] ? nbdsnap_last_error ()
                  : strerror (err));
    free (h);
    errno = err;
    return NULL;
  }
  h->snap = catalog_conn_snap (h->conn);
  return h;
}

static void
nbdsnap_close (void *handle)
{
  struct handle *h = handle;

  catalog_conn_close (catalog, h->conn);
  free (h);
}

static int
nbdsnap_list_exports (int readonly, int is_tls,
                      struct nbdkit_exports *exports)
{
  return registry_list_exports (catalog, exports,
                                 readonly || origin.readonly
                                 ? origin_description_ro
                                 : origin_description_rw);
}

/* Never from the engine snapshot: a forced delete may free it at any
 * moment; the snapshot's description was copied at .open (or says the
 * handle is revoked). */
static const char *
nbdsnap_export_description (void *handle)
{
  struct handle *h = handle;
  const char *d = catalog_conn_description (h->conn);

  if (d)
    return d;
  return h->readonly ? origin_description_ro : origin_description_rw;
}

static int64_t
nbdsnap_get_size (void *handle)
{
  return origin.size;
}

/* The largest read or write nbdkit serves (its MAX_REQUEST_SIZE, the
 * same as libnbd's): advertise what is served, not 4 GiB. */
#define NBDSNAP_MAX_REQUEST (64 * 1024 * 1024)

/* Minimum 1: any byte range works, a block device's unaligned zero and
 * trim edges included (src/origin.c).  Preferred: at least the device's
 * logical block size, below which the kernel reads, modifies and writes
 * back a whole block.  Maximum: NBDSNAP_MAX_REQUEST (zero and trim may be
 * larger, as the NBD protocol allows). */
static int
nbdsnap_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                    uint32_t *maximum)
{
  *minimum = 1;
  *preferred = origin.block_size > 4096 ? origin.block_size : 4096;
  *maximum = NBDSNAP_MAX_REQUEST;
  return 0;
}

static int
nbdsnap_can_write (void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

static int
nbdsnap_can_flush (void *handle)
{
  struct handle *h = handle;

  return h->snap == NULL;
}

static int
nbdsnap_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
nbdsnap_can_trim (void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

static int
nbdsnap_can_zero (void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

/* Honest: only when one of the kernel's fast methods may still work (see
 * the notes in src/origin.c: on a block device only PUNCH_HOLE is fast).
 * A fast zero that cannot be done fast then fails with ENOTSUP. */
static int
nbdsnap_can_fast_zero (void *handle)
{
  struct handle *h = handle;
  bool punch = __atomic_load_n (&origin.can_punch_hole, __ATOMIC_RELAXED);
  bool zero = __atomic_load_n (&origin.can_zero_range, __ATOMIC_RELAXED);

  if (h->readonly)
    return 0;
  return origin.is_blockdev ? punch : punch || zero;
}

static int
nbdsnap_can_extents (void *handle)
{
  return 1;
}

static int
nbdsnap_can_cache (void *handle)
{
  struct handle *h = handle;

  return h->snap ? NBDKIT_CACHE_NONE : NBDKIT_CACHE_NATIVE;
}

/* One file descriptor, written with pwrite and flushed with fdatasync:
 * a flush on any connection covers the writes of all of them.  Snapshots
 * never change. */
static int
nbdsnap_can_multi_conn (void *handle)
{
  return 1;
}

/* Defensive: nbdkit refuses writes to a read-only export itself. */
static int
refuse_write (struct handle *h)
{
  nbdkit_error ("export \"%s\" is a snapshot: it is read-only",
                catalog_conn_export (h->conn));
  errno = EROFS;
  return -1;
}

static int
nbdsnap_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (catalog_enter (h->conn) == -1)
    return -1;
  if (h->snap == NULL)
    r = nbdsnap_origin_pread (&origin, buf, count, offset);
  else
    r = nbdsnap_snap_pread (engine, h->snap, buf, count, offset);
  catalog_leave (h->conn);
  return catalog_conn_done (h->conn, CATALOG_REQ_READ, count, r);
}

static int
nbdsnap_pwrite (void *handle, const void *buf, uint32_t count,
                uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (h->snap)
    return refuse_write (h);
  if (catalog_enter (h->conn) == -1)
    return -1;
  r = nbdsnap_engine_pwrite (engine, buf, count, offset,
                             flags & NBDKIT_FLAG_FUA);
  catalog_leave (h->conn);
  return catalog_conn_done (h->conn, CATALOG_REQ_WRITE, count, r);
}

static int
nbdsnap_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (h->snap)
    return refuse_write (h);
  if (catalog_enter (h->conn) == -1)
    return -1;
  r = nbdsnap_engine_zero (engine, count, offset,
                           flags & NBDKIT_FLAG_MAY_TRIM,
                           flags & NBDKIT_FLAG_FUA,
                           flags & NBDKIT_FLAG_FAST_ZERO);
  catalog_leave (h->conn);
  return catalog_conn_done (h->conn, CATALOG_REQ_ZERO, count, r);
}

static int
nbdsnap_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (h->snap)
    return refuse_write (h);
  if (catalog_enter (h->conn) == -1)
    return -1;
  r = nbdsnap_engine_trim (engine, count, offset, flags & NBDKIT_FLAG_FUA);
  catalog_leave (h->conn);
  return catalog_conn_done (h->conn, CATALOG_REQ_TRIM, count, r);
}

/* Stores and bitmaps first, then the origin (nbdsnap_engine_flush). */
static int
nbdsnap_flush (void *handle, uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (catalog_enter (h->conn) == -1)
    return -1;
  r = nbdsnap_engine_flush (engine);
  catalog_leave (h->conn);
  return catalog_conn_done (h->conn, CATALOG_REQ_FLUSH, 0, r);
}

static int
nbdsnap_cache (void *handle, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (catalog_enter (h->conn) == -1)
    return -1;
  r = nbdsnap_origin_cache (&origin, count, offset);
  catalog_leave (h->conn);
  return catalog_conn_done (h->conn, CATALOG_REQ_OTHER, 0, r);
}

/* .extents.  Normally every extent goes to nbdkit as it comes.  With
 * REQ_ONE, or threads_short_extents (), the reply must carry one extent:
 * adjacent extents of one type are merged into it (the engine reports a
 * snapshot chunk by chunk), and the walk stops at the first change of
 * type; the client asks again for the rest (nbdkit-plugin(3)). */
struct extents_ctx {
  struct nbdkit_extents *extents;
  bool one;                     /* one extent only */
  bool pending;                 /* one: an extent is being merged */
  uint64_t offset, length;      /* one: that extent */
  uint32_t type;
};

static int
add_extent (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  struct extents_ctx *ctx = opaque;
  uint32_t type = hole ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0;

  if (!ctx->one) {
    if (nbdkit_add_extent (ctx->extents, offset, length, type) == -1)
      return -1;                /* reported by nbdkit */
    return 0;
  }
  if (!ctx->pending) {
    ctx->pending = true;
    ctx->offset = offset;
    ctx->length = length;
    ctx->type = type;
    return 0;
  }
  if (type == ctx->type && offset == ctx->offset + ctx->length) {
    ctx->length += length;
    return 0;
  }
  return 1;                     /* another type: the one extent is done */
}

static int
nbdsnap_extents (void *handle, uint32_t count, uint64_t offset,
                 uint32_t flags, struct nbdkit_extents *extents)
{
  struct handle *h = handle;
  struct extents_ctx ctx = {
    .extents = extents,
    .one = (flags & NBDKIT_FLAG_REQ_ONE) || threads_short_extents (),
  };
  int r;

  if (catalog_enter (h->conn) == -1)
    return -1;
  if (h->snap == NULL)
    r = nbdsnap_origin_extents (&origin, offset, count, add_extent, &ctx);
  else
    r = nbdsnap_snap_extents (engine, h->snap, offset, count, add_extent,
                              &ctx);
  if (r == 0 && ctx.pending
      && nbdkit_add_extent (extents, ctx.offset, ctx.length, ctx.type) == -1)
    r = -1;                     /* reported by nbdkit */
  catalog_leave (h->conn);
  return catalog_conn_done (h->conn, CATALOG_REQ_OTHER, 0, r);
}

static struct nbdkit_plugin plugin = {
  .name = "nbdsnap",
  .longname = "nbdsnap: point-in-time snapshots of a live disk image",
  .version = PACKAGE_VERSION,
  .description = "Serves a raw disk image (the origin) read/write and "
                 "point-in-time snapshots of it read-only.",
  .load = nbdsnap_load,
  .unload = nbdsnap_unload,
  .config = nbdsnap_config,
  .config_complete = nbdsnap_config_complete,
  .config_help = NBDSNAP_CONFIG_HELP,
  .thread_model = nbdsnap_thread_model,
  .get_ready = nbdsnap_get_ready,
  .after_fork = nbdsnap_after_fork,
  .cleanup = nbdsnap_cleanup,
  .magic_config_key = "file",
  .dump_plugin = nbdsnap_dump_plugin,
  .open = nbdsnap_open,
  .close = nbdsnap_close,
  .list_exports = nbdsnap_list_exports,
  .export_description = nbdsnap_export_description,
  .get_size = nbdsnap_get_size,
  .block_size = nbdsnap_block_size,
  .can_write = nbdsnap_can_write,
  .can_flush = nbdsnap_can_flush,
  .can_fua = nbdsnap_can_fua,
  .can_trim = nbdsnap_can_trim,
  .can_zero = nbdsnap_can_zero,
  .can_fast_zero = nbdsnap_can_fast_zero,
  .can_extents = nbdsnap_can_extents,
  .can_cache = nbdsnap_can_cache,
  .can_multi_conn = nbdsnap_can_multi_conn,
  .pread = nbdsnap_pread,
  .pwrite = nbdsnap_pwrite,
  .zero = nbdsnap_zero,
  .trim = nbdsnap_trim,
  .flush = nbdsnap_flush,
  .cache = nbdsnap_cache,
  .extents = nbdsnap_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
