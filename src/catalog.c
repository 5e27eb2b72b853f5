/* nbdsnap: the snapshot catalog.  See catalog.h for the design.
 *
 * Notes on the code
 *
 * Each public operation takes cat->lock once and calls a static *_unlocked
 * body, which never unlocks on an error path.  The operations that call a
 * long engine function are split in phases, each one body under the lock:
 *
 *   lock; begin_*_unlocked (mark)      unlock
 *   drain revoked gates; accepted (p); the engine call
 *   lock; end_*_unlocked (finish)      unlock
 *
 * and what a phase marked keeps its objects alive in between: an entry
 * that is creating, moving or pinned is freed by nobody else, and a
 * connection being drained carries a reference (conn->refs).
 *
 * Who reads an entry's engine snapshot (en->snap): holders of cat->lock,
 * except while the entry is moving (the engine frees it at the end of the
 * delete; info then comes from en->info, copied when the move began); the
 * engine calls of a job that pinned or marked the entry; and data requests
 * of its handles between catalog_enter and catalog_leave (a forced delete
 * revokes and drains them first).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnap/err.h"
#include "catalog.h"
#include "holds.h"

/* Lock discipline.
 *
 * cat->lock   mutex; protects every field of struct catalog below it, every
 *             entry, every owned record and every connection's entry, refs
 *             and list links.  Taken once per public operation (the
 *             wrappers below), for microseconds to milliseconds: never
 *             across nbdsnap_snap_create, nbdsnap_snap_delete_progress,
 *             nbdsnap_rollback, nbdsnap_snap_changes or
 *             nbdsnap_snap_mark_deleting, nor while taking a gate
 *             exclusive.  Under it the catalog calls nbdsnap_snap_info only
 *             (chain_lock shared, briefly).  Condition variables on it:
 *               changed     broadcast when a snapshot or the origin loses
 *                           a user, or an entry goes (the grace waits of
 *                           delete NOW and rollback);
 *               reap        the reaper sleeps on it;
 *               idle        broadcast when the reaper runs out of work.
 * conn->gate  rwlock per NBD handle: each data request holds it shared
 *             (try-lock, catalog_enter) for its length and takes no other
 *             catalog lock meanwhile; a revoker takes it exclusive once,
 *             without cat->lock, to wait for the requests inside.
 * cat->holds_lock  mutex; serializes the changes of named holds with
 *             their writes of the holds file: catalog_hold_named and
 *             catalog_release_named hold it for the whole operation,
 *             write and fsync included (without cat->lock, which they
 *             take briefly inside, to mark and to finish), so each write
 *             carries every earlier change and the file's last write is
 *             the newest state.  The named holds themselves (cat->named,
 *             en->named_holds) are cat->lock's, changed only by holders
 *             of both (and by catalog_new, alone).
 * Counters on the data path (bytes, requests) and conn->revoked are
 * atomics; cat->closed (the totals of closed handles) is cat->lock's.
 *
 * In the program's lock order: cat->holds_lock, then cat->lock, then
 * conn->gate (never the other way round: nothing takes cat->lock inside
 * a gate), then the engine's locks (chain_lock, ...), which both may be
 * held across.
 */

struct entry {
  char name[NBDSNAP_NAME_MAX + 1];
  uint64_t id;                  /* 0 while creating */
  struct nbdsnap_snap *snap;    /* NULL while creating */
  enum catalog_state state;     /* CREATING, LIVE or DELETING */
  bool deferred;                /* deleting: waits for its users */
  bool marking;                 /* deleting: mark_deleting runs */
  bool marked;                  /* "deleting" is on disk */
  bool moving;                  /* deleting: the engine delete runs */
  bool owner_gone;              /* creating, temporary: its owner closed */
  struct nbdsnap_snap_info info;        /* creating / moving: see .h */
  struct nbdsnap_progress *progress;    /* moving */
  struct nbdsnap_progress reap_progress;   /* the reaper's */
  unsigned clients, holds, pins;
  unsigned named_holds;         /* named holds on it (cat->named) */
  struct entry *next;
};

/* One data connection's counters (atomics). */
struct conn_counts {
  uint64_t bytes_read, bytes_written, zero_bytes, trim_bytes;
  uint64_t reads, writes, zeros, trims, flushes;
  uint64_t failed;
  uint64_t errors[CATALOG_ERRNO_SLOTS];
};

struct catalog_conn {
  uint64_t id;
  char export[NBDSNAP_NAME_MAX + 1];
  char peer[CATALOG_PEER_MAX];
  struct timespec started;
  bool readonly;
  struct nbdsnap_snap *snap;    /* fixed at open; NULL for the origin */
  struct entry *entry;          /* NULL for the origin and once revoked */
  bool revoked;                 /* atomic; set under cat->lock */
  unsigned refs;                /* the list's + drains in progress */
  pthread_rwlock_t gate;
  /* Written at open, then only by catalog_conn_description on the
   * handle's own thread. */
  char description[CATALOG_DESCRIPTION_MAX];
  struct conn_counts n;
  struct catalog_conn *next;
};

/* A hold or a temporary snapshot owned by an admin connection. */
struct owned {
  uint64_t owner;
  struct entry *en;
  bool temporary;               /* else a hold */
  time_t created;
  struct owned *next;
};

/* A named hold (persistent: the holds file says the same). */
struct named {
  char tag[NBDSNAP_NAME_MAX + 1];
  struct entry *en;
  time_t created;
  struct named *next;
};

struct catalog {
  struct nbdsnap_engine *engine;        /* fixed */
  bool readonly;                        /* fixed */
  pthread_mutex_t lock;
  pthread_cond_t changed, reap, idle;
  struct entry *entries;                /* oldest first */
  struct catalog_conn *conns;
  struct owned *owned;
  pthread_mutex_t holds_lock;           /* see the lock discipline */
  struct named *named;                  /* oldest first */
  size_t nnamed;
  /* Counters of the data connections that have closed. */
  struct catalog_totals closed;
  uint64_t next_conn_id;
  /* The running rollback, if any. */
  bool rollback_running;
  struct entry *rollback_target;
  struct nbdsnap_progress *rollback_progress;
  /* The reaper. */
  pthread_t reaper;
  bool reaper_started;
  bool stop;
  bool reaping;                         /* a delete of the reaper runs */
  struct entry *reaping_entry;
};

#define LOCKED(cat, call)                       \
  ({                                            \
    pthread_mutex_lock (&(cat)->lock);          \
    __auto_type _r = (call);                    \
    pthread_mutex_unlock (&(cat)->lock);        \
    _r;                                         \
  })
#define LOCKED_VOID(cat, call)                  \
  do {                                          \
    pthread_mutex_lock (&(cat)->lock);          \
    (call);                                     \
    pthread_mutex_unlock (&(cat)->lock);        \
  } while (0)

/* Report one refusal (nbdsnap_refuse: the caller answers it; logged as
 * debug), set errno, return the kind. */
static enum catalog_err __attribute__ ((format (printf, 2, 3)))
fail (enum catalog_err kind, const char *fmt, ...)
{
  static const int errnos[] = {
    [CATALOG_ERR_NOT_FOUND] = ENOENT, [CATALOG_ERR_NOT_HELD] = ENOENT,
    [CATALOG_ERR_EXISTS] = EEXIST, [CATALOG_ERR_BUSY] = EBUSY,
    [CATALOG_ERR_LIMIT] = EAGAIN, [CATALOG_ERR_READONLY] = EROFS,
  };
  char msg[512];
  va_list args;

  va_start (args, fmt);
  vsnprintf (msg, sizeof msg, fmt, args);
  va_end (args);
  errno = errnos[kind];
  nbdsnap_refuse ("%s", msg);
  return kind;
}

const char *
catalog_state_name (enum catalog_state state)
{
  switch (state) {
  case CATALOG_STATE_CREATING: return "creating";
  case CATALOG_STATE_LIVE:     return "live";
  case CATALOG_STATE_DELETING: return "deleting";
  case CATALOG_STATE_INVALID:  return "invalid";
  }
  return "?";
}

/* --- Entries (all with cat->lock held) -------------------------------- */

static unsigned
users (const struct entry *en)
{
  return en->clients + en->holds + en->named_holds + en->pins;
}

/* Due for the reaper: deferred, marked on disk, unused. */
static bool
reapable (const struct entry *en)
{
  return en->state == CATALOG_STATE_DELETING && en->deferred
    && !en->marking && !en->moving && users (en) == 0;
}

/* Any entry with this name, in any state. */
static struct entry *
find_unlocked (struct catalog *cat, const char *name)
{
  struct entry *en;

  for (en = cat->entries; en != NULL; en = en->next)
    if (strcmp (en->name, name) == 0)
      return en;
  return NULL;
}

/* A live entry, or NOT_FOUND reported with why (for op). */
static enum catalog_err
find_live_unlocked (struct catalog *cat, const char *op, const char *name,
                    struct entry **out)
{
  struct entry *en = find_unlocked (cat, name);

  *out = en;
  if (en == NULL)
    return fail (CATALOG_ERR_NOT_FOUND, "%s: snapshot %s does not exist",
                 op, name);
  if (en->state == CATALOG_STATE_CREATING)
    return fail (CATALOG_ERR_NOT_FOUND, "%s: snapshot %s is being created",
                 op, name);
  if (en->state == CATALOG_STATE_DELETING)
    return fail (CATALOG_ERR_NOT_FOUND, "%s: snapshot %s is being deleted",
                 op, name);
  return CATALOG_OK;
}

/* Insert en in id order (creating entries, id 0, go last). */
static void
entry_insert (struct catalog *cat, struct entry *en)
{
  struct entry **p;

  for (p = &cat->entries; *p != NULL; p = &(*p)->next)
    if (en->id != 0 && ((*p)->id == 0 || (*p)->id > en->id))
      break;
  en->next = *p;
  *p = en;
}

static void
entry_unlink (struct catalog *cat, struct entry *en)
{
  struct entry **p;

  for (p = &cat->entries; *p != NULL; p = &(*p)->next)
    if (*p == en) {
      *p = en->next;
      return;
    }
}

static int
owned_add (struct catalog *cat, uint64_t owner, struct entry *en,
           bool temporary)
{
  struct owned *o = calloc (1, sizeof *o);

  if (o == NULL) {
    nbdsnap_error ("calloc: %m");
    return -1;
  }
  o->owner = owner;
  o->en = en;
  o->temporary = temporary;
  o->created = time (NULL);
  o->next = cat->owned;
  cat->owned = o;
  return 0;
}

static unsigned
owned_count (struct catalog *cat, uint64_t owner)
{
  struct owned *o;
  unsigned n = 0;

  for (o = cat->owned; o != NULL; o = o->next)
    n += o->owner == owner;
  return n;
}

/* Forget every record about en (holds too: the caller fixes en->holds). */
static void
owned_forget (struct catalog *cat, struct entry *en, bool holds_only)
{
  struct owned **p = &cat->owned, *o;

  while ((o = *p) != NULL) {
    if (o->en == en && (!holds_only || !o->temporary)) {
      *p = o->next;
      free (o);
    }
    else
      p = &o->next;
  }
}

/* A snapshot lost a user (or an entry went): wake the grace waiters and,
 * if it became due, the reaper. */
static void
lost_user (struct catalog *cat, struct entry *en)
{
  pthread_cond_broadcast (&cat->changed);
  if (en && reapable (en))
    pthread_cond_signal (&cat->reap);
}

/* Forget every named hold on en (an entry that goes: never one with
 * named holds, since they keep it; defensive). */
static void
named_forget (struct catalog *cat, struct entry *en)
{
  struct named **p = &cat->named, *h;

  while ((h = *p) != NULL) {
    if (h->en == en) {
      *p = h->next;
      cat->nnamed--;
      free (h);
    }
    else
      p = &h->next;
  }
}

static void
entry_free (struct catalog *cat, struct entry *en)
{
  entry_unlink (cat, en);
  owned_forget (cat, en, false);
  named_forget (cat, en);
  free (en);
  pthread_cond_broadcast (&cat->changed);
}

/* Copy en into out. */
static void
snap_copy (struct catalog *cat, const struct entry *en,
           struct catalog_snap *out)
{
  memset (out, 0, sizeof *out);
  if (en->snap != NULL && !en->moving)
    nbdsnap_snap_info (cat->engine, en->snap, &out->info);
  else
    out->info = en->info;
  out->state = en->state;
  if (en->state == CATALOG_STATE_LIVE
      && out->info.state == NBDSNAP_STATE_INVALID)
    out->state = CATALOG_STATE_INVALID;
  out->clients = en->clients;
  out->holds = en->holds;
  out->named_holds = en->named_holds;
  out->deferred = en->state == CATALOG_STATE_DELETING && en->deferred;
  out->moving = en->moving;
  if (en->moving && en->progress) {
    out->progress_done = __atomic_load_n (&en->progress->done,
                                          __ATOMIC_RELAXED);
    out->progress_total = __atomic_load_n (&en->progress->total,
                                           __ATOMIC_RELAXED);
  }
  if (cat->rollback_running && cat->rollback_target == en) {
    out->rollback = true;
    out->rollback_done = __atomic_load_n (&cat->rollback_progress->done,
                                          __ATOMIC_RELAXED);
    out->rollback_total = __atomic_load_n (&cat->rollback_progress->total,
                                           __ATOMIC_RELAXED);
  }
}

/* "(N client(s), M hold(s))" of a busy entry, for messages. */
static const char *
users_text (const struct entry *en, char *buf, size_t n)
{
  snprintf (buf, n, "%u client(s) connected, %u hold(s)%s%s", en->clients,
            en->holds, en->named_holds ? ", named holds" : "",
            en->pins ? ", a changes or rollback job" : "");
  return buf;
}

/* "tag1, tag2" of en's named holds, cut to fit n. */
static const char *
tags_text (struct catalog *cat, const struct entry *en, char *buf, size_t n)
{
  struct named *h;
  size_t len = 0;

  buf[0] = '\0';
  for (h = cat->named; h != NULL; h = h->next) {
    if (h->en != en)
      continue;
    if (len + strlen (h->tag) + 6 >= n) {
      snprintf (buf + len, n - len, "%s...", len ? ", " : "");
      break;
    }
    len += snprintf (buf + len, n - len, "%s%s", len ? ", " : "", h->tag);
  }
  return buf;
}

/* --- Connections ------------------------------------------------------ */

static void count_error (struct catalog_conn *c, int err);
static void totals_add (struct catalog_totals *t, struct catalog_conn *c);

/* Revoke every handle on en (en == NULL: on the origin): set revoked,
 * detach, take a reference for the drain.  Returns how many; *list gets a
 * malloc'd array of them (NULL if none), or -1 (ENOMEM, nothing done). */
static ssize_t
revoke_unlocked (struct catalog *cat, struct entry *en,
                 struct catalog_conn ***list)
{
  struct catalog_conn *c, **arr;
  size_t n = 0, i = 0;

  *list = NULL;
  for (c = cat->conns; c != NULL; c = c->next)
    n += c->entry == en && (en != NULL || c->snap == NULL)
      && !__atomic_load_n (&c->revoked, __ATOMIC_RELAXED);
  if (n == 0)
    return 0;
  arr = malloc (n * sizeof *arr);
  if (arr == NULL) {
    nbdsnap_error ("malloc: %m");
    return -1;
  }
  for (c = cat->conns; c != NULL; c = c->next)
    if (c->entry == en && (en != NULL || c->snap == NULL)
        && !__atomic_load_n (&c->revoked, __ATOMIC_RELAXED)) {
      __atomic_store_n (&c->revoked, true, __ATOMIC_RELEASE);
      c->entry = NULL;
      c->refs++;
      arr[i++] = c;
    }
  if (en)
    en->clients = 0;
  *list = arr;
  return n;
}

/* Without cat->lock: wait for the requests inside each revoked handle. */
static void
drain (struct catalog_conn **list, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i) {
    pthread_rwlock_wrlock (&list[i]->gate);
    pthread_rwlock_unlock (&list[i]->gate);
  }
}

static void
conn_free (struct catalog_conn *c)
{
  pthread_rwlock_destroy (&c->gate);
  free (c);
}

/* Drop the drain references (with cat->lock); returns the connections
 * that closed meanwhile, which the caller frees after unlocking. */
static void
undrain_unlocked (struct catalog_conn **list, size_t n)
{
  size_t i, j = 0;

  for (i = 0; i < n; ++i)
    if (--list[i]->refs == 0)
      list[j++] = list[i];
  for (i = j; i < n; ++i)
    list[i] = NULL;
}

static void
undrain (struct catalog *cat, struct catalog_conn **list, size_t n)
{
  size_t i;

  LOCKED_VOID (cat, undrain_unlocked (list, n));
  for (i = 0; i < n && list[i] != NULL; ++i)
    conn_free (list[i]);
  free (list);
}

static void
describe_info (const struct nbdsnap_snap_info *info, const char *state,
               char *buf, size_t n)
{
  struct tm tm;
  char when[32];

  gmtime_r (&info->created.tv_sec, &tm);
  strftime (when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf (buf, n, "snapshot %s, taken %s, %s, %" PRIu64 " chunks copied",
            info->name, when, state, info->chunks_copied);
}

void
catalog_describe (const struct catalog_snap *s, char *buf, size_t n)
{
  describe_info (&s->info, catalog_state_name (s->state), buf, n);
}

static struct catalog_conn *
conn_open_unlocked (struct catalog *cat, struct catalog_conn *c)
{
  struct entry *en = NULL;

  if (c->export[0] == '\0') {
    if (cat->rollback_running) {
      fail (CATALOG_ERR_BUSY, "export \"\" (the origin): a rollback is in "
            "progress; connect again when it has finished");
      return NULL;
    }
  }
  else {
    en = find_unlocked (cat, c->export);
    if (en == NULL || en->state != CATALOG_STATE_LIVE) {
      fail (CATALOG_ERR_NOT_FOUND, "export \"%s\": no such snapshot%s",
            c->export,
            en == NULL ? ""
            : en->state == CATALOG_STATE_CREATING
            ? " (it is being created)" : " (it is being deleted)");
      return NULL;
    }
    en->clients++;
    c->readonly = true;
    c->snap = en->snap;
    {
      struct nbdsnap_snap_info info;
      nbdsnap_snap_info (cat->engine, en->snap, &info);
      describe_info (&info, info.state == NBDSNAP_STATE_INVALID
                     ? "invalid" : "live", c->description,
                     sizeof c->description);
    }
  }
  c->entry = en;
  c->id = cat->next_conn_id++;
  c->refs = 1;
  c->next = cat->conns;
  cat->conns = c;
  return c;
}

struct catalog_conn *
catalog_conn_open (struct catalog *cat, const char *export, bool readonly,
                   const char *peer)
{
  struct catalog_conn *c = calloc (1, sizeof *c), *r;

  if (c == NULL) {
    nbdsnap_error ("calloc: %m");
    return NULL;
  }
  snprintf (c->export, sizeof c->export, "%s", export);
  snprintf (c->peer, sizeof c->peer, "%s", peer ? peer : "unknown");
  clock_gettime (CLOCK_REALTIME, &c->started);
  c->readonly = readonly;
  pthread_rwlock_init (&c->gate, NULL);
  r = LOCKED (cat, conn_open_unlocked (cat, c));
  if (r == NULL) {
    int err = errno;
    conn_free (c);
    errno = err;
    return NULL;
  }
  nbdsnap_debug ("connection %" PRIu64 " to export \"%s\" from %s",
                 r->id, r->export, r->peer);
  return r;
}

/* Returns true if the caller frees c. */
static bool
conn_close_unlocked (struct catalog *cat, struct catalog_conn *c)
{
  struct catalog_conn **p;

  for (p = &cat->conns; *p != NULL; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  if (c->entry) {
    c->entry->clients--;
    lost_user (cat, c->entry);
    c->entry = NULL;
  }
  else
    lost_user (cat, NULL);      /* an origin client: rollback's grace */
  totals_add (&cat->closed, c);
  return --c->refs == 0;
}

void
catalog_conn_close (struct catalog *cat, struct catalog_conn *c)
{
  if (LOCKED (cat, conn_close_unlocked (cat, c)))
    conn_free (c);
}

static int
revoked_error (struct catalog_conn *c)
{
  errno = ESHUTDOWN;
  if (c->snap)
    nbdsnap_error ("snapshot %s: this handle was revoked (delete --force)",
                   c->export);
  else
    nbdsnap_error ("origin: this handle was revoked (rollback --force)");
  return -1;
}

int
catalog_enter (struct catalog_conn *c)
{
  if (pthread_rwlock_tryrdlock (&c->gate) != 0) {
    count_error (c, ESHUTDOWN);
    return revoked_error (c);         /* a revoker holds it: revoked */
  }
  if (__atomic_load_n (&c->revoked, __ATOMIC_ACQUIRE)) {
    pthread_rwlock_unlock (&c->gate);
    count_error (c, ESHUTDOWN);
    return revoked_error (c);
  }
  return 0;
}

void
catalog_leave (struct catalog_conn *c)
{
  pthread_rwlock_unlock (&c->gate);
}

struct nbdsnap_snap *
catalog_conn_snap (const struct catalog_conn *c)
{
  return c->snap;
}

const char *
catalog_conn_export (const struct catalog_conn *c)
{
  return c->export;
}

bool
catalog_conn_readonly (const struct catalog_conn *c)
{
  return c->readonly;
}

const char *
catalog_conn_description (struct catalog_conn *c)
{
  if (__atomic_load_n (&c->revoked, __ATOMIC_ACQUIRE)) {
    if (c->snap)
      snprintf (c->description, sizeof c->description,
                "snapshot %s, deleted (delete --force): this handle is "
                "revoked", c->export);
    else
      snprintf (c->description, sizeof c->description,
                "origin: rolled back (rollback --force): this handle is "
                "revoked");
    return c->description;
  }
  return c->snap ? c->description : NULL;
}

#define ADD(f, v) __atomic_fetch_add (&(f), (v), __ATOMIC_RELAXED)

static void
count_error (struct catalog_conn *c, int err)
{
  ADD (c->n.failed, 1);
  ADD (c->n.errors[err > 0 && err < CATALOG_ERRNO_SLOTS ? err : 0], 1);
}

int
catalog_conn_done (struct catalog_conn *c, enum catalog_req kind,
                   uint32_t count, int r)
{
  struct conn_counts *n = &c->n;

  if (r == -1) {
    int err = errno;
    count_error (c, err);
    errno = err;
    return r;
  }
  switch (kind) {
  case CATALOG_REQ_READ:  ADD (n->bytes_read, count); ADD (n->reads, 1);
    break;
  case CATALOG_REQ_WRITE: ADD (n->bytes_written, count); ADD (n->writes, 1);
    break;
  case CATALOG_REQ_ZERO:  ADD (n->zero_bytes, count); ADD (n->zeros, 1);
    break;
  case CATALOG_REQ_TRIM:  ADD (n->trim_bytes, count); ADD (n->trims, 1);
    break;
  case CATALOG_REQ_FLUSH: ADD (n->flushes, 1); break;
  case CATALOG_REQ_OTHER: break;
  }
  return r;
}

/* Add c's counters into t (snapshot handles count as snapshots). */
static void
totals_add (struct catalog_totals *t, struct catalog_conn *c)
{
#define LOAD(f) __atomic_load_n (&c->n.f, __ATOMIC_RELAXED)
  size_t i;

  if (c->snap != NULL) {
    t->snap_bytes_read += LOAD (bytes_read);
    t->snap_reads += LOAD (reads);
  }
  else {
    t->origin_bytes_read += LOAD (bytes_read);
    t->origin_bytes_written += LOAD (bytes_written);
    t->origin_zero_bytes += LOAD (zero_bytes);
    t->origin_trim_bytes += LOAD (trim_bytes);
    t->origin_reads += LOAD (reads);
    t->origin_writes += LOAD (writes);
    t->origin_zeros += LOAD (zeros);
    t->origin_trims += LOAD (trims);
    t->origin_flushes += LOAD (flushes);
  }
  t->failed += LOAD (failed);
  for (i = 0; i < CATALOG_ERRNO_SLOTS; ++i)
    t->errors[i] += LOAD (errors[i]);
#undef LOAD
}

static bool
totals_unlocked (struct catalog *cat, struct catalog_totals *out)
{
  struct catalog_conn *c;

  *out = cat->closed;
  for (c = cat->conns; c != NULL; c = c->next)
    totals_add (out, c);
  return true;
}

void
catalog_totals (struct catalog *cat, struct catalog_totals *out)
{
  LOCKED (cat, totals_unlocked (cat, out));
}

/* --- create ----------------------------------------------------------- */

static enum catalog_err
begin_create_unlocked (struct catalog *cat, uint64_t owner, const char *name,
                       bool temporary, struct entry **out)
{
  struct entry *en;
  char u[128];

  *out = NULL;
  if (cat->readonly)
    return fail (CATALOG_ERR_READONLY, "the origin is read-only (nbdkit -r "
                 "or an image opened read-only): it cannot change, so "
                 "there is nothing to snapshot");
  if (nbdsnap_name_valid (name) == -1)
    return CATALOG_ERR_SYSTEM;          /* EINVAL, reported */
  en = find_unlocked (cat, name);
  if (en != NULL) {
    if (en->state == CATALOG_STATE_CREATING)
      return fail (CATALOG_ERR_EXISTS, "snapshot %s is being created", name);
    if (en->state == CATALOG_STATE_DELETING)
      return fail (CATALOG_ERR_EXISTS, "snapshot %s is being deleted%s%s%s: "
                   "its name is free once it is gone", name,
                   en->deferred ? " (deferred), still used by " : "",
                   en->deferred ? users_text (en, u, sizeof u) : "",
                   en->moving ? " (its chunks are moving)" : "");
    return fail (CATALOG_ERR_EXISTS, "snapshot %s already exists", name);
  }
  if (cat->rollback_running)
    return fail (CATALOG_ERR_BUSY, "create %s: a rollback is in progress: "
                 "a snapshot now would capture a half-rolled-back origin",
                 name);
  if (temporary && owned_count (cat, owner) >= CATALOG_OWNED_MAX)
    return fail (CATALOG_ERR_LIMIT, "this connection already owns %d pins "
                 "and temporary snapshots, the most one connection may",
                 CATALOG_OWNED_MAX);
  en = calloc (1, sizeof *en);
  if (en == NULL) {
    nbdsnap_error ("calloc: %m");
    return CATALOG_ERR_SYSTEM;
  }
  strcpy (en->name, name);
  strcpy (en->info.name, name);
  clock_gettime (CLOCK_REALTIME, &en->info.created);
  en->info.temporary = temporary;
  en->info.state = NBDSNAP_STATE_CREATING;
  en->state = CATALOG_STATE_CREATING;
  if (temporary && owned_add (cat, owner, en, true) == -1) {
    free (en);
    return CATALOG_ERR_SYSTEM;
  }
  entry_insert (cat, en);
  *out = en;
  return CATALOG_OK;
}

static void
end_create_unlocked (struct catalog *cat, struct entry *en,
                     struct nbdsnap_snap *s, struct catalog_snap *out)
{
  struct nbdsnap_snap_info info;

  if (s == NULL) {
    entry_free (cat, en);
    return;
  }
  nbdsnap_snap_info (cat->engine, s, &info);
  en->snap = s;
  en->id = info.id;
  en->state = CATALOG_STATE_LIVE;
  entry_unlink (cat, en);
  entry_insert (cat, en);
  if (out)
    snap_copy (cat, en, out);
  if (en->owner_gone) {
    /* Its owner closed while it was being created: temporary, hence
     * deleted at the next start too; the reaper deletes it now. */
    en->state = CATALOG_STATE_DELETING;
    en->deferred = en->marked = true;
    lost_user (cat, en);
  }
}

enum catalog_err
catalog_create (struct catalog *cat, uint64_t owner, const char *name,
                bool temporary, struct catalog_snap *out)
{
  struct entry *en;
  struct nbdsnap_snap *s;
  enum catalog_err r;
  int err;

  r = LOCKED (cat, begin_create_unlocked (cat, owner, name, temporary, &en));
  if (r != CATALOG_OK)
    return r;
  s = nbdsnap_snap_create (cat->engine, name, temporary);
  err = errno;
  LOCKED_VOID (cat, end_create_unlocked (cat, en, s, out));
  errno = err;
  return s ? CATALOG_OK : CATALOG_ERR_SYSTEM;
}

/* --- delete ----------------------------------------------------------- */

/* What begin_delete decided. */
enum delete_plan {
  PLAN_NONE,                    /* refused (or nothing to do) */
  PLAN_MARK,                    /* mark_deleting, then deferred */
  PLAN_MOVE,                    /* the engine delete */
};

struct delete_job {
  const char *name;
  enum catalog_delete_mode mode;
  struct nbdsnap_progress *p;
  struct entry *en;
  struct nbdsnap_snap *snap;
  enum delete_plan plan;
  enum catalog_state prev_state;
  bool prev_deferred;
  struct catalog_conn **revoked;
  ssize_t nrevoked;
};

/* Mark en deleting + moving with progress p. */
static void
start_move (struct catalog *cat, struct entry *en,
            struct nbdsnap_progress *p)
{
  nbdsnap_snap_info (cat->engine, en->snap, &en->info);
  en->state = CATALOG_STATE_DELETING;
  en->deferred = false;
  en->moving = true;
  en->progress = p;
}

/* After the engine delete of en returned r (errno err). */
static void
end_move (struct catalog *cat, struct entry *en, int r,
          enum catalog_state prev_state, bool prev_deferred)
{
  struct nbdsnap_snap_info info;

  en->moving = false;
  en->progress = NULL;
  if (r == 0) {
    nbdsnap_debug ("snapshot %s deleted", en->name);
    entry_free (cat, en);
    return;
  }
  nbdsnap_snap_info (cat->engine, en->snap, &info);
  if (en->marked || info.state == NBDSNAP_STATE_DELETING) {
    /* Stuck: deleting on disk; a delete retries, an open finishes it. */
    en->state = CATALOG_STATE_DELETING;
    en->deferred = false;
  }
  else {
    en->state = prev_state;
    en->deferred = prev_deferred;
  }
  pthread_cond_broadcast (&cat->changed);
}

static enum catalog_err
begin_delete_unlocked (struct catalog *cat, struct delete_job *j)
{
  struct entry *en;
  char u[128];

  j->plan = PLAN_NONE;
  en = find_unlocked (cat, j->name);
  if (en == NULL)
    return fail (CATALOG_ERR_NOT_FOUND, "snapshot %s does not exist",
                 j->name);
  if (en->state == CATALOG_STATE_CREATING)
    return fail (CATALOG_ERR_BUSY, "snapshot %s is being created: delete it "
                 "once it is live", j->name);
  if (en->state == CATALOG_STATE_DELETING
      && (en->moving || en->marking
          || (en->deferred && j->mode != CATALOG_DELETE_FORCE)))
    return fail (CATALOG_ERR_NOT_FOUND, "snapshot %s is being deleted%s",
                 j->name, en->moving ? ""
                 : en->marking ? " (deferred)"
                 : " (deferred, still used by its clients or holds); "
                 "--force revokes them");
  if (en->named_holds > 0) {
    char tags[256];
    return fail (CATALOG_ERR_BUSY, "snapshot %s is held by %u named "
                 "hold(s) (tag %s): release them first (nbdsnapctl release "
                 "TAG %s); --defer and --force do not override a named "
                 "hold", j->name, en->named_holds,
                 tags_text (cat, en, tags, sizeof tags), j->name);
  }

  /* A client that has just disconnected (nbdcopy ... && nbdsnapctl
   * delete) may not be unregistered yet: give connections that are closing
   * up to CATALOG_BUSY_GRACE_SECONDS before answering busy.  The entry may
   * go or change meanwhile: look it up again after each wake-up. */
  if (j->mode == CATALOG_DELETE_NOW && en->state == CATALOG_STATE_LIVE
      && en->clients > 0 && en->holds == 0 && en->pins == 0
      && en->named_holds == 0) {
    struct timespec deadline;

    clock_gettime (CLOCK_REALTIME, &deadline);
    deadline.tv_sec += CATALOG_BUSY_GRACE_SECONDS;
    while (en != NULL && en->state == CATALOG_STATE_LIVE && en->clients > 0
           && en->holds == 0 && en->pins == 0
           && pthread_cond_timedwait (&cat->changed, &cat->lock,
                                      &deadline) == 0)
      en = find_unlocked (cat, j->name);
    if (en == NULL || en->state != CATALOG_STATE_LIVE)
      return fail (CATALOG_ERR_NOT_FOUND, "snapshot %s %s", j->name,
                   en == NULL ? "does not exist" : "is being deleted");
  }

  if (en->pins > 0 && j->mode == CATALOG_DELETE_FORCE)
    return fail (CATALOG_ERR_BUSY, "snapshot %s is busy: a changes or "
                 "rollback job is using it (--force cannot revoke a job); "
                 "try again when it is done, or use --defer", j->name);
  j->en = en;
  j->snap = en->snap;
  j->prev_state = en->state;
  j->prev_deferred = en->deferred;
  if (users (en) > 0) {
    switch (j->mode) {
    case CATALOG_DELETE_NOW:
      return fail (CATALOG_ERR_BUSY, "snapshot %s is busy: %s; use --defer "
                   "or --force", j->name, users_text (en, u, sizeof u));
    case CATALOG_DELETE_DEFER:
      en->state = CATALOG_STATE_DELETING;
      en->deferred = true;
      en->marking = true;
      j->plan = PLAN_MARK;
      return CATALOG_OK;
    case CATALOG_DELETE_FORCE:
      j->nrevoked = revoke_unlocked (cat, en, &j->revoked);
      if (j->nrevoked == -1)
        return CATALOG_ERR_SYSTEM;
      owned_forget (cat, en, true);
      en->holds = 0;
      break;
    }
  }
  start_move (cat, en, j->p);
  j->plan = PLAN_MOVE;
  return CATALOG_OK;
}

static void
end_mark_unlocked (struct catalog *cat, struct delete_job *j, int r)
{
  struct entry *en = j->en;

  en->marking = false;
  if (r == -1) {
    en->state = j->prev_state;
    en->deferred = j->prev_deferred;
    return;
  }
  en->marked = true;
  lost_user (cat, en);          /* its users may have gone meanwhile */
}

enum catalog_err
catalog_delete (struct catalog *cat, uint64_t owner, const char *name,
                enum catalog_delete_mode mode, struct nbdsnap_progress *p,
                catalog_accepted_fn accepted,
                struct catalog_delete_result *res)
{
  struct nbdsnap_progress local = { 0 };
  struct delete_job j = { .name = name, .mode = mode, .p = p ? p : &local };
  enum catalog_err ret;
  int r, err;

  memset (res, 0, sizeof *res);
  ret = LOCKED (cat, begin_delete_unlocked (cat, &j));
  if (ret != CATALOG_OK)
    return ret;
  if (j.plan == PLAN_MARK) {
    r = nbdsnap_snap_mark_deleting (cat->engine, j.snap);
    err = errno;
    LOCKED_VOID (cat, end_mark_unlocked (cat, &j, r));
    if (r == -1) {
      errno = err;
      return CATALOG_ERR_SYSTEM;
    }
    if (accepted)
      accepted (p);
    res->deferred = true;
    return CATALOG_OK;
  }
  /* PLAN_MOVE */
  drain (j.revoked, j.nrevoked);
  res->revoked = j.nrevoked;
  if (accepted)
    accepted (p);
  r = nbdsnap_snap_delete_progress (cat->engine, j.snap, j.p);
  err = errno;
  res->moved_bytes = __atomic_load_n (&j.p->done, __ATOMIC_RELAXED);
  LOCKED_VOID (cat, end_move (cat, j.en, r, j.prev_state, j.prev_deferred));
  undrain (cat, j.revoked, j.nrevoked);
  errno = err;
  return r == 0 ? CATALOG_OK : CATALOG_ERR_SYSTEM;
}

/* --- The reaper ------------------------------------------------------- */

static struct entry *
next_reapable (struct catalog *cat)
{
  struct entry *en;

  for (en = cat->entries; en != NULL; en = en->next)
    if (reapable (en))
      return en;
  return NULL;
}

/* Wait for work; NULL when stopping.  Marks the delete it returns. */
static struct entry *
reaper_next_unlocked (struct catalog *cat)
{
  struct entry *en;

  cat->reaping = false;
  while (!cat->stop && (en = next_reapable (cat)) == NULL) {
    pthread_cond_broadcast (&cat->idle);
    pthread_cond_wait (&cat->reap, &cat->lock);
  }
  if (cat->stop) {
    pthread_cond_broadcast (&cat->idle);
    return NULL;
  }
  memset (&en->reap_progress, 0, sizeof en->reap_progress);
  start_move (cat, en, &en->reap_progress);
  cat->reaping = true;
  cat->reaping_entry = en;
  return en;
}

static void
reaper_done_unlocked (struct catalog *cat, struct entry *en, int r)
{
  cat->reaping_entry = NULL;
  if (r == -1 && !cat->stop)
    nbdsnap_error ("deferred delete of snapshot %s failed; it is deleted at "
                   "the next start, or by delete", en->name);
  end_move (cat, en, r, CATALOG_STATE_DELETING, true);
}

static void *
reaper (void *vcat)
{
  struct catalog *cat = vcat;
  struct entry *en;
  struct nbdsnap_snap *s;
  int r;

  while ((en = LOCKED (cat, reaper_next_unlocked (cat))) != NULL) {
    s = en->snap;
    nbdsnap_debug ("deferred delete of snapshot %s: last user gone",
                   en->name);
    r = nbdsnap_snap_delete_progress (cat->engine, s, &en->reap_progress);
    LOCKED_VOID (cat, reaper_done_unlocked (cat, en, r));
  }
  return NULL;
}

static bool
busy_reaper_unlocked (struct catalog *cat)
{
  while (cat->reaping || (!cat->stop && next_reapable (cat) != NULL))
    pthread_cond_wait (&cat->idle, &cat->lock);
  return true;
}

void
catalog_wait_idle (struct catalog *cat)
{
  LOCKED (cat, busy_reaper_unlocked (cat));
}

/* --- rollback --------------------------------------------------------- */

struct rollback_job {
  const char *name;
  bool force;
  struct nbdsnap_progress *p;
  struct entry *en;
  struct nbdsnap_snap *snap;
  struct catalog_conn **revoked;
  ssize_t nrevoked;
};

/* NBD clients of the origin, not revoked. */
static unsigned
origin_clients_unlocked (struct catalog *cat)
{
  struct catalog_conn *c;
  unsigned n = 0;

  for (c = cat->conns; c != NULL; c = c->next)
    n += c->snap == NULL && !__atomic_load_n (&c->revoked, __ATOMIC_RELAXED);
  return n;
}

static enum catalog_err
begin_rollback_unlocked (struct catalog *cat, struct rollback_job *j)
{
  unsigned n;
  enum catalog_err r;

  if (cat->readonly)
    return fail (CATALOG_ERR_READONLY, "the origin is read-only (nbdkit -r "
                 "or an image opened read-only): it cannot be rolled back");
  r = find_live_unlocked (cat, "rollback", j->name, &j->en);
  if (r != CATALOG_OK)
    return r;
  if (cat->rollback_running)
    return fail (CATALOG_ERR_BUSY, "rollback %s: a rollback to %s is in "
                 "progress", j->name, cat->rollback_target->name);
  n = origin_clients_unlocked (cat);
  /* As delete does: a client that has just disconnected (nbdcopy ... &&
   * nbdsnapctl rollback) may not be unregistered yet. */
  if (n > 0 && !j->force) {
    struct timespec deadline;

    clock_gettime (CLOCK_REALTIME, &deadline);
    deadline.tv_sec += CATALOG_BUSY_GRACE_SECONDS;
    while ((n = origin_clients_unlocked (cat)) > 0
           && pthread_cond_timedwait (&cat->changed, &cat->lock,
                                      &deadline) == 0)
      ;
    /* The target may have gone meanwhile. */
    r = find_live_unlocked (cat, "rollback", j->name, &j->en);
    if (r != CATALOG_OK)
      return r;
    if (cat->rollback_running)
      return fail (CATALOG_ERR_BUSY, "rollback %s: a rollback to %s is in "
                   "progress", j->name, cat->rollback_target->name);
  }
  if (n > 0 && !j->force)
    return fail (CATALOG_ERR_BUSY, "rollback %s: the origin is busy: %u "
                 "NBD client(s) connected to it; disconnect them, or use "
                 "--force to revoke them", j->name, n);
  j->nrevoked = revoke_unlocked (cat, NULL, &j->revoked);
  if (j->nrevoked == -1)
    return CATALOG_ERR_SYSTEM;
  cat->rollback_running = true;
  cat->rollback_target = j->en;
  cat->rollback_progress = j->p;
  j->en->pins++;
  j->snap = j->en->snap;
  return CATALOG_OK;
}

/* Rollback finished: unpin; with destroy_newer, choose what to delete
 * (marked moving) and what to keep, into res. */
static int
end_rollback_unlocked (struct catalog *cat, struct rollback_job *j,
                       bool destroy_newer, struct catalog_rollback_result *res,
                       struct entry ***todel, size_t *ntodel)
{
  struct entry *en;
  uint64_t target = j->en->id;
  size_t n = 0;

  cat->rollback_running = false;
  cat->rollback_target = NULL;
  cat->rollback_progress = NULL;
  j->en->pins--;
  lost_user (cat, j->en);
  *todel = NULL;
  *ntodel = 0;
  if (!destroy_newer)
    return 0;
  for (en = cat->entries; en != NULL; en = en->next)
    n += en->id > target || en->state == CATALOG_STATE_CREATING;
  if (n == 0)
    return 0;
  *todel = calloc (n, sizeof **todel);
  res->destroyed = calloc (n, sizeof *res->destroyed);
  res->kept = calloc (n, sizeof *res->kept);
  if (*todel == NULL || res->destroyed == NULL || res->kept == NULL) {
    nbdsnap_error ("calloc: %m");
    return -1;
  }
  for (en = cat->entries; en != NULL; en = en->next) {
    if (en->id <= target && en->state != CATALOG_STATE_CREATING)
      continue;
    if (en->state == CATALOG_STATE_DELETING)
      continue;                 /* on its way already */
    if (en->state == CATALOG_STATE_LIVE && users (en) == 0) {
      memset (&en->reap_progress, 0, sizeof en->reap_progress);
      start_move (cat, en, &en->reap_progress);
      (*todel)[(*ntodel)++] = en;
    }
    else
      strcpy (res->kept[res->nkept++], en->name);
  }
  return 0;
}

static void
end_destroy_unlocked (struct catalog *cat, struct entry *en, int r,
                      struct catalog_rollback_result *res)
{
  strcpy (r == 0 ? res->destroyed[res->ndestroyed++] : res->kept[res->nkept++],
          en->name);
  end_move (cat, en, r, CATALOG_STATE_LIVE, false);
}

void
catalog_rollback_result_free (struct catalog_rollback_result *r)
{
  free (r->destroyed);
  free (r->kept);
  memset (r, 0, sizeof *r);
}

enum catalog_err
catalog_rollback (struct catalog *cat, uint64_t owner, const char *name,
                  bool force, bool destroy_newer, struct nbdsnap_progress *p,
                  catalog_accepted_fn accepted,
                  struct catalog_rollback_result *res)
{
  struct nbdsnap_progress local = { 0 };
  struct rollback_job j = { .name = name, .force = force,
                            .p = p ? p : &local };
  struct entry **todel = NULL;
  size_t ntodel = 0, i;
  enum catalog_err ret;
  int r, err;

  memset (res, 0, sizeof *res);
  ret = LOCKED (cat, begin_rollback_unlocked (cat, &j));
  if (ret != CATALOG_OK)
    return ret;
  drain (j.revoked, j.nrevoked);
  res->revoked = j.nrevoked;
  if (accepted)
    accepted (p);
  r = nbdsnap_rollback (cat->engine, j.snap, j.p);
  err = errno;
  res->rolled_back_bytes = __atomic_load_n (&j.p->done, __ATOMIC_RELAXED);
  if (LOCKED (cat, end_rollback_unlocked (cat, &j, destroy_newer && r == 0,
                                          res, &todel, &ntodel)) == -1) {
    r = -1;
    err = ENOMEM;
  }
  undrain (cat, j.revoked, j.nrevoked);
  for (i = 0; i < ntodel; ++i) {
    int dr = nbdsnap_snap_delete_progress (cat->engine, todel[i]->snap,
                                           &todel[i]->reap_progress);
    LOCKED_VOID (cat, end_destroy_unlocked (cat, todel[i], dr, res));
  }
  free (todel);
  if (r == -1) {
    catalog_rollback_result_free (res);
    errno = err;
    return CATALOG_ERR_SYSTEM;
  }
  return CATALOG_OK;
}

/* --- holds, owners ---------------------------------------------------- */

static enum catalog_err
hold_unlocked (struct catalog *cat, uint64_t owner, const char *name,
               unsigned *holds)
{
  struct entry *en;
  enum catalog_err r = find_live_unlocked (cat, "hold", name, &en);

  if (r != CATALOG_OK)
    return r;
  if (owned_count (cat, owner) >= CATALOG_OWNED_MAX)
    return fail (CATALOG_ERR_LIMIT, "this connection already owns %d pins "
                 "and temporary snapshots, the most one connection may",
                 CATALOG_OWNED_MAX);
  if (owned_add (cat, owner, en, false) == -1)
    return CATALOG_ERR_SYSTEM;
  *holds = ++en->holds;
  return CATALOG_OK;
}

enum catalog_err
catalog_hold (struct catalog *cat, uint64_t owner, const char *name,
              unsigned *holds)
{
  return LOCKED (cat, hold_unlocked (cat, owner, name, holds));
}

static enum catalog_err
release_unlocked (struct catalog *cat, uint64_t owner, const char *name,
                  unsigned *holds)
{
  struct entry *en = find_unlocked (cat, name);
  struct owned **p, *o;

  if (en == NULL)
    return fail (CATALOG_ERR_NOT_FOUND, "snapshot %s does not exist", name);
  for (p = &cat->owned; (o = *p) != NULL; p = &o->next)
    if (o->owner == owner && o->en == en && !o->temporary) {
      *p = o->next;
      free (o);
      *holds = --en->holds;
      lost_user (cat, en);
      return CATALOG_OK;
    }
  return fail (CATALOG_ERR_NOT_HELD, "this connection holds no pin on "
               "snapshot %s", name);
}

enum catalog_err
catalog_release (struct catalog *cat, uint64_t owner, const char *name,
                 unsigned *holds)
{
  return LOCKED (cat, release_unlocked (cat, owner, name, holds));
}

static void
owner_closed_unlocked (struct catalog *cat, uint64_t owner)
{
  struct owned **p = &cat->owned, *o;
  struct entry *en;

  while ((o = *p) != NULL) {
    if (o->owner != owner) {
      p = &o->next;
      continue;
    }
    *p = o->next;
    en = o->en;
    if (!o->temporary)
      en->holds--;
    else if (en->state == CATALOG_STATE_CREATING)
      en->owner_gone = true;    /* end_create defers it */
    else if (en->state == CATALOG_STATE_LIVE) {
      /* Temporary on disk already: a restart deletes it too. */
      nbdsnap_debug ("admin connection %" PRIu64 " closed: deleting its "
                     "temporary snapshot %s", owner, en->name);
      en->state = CATALOG_STATE_DELETING;
      en->deferred = en->marked = true;
    }
    free (o);
    lost_user (cat, en);
  }
}

void
catalog_owner_closed (struct catalog *cat, uint64_t owner)
{
  LOCKED_VOID (cat, owner_closed_unlocked (cat, owner));
}


/* --- named holds ------------------------------------------------------ */

static struct named *
named_find (struct catalog *cat, const struct entry *en, const char *tag)
{
  struct named *h;

  for (h = cat->named; h != NULL; h = h->next)
    if (h->en == en && strcmp (h->tag, tag) == 0)
      return h;
  return NULL;
}

static void
named_append (struct catalog *cat, struct named *h)
{
  struct named **p;

  for (p = &cat->named; *p != NULL; p = &(*p)->next)
    ;
  h->next = NULL;
  *p = h;
  cat->nnamed++;
  h->en->named_holds++;
}

static void
named_remove (struct catalog *cat, struct named *h)
{
  struct named **p;

  for (p = &cat->named; *p != NULL; p = &(*p)->next)
    if (*p == h) {
      *p = h->next;
      cat->nnamed--;
      h->en->named_holds--;
      lost_user (cat, h->en);
      free (h);
      return;
    }
}

/* The file's text: every named hold but skip (may be NULL); NULL on
 * ENOMEM (reported). */
static char *
named_text_unlocked (struct catalog *cat, const struct named *skip)
{
  struct hold_record *recs;
  struct named *h;
  size_t n = 0;
  char *text;

  recs = calloc (cat->nnamed ? cat->nnamed : 1, sizeof *recs);
  if (recs == NULL) {
    nbdsnap_error ("calloc: %m");
    return NULL;
  }
  for (h = cat->named; h != NULL; h = h->next) {
    if (h == skip)
      continue;
    strcpy (recs[n].tag, h->tag);
    strcpy (recs[n].name, h->en->name);
    recs[n].created = h->created;
    n++;
  }
  text = holds_format (recs, n);
  free (recs);
  return text;
}

static void
hold_copy (const struct named *h, struct catalog_hold *out)
{
  memset (out, 0, sizeof *out);
  strcpy (out->name, h->en->name);
  strcpy (out->tag, h->tag);
  out->created = h->created;
}

struct named_job {
  const char *name, *tag;
  struct named *h;
  char *text;                   /* the file's next content */
};

static enum catalog_err
begin_hold_named_unlocked (struct catalog *cat, struct named_job *j)
{
  struct entry *en;
  enum catalog_err r = find_live_unlocked (cat, "hold", j->name, &en);

  if (r != CATALOG_OK)
    return r;
  if (named_find (cat, en, j->tag) != NULL)
    return fail (CATALOG_ERR_EXISTS, "snapshot %s already has a hold with "
                 "tag %s", j->name, j->tag);
  if (cat->nnamed >= CATALOG_NAMED_MAX)
    return fail (CATALOG_ERR_LIMIT, "there are %d named holds already, the "
                 "most this server keeps", CATALOG_NAMED_MAX);
  j->h = calloc (1, sizeof *j->h);
  if (j->h == NULL) {
    nbdsnap_error ("calloc: %m");
    return CATALOG_ERR_SYSTEM;
  }
  strcpy (j->h->tag, j->tag);
  j->h->en = en;
  j->h->created = time (NULL);
  named_append (cat, j->h);     /* counts from now: a delete is refused */
  j->text = named_text_unlocked (cat, NULL);
  if (j->text == NULL) {
    named_remove (cat, j->h);
    return CATALOG_ERR_SYSTEM;
  }
  return CATALOG_OK;
}

/* After the write (r): undo a hold that is not on disk; copy the result. */
static bool
end_hold_named_unlocked (struct catalog *cat, struct named_job *j, int r,
                         struct catalog_hold *out, unsigned *named,
                         unsigned *holds)
{
  struct entry *en = j->h->en;

  if (r == -1) {
    named_remove (cat, j->h);
    return false;
  }
  if (out)
    hold_copy (j->h, out);
  *named = en->named_holds;
  if (holds)
    *holds = en->holds;
  return true;
}

enum catalog_err
catalog_hold_named (struct catalog *cat, const char *name, const char *tag,
                    struct catalog_hold *out, unsigned *named,
                    unsigned *holds)
{
  struct named_job j = { .name = name, .tag = tag };
  enum catalog_err ret;
  int r, err;

  if (nbdsnap_name_valid (tag) == -1)
    return CATALOG_ERR_SYSTEM;          /* EINVAL, reported */
  pthread_mutex_lock (&cat->holds_lock);
  ret = LOCKED (cat, begin_hold_named_unlocked (cat, &j));
  if (ret == CATALOG_OK) {
    r = nbdsnap_engine_write_state (cat->engine, HOLDS_FILE, j.text);
    err = errno;
    LOCKED (cat, end_hold_named_unlocked (cat, &j, r, out, named, holds));
    if (r == -1) {
      errno = err;
      ret = CATALOG_ERR_SYSTEM;
    }
    else
      nbdsnap_debug ("snapshot %s: named hold %s", name, tag);
  }
  pthread_mutex_unlock (&cat->holds_lock);
  free (j.text);
  return ret;
}

static enum catalog_err
begin_release_named_unlocked (struct catalog *cat, struct named_job *j)
{
  struct entry *en = find_unlocked (cat, j->name);

  if (en == NULL)
    return fail (CATALOG_ERR_NOT_FOUND, "snapshot %s does not exist",
                 j->name);
  j->h = named_find (cat, en, j->tag);
  if (j->h == NULL)
    return fail (CATALOG_ERR_NOT_HELD, "snapshot %s has no hold with tag "
                 "%s (nbdsnapctl holds %s lists them)", j->name, j->tag,
                 j->name);
  /* It still counts until the file no longer has it. */
  j->text = named_text_unlocked (cat, j->h);
  return j->text ? CATALOG_OK : CATALOG_ERR_SYSTEM;
}

static bool
end_release_named_unlocked (struct catalog *cat, struct named_job *j, int r,
                            unsigned *named, unsigned *holds)
{
  struct entry *en = j->h->en;

  if (r == 0)
    named_remove (cat, j->h);   /* may make a deferred delete due */
  *named = en->named_holds;
  if (holds)
    *holds = en->holds;
  return true;
}

enum catalog_err
catalog_release_named (struct catalog *cat, const char *name,
                       const char *tag, unsigned *named, unsigned *holds)
{
  struct named_job j = { .name = name, .tag = tag };
  enum catalog_err ret;
  int r, err;

  pthread_mutex_lock (&cat->holds_lock);
  ret = LOCKED (cat, begin_release_named_unlocked (cat, &j));
  if (ret == CATALOG_OK) {
    r = nbdsnap_engine_write_state (cat->engine, HOLDS_FILE, j.text);
    err = errno;
    LOCKED (cat, end_release_named_unlocked (cat, &j, r, named, holds));
    if (r == -1) {
      errno = err;
      ret = CATALOG_ERR_SYSTEM;
    }
    else
      nbdsnap_debug ("snapshot %s: named hold %s released", name, tag);
  }
  pthread_mutex_unlock (&cat->holds_lock);
  free (j.text);
  return ret;
}

static enum catalog_err
holds_unlocked (struct catalog *cat, const char *name,
                struct catalog_hold **out, size_t *n)
{
  struct entry *en = NULL;
  struct named *h;
  struct owned *o;
  size_t cap = cat->nnamed, i = 0;

  *out = NULL;
  *n = 0;
  if (name != NULL && *name != '\0'
      && (en = find_unlocked (cat, name)) == NULL)
    return fail (CATALOG_ERR_NOT_FOUND, "snapshot %s does not exist", name);
  for (o = cat->owned; o != NULL; o = o->next)
    cap += !o->temporary;
  *out = calloc (cap ? cap : 1, sizeof **out);
  if (*out == NULL) {
    nbdsnap_error ("calloc: %m");
    return CATALOG_ERR_SYSTEM;
  }
  for (h = cat->named; h != NULL; h = h->next)
    if (en == NULL || h->en == en)
      hold_copy (h, &(*out)[i++]);
  for (o = cat->owned; o != NULL; o = o->next)
    if (!o->temporary && (en == NULL || o->en == en)) {
      struct catalog_hold *c = &(*out)[i++];
      strcpy (c->name, o->en->name);
      c->conn = o->owner;
      c->created = o->created;
    }
  *n = i;
  return CATALOG_OK;
}

enum catalog_err
catalog_holds (struct catalog *cat, const char *name,
               struct catalog_hold **out, size_t *n)
{
  return LOCKED (cat, holds_unlocked (cat, name, out, n));
}

/* catalog_new: load the holds file (no thread runs yet: no lock). */
static int
load_named (struct catalog *cat)
{
  struct hold_record *recs = NULL;
  size_t len, n = 0, i, kept = 0;
  char why[160], *text, *out;
  bool rewrite = false;
  int r;

  text = nbdsnap_engine_read_state (cat->engine, HOLDS_FILE, &len);
  if (text == NULL) {
    if (errno == ENOENT)
      return 0;
    /* Reported.  Start, holding nothing: the file stays as it is until a
     * hold or a release rewrites it. */
    nbdsnap_error ("the named holds file could not be read: starting "
                   "without named holds");
    return 0;
  }
  r = holds_parse (text, len, &recs, &n, why, sizeof why);
  if (r == -1) {
    free (text);
    return -1;
  }
  if (r == 1) {
    nbdsnap_error ("the named holds file (%s in the state directory) is "
                   "damaged: %s; kept the %zu hold(s) that still read as "
                   "holds (check them: nbdsnapctl holds) and saved the "
                   "file as %s", HOLDS_FILE, why, n, HOLDS_DAMAGED_FILE);
    nbdsnap_engine_write_state (cat->engine, HOLDS_DAMAGED_FILE, text);
    rewrite = true;
  }
  free (text);
  for (i = 0; i < n; ++i) {
    struct entry *en = find_unlocked (cat, recs[i].name);
    struct named *h;

    if (en == NULL || en->state != CATALOG_STATE_LIVE) {
      nbdsnap_error ("named hold %s on snapshot %s dropped: the snapshot "
                     "no longer exists", recs[i].tag, recs[i].name);
      rewrite = true;
      continue;
    }
    h = calloc (1, sizeof *h);
    if (h == NULL) {
      nbdsnap_error ("calloc: %m");
      free (recs);
      return -1;
    }
    strcpy (h->tag, recs[i].tag);
    h->en = en;
    h->created = recs[i].created;
    named_append (cat, h);
    kept++;
  }
  free (recs);
  if (kept > 0)
    nbdsnap_debug ("%zu named hold(s) loaded", kept);
  if (rewrite && (out = named_text_unlocked (cat, NULL)) != NULL) {
    nbdsnap_engine_write_state (cat->engine, HOLDS_FILE, out);  /* reported */
    free (out);
  }
  return 0;
}

/* --- changes ---------------------------------------------------------- */

static enum catalog_err
pin_unlocked (struct catalog *cat, const char *op, const char *name,
              struct entry **en)
{
  enum catalog_err r = find_live_unlocked (cat, op, name, en);

  if (r == CATALOG_OK)
    (*en)->pins++;
  return r;
}

static void
unpin_unlocked (struct catalog *cat, struct entry *en)
{
  en->pins--;
  lost_user (cat, en);
}

/* Pin a, and b unless it is NULL or "". */
static enum catalog_err
pin_two_unlocked (struct catalog *cat, const char *a, const char *b,
                  struct entry **ea, struct entry **eb)
{
  enum catalog_err r = pin_unlocked (cat, "changes", a, ea);

  *eb = NULL;
  if (r == CATALOG_OK && b != NULL && *b != '\0'
      && (r = pin_unlocked (cat, "changes", b, eb)) != CATALOG_OK)
    unpin_unlocked (cat, *ea);
  return r;
}

static void
unpin_two_unlocked (struct catalog *cat, struct entry *ea, struct entry *eb)
{
  unpin_unlocked (cat, ea);
  if (eb != NULL)
    unpin_unlocked (cat, eb);
}

enum catalog_err
catalog_changes (struct catalog *cat, const char *a, const char *b,
                 uint64_t *offset, uint64_t max,
                 nbdsnap_extent_fn fn, void *opaque)
{
  struct entry *ea, *eb;
  enum catalog_err ret;
  int r, err;

  ret = LOCKED (cat, pin_two_unlocked (cat, a, b, &ea, &eb));
  if (ret != CATALOG_OK)
    return ret;
  r = nbdsnap_snap_changes (cat->engine, ea->snap, eb ? eb->snap : NULL,
                            offset, max, fn, opaque);
  err = errno;
  LOCKED_VOID (cat, unpin_two_unlocked (cat, ea, eb));
  errno = err;
  return r == 0 ? CATALOG_OK : CATALOG_ERR_SYSTEM;
}

/* --- list, info, clients ---------------------------------------------- */

static ssize_t
list_unlocked (struct catalog *cat, struct catalog_snap **out)
{
  struct entry *en;
  ssize_t n = 0;

  for (en = cat->entries; en != NULL; en = en->next)
    n++;
  *out = calloc (n ? n : 1, sizeof **out);
  if (*out == NULL) {
    nbdsnap_error ("calloc: %m");
    return -1;
  }
  n = 0;
  for (en = cat->entries; en != NULL; en = en->next)
    snap_copy (cat, en, &(*out)[n++]);
  return n;
}

ssize_t
catalog_list (struct catalog *cat, struct catalog_snap **out)
{
  return LOCKED (cat, list_unlocked (cat, out));
}

static enum catalog_err
info_unlocked (struct catalog *cat, const char *name,
               struct catalog_snap *out)
{
  struct entry *en = find_unlocked (cat, name);

  if (en == NULL)
    return fail (CATALOG_ERR_NOT_FOUND, "snapshot %s does not exist", name);
  snap_copy (cat, en, out);
  return CATALOG_OK;
}

enum catalog_err
catalog_info (struct catalog *cat, const char *name,
              struct catalog_snap *out)
{
  return LOCKED (cat, info_unlocked (cat, name, out));
}

static ssize_t
clients_unlocked (struct catalog *cat, struct catalog_client **out)
{
  struct catalog_conn *c;
  ssize_t n = 0;

  for (c = cat->conns; c != NULL; c = c->next)
    n++;
  *out = calloc (n ? n : 1, sizeof **out);
  if (*out == NULL) {
    nbdsnap_error ("calloc: %m");
    return -1;
  }
  n = 0;
  for (c = cat->conns; c != NULL; c = c->next) {
    struct catalog_client *o = &(*out)[n++];
    o->id = c->id;
    strcpy (o->export, c->export);
    strcpy (o->peer, c->peer);
    o->started = c->started;
    o->readonly = c->readonly;
    o->revoked = __atomic_load_n (&c->revoked, __ATOMIC_RELAXED);
#define LOAD(f) __atomic_load_n (&c->n.f, __ATOMIC_RELAXED)
    o->bytes_read = LOAD (bytes_read);
    o->bytes_written = LOAD (bytes_written) + LOAD (zero_bytes)
      + LOAD (trim_bytes);
    o->reads = LOAD (reads);
    o->writes = LOAD (writes) + LOAD (zeros) + LOAD (trims);
#undef LOAD
  }
  return n;
}

ssize_t
catalog_clients (struct catalog *cat, struct catalog_client **out)
{
  return LOCKED (cat, clients_unlocked (cat, out));
}

/* --- new, free -------------------------------------------------------- */

struct nbdsnap_engine *
catalog_engine (const struct catalog *cat)
{
  return cat->engine;
}

bool
catalog_readonly (const struct catalog *cat)
{
  return cat->readonly;
}

static void
free_all (struct catalog *cat)
{
  struct entry *en;
  struct catalog_conn *c;
  struct owned *o;
  struct named *h;

  while ((en = cat->entries) != NULL) {
    cat->entries = en->next;
    free (en);
  }
  while ((c = cat->conns) != NULL) {
    cat->conns = c->next;
    conn_free (c);
  }
  while ((o = cat->owned) != NULL) {
    cat->owned = o->next;
    free (o);
  }
  while ((h = cat->named) != NULL) {
    cat->named = h->next;
    free (h);
  }
  pthread_cond_destroy (&cat->changed);
  pthread_cond_destroy (&cat->reap);
  pthread_cond_destroy (&cat->idle);
  pthread_mutex_destroy (&cat->lock);
  pthread_mutex_destroy (&cat->holds_lock);
  free (cat);
}

struct catalog *
catalog_new (struct nbdsnap_engine *e, bool readonly)
{
  struct catalog *cat = calloc (1, sizeof *cat);
  struct nbdsnap_snap_info *list = NULL;
  ssize_t n, i;
  int err;

  if (cat == NULL) {
    nbdsnap_error ("calloc: %m");
    return NULL;
  }
  cat->engine = e;
  cat->readonly = readonly;
  cat->next_conn_id = 1;
  pthread_mutex_init (&cat->lock, NULL);
  pthread_mutex_init (&cat->holds_lock, NULL);
  pthread_cond_init (&cat->changed, NULL);
  pthread_cond_init (&cat->reap, NULL);
  pthread_cond_init (&cat->idle, NULL);
  n = nbdsnap_snap_list (e, &list);
  if (n == -1)
    goto err;
  for (i = 0; i < n; ++i) {
    struct entry *en = calloc (1, sizeof *en);
    if (en == NULL) {
      nbdsnap_error ("calloc: %m");
      goto err;
    }
    strcpy (en->name, list[i].name);
    en->id = list[i].id;
    en->state = CATALOG_STATE_LIVE;
    en->snap = nbdsnap_snap_lookup (e, list[i].name);
    entry_insert (cat, en);
    if (en->snap == NULL) {
      errno = ENOENT;
      nbdsnap_error ("snapshot %s: listed but not found", list[i].name);
      goto err;
    }
  }
  free (list);
  if (load_named (cat) == -1)
    goto err;
  return cat;

 err:
  err = errno;
  free (list);
  free_all (cat);
  errno = err;
  return NULL;
}

int
catalog_start (struct catalog *cat)
{
  int err;

  if (cat->reaper_started)
    return 0;
  err = pthread_create (&cat->reaper, NULL, reaper, cat);
  if (err != 0) {
    errno = err;
    nbdsnap_error ("pthread_create: %m");
    return -1;
  }
  cat->reaper_started = true;
  return 0;
}

static void
stop_unlocked (struct catalog *cat)
{
  cat->stop = true;
  if (cat->reaping_entry)
    __atomic_store_n (&cat->reaping_entry->reap_progress.cancel, true,
                      __ATOMIC_RELAXED);
  pthread_cond_broadcast (&cat->reap);
}

void
catalog_free (struct catalog *cat)
{
  if (cat == NULL)
    return;
  if (cat->reaper_started) {
    LOCKED_VOID (cat, stop_unlocked (cat));
    pthread_join (cat->reaper, NULL);
  }
  free_all (cat);
}
