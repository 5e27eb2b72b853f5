/* nbdsnap: one snapshot, its files and its metadata.  See snap.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdsnap/checksum.h"
#include "nbdsnap/err.h"
#include "snap.h"

#define META_MAGIC "nbdsnap-snapshot 1"

static const char *state_names[] = { "live", "deleting", "invalid",
                                      "creating" };

const char *
snap_state_name (int state)
{
  if (state < 0 || state > NBDSNAP_STATE_CREATING)
    return "unknown";
  return state_names[state];
}

void
snap_file_name (char *buf, size_t n, uint64_t id, const char *ext)
{
  snprintf (buf, n, "snap-%06" PRIu64 ".%s", id, ext);
}

struct nbdsnap_snap *
snap_new (void)
{
  struct nbdsnap_snap *s = calloc (1, sizeof *s);

  if (s == NULL) {
    nbdsnap_error ("calloc: %m");
    return NULL;
  }
  s->bm.fd = -1;
  s->store_fd = -1;
  gcommit_init (&s->store_gc);
  gcommit_init (&s->bitmap_gc);
  pthread_mutex_init (&s->meta_lock, NULL);
  return s;
}

void
snap_free (struct nbdsnap_snap *s)
{
  if (s == NULL)
    return;
  bitmap_close (&s->bm);
  if (s->store_fd >= 0)
    close (s->store_fd);
  gcommit_destroy (&s->store_gc);
  gcommit_destroy (&s->bitmap_gc);
  pthread_mutex_destroy (&s->meta_lock);
  free (s);
}

/* FNV-1a 64 of the meta text before its checksum line. */
static uint64_t
meta_checksum (const char *text, size_t len)
{
  return checksum_fnv1a64 (text, len);
}

int
snap_write_meta (struct statedir *sd, struct nbdsnap_snap *s)
{
  char name[64], buf[512];
  int n, state = snap_state (s);

  /* Written as a create finishes: the snapshot is live from then on (the
   * header, which counts, still says creating until just after). */
  if (state == NBDSNAP_STATE_CREATING)
    state = NBDSNAP_STATE_LIVE;
  snap_file_name (name, sizeof name, s->id, "meta");
  n = snprintf (buf, sizeof buf,
                META_MAGIC "\n"
                "id %" PRIu64 "\n"
                "name %s\n"
                "created %lld.%09ld\n"
                "state %s\n"
                "temporary %d\n"
                "max-store %" PRIu64 "\n",
                s->id, s->name, (long long) s->created.tv_sec,
                s->created.tv_nsec, snap_state_name (state),
                s->temporary ? 1 : 0, s->max_store);
  snprintf (buf + n, sizeof buf - n, "checksum %016" PRIx64 "\n",
            meta_checksum (buf, n));
  return statedir_write_file (sd, name, buf);
}

int
snap_read_meta (struct statedir *sd, uint64_t id, struct nbdsnap_snap *s)
{
  char name[64], buf[1024], state[16];
  const char *sum;
  long long sec;
  long nsec;
  int temporary, fd, i;
  ssize_t n;
  uint64_t want;

  snap_file_name (name, sizeof name, id, "meta");
  fd = openat (sd->dirfd, name, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    nbdsnap_error ("%s/%s: %m", sd->path, name);
    return -1;
  }
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (n < 0) {
    nbdsnap_error ("read %s/%s: %m", sd->path, name);
    return -1;
  }
  buf[n] = '\0';
  sum = strstr (buf, "\nchecksum ");
  if (sum != NULL
      && (sscanf (sum + 1, "checksum %" SCNx64, &want) != 1
          || want != meta_checksum (buf, sum + 1 - buf))) {
    errno = EINVAL;
    nbdsnap_error ("%s/%s: checksum mismatch: the file is damaged",
                   sd->path, name);
    return -1;
  }
  if (strncmp (buf, META_MAGIC "\n", strlen (META_MAGIC) + 1) != 0
      || sscanf (buf + strlen (META_MAGIC) + 1,
                 "id %" SCNu64 "\n"
                 "name %64s\n"
                 "created %lld.%ld\n"
                 "state %15s\n"
                 "temporary %d\n"
                 "max-store %" SCNu64 "\n",
                 &s->id, s->name, &sec, &nsec, state, &temporary,
                 &s->max_store) != 7
      || s->id != id || !nbdsnap_name_ok (s->name)) {
    errno = EINVAL;
    nbdsnap_error ("%s/%s: malformed snapshot metadata", sd->path, name);
    return -1;
  }
  s->created.tv_sec = sec;
  s->created.tv_nsec = nsec;
  s->temporary = temporary != 0;
  s->state = -1;
  for (i = 0; i <= NBDSNAP_STATE_INVALID; ++i)
    if (strcmp (state, state_names[i]) == 0)
      s->state = i;
  if (s->state == -1) {
    errno = EINVAL;
    nbdsnap_error ("%s/%s: unknown state \"%s\"", sd->path, name, state);
    return -1;
  }
  s->meta_invalid = s->state == NBDSNAP_STATE_INVALID;
  return 0;
}

/* The header state that records s's state: "deleting" once a delete
 * is pending (whatever happens to the snapshot meanwhile, the next open
 * finishes the delete, so it cannot be read as live again). */
static uint32_t
header_state (const struct nbdsnap_snap *s)
{
  if (__atomic_load_n (&s->delete_pending, __ATOMIC_ACQUIRE))
    return BITMAP_STATE_DELETING;
  switch (snap_state (s)) {
  case NBDSNAP_STATE_LIVE: return BITMAP_STATE_LIVE;
  case NBDSNAP_STATE_DELETING: return BITMAP_STATE_DELETING;
  case NBDSNAP_STATE_CREATING: return BITMAP_STATE_CREATING;
  default: return BITMAP_STATE_INVALID;
  }
}

int
snap_set_state (struct nbdsnap_snap *s, enum nbdsnap_state state)
{
  int r;

  pthread_mutex_lock (&s->meta_lock);
  __atomic_store_n (&s->state, state, __ATOMIC_RELEASE);
  r = bitmap_set_state (&s->bm, header_state (s));
  if (r == -1)
    nbdsnap_error ("snapshot %s: cannot record the state %s in its bitmap "
                   "header: %m", s->name, snap_state_name (state));
  pthread_mutex_unlock (&s->meta_lock);
  return r;
}

bool
snap_state_durable (struct nbdsnap_snap *s)
{
  uint32_t want;
  bool ok;

  /* The common case, lock-free: recorded already. */
  if (__atomic_load_n (&s->bm.state, __ATOMIC_ACQUIRE) == header_state (s))
    return true;
  pthread_mutex_lock (&s->meta_lock);
  want = header_state (s);
  ok = s->bm.state == want
       || ((s->invalid_at_open || s->meta_invalid)
           && snap_state (s) == NBDSNAP_STATE_INVALID);
  if (!ok && bitmap_set_state (&s->bm, want) == 0)
    ok = true;
  else if (!ok)
    nbdsnap_error ("snapshot %s: cannot record the state %s in its bitmap "
                   "header: %m", s->name, snap_state_name (snap_state (s)));
  pthread_mutex_unlock (&s->meta_lock);
  return ok;
}

int
snap_record_invalid_in_meta (struct statedir *sd, struct nbdsnap_snap *s)
{
  int r;

  pthread_mutex_lock (&s->meta_lock);
  r = snap_write_meta (sd, s);
  if (r == 0)
    s->meta_invalid = snap_state (s) == NBDSNAP_STATE_INVALID;
  else
    nbdsnap_error ("snapshot %s: cannot record the state invalid in its "
                   "meta file either: %m", s->name);
  pthread_mutex_unlock (&s->meta_lock);
  return r == 0 && s->meta_invalid ? 0 : -1;
}

int
snap_mark_delete_pending (struct nbdsnap_snap *s)
{
  int r = 0;

  pthread_mutex_lock (&s->meta_lock);
  if (!s->delete_pending) {
    __atomic_store_n (&s->delete_pending, true, __ATOMIC_RELEASE);
    r = bitmap_set_state (&s->bm, BITMAP_STATE_DELETING);
    if (r == -1) {
      nbdsnap_error ("snapshot %s: cannot record \"deleting\" in its bitmap "
                     "header: %m", s->name);
      __atomic_store_n (&s->delete_pending, false, __ATOMIC_RELEASE);
    }
  }
  pthread_mutex_unlock (&s->meta_lock);
  return r;
}

int
snap_unlink_files (struct statedir *sd, uint64_t id)
{
  /* The bitmap last: its header says "deleting" (or "creating") until the
   * end, so what a crash leaves is finished at the next open. */
  static const char *exts[] = { "meta", "store", "bitmap" };
  char name[64];
  size_t i;

  for (i = 0; i < sizeof exts / sizeof exts[0]; ++i) {
    snap_file_name (name, sizeof name, id, exts[i]);
    if (unlinkat (sd->dirfd, name, 0) == -1 && errno != ENOENT) {
      nbdsnap_error ("unlink %s/%s: %m", sd->path, name);
      return -1;
    }
  }
  if (fsync (sd->dirfd) == -1) {
    nbdsnap_error ("fsync %s: %m", sd->path);
    return -1;
  }
  return 0;
}
