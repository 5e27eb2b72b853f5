/* nbdsnap: the state directory, its lock and its header (src/statedir.c).
 *
 * Notes on the design
 *
 * One state directory per base image:
 *
 *   lock                 empty; flock (LOCK_EX) held for the life of the
 *                        process: a second server refuses to start
 *   header               text, written once when the directory is created:
 *                          nbdsnap-state 1
 *                          chunk-size 65536
 *                          image-size 1073741824
 *                          image-kind file|blockdev
 *                          image-id 0:INO (a file) or RDEV:0 (a device)
 *                          image-path /abs/path/disk.img   (informative)
 *   snap-ID.meta         per snapshot, see snap.h
 *   snap-ID.bitmap
 *   snap-ID.store
 *
 * A mismatch between header and image (size, identity, chunk size asked
 * for) refuses to open with a message saying what differs.  The header is
 * written to header.tmp, fsynced, renamed, and the directory fsynced.
 */
#ifndef NBDSNAP_STATEDIR_H
#define NBDSNAP_STATEDIR_H

#include <stdint.h>

struct nbdsnap_origin;

struct statedir {
  char *path;
  int dirfd;
  int lockfd;
  uint32_t chunk_size;
};

/* chunk_size: 0 = the directory's (default for a new one). */
extern int statedir_open (struct statedir *sd, const char *path,
                          const struct nbdsnap_origin *origin,
                          uint32_t chunk_size);
extern void statedir_close (struct statedir *sd);

/* Write name atomically and durably inside the directory:
 * name.tmp, fsync, rename, fsync dir. */
extern int statedir_write_file (struct statedir *sd, const char *name,
                                const char *content);

#endif /* NBDSNAP_STATEDIR_H */
