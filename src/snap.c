/* nbdsnap: one snapshot, its files and its metadata.  See snap.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdsnap/err.h"
#include "snap.h"

#define META_MAGIC "nbdsnap-snapshot 1"

static const char *state_names[] = { "live", "deleting", "invalid" };

const char *
snap_state_name (int state)
{
  if (state < 0 || state > NBDSNAP_STATE_INVALID)
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

int
snap_write_meta (struct statedir *sd, struct nbdsnap_snap *s)
{
  char name[64], buf[512];

  snap_file_name (name, sizeof name, s->id, "meta");
  snprintf (buf, sizeof buf,
            META_MAGIC "\n"
            "id %" PRIu64 "\n"
            "name %s\n"
            "created %lld.%09ld\n"
            "state %s\n"
            "temporary %d\n"
            "max-store %" PRIu64 "\n",
            s->id, s->name, (long long) s->created.tv_sec,
            s->created.tv_nsec, snap_state_name (snap_state (s)),
            s->temporary ? 1 : 0, s->max_store);
  return statedir_write_file (sd, name, buf);
}

int
snap_read_meta (struct statedir *sd, uint64_t id, struct nbdsnap_snap *s)
{
  char name[64], buf[1024], state[16];
  long long sec;
  long nsec;
  int temporary, fd, i;
  ssize_t n;

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
      || s->id != id || nbdsnap_name_valid (s->name) == -1) {
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
  return 0;
}

int
snap_set_state (struct statedir *sd, struct nbdsnap_snap *s,
                enum nbdsnap_state state)
{
  int r;

  pthread_mutex_lock (&s->meta_lock);
  __atomic_store_n (&s->state, state, __ATOMIC_RELEASE);
  r = snap_write_meta (sd, s);
  pthread_mutex_unlock (&s->meta_lock);
  return r;
}

int
snap_unlink_files (struct statedir *sd, uint64_t id)
{
  static const char *exts[] = { "store", "bitmap", "meta" };
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
