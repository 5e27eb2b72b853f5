/* nbdsnap: per-snapshot bitmap files, kept in memory page by page and
 * written with pwrite (src/bitmap.c).
 *
 * Notes on the design
 *
 * Each snapshot has one bitmap file holding a header and two bit arrays of
 * one bit per chunk of the image:
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
 *   offset 0      header (struct bitmap_header in bitmap.c):
 *                   "NBDSNAPB", u32 version (2), u32 0, u64 nchunks,
 *                   u64 snapshot id, u32 state, u32 0,
 *                   u64 FNV-1a checksum of the 40 bytes before it;
 *                 the rest of the 4 KiB page is zeros.  Version 1 files
 *                 (no id, state or checksum) are still read; the first
 *                 state change writes a version 2 header over them.
 *   offset 4096   candidate bits, u64 words, padded to a multiple of 4096
 *   then          copied bits, same size
 *
 * The header's state is the snapshot's authoritative persistent state
 * (creating, live, invalid, deleting).  It is rewritten in place — one
 * pwrite into the already allocated first page and an fdatasync — so that
 * marking a snapshot invalid or deleting needs no free space: both must
 * work on a full file system.
 *
 * Why not mmap: an I/O error while the kernel faults in a page of a mapped
 * file kills the process with SIGBUS.  Instead each array is a table of
 * 4 KiB pages in memory: NULL for a page of zeros, the shared read-only
 * bitmap_ones page for a page of ones, else a private page.  Open reads only
 * the pages the file has data in (SEEK_DATA) and keeps only those that are
 * neither all zeros nor all ones, so resident memory follows the chunks
 * used (copied, or partly candidate), not the image size; an I/O error is
 * an error return, never a signal.
 *
 * Candidate bits never change once a snapshot is published, and those of
 * consecutive snapshots are mostly the same (the origin's allocation
 * changes only where it is written): bitmap_share makes a snapshot's
 * candidate pages that equal the previous snapshot's point at the same,
 * reference-counted page.  Copied pages are never shared.
 *
 * Bits are tested lock-free (acquire loads of the page pointer and the
 * word).  bitmap_set writes the bit's 8-byte word, new value, to the file
 * first and only then stores it in memory (release), so the page cache
 * holds every bit that a thread of this process can see (what kill -9
 * needs).  Every change of one word of a published bitmap — compute,
 * pwrite, store — happens under locks[w % BITMAP_LOCKS], so an older value
 * never overwrites a newer one in the file (bitmap_set_range, for a bitmap
 * being created, writes memory only; bitmap_write_pages follows it).  Making bits durable is bitmap_sync
 * (fdatasync).
 */
#ifndef NBDSNAP_BITMAP_H
#define NBDSNAP_BITMAP_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BITMAP_PAGE 4096u
#define BITMAP_PAGE_WORDS (BITMAP_PAGE / 8)
#define BITMAP_PAGE_SHIFT 15            /* bits per page: 32768 */
#define BITMAP_LOCKS 16

/* The persistent state in the header. */
enum bitmap_state {
  BITMAP_STATE_NONE = 0,        /* version 1 header: see the meta file */
  BITMAP_STATE_CREATING = 1,    /* written at create, before the meta file */
  BITMAP_STATE_LIVE = 2,        /* written once the meta file exists */
  BITMAP_STATE_INVALID = 3,
  BITMAP_STATE_DELETING = 4,
};

struct bitmap_array {
  uint64_t **pages;             /* npages entries, see the notes */
  uint64_t npages;
  uint64_t file_off;            /* where the array starts in the file */
  bool shared;                  /* pages are reference counted and may be
                                   shared with other files' arrays
                                   (candidate: see bitmap_share) */
};

struct bitmap_file {
  int fd;
  uint64_t nchunks;
  uint64_t nwords;              /* u64 words per array (page multiple) */
  uint64_t id;                  /* snapshot id in the header */
  uint32_t version;             /* of the header as read or written */
  uint32_t state;               /* enum bitmap_state, as last read/written
                                   (atomic: written by bitmap_set_state,
                                   read lock-free by snap_state_durable) */
  struct bitmap_array candidate;
  struct bitmap_array copied;
  /* locks[w % BITMAP_LOCKS] serialises "OR bits into word w, pwrite word
   * w" (bitmap_set, bitmap_or_word); innermost, never held across another
   * lock. */
  pthread_mutex_t locks[BITMAP_LOCKS];
};

/* A page of ones, shared by every array (never written through). */
extern const uint64_t bitmap_ones[BITMAP_PAGE_WORDS];

/* Create name (O_EXCL) for nchunks chunks, all bits clear, header state
 * CREATING with snapshot id. */
extern int bitmap_create (struct bitmap_file *b, int dirfd, const char *name,
                          uint64_t nchunks, uint64_t id);
/* Read only the header of name: id and state (NONE for version 1).
 * Returns 0, or -1 with errno ENOENT (no file), EINVAL (short or blank: a
 * create that did not get to write it), EBADMSG (not a valid header), or
 * the read's (EIO...).  Reports nothing. */
extern int bitmap_peek (int dirfd, const char *name, uint64_t *id,
                        uint32_t *state);
/* Open an existing file and read its pages; its nchunks must match.
 * Errors (reported): bad header or checksum, wrong size (EINVAL), I/O. */
extern int bitmap_open (struct bitmap_file *b, int dirfd, const char *name,
                        uint64_t nchunks);
/* Empty arrays, no file (fd -1): what a snapshot whose bitmap cannot be
 * read is given, so that bit tests work and say "not copied". */
extern int bitmap_blank (struct bitmap_file *b, uint64_t nchunks);
extern void bitmap_close (struct bitmap_file *b);
/* fdatasync: every bit set so far and the header are durable. */
extern int bitmap_sync (struct bitmap_file *b);
/* Rewrite the header in place with this state (and b->id) and fdatasync.
 * Needs no free space. */
extern int bitmap_set_state (struct bitmap_file *b, uint32_t state);

static inline const uint64_t *
bitmap_page (const struct bitmap_array *a, uint64_t pg)
{
  return __atomic_load_n (&a->pages[pg], __ATOMIC_ACQUIRE);
}

/* Word w of the array (0 where no page is present). */
static inline uint64_t
bitmap_word (const struct bitmap_array *a, uint64_t w)
{
  const uint64_t *p = bitmap_page (a, w / BITMAP_PAGE_WORDS);

  return p ? __atomic_load_n (&p[w % BITMAP_PAGE_WORDS], __ATOMIC_ACQUIRE)
           : 0;
}

static inline bool
bitmap_test (const struct bitmap_array *a, uint64_t i)
{
  return (bitmap_word (a, i >> 6) >> (i & 63)) & 1;
}

/* Set bit i: write its word to the file (not synced), then in memory.
 * -1 with errno (ENOMEM, or the pwrite's: ENOSPC, EIO) on failure: the bit
 * is then not set in memory. */
extern int bitmap_set (struct bitmap_file *b, struct bitmap_array *a,
                       uint64_t i);
/* The same for every bit of mask in word w. */
extern int bitmap_or_word (struct bitmap_file *b, struct bitmap_array *a,
                           uint64_t w, uint64_t mask);
/* Set bits [first, first + n) in memory only; for a bitmap not yet
 * published (create), followed by bitmap_write_pages. */
extern int bitmap_set_range (struct bitmap_array *a, uint64_t first,
                             uint64_t n);
/* Write every page of the array that is not all zeros to the file. */
extern int bitmap_write_pages (struct bitmap_file *b, struct bitmap_array *a);
/* Number of bits set in bits & mask (mask may be NULL). */
extern uint64_t bitmap_count (const struct bitmap_array *bits,
                              const struct bitmap_array *mask);
/* Before b is published: make every private candidate page of b that
 * holds the same bits as prev's page at that index share prev's page.
 * Returns the number of pages shared.  Setting a bit in a shared page
 * fails with EPERM: candidate bits are set only before this. */
extern uint64_t bitmap_share (struct bitmap_file *b,
                              const struct bitmap_file *prev);
/* Bytes of the pages (neither zeros nor ones) held by the file's two
 * arrays; a page shared with other files counts in each. */
extern uint64_t bitmap_resident (const struct bitmap_file *b);

#endif /* NBDSNAP_BITMAP_H */
