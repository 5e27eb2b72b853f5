/* nbdsnap: the origin, the raw base image (src/origin.c).
 *
 * Plain I/O on the base image (a regular file or a block device) with no
 * knowledge of snapshots: the engine calls it after copy-on-write, the
 * plugin calls the read side directly.  Every function either does the
 * whole request or fails with errno set and one message reported through
 * nbdsnap_error (); nothing is half-done by a range check.
 */
#ifndef NBDSNAP_ORIGIN_H
#define NBDSNAP_ORIGIN_H

#include <stdbool.h>
#include <stdint.h>

#include "nbdsnap/engine.h"     /* nbdsnap_extent_fn */

struct nbdsnap_origin {
  int fd;
  char *path;                   /* as given by the user */
  uint64_t size;                /* bytes; > 0 */
  bool is_blockdev;
  bool readonly;
  /* The unit fallocate needs: the logical block size (BLKSSZGET) of a
   * block device, 1 for a regular file.  A power of two. */
  uint32_t block_size;
  uint64_t dev, ino;            /* st_dev/st_ino (st_rdev for a device) */
  /* Cleared (atomically) when the kernel answers EOPNOTSUPP. */
  bool can_punch_hole;
  bool can_zero_range;
};

/* Open and validate: exists, not a directory, regular file or block device,
 * non-zero size.  Errors name the path and the reason. */
extern int nbdsnap_origin_open (struct nbdsnap_origin *o, const char *path,
                                bool readonly);
extern void nbdsnap_origin_close (struct nbdsnap_origin *o);

/* Range checks: EINVAL ("... past the end of the image") if
 * offset + count > size. */
extern int nbdsnap_origin_pread (struct nbdsnap_origin *o, void *buf,
                                 uint32_t count, uint64_t offset);
extern int nbdsnap_origin_pwrite (struct nbdsnap_origin *o, const void *buf,
                                  uint32_t count, uint64_t offset, bool fua);
/* Zero every byte of the range, whatever its alignment: may_trim allows
 * punching holes; fast: fail with ENOTSUP at once, changing nothing, if
 * zeroing would be no faster than writing zeros. */
extern int nbdsnap_origin_zero (struct nbdsnap_origin *o, uint32_t count,
                                uint64_t offset, bool may_trim, bool fua,
                                bool fast);
/* Advisory: may do nothing, and on a block device does nothing to the
 * parts of the range outside whole logical blocks. */
extern int nbdsnap_origin_trim (struct nbdsnap_origin *o, uint32_t count,
                                uint64_t offset, bool fua);
extern int nbdsnap_origin_flush (struct nbdsnap_origin *o);
extern int nbdsnap_origin_cache (struct nbdsnap_origin *o, uint32_t count,
                                 uint64_t offset);
/* SEEK_DATA/SEEK_HOLE; correct at the image's end.  A block device, or a
 * filesystem without SEEK_DATA, is reported as all data.  fn returns 0 to
 * go on, > 0 to stop (then this returns 0), < 0 for an error it has
 * reported (then this returns -1). */
extern int nbdsnap_origin_extents (struct nbdsnap_origin *o, uint64_t offset,
                                   uint64_t count, nbdsnap_extent_fn fn,
                                   void *opaque);

#endif /* NBDSNAP_ORIGIN_H */
