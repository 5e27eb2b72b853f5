/* nbdsnap: the state directory, its lock and its header.
 * See statedir.h for the layout.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/err.h"
#include "nbdsnap/io.h"
#include "nbdsnap/origin.h"
#include "statedir.h"

#define HEADER_MAGIC "nbdsnap-state 1"

int
statedir_write_file (struct statedir *sd, const char *name,
                     const char *content)
{
  char tmp[256];
  size_t len = strlen (content);
  int fd;

  snprintf (tmp, sizeof tmp, "%s.tmp", name);
  fd = openat (sd->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
               0600);
  if (fd == -1) {
    nbdsnap_error ("%s/%s: %m", sd->path, tmp);
    return -1;
  }
  if (io_pwrite_full (fd, content, len, 0) == -1 || fsync (fd) == -1) {
    nbdsnap_error ("write %s/%s: %m", sd->path, tmp);
    close (fd);
    unlinkat (sd->dirfd, tmp, 0);
    return -1;
  }
  close (fd);
  if (renameat (sd->dirfd, tmp, sd->dirfd, name) == -1) {
    nbdsnap_error ("rename %s/%s: %m", sd->path, tmp);
    unlinkat (sd->dirfd, tmp, 0);
    return -1;
  }
  if (fsync (sd->dirfd) == -1) {
    nbdsnap_error ("fsync %s: %m", sd->path);
    return -1;
  }
  return 0;
}

/* A regular file is known by its inode number (st_dev may change across
 * reboots), a block device by its device number. */
static void
image_identity (const struct nbdsnap_origin *o, uint64_t *dev, uint64_t *ino)
{
  *dev = o->is_blockdev ? o->dev : 0;
  *ino = o->is_blockdev ? 0 : o->ino;
}

static int
write_header (struct statedir *sd, const struct nbdsnap_origin *o)
{
  char buf[PATH_MAX + 256];
  char *abs = realpath (o->path, NULL);
  uint64_t dev, ino;
  int r;

  image_identity (o, &dev, &ino);
  snprintf (buf, sizeof buf,
            HEADER_MAGIC "\n"
            "chunk-size %" PRIu32 "\n"
            "image-size %" PRIu64 "\n"
            "image-kind %s\n"
            "image-id %" PRIu64 ":%" PRIu64 "\n"
            "image-path %s\n",
            sd->chunk_size, o->size, o->is_blockdev ? "blockdev" : "file",
            dev, ino, abs ? abs : o->path);
  free (abs);
  r = statedir_write_file (sd, "header", buf);
  return r;
}

/* Read the header and compare it with the image. */
static int
check_header (struct statedir *sd, const struct nbdsnap_origin *o,
              uint32_t want_chunk)
{
  char buf[PATH_MAX + 256], kind[16] = "", path[PATH_MAX] = "";
  uint64_t size = 0, dev = 0, ino = 0, mydev, myino;
  uint32_t chunk = 0;
  ssize_t n;
  int fd;

  fd = openat (sd->dirfd, "header", O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    nbdsnap_error ("%s/header: %m", sd->path);
    return -1;
  }
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (n <= 0) {
    errno = EINVAL;
    nbdsnap_error ("%s/header: empty or unreadable", sd->path);
    return -1;
  }
  buf[n] = '\0';
  if (strncmp (buf, HEADER_MAGIC "\n", strlen (HEADER_MAGIC) + 1) != 0
      || sscanf (buf + strlen (HEADER_MAGIC) + 1,
                 "chunk-size %" SCNu32 "\n"
                 "image-size %" SCNu64 "\n"
                 "image-kind %15s\n"
                 "image-id %" SCNu64 ":%" SCNu64 "\n"
                 "image-path %4095[^\n]",
                 &chunk, &size, kind, &dev, &ino, path) < 5) {
    errno = EINVAL;
    nbdsnap_error ("%s/header: not an nbdsnap state directory header "
                   "(format 1)", sd->path);
    return -1;
  }
  if (chunk < NBDSNAP_CHUNK_MIN || chunk > NBDSNAP_CHUNK_MAX
      || (chunk & (chunk - 1)) != 0) {
    errno = EINVAL;
    nbdsnap_error ("%s/header: bad chunk-size %" PRIu32, sd->path, chunk);
    return -1;
  }
  image_identity (o, &mydev, &myino);
  if (strcmp (kind, o->is_blockdev ? "blockdev" : "file") != 0
      || dev != mydev || ino != myino) {
    errno = EINVAL;
    nbdsnap_error ("state directory %s belongs to another image: %s "
                   "(%s %" PRIu64 ":%" PRIu64 "), not %s (%s %" PRIu64
                   ":%" PRIu64 ")",
                   sd->path, path, kind, dev, ino, o->path,
                   o->is_blockdev ? "blockdev" : "file", mydev, myino);
    return -1;
  }
  if (size != o->size) {
    errno = EINVAL;
    nbdsnap_error ("image %s was resized: state directory %s says %" PRIu64
                   " bytes, the image has %" PRIu64,
                   o->path, sd->path, size, o->size);
    return -1;
  }
  if (want_chunk != 0 && want_chunk != chunk) {
    errno = EINVAL;
    nbdsnap_error ("chunk-size=%" PRIu32 " differs from the state "
                   "directory's %" PRIu32 " (fixed when %s was created)",
                   want_chunk, chunk, sd->path);
    return -1;
  }
  sd->chunk_size = chunk;
  return 0;
}

int
statedir_open (struct statedir *sd, const char *path,
               const struct nbdsnap_origin *o, uint32_t chunk_size)
{
  struct stat st;

  memset (sd, 0, sizeof *sd);
  sd->dirfd = sd->lockfd = -1;
  /* Refuse a bad size before creating anything: a header written with it
   * would be refused by every later open. */
  if (chunk_size != 0
      && (chunk_size < NBDSNAP_CHUNK_MIN || chunk_size > NBDSNAP_CHUNK_MAX
          || (chunk_size & (chunk_size - 1)) != 0)) {
    errno = EINVAL;
    nbdsnap_error ("chunk-size=%" PRIu32 ": must be a power of two from 4K "
                   "to 1M", chunk_size);
    return -1;
  }
  sd->path = strdup (path);
  if (sd->path == NULL) {
    nbdsnap_error ("strdup: %m");
    return -1;
  }
  if (mkdir (path, 0700) == -1 && errno != EEXIST) {
    nbdsnap_error ("statedir: mkdir %s: %m", path);
    goto err;
  }
  sd->dirfd = open (path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (sd->dirfd == -1) {
    nbdsnap_error ("statedir: %s: %m", path);
    goto err;
  }
  sd->lockfd = openat (sd->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (sd->lockfd == -1) {
    nbdsnap_error ("statedir: %s/lock: %m", path);
    goto err;
  }
  if (flock (sd->lockfd, LOCK_EX | LOCK_NB) == -1) {
    if (errno == EWOULDBLOCK) {
      errno = EBUSY;
      nbdsnap_error ("state directory in use: %s is locked by another "
                     "nbdsnap server", path);
    }
    else
      nbdsnap_error ("flock %s/lock: %m", path);
    goto err;
  }

  if (fstatat (sd->dirfd, "header", &st, 0) == 0) {
    if (check_header (sd, o, chunk_size) == -1)
      goto err;
  }
  else if (errno == ENOENT) {
    sd->chunk_size = chunk_size ? chunk_size : NBDSNAP_CHUNK_DEFAULT;
    if (write_header (sd, o) == -1)
      goto err;
  }
  else {
    nbdsnap_error ("%s/header: %m", path);
    goto err;
  }
  return 0;

 err:
  statedir_close (sd);
  return -1;
}

void
statedir_close (struct statedir *sd)
{
  int saved = errno;

  if (sd->lockfd >= 0)
    close (sd->lockfd);         /* releases the flock */
  if (sd->dirfd >= 0)
    close (sd->dirfd);
  free (sd->path);
  sd->path = NULL;
  sd->lockfd = sd->dirfd = -1;
  errno = saved;
}
