/* nbdsnap: mmap'd per-snapshot bitmap files (src/bitmap.c).
 *
 * Notes on the design
 *
 * Each snapshot has one bitmap file holding two bit arrays of one bit per
 * chunk of the image:
 *
 *   candidate  set at creation for every chunk that held any data then
 *              (SEEK_DATA/SEEK_HOLE); never changes afterwards.
 *   copied     set when the snapshot's content of the chunk has been
 *              preserved in its store file (for a candidate chunk: the old
 *              data was copied; for a hole: nothing to copy, the store reads
 *              zeros there) — i.e. "the origin chunk changed after this
 *              snapshot and this snapshot holds its old content".  Set once,
 *              never cleared.
 *
 * File format (little-endian, host order on the only platforms we build):
 *
 *   offset 0      header: "NBDSNAPB", u32 version (1), u32 0, u64 nchunks
 *   offset 4096   candidate bits, u64 words, padded to a multiple of 4096
 *   then          copied bits, same size
 *
 * The file is created sparse (ftruncate) so that resident memory and disk
 * use follow the chunks touched, not the image size.  Bits are read with
 * acquire loads and set with release atomic ORs: a reader that sees a
 * copied bit also sees the store data written before it was set.
 */
#ifndef NBDSNAP_BITMAP_H
#define NBDSNAP_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bitmap_file {
  int fd;
  void *map;
  size_t map_len;
  uint64_t nchunks;
  uint64_t nwords;              /* u64 words per array */
  uint64_t *candidate;
  uint64_t *copied;
};

/* Create path (O_EXCL) for nchunks chunks, all bits clear. */
extern int bitmap_create (struct bitmap_file *b, int dirfd, const char *name,
                          uint64_t nchunks);
/* Open an existing file; its nchunks must match. */
extern int bitmap_open (struct bitmap_file *b, int dirfd, const char *name,
                        uint64_t nchunks);
extern void bitmap_close (struct bitmap_file *b);
/* msync (MS_SYNC) the whole mapping. */
extern int bitmap_sync (struct bitmap_file *b);

static inline bool
bitmap_test (const uint64_t *bits, uint64_t i)
{
  return (__atomic_load_n (&bits[i >> 6], __ATOMIC_ACQUIRE) >> (i & 63)) & 1;
}

static inline void
bitmap_set (uint64_t *bits, uint64_t i)
{
  __atomic_fetch_or (&bits[i >> 6], UINT64_C (1) << (i & 63),
                     __ATOMIC_RELEASE);
}

/* Set bits [first, first + n). Not atomic with respect to bitmap_set on the
 * same words: only used before a bitmap is published. */
extern void bitmap_set_range (uint64_t *bits, uint64_t first, uint64_t n);
/* Number of bits set in bits & mask (mask may be NULL). */
extern uint64_t bitmap_count (const uint64_t *bits, const uint64_t *mask,
                              uint64_t nwords);

#endif /* NBDSNAP_BITMAP_H */
