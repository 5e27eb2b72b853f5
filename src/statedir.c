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

/* Mark the image with "ID DIR" (not a block device: see image_mark).
 * The first mark set by this open remembers the one it replaced, for
 * statedir_abandon.  Returns true if the mark is set. */
static bool
set_mark (struct statedir *sd, const struct nbdsnap_origin *o,
          const char *id, const char *absdir)
{
  char mark[PATH_MAX + 64], old[PATH_MAX + 64];
  ssize_t n;

  if (o->is_blockdev)
    return false;
  if (!sd->created_mark) {
    n = fgetxattr (o->fd, IMAGE_XATTR, old, sizeof old - 1);
    if (n >= 0) {
      old[n] = '\0';
      sd->old_mark = strdup (old);
      if (sd->old_mark == NULL) {
        nbdsnap_error ("strdup: %m");
        return false;
      }
    }
  }
  snprintf (mark, sizeof mark, "%s %s", id, absdir);
  if (fsetxattr (o->fd, IMAGE_XATTR, mark, strlen (mark), 0) == -1) {
    nbdsnap_debug ("%s: cannot set the %s attribute (%m): the image is "
                   "known by its device and inode numbers only",
                   o->path, IMAGE_XATTR);
    return false;
  }
  sd->created_mark = true;
  return true;
}

/* Write the header for image o with state id `id` (new or kept), marking
 * the image. */
static int
write_header_id (struct statedir *sd, const struct nbdsnap_origin *o,
                 const char *id)
{
  char buf[PATH_MAX + 512];
  char *abs = realpath (o->path, NULL), *absdir = realpath (sd->path, NULL);
  bool marked;
  int r;

  marked = set_mark (sd, o, id, absdir ? absdir : sd->path);
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
  free (abs);
  free (absdir);
  return r;
}

/* A new directory's header, with a new state id. */
static int
write_header (struct statedir *sd, const struct nbdsnap_origin *o)
{
  char id[33], old_id[64], old_dir[PATH_MAX];
  char *absdir = realpath (sd->path, NULL);
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
  sd->created_header = true;
  r = write_header_id (sd, o, id);
 out:
  free (absdir);
  return r;
}

/* Does the directory hold any snapshot file?  How many in *n (a snapshot
 * has up to three). */
static int
count_snapshot_files (struct statedir *sd, unsigned *n)
{
  /* A new open file description: a dup would share dirfd's offset, and
   * the engine's scan (scan_ids) reads dirfd after us. */
  int dfd = openat (sd->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct dirent *d;
  DIR *dir;

  *n = 0;
  if (dfd == -1 || (dir = fdopendir (dfd)) == NULL) {
    nbdsnap_error ("opendir %s: %m", sd->path);
    if (dfd >= 0)
      close (dfd);
    return -1;
  }
  while ((d = readdir (dir)) != NULL)
    if (strncmp (d->d_name, "snap-", 5) == 0)
      ++*n;
  closedir (dir);
  return 0;
}

static int
has_snapshots (struct statedir *sd, bool *yes)
{
  unsigned n;

  if (count_snapshot_files (sd, &n) == -1)
    return -1;
  *yes = n > 0;
  return 0;
}

/* How to go on, for messages that refuse an image as another disk. */
#define ADOPT_REMEDY \
  "; if it IS the same disk (its bytes are exactly those this server " \
  "last served: moved or copied while the server was stopped, or a block " \
  "device that got a new number), start once with adopt=1; if it is " \
  "not, give it another statedir=, or move %s away to give up its " \
  "snapshots"

/* Why image o is not the one the header describes, in words, or "" if it
 * is.  kind, dev, ino, id, mark, path: the header's. */
static void
identity_differs (const struct nbdsnap_origin *o, const char *kind,
                  uint64_t dev, uint64_t ino, const char *id,
                  const char *mark, char *why, size_t len)
{
  const char *mykind = o->is_blockdev ? "blockdev" : "file";
  char have[64], have_dir[PATH_MAX];

  why[0] = '\0';
  if (strcmp (kind, mykind) != 0)
    snprintf (why, len, "it is a %s, the disk was a %s",
              o->is_blockdev ? "block device" : "regular file",
              strcmp (kind, "blockdev") == 0 ? "block device"
                                             : "regular file");
  else if (o->is_blockdev && dev != o->dev)
    snprintf (why, len, "it is block device %u:%u, the disk was block "
              "device %u:%u", major (o->dev), minor (o->dev),
              major (dev), minor (dev));
  else if (!o->is_blockdev && strcmp (mark, "xattr") == 0) {
    /* The mark is the identity: the same bytes may have moved to another
     * inode or file system (mv, cp -a) and are still the same image. */
    image_mark (o, have, have_dir);
    if (have[0] == '\0')
      snprintf (why, len, "it lacks the mark nbdsnap gave the disk (the "
                "extended attribute " IMAGE_XATTR "): it is a copy made "
                "without -a, a restore, or a new file in its place");
    else if (strcmp (have, id) != 0)
      snprintf (why, len, "it carries the mark of another state "
                "directory, %s: it was made for that one",
                have_dir[0] ? have_dir : "(unknown)");
  }
  else if (!o->is_blockdev && strcmp (mark, "xattr") != 0
           && (ino != o->ino || dev != o->dev))
    snprintf (why, len, "it is another file (inode %" PRIu64 " on device "
              "%" PRIu64 ", the disk was inode %" PRIu64 " on device %"
              PRIu64 "): a copy, a restore, or a new file in its place",
              o->ino, o->dev, ino, dev);
}

/* Where the image is, said once: "at P" if the disk was at P too, else
 * "at P (the disk was at Q)". */
static void
where (const struct nbdsnap_origin *o, const char *path, char *out,
       size_t len)
{
  char *abs = realpath (o->path, NULL);
  const char *me = abs ? abs : o->path;

  if (path[0] == '\0' || strcmp (path, me) == 0)
    snprintf (out, len, "%s", o->path);
  else
    snprintf (out, len, "%s (the disk was %s)", o->path, path);
  free (abs);
}

/* Read the header and compare it with the image; adopt: see
 * statedir_open. */
static int
check_header (struct statedir *sd, const struct nbdsnap_origin *o,
              uint32_t want_chunk, bool adopt)
{
  char buf[PATH_MAX + 512], kind[16] = "", path[PATH_MAX] = "";
  char id[64] = "", mark[16] = "", why[PATH_MAX + 256];
  char at[2 * PATH_MAX + 32];
  uint64_t size = 0, dev = 0, ino = 0;
  uint32_t chunk = 0;
  int version = 0, fields;
  unsigned nsnapfiles;
  bool rewrite = false;
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
  if (want_chunk != 0 && want_chunk != chunk) {
    errno = EINVAL;
    nbdsnap_error ("chunk-size=%" PRIu32 " differs from the state "
                   "directory's %" PRIu32 " (fixed when %s was created)",
                   want_chunk, chunk, sd->path);
    return -1;
  }
  sd->chunk_size = chunk;
  if (count_snapshot_files (sd, &nsnapfiles) == -1)
    return -1;
  where (o, path, at, sizeof at);

  identity_differs (o, kind, dev, ino, id, mark, why, sizeof why);
  if (why[0] && !adopt) {
    errno = EINVAL;
    nbdsnap_error ("image %s is another image than the disk state "
                   "directory %s was made for: %s.  Its snapshots hold only "
                   "what changed since they were taken and read the rest "
                   "from the disk, so they are right only for that disk"
                   ADOPT_REMEDY, at, sd->path, why, sd->path);
    return -1;
  }
  if (size != o->size) {
    errno = EINVAL;
    if (why[0]) {
      nbdsnap_error ("adopt=1: image %s is %" PRIu64 " bytes, the disk "
                     "state directory %s was made for was %" PRIu64 " "
                     "bytes: a disk of another size is not the same disk",
                     at, o->size, sd->path, size);
      return -1;
    }
    if (nsnapfiles > 0 && o->size > size) {
      nbdsnap_error ("image %s was resized: grown from %" PRIu64 " to %"
                     PRIu64 " bytes, and its snapshots in %s are of the %"
                     PRIu64 "-byte disk (a snapshot cannot change size).  "
                     "To resize a disk that has snapshots: put its size "
                     "back (truncate -s %" PRIu64 " %s), start the server "
                     "with adopt=1 (the file changed, its bytes did not), "
                     "back up what you need (nbdsnapctl backup) and delete "
                     "every snapshot, stop it, resize the image, and start "
                     "again", o->path, size, o->size, sd->path, size, size,
                     o->path);
      return -1;
    }
    if (nsnapfiles > 0) {
      nbdsnap_error ("image %s was resized: shrunk from %" PRIu64 " to %"
                     PRIu64 " bytes, and its snapshots in %s are of the %"
                     PRIu64 "-byte disk: the bytes past %" PRIu64 " are "
                     "gone from the image, and the snapshots read them from "
                     "it.  Restore the image, or put its size back "
                     "(truncate -s %" PRIu64 " %s) and start the server "
                     "with image-changed=invalidate (every snapshot then "
                     "reads as EIO: delete them)", o->path, size, o->size,
                     sd->path, size, o->size, size, o->path);
      return -1;
    }
    /* No snapshot depends on the size: the header takes the new one. */
    nbdsnap_debug ("image %s was resized from %" PRIu64 " to %" PRIu64
                   " bytes; %s has no snapshots: recording the new size",
                   o->path, size, o->size, sd->path);
    rewrite = true;
  }
  if (why[0]) {
    /* adopt=1, and the same size. */
    nbdsnap_debug ("adopt=1: image %s adopted as the disk of state "
                   "directory %s (%s)", at, sd->path, why);
    rewrite = true;
  }
  else if (adopt)
    nbdsnap_debug ("adopt=1: image %s is already the disk of %s: nothing "
                   "to adopt", o->path, sd->path);
  if (!rewrite)
    return 0;
  if (version == 1 || id[0] == '\0') {
    char newid[33];
    if (random_id (newid) == -1)
      return -1;
    return write_header_id (sd, o, newid);
  }
  return write_header_id (sd, o, id);
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

int
statedir_open (struct statedir *sd, const char *path,
               const struct nbdsnap_origin *o, uint32_t chunk_size,
               bool adopt)
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
  if (mkdir (path, 0700) == 0)
    sd->created_dir = true;
  else if (errno != EEXIST) {
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
    if (check_header (sd, o, chunk_size, adopt) == -1)
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
  statedir_abandon (sd);
  return -1;
}

void
statedir_abandon (struct statedir *sd)
{
  int saved = errno;
  bool snaps = false;

  if (sd->dirfd >= 0 && has_snapshots (sd, &snaps) == -1)
    snaps = true;
  if (snaps) {
    nbdsnap_debug ("%s holds snapshots: leaving it", sd->path);
    goto close;
  }
  if (sd->created_mark && sd->image_fd >= 0) {
    if (sd->old_mark)
      fsetxattr (sd->image_fd, IMAGE_XATTR, sd->old_mark,
                 strlen (sd->old_mark), 0);
    else
      fremovexattr (sd->image_fd, IMAGE_XATTR);
  }
  if (sd->dirfd >= 0 && (sd->created_header || sd->created_dir)) {
    unlinkat (sd->dirfd, "header", 0);
    unlinkat (sd->dirfd, "header.tmp", 0);
    unlinkat (sd->dirfd, "lock", 0);
  }
  if (sd->created_dir && sd->path && rmdir (sd->path) == -1)
    nbdsnap_debug ("rmdir %s: %m: leaving it", sd->path);
 close:
  statedir_close (sd);
  errno = saved;
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
  free (sd->old_mark);
  sd->path = sd->old_mark = NULL;
  sd->created_dir = sd->created_header = sd->created_mark = false;
  sd->lockfd = sd->dirfd = sd->image_fd = -1;
  errno = saved;
}
