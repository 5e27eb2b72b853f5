/* nbdsnap plugin: the registry of snapshot exports and NBD connections.
 * See registry.h for the design and the locks.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "registry.h"

struct nbdsnap_engine *registry_engine;
pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t registry_cond = PTHREAD_COND_INITIALIZER;
struct snap_entry *registry_entries;
struct conn *registry_conns;
bool registry_readonly;
struct owned *registry_owned;

static uint64_t next_conn_id = 1;

struct snap_entry *
registry_find (const char *name)
{
  struct snap_entry *en;

  for (en = registry_entries; en != NULL; en = en->next)
    if (en->snap != NULL && strcmp (en->name, name) == 0)
      return en;
  return NULL;
}

struct snap_entry *
registry_add (struct nbdsnap_snap *s)
{
  struct nbdsnap_snap_info info;
  struct snap_entry *en, **p;

  en = calloc (1, sizeof *en);
  if (en == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  nbdsnap_snap_info (registry_engine, s, &info);
  strcpy (en->name, info.name);
  en->snap = s;
  pthread_rwlock_init (&en->gate, NULL);
  for (p = &registry_entries; *p != NULL; p = &(*p)->next)
    ;
  *p = en;
  return en;
}

static void
entry_unlink_free (struct snap_entry *en)
{
  struct snap_entry **p;

  for (p = &registry_entries; *p != NULL; p = &(*p)->next)
    if (*p == en) {
      *p = en->next;
      break;
    }
  pthread_rwlock_destroy (&en->gate);
  free (en);
}

int
registry_owned_add (uint64_t conn, struct snap_entry *en, bool temporary)
{
  struct owned *o = calloc (1, sizeof *o);

  if (o == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  o->conn = conn;
  o->en = en;
  o->temporary = temporary;
  o->next = registry_owned;
  registry_owned = o;
  return 0;
}

static void
owned_forget_entry (struct snap_entry *en)
{
  struct owned **p = &registry_owned, *o;

  while ((o = *p) != NULL) {
    if (o->en == en) {
      *p = o->next;
      free (o);
    }
    else
      p = &o->next;
  }
}

int
registry_delete_entry (struct snap_entry *en)
{
  if (nbdsnap_snap_delete (registry_engine, en->snap) == -1)
    return -1;
  owned_forget_entry (en);
  en->holds = 0;
  en->snap = NULL;
  if (en->clients == 0)
    entry_unlink_free (en);
  return 0;
}

/* A hidden (deferred) entry whose last user went: delete it now. */
void
registry_maybe_finish (struct snap_entry *en)
{
  if (en->snap == NULL) {
    if (en->clients == 0)
      entry_unlink_free (en);     /* a revoked entry's last handle */
    return;
  }
  if (en->hidden && en->clients == 0 && en->holds == 0) {
    nbdkit_debug ("deferred delete of snapshot %s: last user gone",
                  en->name);
    if (registry_delete_entry (en) == -1)
      nbdkit_error ("deferred delete of snapshot %s failed; it is deleted "
                    "at the next start", en->name);
  }
}

int
registry_init (struct nbdsnap_engine *e, bool readonly)
{
  struct nbdsnap_snap_info *list = NULL;
  ssize_t n, i;
  int r = -1;

  registry_engine = e;
  registry_readonly = readonly;
  n = nbdsnap_snap_list (e, &list);
  if (n == -1)
    return -1;
  pthread_mutex_lock (&registry_lock);
  for (i = 0; i < n; ++i) {
    struct nbdsnap_snap *s = nbdsnap_snap_lookup (e, list[i].name);
    if (s == NULL || registry_add (s) == NULL)
      goto out;
  }
  r = 0;
 out:
  pthread_mutex_unlock (&registry_lock);
  free (list);
  return r;
}

void
registry_free (void)
{
  struct snap_entry *en, *next;

  pthread_mutex_lock (&registry_lock);
  for (en = registry_entries; en != NULL; en = next) {
    next = en->next;
    pthread_rwlock_destroy (&en->gate);
    free (en);
  }
  registry_entries = NULL;
  pthread_mutex_unlock (&registry_lock);
  registry_engine = NULL;
}

static void
peer_string (char *buf, size_t n)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char addr[INET6_ADDRSTRLEN] = "?";

  snprintf (buf, n, "unknown");
  if (nbdkit_peer_name ((struct sockaddr *) &ss, &len) == -1)
    return;
  switch (ss.ss_family) {
  case AF_UNIX: {
    int64_t pid = nbdkit_peer_pid ();
    int64_t uid = nbdkit_peer_uid ();
    snprintf (buf, n, "unix pid=%" PRIi64 " uid=%" PRIi64, pid, uid);
    break;
  }
  case AF_INET:
    inet_ntop (AF_INET, &((struct sockaddr_in *) &ss)->sin_addr,
               addr, sizeof addr);
    snprintf (buf, n, "%s:%d", addr,
              ntohs (((struct sockaddr_in *) &ss)->sin_port));
    break;
  case AF_INET6:
    inet_ntop (AF_INET6, &((struct sockaddr_in6 *) &ss)->sin6_addr,
               addr, sizeof addr);
    snprintf (buf, n, "[%s]:%d", addr,
              ntohs (((struct sockaddr_in6 *) &ss)->sin6_port));
    break;
  default:
    snprintf (buf, n, "family %d", ss.ss_family);
  }
}

struct conn *
registry_conn_open (const char *name, bool readonly)
{
  struct conn *c;
  struct snap_entry *en = NULL;

  c = calloc (1, sizeof *c);
  if (c == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  peer_string (c->peer, sizeof c->peer);
  clock_gettime (CLOCK_REALTIME, &c->started);
  snprintf (c->export, sizeof c->export, "%s", name);
  c->readonly = readonly;

  pthread_mutex_lock (&registry_lock);
  if (name[0] != '\0') {
    en = registry_find (name);
    if (en == NULL || en->hidden || en->revoked) {
      pthread_mutex_unlock (&registry_lock);
      nbdkit_error ("export \"%s\": no such snapshot%s", name,
                    en ? " (it is being deleted)" : "");
      free (c);
      errno = ENOENT;
      return NULL;
    }
    en->clients++;
    c->readonly = true;
    registry_describe_unlocked (en, c->description, sizeof c->description);
  }
  c->entry = en;
  c->id = next_conn_id++;
  c->next = registry_conns;
  registry_conns = c;
  pthread_mutex_unlock (&registry_lock);
  nbdkit_debug ("connection %" PRIu64 " to export \"%s\" from %s",
                c->id, name, c->peer);
  return c;
}

void
registry_conn_close (struct conn *c)
{
  struct conn **p;

  pthread_mutex_lock (&registry_lock);
  for (p = &registry_conns; *p != NULL; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  if (c->entry) {
    c->entry->clients--;
    registry_maybe_finish (c->entry);
    pthread_cond_broadcast (&registry_cond);
  }
  pthread_mutex_unlock (&registry_lock);
  free (c);
}

int
registry_enter (struct snap_entry *en)
{
  if (pthread_rwlock_tryrdlock (&en->gate) != 0) {
    errno = ESHUTDOWN;
    nbdkit_error ("snapshot %s: this handle was revoked (delete --force)",
                  en->name);
    return -1;
  }
  if (__atomic_load_n (&en->revoked, __ATOMIC_ACQUIRE)) {
    pthread_rwlock_unlock (&en->gate);
    errno = ESHUTDOWN;
    nbdkit_error ("snapshot %s: this handle was revoked (delete --force)",
                  en->name);
    return -1;
  }
  return 0;
}

void
registry_leave (struct snap_entry *en)
{
  pthread_rwlock_unlock (&en->gate);
}

void
registry_describe_unlocked (const struct snap_entry *en, char *buf,
                            size_t n)
{
  struct nbdsnap_snap_info info;
  struct tm tm;
  char when[32];

  nbdsnap_snap_info (registry_engine, en->snap, &info);
  gmtime_r (&info.created.tv_sec, &tm);
  strftime (when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf (buf, n, "snapshot %s, taken %s, %s, %" PRIu64 " chunks copied",
            info.name, when,
            info.state == NBDSNAP_STATE_INVALID ? "invalid" : "live",
            info.chunks_copied);
}

const char *
registry_conn_description (struct conn *c)
{
  /* entry->name never changes and the entry outlives c; revoked is set
   * before the engine snapshot is freed. */
  if (c->entry != NULL
      && __atomic_load_n (&c->entry->revoked, __ATOMIC_ACQUIRE))
    snprintf (c->description, sizeof c->description,
              "snapshot %s, deleted (delete --force): this handle is "
              "revoked", c->entry->name);
  return c->description;
}

int
registry_list_exports (struct nbdkit_exports *exports,
                       const char *origin_description)
{
  struct snap_entry *en;
  char desc[REGISTRY_DESCRIPTION_MAX];
  int r = 0;

  if (nbdkit_add_export (exports, "", origin_description) == -1)
    return -1;
  pthread_mutex_lock (&registry_lock);
  for (en = registry_entries; en != NULL && r == 0; en = en->next)
    if (en->snap != NULL && !en->hidden) {
      registry_describe_unlocked (en, desc, sizeof desc);
      r = nbdkit_add_export (exports, en->name, desc);   /* copies both */
    }
  pthread_mutex_unlock (&registry_lock);
  return r;
}
