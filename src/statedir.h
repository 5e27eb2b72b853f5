/* nbdsnap: the state directory, its lock and its header (src/statedir.c).
 *
 * Notes on the design
 *
 * One state directory per base image:
 *
 *   lock                 empty; flock (LOCK_EX) held for the life of the
 *                        process: a second server refuses to start
 *   header               text, written once when the directory is created:
 *                          nbdsnap-state 2
 *                          chunk-size 65536
 *                          image-size 1073741824
 *                          image-kind file|blockdev
 *                          image-dev 2049        (st_dev; st_rdev for a
 *                                                 device)
 *                          image-ino 1234        (0 for a device)
 *                          state-id 32 random hex digits
 *                          image-mark xattr|none
 *                          image-path /abs/path/disk.img   (informative)
 *   seal                 the image as the server left it (clean or
 *                        running with a lease), see seal.h
 *   snap-ID.meta         per snapshot, see snap.h
 *   snap-ID.bitmap
 *   snap-ID.store
 *
 * Identity says which file the image is; whether its bytes changed while
 * no server had it open is the seal's (seal.h), checked by the engine
 * once the snapshots are loaded.
 *
 * Identity.  A regular image gets the state id in its extended attribute
 * user.nbdsnap.state-id when the directory is created (image-mark xattr);
 * from then on the attribute is the identity: an image without it, or
 * with another directory's, is refused (a new file in its place, a copy
 * made with plain cp, a restore), while the same bytes under another
 * inode (mv, cp -a) are accepted.  Where the attribute cannot be set
 * (image-mark none), device and inode numbers must match.  A block device
 * is known by its device number.  Version 1 headers (inode or device
 * number only) are still read.  A refused image can be re-adopted
 * (statedir_open's adopt): the user says it is the same disk (restored
 * from a copy of exactly what was served, moved with plain cp, a block
 * device renumbered); the header is rewritten with the image's identity
 * and the image marked with the directory's state id.  Adopting is
 * refused if the size differs.
 *
 * Size.  The snapshots of a directory are of an image of one size (their
 * stores and bitmaps are that size): an image grown or shrunk is refused
 * while the directory holds any snapshot file, with a message saying how
 * to proceed; with none, the header takes the new size.
 *
 * A failed start.  statedir_open records what it created (the
 * directory, the header, the image's mark); on its own failure it removes
 * them, and statedir_abandon removes them for a start that failed later
 * (the server could not listen): nothing is left behind that would make
 * the next start differ, unless snapshots were made meanwhile.
 *
 * Locks.  Besides the flock on "lock", the image itself gets an OFD lock
 * (write, or read for a read-only server) on one byte far past its end,
 * so two servers with two state directories cannot serve one image.
 *
 * A missing header is written only for a directory with no snapshot
 * files: otherwise which image they belong to is unknown, and open
 * refuses.  A mismatch between header and image (size, identity, chunk
 * size asked for) refuses to open with a message saying what differs and
 * what to do.  The header is written to header.tmp, fsynced, renamed, and
 * the directory fsynced.
 */
#ifndef NBDSNAP_STATEDIR_H
#define NBDSNAP_STATEDIR_H

#include <stdbool.h>
#include <stdint.h>

struct nbdsnap_origin;

struct statedir {
  char *path;
  int dirfd;
  int lockfd;
  int image_fd;                 /* the origin's, holding the image lock;
                                   not ours to close */
  uint32_t chunk_size;
  /* What this open created, for statedir_abandon. */
  bool created_dir;             /* mkdir made the directory */
  bool created_header;          /* the header did not exist */
  bool created_mark;            /* the image's mark was set or replaced */
  char *old_mark;               /* the mark it replaced, NULL if none */
};

/* chunk_size: 0 = the directory's (default for a new one).  adopt: an
 * image whose identity differs from the header's is taken as the same
 * disk (see above). */
extern int statedir_open (struct statedir *sd, const char *path,
                          const struct nbdsnap_origin *origin,
                          uint32_t chunk_size, bool adopt);
extern void statedir_close (struct statedir *sd);

/* Close after a failed start: remove what statedir_open created (the
 * image's mark is put back as it was, the header and lock file and the
 * directory removed) unless the directory now holds a snapshot file.
 * Anything else found in the directory is left, with the directory. */
extern void statedir_abandon (struct statedir *sd);

/* Write name atomically and durably inside the directory:
 * name.tmp, fsync, rename, fsync dir. */
extern int statedir_write_file (struct statedir *sd, const char *name,
                                const char *content);

#endif /* NBDSNAP_STATEDIR_H */
