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
#include <dirent.h>
#include <stdbool.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/err.h"
#include "nbdsnap/io.h"
#include "nbdsnap/origin.h"
#include "statedir.h"

#define HEADER_MAGIC "nbdsnap-state 2"
#define HEADER_MAGIC_V1 "nbdsnap-state 1"

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

/* The image's mark: an extended attribute holding the state directory's
 * random id and, after a space, its absolute path (informative).  cp, a
 * restore or a new file made in the image's place does not carry it (cp -a
 * and mv do: the same bytes under another inode). */
#define IMAGE_XATTR "user.nbdsnap.state-id"

/* Where the image lock lives: one byte far past the end of any image, out
 * of the way of QEMU's own OFD locks (bytes 100 and up). */
#define IMAGE_LOCK_OFFSET ((off_t) 0x4e42445300000000)   /* "NBDS" */

static int
random_id (char out[33])
{
  unsigned char b[16];
  size_t i;
  int fd = open ("/dev/urandom", O_RDONLY | O_CLOEXEC);

  if (fd == -1 || io_pread_full (fd, b, sizeof b, 0) == -1) {
    /* /dev/urandom is a character device: pread at 0 works. */
    nbdsnap_error ("/dev/urandom: %m");
    if (fd >= 0)
      close (fd);
    return -1;
  }
  close (fd);
  for (i = 0; i < sizeof b; ++i)
    sprintf (out + 2 * i, "%02x", b[i]);
  return 0;
}

/* The image's mark, id and path ("" if it has none, or cannot have
 * one). */
static void
image_mark (const struct nbdsnap_origin *o, char id[64], char path[PATH_MAX])
{
  char buf[PATH_MAX + 64];
  ssize_t n = fgetxattr (o->fd, IMAGE_XATTR, buf, sizeof buf - 1);
  char *sp;

  buf[n > 0 ? n : 0] = '\0';
  sp = strchr (buf, ' ');
  if (sp)
    *sp++ = '\0';
  snprintf (id, 64, "%.63s", buf);
  snprintf (path, PATH_MAX, "%s", sp ? sp : "");
}

static int
write_header (struct statedir *sd, const struct nbdsnap_origin *o)
{
  char buf[PATH_MAX + 512], id[33], mark[PATH_MAX + 64];
  char old_id[64], old_dir[PATH_MAX];
  char *abs = realpath (o->path, NULL), *absdir = realpath (sd->path, NULL);
  bool marked = false;
  int r = -1;

  /* A block device's xattrs belong to its node in /dev, not to the
   * device: it is known by its device number alone. */
  if (!o->is_blockdev) {
    image_mark (o, old_id, old_dir);
    if (old_id[0] && strcmp (old_dir, absdir ? absdir : sd->path) != 0) {
      errno = EBUSY;
      nbdsnap_error ("image %s belongs to state directory %s (state id "
                     "%s): one image has one state directory, or writes "
                     "through one server would not be copied for the "
                     "other's snapshots; use statedir=%s, or, to give up "
                     "those snapshots, remove that directory and the mark "
                     "(setfattr -x %s %s)", o->path,
                     old_dir[0] ? old_dir : "(unknown)", old_id, old_dir,
                     IMAGE_XATTR, o->path);
      goto out;
    }
  }
  if (random_id (id) == -1)
    goto out;
  if (!o->is_blockdev) {
    snprintf (mark, sizeof mark, "%s %s", id, absdir ? absdir : sd->path);
    marked = fsetxattr (o->fd, IMAGE_XATTR, mark, strlen (mark), 0) == 0;
  }
  if (!o->is_blockdev && !marked)
    nbdsnap_debug ("%s: cannot set the %s attribute (%m): the image is "
                   "known by its device and inode numbers only",
                   o->path, IMAGE_XATTR);
  snprintf (buf, sizeof buf,
            HEADER_MAGIC "\n"
            "chunk-size %" PRIu32 "\n"
            "image-size %" PRIu64 "\n"
            "image-kind %s\n"
            "image-dev %" PRIu64 "\n"
            "image-ino %" PRIu64 "\n"
            "state-id %s\n"
            "image-mark %s\n"
            "image-path %s\n",
            sd->chunk_size, o->size, o->is_blockdev ? "blockdev" : "file",
            o->dev, o->is_blockdev ? 0 : o->ino, id,
            marked ? "xattr" : "none", abs ? abs : o->path);
  r = statedir_write_file (sd, "header", buf);
 out:
  free (abs);
  free (absdir);
  return r;
}

/* The remedy, for messages that refuse an image. */
#define REMEDY \
  "; if this image is meant to be used with no snapshots (restored, " \
  "replaced), move the state directory away and start again"

/* Read the header and compare it with the image. */
static int
check_header (struct statedir *sd, const struct nbdsnap_origin *o,
              uint32_t want_chunk)
{
  char buf[PATH_MAX + 512], kind[16] = "", path[PATH_MAX] = "";
  char id[64] = "", mark[16] = "", have[64], have_dir[PATH_MAX];
  uint64_t size = 0, dev = 0, ino = 0;
  const char *mykind = o->is_blockdev ? "blockdev" : "file";
  uint32_t chunk = 0;
  int version = 0, fields;
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
  if (strncmp (buf, HEADER_MAGIC "\n", strlen (HEADER_MAGIC) + 1) == 0) {
    version = 2;
    fields = sscanf (buf + strlen (HEADER_MAGIC) + 1,
                     "chunk-size %" SCNu32 "\n"
                     "image-size %" SCNu64 "\n"
                     "image-kind %15s\n"
                     "image-dev %" SCNu64 "\n"
                     "image-ino %" SCNu64 "\n"
                     "state-id %63s\n"
                     "image-mark %15s\n"
                     "image-path %4095[^\n]",
                     &chunk, &size, kind, &dev, &ino, id, mark, path);
    if (fields < 7)
      version = 0;
  }
  else if (strncmp (buf, HEADER_MAGIC_V1 "\n",
                    strlen (HEADER_MAGIC_V1) + 1) == 0) {
    uint64_t v1dev, v1ino;
    version = 1;
    fields = sscanf (buf + strlen (HEADER_MAGIC_V1) + 1,
                     "chunk-size %" SCNu32 "\n"
                     "image-size %" SCNu64 "\n"
                     "image-kind %15s\n"
                     "image-id %" SCNu64 ":%" SCNu64 "\n"
                     "image-path %4095[^\n]",
                     &chunk, &size, kind, &v1dev, &v1ino, path);
    if (fields < 5)
      version = 0;
    /* Version 1 knew a file by its inode, a device by its number. */
    dev = o->is_blockdev ? v1dev : o->dev;
    ino = v1ino;
  }
  if (version == 0) {
    errno = EINVAL;
    nbdsnap_error ("%s/header: not an nbdsnap state directory header "
                   "(format 1 or 2)", sd->path);
    return -1;
  }
  if (chunk < NBDSNAP_CHUNK_MIN || chunk > NBDSNAP_CHUNK_MAX
      || (chunk & (chunk - 1)) != 0) {
    errno = EINVAL;
    nbdsnap_error ("%s/header: bad chunk-size %" PRIu32, sd->path, chunk);
    return -1;
  }
  errno = EINVAL;
  if (strcmp (kind, mykind) != 0) {
    nbdsnap_error ("%s is another image: state directory %s belongs to a "
                   "%s (%s), and %s is a %s" REMEDY, o->path, sd->path, kind,
                   path, o->path, mykind);
    return -1;
  }
  if (o->is_blockdev && dev != o->dev) {
    nbdsnap_error ("%s is another image: state directory %s belongs to "
                   "block device %" PRIu64 ":%" PRIu64 " (%s), and %s is %"
                   PRIu64 ":%" PRIu64 REMEDY, o->path, sd->path, (uint64_t) major (dev),
                   (uint64_t) minor (dev), path, o->path,
                   (uint64_t) major (o->dev), (uint64_t) minor (o->dev));
    return -1;
  }
  if (!o->is_blockdev && strcmp (mark, "xattr") == 0) {
    /* The mark is the identity: the same bytes may have moved to another
     * inode or file system (mv, cp -a) and are still the same image. */
    image_mark (o, have, have_dir);
    errno = EINVAL;
    if (strcmp (have, id) != 0) {
      nbdsnap_error ("%s is another image: state directory %s belongs to "
                     "%s (state id %s), and %s %s%s; it was replaced, or "
                     "is a copy" REMEDY, o->path, sd->path, path, id,
                     o->path, have[0] ? "belongs to state directory "
                                      : "has no " IMAGE_XATTR " mark",
                     have[0] ? have_dir : "");
      return -1;
    }
  }
  else if (!o->is_blockdev && (ino != o->ino || dev != o->dev)) {
    nbdsnap_error ("%s is another image: state directory %s belongs to "
                   "%s (device %" PRIu64 " inode %" PRIu64 "), and this "
                   "is device %" PRIu64 " inode %" PRIu64 REMEDY,
                   o->path, sd->path, path, dev, ino, o->dev, o->ino);
    return -1;
  }
  if (size != o->size) {
    nbdsnap_error ("image %s was resized: state directory %s says %" PRIu64
                   " bytes, the image has %" PRIu64 " (growing or "
                   "shrinking an image that has snapshots is not "
                   "supported)", o->path, sd->path, size, o->size);
    return -1;
  }
  if (want_chunk != 0 && want_chunk != chunk) {
    nbdsnap_error ("chunk-size=%" PRIu32 " differs from the state "
                   "directory's %" PRIu32 " (fixed when %s was created)",
                   want_chunk, chunk, sd->path);
    return -1;
  }
  sd->chunk_size = chunk;
  return 0;
}

/* Lock the image itself (an OFD lock on one byte far past its end, write
 * or read as the image is opened): a second nbdsnap server on the same
 * image, even with another state directory, refuses to start. */
static int
lock_image (const struct nbdsnap_origin *o)
{
  struct flock fl = { .l_type = o->readonly ? F_RDLCK : F_WRLCK,
                      .l_whence = SEEK_SET,
                      .l_start = IMAGE_LOCK_OFFSET,
                      .l_len = 1 };

  if (fcntl (o->fd, F_OFD_SETLK, &fl) == 0)
    return 0;
  if (errno == EAGAIN || errno == EACCES) {
    errno = EBUSY;
    nbdsnap_error ("image in use: %s is locked by another nbdsnap server "
                   "(each image may be served by one server, with one "
                   "state directory)", o->path);
  }
  else
    nbdsnap_error ("lock %s: %m", o->path);
  return -1;
}

/* Does the directory hold any snapshot file? */
static int
has_snapshots (struct statedir *sd, bool *yes)
{
  int dfd = dup (sd->dirfd);
  struct dirent *d;
  DIR *dir;

  *yes = false;
  if (dfd == -1 || (dir = fdopendir (dfd)) == NULL) {
    nbdsnap_error ("opendir %s: %m", sd->path);
    if (dfd >= 0)
      close (dfd);
    return -1;
  }
  while ((d = readdir (dir)) != NULL)
    if (strncmp (d->d_name, "snap-", 5) == 0)
      *yes = true;
  closedir (dir);
  return 0;
}

int
statedir_open (struct statedir *sd, const char *path,
               const struct nbdsnap_origin *o, uint32_t chunk_size)
{
  struct stat st;

  memset (sd, 0, sizeof *sd);
  sd->dirfd = sd->lockfd = sd->image_fd = -1;
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

  if (lock_image (o) == -1)
    goto err;
  sd->image_fd = o->fd;

  if (fstatat (sd->dirfd, "header", &st, 0) == 0) {
    if (check_header (sd, o, chunk_size) == -1)
      goto err;
  }
  else if (errno == ENOENT) {
    bool snaps;
    if (has_snapshots (sd, &snaps) == -1)
      goto err;
    if (snaps) {
      errno = EINVAL;
      nbdsnap_error ("%s/header is missing, but the directory holds "
                     "snapshot files: which image they belong to is "
                     "unknown, so nothing is recreated; restore the header "
                     "or move the directory away", path);
      goto err;
    }
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

  if (sd->image_fd >= 0) {
    struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET,
                        .l_start = IMAGE_LOCK_OFFSET, .l_len = 1 };
    fcntl (sd->image_fd, F_OFD_SETLK, &fl);
  }
  if (sd->lockfd >= 0)
    close (sd->lockfd);         /* releases the flock */
  if (sd->dirfd >= 0)
    close (sd->dirfd);
  free (sd->path);
  sd->path = NULL;
  sd->lockfd = sd->dirfd = sd->image_fd = -1;
  errno = saved;
}
