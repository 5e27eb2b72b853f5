/* nbdsnap: the origin, raw I/O on the base image (see nbdsnap/origin.h).
 *
 * Notes on the design:
 *
 * - One file descriptor, opened once, shared by every thread.  All data
 *   transfers use pread/pwrite, so the file offset is never relied on;
 *   lseek (SEEK_DATA/SEEK_HOLE) moves it but only its return value is used.
 *
 * - The size is fixed when the image is opened (st_size, or BLKGETSIZE64
 *   for a block device).  Every request is range-checked against it first:
 *   a request past the end fails with EINVAL before anything is touched.
 *
 * - Zeroing, fastest first: punch a hole (only if the caller allows holes),
 *   then FALLOC_FL_ZERO_RANGE, then writing zeros.  can_punch_hole and
 *   can_zero_range start true and are cleared for good (atomic stores, so
 *   concurrent requests may race harmlessly) the first time the kernel
 *   answers EOPNOTSUPP.  On a block device ZERO_RANGE may be emulated by
 *   the kernel writing zeros, so only PUNCH_HOLE (which the kernel never
 *   emulates there) counts as fast.  A "fast" zero that would have to fall
 *   back to a slow method fails with ENOTSUP and changes nothing.
 *
 * - Alignment: the plugin advertises a minimum block size of 1, but the
 *   kernel refuses (EINVAL) a fallocate on a block device that is not
 *   aligned to its logical block size (block_size, from BLKSSZGET; 512 or
 *   4096 usually).  So a zero is split into the aligned middle (the whole
 *   blocks inside it) and an unaligned head and tail, each shorter than
 *   one block; a range that holds no whole block is all head.  The middle
 *   gets the methods above, the head and tail are written as zeros
 *   (buffered pwrite, which needs no alignment: the fd is not O_DIRECT).
 *   The middle goes first, so that a refused fast zero has written
 *   nothing.  A fast zero counts as fast when its middle is done fast: the
 *   edges add at most two partial blocks of writes, a cost of the order of
 *   the request itself.  A fast zero with no whole block would be nothing
 *   but writes of zeros, so it fails with ENOTSUP.  On a regular file
 *   block_size is 1: no head, no tail.
 *
 * - Trim is advisory: punch a hole, or do nothing if the kernel cannot.
 *   On a block device only the aligned middle is punched; the edges are
 *   left as they are.
 *
 * - FUA is native: the write, then fdatasync before returning.
 *
 * - Extents: a block device (and a filesystem whose lseek does not know
 *   SEEK_DATA) is all data.  Holes and data are clamped to the image size,
 *   and ENXIO from SEEK_DATA means "hole from here to the end".  The
 *   callback stops the walk by returning non-zero: < 0 is an error it has
 *   reported (we return -1), > 0 means "enough" (we return 0).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdsnap/err.h"
#include "nbdsnap/io.h"
#include "nbdsnap/origin.h"

/* Source for writing zeros when the kernel cannot zero for us. */
static const char zero_buf[64 * 1024];

static bool
flag_get (const bool *flag)
{
  return __atomic_load_n (flag, __ATOMIC_RELAXED);
}

static void
flag_clear (bool *flag)
{
  __atomic_store_n (flag, false, __ATOMIC_RELAXED);
}

static int
check_range (const struct nbdsnap_origin *o, const char *op, uint64_t count,
             uint64_t offset)
{
  if (offset > o->size || count > o->size - offset) {
    errno = EINVAL;
    nbdsnap_error ("%s: %s: request at offset %" PRIu64 " length %" PRIu64
                   " is past the end of the image (%" PRIu64 " bytes)",
                   o->path, op, offset, count, o->size);
    return -1;
  }
  return 0;
}

static int
check_writable (const struct nbdsnap_origin *o, const char *op)
{
  if (o->readonly) {
    errno = EROFS;
    nbdsnap_error ("%s: %s: image is open read-only", o->path, op);
    return -1;
  }
  return 0;
}

static int
sync_data (struct nbdsnap_origin *o)
{
  if (fdatasync (o->fd) == -1) {
    nbdsnap_error ("%s: fdatasync: %m", o->path);
    return -1;
  }
  return 0;
}

int
nbdsnap_origin_open (struct nbdsnap_origin *o, const char *path, bool readonly)
{
  struct stat st;
  int flags, ssz;

  memset (o, 0, sizeof *o);
  o->fd = -1;
  o->readonly = readonly;

  o->path = strdup (path);
  if (o->path == NULL) {
    nbdsnap_error ("strdup: %m");
    return -1;
  }

  /* O_NONBLOCK: a FIFO given by mistake must not hang the open; it is
   * refused below and has no effect on files and block devices. */
  flags = (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
  o->fd = open (path, flags);
  if (o->fd == -1) {
    if (errno == EISDIR)
      nbdsnap_error ("%s: is a directory, not a disk image", path);
    else
      nbdsnap_error ("%s: %m", path);
    goto err;
  }
  if (fstat (o->fd, &st) == -1) {
    nbdsnap_error ("%s: fstat: %m", path);
    goto err;
  }
  if (S_ISDIR (st.st_mode)) {
    errno = EISDIR;
    nbdsnap_error ("%s: is a directory, not a disk image", path);
    goto err;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    errno = EINVAL;
    nbdsnap_error ("%s: not a regular file or a block device", path);
    goto err;
  }
  if (fcntl (o->fd, F_SETFL, fcntl (o->fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    nbdsnap_error ("%s: fcntl: %m", path);
    goto err;
  }

  o->is_blockdev = S_ISBLK (st.st_mode);
  if (o->is_blockdev) {
    if (ioctl (o->fd, BLKGETSIZE64, &o->size) == -1) {
      nbdsnap_error ("%s: ioctl BLKGETSIZE64: %m", path);
      goto err;
    }
    if (ioctl (o->fd, BLKSSZGET, &ssz) == -1) {
      nbdsnap_error ("%s: ioctl BLKSSZGET: %m", path);
      goto err;
    }
    if (ssz <= 0 || (ssz & (ssz - 1)) != 0) {
      errno = EINVAL;
      nbdsnap_error ("%s: logical block size %d is not a power of two", path,
                     ssz);
      goto err;
    }
    o->block_size = ssz;
    o->dev = st.st_rdev;
  } else {
    o->size = st.st_size;
    o->block_size = 1;
    o->dev = st.st_dev;
  }
  o->ino = st.st_ino;
  if (o->size == 0) {
    errno = EINVAL;
    nbdsnap_error ("%s: the image is empty (size 0)", path);
    goto err;
  }

  o->can_punch_hole = true;
  o->can_zero_range = true;
  if (nbdsnap_debug_engine)
    nbdsnap_debug (
        "origin %s: %s, %" PRIu64 " bytes, blocks of %" PRIu32 ", %s", path,
        o->is_blockdev ? "block device" : "regular file", o->size,
        o->block_size, readonly ? "read-only" : "read-write");
  return 0;

err:
  nbdsnap_origin_close (o);
  return -1;
}

void
nbdsnap_origin_close (struct nbdsnap_origin *o)
{
  int saved = errno;

  if (o->fd >= 0)
    close (o->fd);
  o->fd = -1;
  free (o->path);
  o->path = NULL;
  errno = saved;
}

int
nbdsnap_origin_pread (struct nbdsnap_origin *o, void *buf, uint32_t count,
                      uint64_t offset)
{
  if (check_range (o, "read", count, offset) == -1)
    return -1;
  if (io_pread_full (o->fd, buf, count, offset) == -1) {
    nbdsnap_error ("%s: pread: %m", o->path);
    return -1;
  }
  return 0;
}

int
nbdsnap_origin_pwrite (struct nbdsnap_origin *o, const void *buf,
                       uint32_t count, uint64_t offset, bool fua)
{
  if (check_writable (o, "write") == -1
      || check_range (o, "write", count, offset) == -1)
    return -1;
  if (io_pwrite_full (o->fd, buf, count, offset) == -1) {
    nbdsnap_error ("%s: pwrite: %m", o->path);
    return -1;
  }
  return fua ? sync_data (o) : 0;
}

/* fallocate with one mode; 1 = done, 0 = the kernel cannot (flag cleared),
 * -1 = error (reported). */
static int
try_fallocate (struct nbdsnap_origin *o, int mode, bool *flag, const char *what,
               uint32_t count, uint64_t offset)
{
  if (!flag_get (flag))
    return 0;
  if (fallocate (o->fd, mode, offset, count) == 0)
    return 1;
  if (errno == EOPNOTSUPP || errno == ENOSYS) {
    if (nbdsnap_debug_engine)
      nbdsnap_debug ("origin %s: %s not supported, not trying again", o->path,
                     what);
    flag_clear (flag);
    return 0;
  }
  nbdsnap_error ("%s: fallocate %s: %m", o->path, what);
  return -1;
}

static int
write_zeros (struct nbdsnap_origin *o, uint32_t count, uint64_t offset)
{
  while (count > 0) {
    uint32_t n = count < sizeof zero_buf ? count : sizeof zero_buf;

    if (io_pwrite_full (o->fd, zero_buf, n, offset) == -1) {
      nbdsnap_error ("%s: pwrite (zeros): %m", o->path);
      return -1;
    }
    count -= n;
    offset += n;
  }
  return 0;
}

/* The aligned middle [*mid, *mid + *mid_count) of [offset, offset + count):
 * whole blocks of o->block_size.  If there is none, *mid_count is 0 and
 * *mid is the end of the range, so that the whole range is the head. */
static void
aligned_middle (const struct nbdsnap_origin *o, uint32_t count, uint64_t offset,
                uint64_t *mid, uint32_t *mid_count)
{
  const uint64_t mask = o->block_size - 1;
  uint64_t start = (offset + mask) & ~mask;
  uint64_t end = (offset + count) & ~mask;

  if (start < end) {
    *mid = start;
    *mid_count = end - start;
  } else {
    *mid = offset + count;
    *mid_count = 0;
  }
}

/* Zero an aligned range with the fastest method allowed (see the notes).
 * Fast and only slow methods left: ENOTSUP, nothing written. */
static int
zero_aligned (struct nbdsnap_origin *o, uint32_t count, uint64_t offset,
              bool may_trim, bool fast)
{
  int r = 0;

  if (may_trim)
    r = try_fallocate (o, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       &o->can_punch_hole, "punch hole", count, offset);
  /* On a block device the kernel may emulate ZERO_RANGE by writing zeros:
   * not fast. */
  if (r == 0 && !(fast && o->is_blockdev))
    r = try_fallocate (o, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                       &o->can_zero_range, "zero range", count, offset);
  if (r == -1)
    return -1;
  if (r == 0) {
    if (fast) {
      /* Expected by the client, who will write the zeros itself: the
       * answer, not a failure worth a message. */
      errno = ENOTSUP;
      return -1;
    }
    return write_zeros (o, count, offset);
  }
  return 0;
}

int
nbdsnap_origin_zero (struct nbdsnap_origin *o, uint32_t count, uint64_t offset,
                     bool may_trim, bool fua, bool fast)
{
  uint64_t mid, end = offset + count;
  uint32_t mid_count;

  if (check_writable (o, "zero") == -1
      || check_range (o, "zero", count, offset) == -1)
    return -1;
  if (count == 0)
    return 0;

  aligned_middle (o, count, offset, &mid, &mid_count);
  if (mid_count == 0 && fast) {
    /* No whole block: nothing but writes of zeros, not fast. */
    errno = ENOTSUP;
    return -1;
  }
  /* The middle first, so that a refused fast zero has written nothing;
   * then the head [offset, mid) and the tail [mid + mid_count, end). */
  if ((mid_count > 0 && zero_aligned (o, mid_count, mid, may_trim, fast) == -1)
      || write_zeros (o, mid - offset, offset) == -1
      || write_zeros (o, end - (mid + mid_count), mid + mid_count) == -1)
    return -1;
  return fua ? sync_data (o) : 0;
}

int
nbdsnap_origin_trim (struct nbdsnap_origin *o, uint32_t count, uint64_t offset,
                     bool fua)
{
  uint64_t mid;
  uint32_t mid_count;

  if (check_writable (o, "trim") == -1
      || check_range (o, "trim", count, offset) == -1)
    return -1;
  /* Advisory: the partial blocks at the edges are left alone. */
  aligned_middle (o, count, offset, &mid, &mid_count);
  if (mid_count > 0
      && try_fallocate (o, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        &o->can_punch_hole, "punch hole", mid_count, mid)
             == -1)
    return -1;
  return fua ? sync_data (o) : 0;
}

int
nbdsnap_origin_flush (struct nbdsnap_origin *o)
{
  return sync_data (o);
}

int
nbdsnap_origin_cache (struct nbdsnap_origin *o, uint32_t count, uint64_t offset)
{
  int err;

  if (check_range (o, "cache", count, offset) == -1)
    return -1;
  err = posix_fadvise (o->fd, offset, count, POSIX_FADV_WILLNEED);
  if (err != 0) {
    errno = err;
    nbdsnap_error ("%s: posix_fadvise: %m", o->path);
    return -1;
  }
  return 0;
}

/* Report [offset, end) as one extent; see the notes for fn's result. */
static int
emit (nbdsnap_extent_fn fn, void *opaque, uint64_t offset, uint64_t end,
      bool hole, bool *stop)
{
  int r = fn (opaque, offset, end - offset, hole);

  if (r < 0)
    return -1;
  *stop = r > 0;
  return 0;
}

int
nbdsnap_origin_extents (struct nbdsnap_origin *o, uint64_t offset,
                        uint64_t count, nbdsnap_extent_fn fn, void *opaque)
{
  const uint64_t end = offset + count;
  uint64_t pos = offset;
  bool stop = false;

  if (check_range (o, "extents", count, offset) == -1)
    return -1;
  if (o->is_blockdev)
    return count > 0 ? emit (fn, opaque, pos, end, false, &stop) : 0;

  while (pos < end && !stop) {
    off_t data, hole;

    data = lseek (o->fd, pos, SEEK_DATA);
    if (data == -1) {
      if (errno == ENXIO) /* no data after pos: a hole to the end */
        return emit (fn, opaque, pos, end, true, &stop);
      if (errno == EINVAL || errno == EOPNOTSUPP) /* no SEEK_DATA here */
        return emit (fn, opaque, pos, end, false, &stop);
      nbdsnap_error ("%s: lseek SEEK_DATA: %m", o->path);
      return -1;
    }
    if ((uint64_t)data > pos) {
      uint64_t hend = (uint64_t)data < end ? (uint64_t)data : end;

      if (emit (fn, opaque, pos, hend, true, &stop) == -1)
        return -1;
      pos = hend;
      continue;
    }

    hole = lseek (o->fd, pos, SEEK_HOLE);
    if (hole == -1) {
      if (errno == ENXIO) /* the file shrank under us: the rest */
        return emit (fn, opaque, pos, end, true, &stop);
      nbdsnap_error ("%s: lseek SEEK_HOLE: %m", o->path);
      return -1;
    }
    if ((uint64_t)hole <= pos) { /* cannot happen; do not loop forever */
      errno = EIO;
      nbdsnap_error ("%s: lseek SEEK_HOLE went backwards", o->path);
      return -1;
    }
    {
      uint64_t dend = (uint64_t)hole < end ? (uint64_t)hole : end;

      if (emit (fn, opaque, pos, dend, false, &stop) == -1)
        return -1;
      pos = dend;
    }
  }
  return 0;
}
