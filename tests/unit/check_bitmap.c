/* nbdsnap: Check suite for the bitmap files (src/bitmap.c).
 *
 * One TCase per behaviour: create (header bytes, size, sparse, O_EXCL),
 * open/reopen keeps bits, what open refuses (wrong chunk count, bad magic,
 * version or checksum, truncated, extended, missing), a version 1 file,
 * peek (blank, bad, state), the state rewritten in place, single bits at word edges, set_range against a naive
 * reference for every (first, n) around word edges and across pages,
 * count with and without a mask, every bit in the file as soon as
 * bitmap_set returns (what kill -9 needs), memory that follows the pages
 * used, the blank bitmap, and candidate pages shared between files.
 */
#include <config.h>

#include "unit-helpers.h"

#include "bitmap.h"

#define HDR 4096

static int dirfd_ = -1;

static void
setup (void)
{
  helpers_tmpdir_make ("check_bitmap");
  dirfd_ = open (tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ck_assert_int_ge (dirfd_, 0);
}

static void
teardown (void)
{
  close (dirfd_);
  helpers_tmpdir_remove ();
}

static uint64_t
expected_array_bytes (uint64_t nchunks)
{
  uint64_t b = (nchunks + 63) / 64 * 8;
  return (b + 4095) / 4096 * 4096;
}


static void
read_hdr (const char *name, struct disk_bitmap_header *h)
{
  char p[512];
  int fd = open (tpath (p, sizeof p, name), O_RDONLY);

  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (pread (fd, h, sizeof *h, 0), (ssize_t) sizeof *h);
  close (fd);
}

static uint64_t
file_word (const char *name, uint64_t off)
{
  char p[512];
  uint64_t w;
  int fd = open (tpath (p, sizeof p, name), O_RDONLY);

  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (pread (fd, &w, 8, off), 8);
  close (fd);
  return w;
}

START_TEST (test_create)
{
  struct bitmap_file b;
  char p[512];
  struct disk_bitmap_header h;
  struct stat st;
  const uint64_t n = 100000;    /* 1563 words: 1 page per array */

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 42), 0);
  ck_assert_uint_eq (b.nchunks, n);
  ck_assert_uint_eq (b.nwords, expected_array_bytes (n) / 8);
  ck_assert_uint_eq (b.candidate.npages, expected_array_bytes (n) / 4096);
  ck_assert_uint_eq (b.candidate.file_off, HDR);
  ck_assert_uint_eq (b.copied.file_off, HDR + expected_array_bytes (n));
  ck_assert_uint_eq (b.state, BITMAP_STATE_CREATING);
  ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 0);
  ck_assert_uint_eq (bitmap_count (&b.copied, NULL), 0);
  ck_assert_uint_eq (bitmap_resident (&b), 0);

  ck_assert_int_eq (stat (tpath (p, sizeof p, "b"), &st), 0);
  ck_assert_uint_eq (st.st_size, HDR + 2 * expected_array_bytes (n));
  ck_assert_uint_eq (st.st_mode & 0777, 0600);
  /* Sparse: only the header page is allocated. */
  ck_assert_int_le (st.st_blocks * 512, 2 * 4096);

  read_hdr ("b", &h);
  ck_assert_int_eq (memcmp (h.magic, "NBDSNAPB", 8), 0);
  ck_assert_uint_eq (h.version, 2);
  ck_assert_uint_eq (h.nchunks, n);
  ck_assert_uint_eq (h.id, 42);
  ck_assert_uint_eq (h.state, BITMAP_STATE_CREATING);
  ck_assert_uint_eq (h.checksum, helpers_fnv1a (&h, offsetof (struct disk_bitmap_header, checksum)));
  bitmap_close (&b);
  ck_assert_int_eq (b.fd, -1);
  bitmap_close (&b);            /* idempotent */

  /* O_EXCL: never clobbers an existing bitmap. */
  errno = 0;
  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 1), -1);
  ck_assert_int_eq (errno, EEXIST);
  ck_assert_ptr_nonnull (strstr (last_error, "b"));
  ck_assert (file_exists (p)); /* the existing file is not removed */

  /* Bad directory. */
  errno = 0;
  ck_assert_int_eq (bitmap_create (&b, -1, "c", n, 1), -1);
  ck_assert_int_eq (errno, EBADF);
}
END_TEST

START_TEST (test_reopen)
{
  struct bitmap_file b;
  const uint64_t n = 70000;     /* 3 pages per array */
  uint64_t i;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 7), 0);
  ck_assert_int_eq (bitmap_set (&b, &b.candidate, 0), 0);
  ck_assert_int_eq (bitmap_set (&b, &b.candidate, 40000), 0);
  ck_assert_int_eq (bitmap_set (&b, &b.copied, 77), 0);
  ck_assert_int_eq (bitmap_set_range (&b.copied, 1000, 300), 0);
  ck_assert_int_eq (bitmap_write_pages (&b, &b.copied), 0);
  bitmap_close (&b);

  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", n), 0);
  ck_assert_uint_eq (b.nchunks, n);
  ck_assert_uint_eq (b.id, 7);
  ck_assert_uint_eq (b.state, BITMAP_STATE_CREATING);
  for (i = 0; i < n; ++i) {
    ck_assert_int_eq (bitmap_test (&b.candidate, i), i == 0 || i == 40000);
    ck_assert_int_eq (bitmap_test (&b.copied, i),
                      i == 77 || (i >= 1000 && i < 1300));
  }
  ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 2);
  ck_assert_uint_eq (bitmap_count (&b.copied, NULL), 301);
  /* Only the pages with bits are in memory: 2 of candidate, 1 of
   * copied. */
  ck_assert_uint_eq (bitmap_resident (&b), 3 * 4096);
  /* And again, after changing it through the reopened file. */
  ck_assert_int_eq (bitmap_set (&b, &b.candidate, 4095), 0);
  bitmap_close (&b);
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", n), 0);
  ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 3);
  ck_assert (bitmap_test (&b.candidate, 4095));
  bitmap_close (&b);
}
END_TEST

START_TEST (test_open_refuses)
{
  struct bitmap_file b;
  struct disk_bitmap_header h;
  char p[512];
  int fd;
  uint32_t v;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", 1000, 3), 0);
  bitmap_close (&b);

  /* Another chunk count: the image was resized. */
  last_error[0] = '\0';
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1001), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "1000"));
  ck_assert_ptr_nonnull (strstr (last_error, "1001"));
  ck_assert_int_eq (b.fd, -1);

  /* Missing. */
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "nope", 1000), -1);
  ck_assert_int_eq (errno, ENOENT);

  fd = open (tpath (p, sizeof p, "b"), O_RDWR);
  read_hdr ("b", &h);
  /* Bad version. */
  v = 3;
  ck_assert_int_eq (pwrite (fd, &v, 4, 8), 4);
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "bad header"));
  /* A flipped bit anywhere in the header: the checksum. */
  ck_assert_int_eq (pwrite (fd, &h, sizeof h, 0), (ssize_t) sizeof h);
  h.id ^= 4;
  ck_assert_int_eq (pwrite (fd, &h, sizeof h, 0), (ssize_t) sizeof h);
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "checksum"));
  h.id ^= 4;
  ck_assert_int_eq (pwrite (fd, &h, sizeof h, 0), (ssize_t) sizeof h);
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), 0);
  bitmap_close (&b);

  /* Bad magic. */
  ck_assert_int_eq (pwrite (fd, "XBDSNAPB", 8, 0), 8);
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "bad header"));
  ck_assert_int_eq (pwrite (fd, "NBDSNAPB", 8, 0), 8);

  /* Truncated: header intact, arrays cut short. */
  ck_assert_int_eq (ftruncate (fd, HDR + 4096), 0);
  errno = 0;
  last_error[0] = '\0';
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "truncated"));
  /* Extended. */
  ck_assert_int_eq (ftruncate (fd, HDR + 3 * 4096), 0);
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);

  /* Shorter than the header. */
  ck_assert_int_eq (ftruncate (fd, 10), 0);
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);
  /* Empty. */
  ck_assert_int_eq (ftruncate (fd, 0), 0);
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);
  close (fd);
}
END_TEST

/* A version 1 file (the format before id, state and checksum) opens,
 * with state NONE; its first state change writes a version 2 header. */
START_TEST (test_version1)
{
  struct bitmap_file b;
  struct disk_bitmap_header h = { .magic = "NBDSNAPB", .version = 1, .nchunks = 1000 };
  char p[512];
  uint64_t word = UINT64_C (1) << 9, id;
  uint32_t state;
  int fd;

  fd = open (tpath (p, sizeof p, "v1"), O_RDWR | O_CREAT, 0600);
  ck_assert_int_eq (ftruncate (fd, HDR + 2 * 4096), 0);
  ck_assert_int_eq (pwrite (fd, &h, 24, 0), 24);
  ck_assert_int_eq (pwrite (fd, &word, 8, HDR + 4096), 8);
  close (fd);
  ck_assert_int_eq (bitmap_peek (dirfd_, "v1", &id, &state), 0);
  ck_assert_uint_eq (state, BITMAP_STATE_NONE);
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "v1", 1000), 0);
  ck_assert_uint_eq (b.version, 1);
  ck_assert_uint_eq (b.state, BITMAP_STATE_NONE);
  ck_assert (bitmap_test (&b.copied, 9));
  b.id = 5;
  ck_assert_int_eq (bitmap_set_state (&b, BITMAP_STATE_LIVE), 0);
  bitmap_close (&b);
  read_hdr ("v1", &h);
  ck_assert_uint_eq (h.version, 2);
  ck_assert_uint_eq (h.id, 5);
  ck_assert_uint_eq (h.state, BITMAP_STATE_LIVE);
}
END_TEST

START_TEST (test_peek)
{
  struct bitmap_file b;
  char p[512];
  uint64_t id;
  uint32_t state;
  int fd;

  errno = 0;
  ck_assert_int_eq (bitmap_peek (dirfd_, "none", &id, &state), -1);
  ck_assert_int_eq (errno, ENOENT);

  /* Created, not yet written: blank or short (an unfinished create). */
  fd = open (tpath (p, sizeof p, "blank"), O_RDWR | O_CREAT, 0600);
  errno = 0;
  ck_assert_int_eq (bitmap_peek (dirfd_, "blank", &id, &state), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_int_eq (ftruncate (fd, 8192), 0);
  errno = 0;
  ck_assert_int_eq (bitmap_peek (dirfd_, "blank", &id, &state), -1);
  ck_assert_int_eq (errno, EINVAL);
  /* Garbage is not blank. */
  ck_assert_int_eq (pwrite (fd, "garbage", 7, 0), 7);
  errno = 0;
  ck_assert_int_eq (bitmap_peek (dirfd_, "blank", &id, &state), -1);
  ck_assert_int_eq (errno, EBADMSG);
  close (fd);

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", 100, 9), 0);
  ck_assert_int_eq (bitmap_peek (dirfd_, "b", &id, &state), 0);
  ck_assert_uint_eq (id, 9);
  ck_assert_uint_eq (state, BITMAP_STATE_CREATING);
  ck_assert_int_eq (bitmap_set_state (&b, BITMAP_STATE_INVALID), 0);
  ck_assert_int_eq (bitmap_peek (dirfd_, "b", &id, &state), 0);
  ck_assert_uint_eq (state, BITMAP_STATE_INVALID);
  bitmap_close (&b);
}
END_TEST

/* The state is rewritten in place: the same inode keeps the same blocks
 * (so it needs no free space; test-fault-enospc-* show it on a full file
 * system). */
START_TEST (test_state_in_place)
{
  struct bitmap_file b;
  char p[512];
  struct stat st1, st2;
  uint64_t id;
  uint32_t state;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", 5000, 1), 0);
  ck_assert_int_eq (bitmap_sync (&b), 0);
  ck_assert_int_eq (stat (tpath (p, sizeof p, "b"), &st1), 0);
  ck_assert_int_eq (bitmap_set_state (&b, BITMAP_STATE_LIVE), 0);
  ck_assert_int_eq (bitmap_set_state (&b, BITMAP_STATE_INVALID), 0);
  ck_assert_int_eq (bitmap_set_state (&b, BITMAP_STATE_DELETING), 0);
  ck_assert_int_eq (stat (p, &st2), 0);
  ck_assert_uint_eq (st1.st_ino, st2.st_ino);
  ck_assert_uint_eq (st1.st_blocks, st2.st_blocks);
  ck_assert_uint_eq (b.state, BITMAP_STATE_DELETING);
  ck_assert_int_eq (bitmap_peek (dirfd_, "b", &id, &state), 0);
  ck_assert_uint_eq (state, BITMAP_STATE_DELETING);
  bitmap_close (&b);
}
END_TEST

START_TEST (test_bits_word_edges)
{
  struct bitmap_file b;
  const uint64_t n = 64 * 5 + 7;       /* partial last word */
  const uint64_t edges[] = { 0, 1, 62, 63, 64, 65, 127, 128, 191, 255, 256,
                             319, 320, n - 1 };
  size_t k;
  uint64_t i;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 1), 0);
  for (k = 0; k < sizeof edges / sizeof edges[0]; ++k) {
    uint64_t e = edges[k];
    ck_assert (!bitmap_test (&b.copied, e));
    ck_assert_int_eq (bitmap_set (&b, &b.copied, e), 0);
    ck_assert (bitmap_test (&b.copied, e));
    ck_assert_int_eq (bitmap_set (&b, &b.copied, e), 0);   /* idempotent */
    /* Every other bit is as expected: the ones set so far only. */
    for (i = 0; i < n; ++i) {
      size_t j;
      bool want = false;
      for (j = 0; j <= k; ++j)
        want |= edges[j] == i;
      ck_assert_msg (bitmap_test (&b.copied, i) == want,
                     "after setting %" PRIu64 ": bit %" PRIu64 " is %d",
                     e, i, !want);
    }
    ck_assert_uint_eq (bitmap_count (&b.copied, NULL), k + 1);
    /* The other array is untouched. */
    ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 0);
  }
  /* The words hold the bits where the format says, in memory and in the
   * file, without a sync. */
  ck_assert_uint_eq (bitmap_word (&b.copied, 0),
                     UINT64_C (0xc000000000000003));
  ck_assert_uint_eq (bitmap_word (&b.copied, 1),
                     UINT64_C (0x8000000000000003));
  ck_assert_uint_eq (file_word ("b", HDR + 4096),
                     UINT64_C (0xc000000000000003));
  ck_assert_uint_eq (file_word ("b", HDR + 4096 + 8),
                     UINT64_C (0x8000000000000003));
  bitmap_close (&b);
}
END_TEST

START_TEST (test_set_range)
{
  struct bitmap_file b;
  const uint64_t n = 3 * 32768 + 100;  /* 4 pages, the last partial */
  const uint64_t firsts[] = { 0, 1, 63, 64, 65, 32767, 32768, 32769, 40000 };
  const uint64_t lens[] = { 0, 1, 2, 63, 64, 65, 129, 32767, 32768, 32769,
                            65536 + 5 };
  size_t fi, li;
  uint64_t i;

  for (fi = 0; fi < sizeof firsts / sizeof firsts[0]; ++fi)
    for (li = 0; li < sizeof lens / sizeof lens[0]; ++li) {
      uint64_t first = firsts[fi], len = lens[li];
      bool ones_page = false;

      ck_assert_int_eq (bitmap_blank (&b, n), 0);
      /* A neighbour bit set before must survive. */
      ck_assert_int_eq (bitmap_set_range (&b.candidate, n - 1, 1), 0);
      ck_assert_int_eq (bitmap_set_range (&b.candidate, first, len), 0);
      for (i = 0; i < n; ++i) {
        bool want = (i >= first && i < first + len) || i == n - 1;
        if (bitmap_test (&b.candidate, i) != want)
          ck_abort_msg ("set_range(%" PRIu64 ", %" PRIu64 "): bit %" PRIu64
                        " is %d", first, len, i, !want);
      }
      ck_assert_uint_eq (bitmap_count (&b.candidate, NULL),
                         len + (first + len <= n - 1));
      /* Whole pages are the shared page of ones, not private copies. */
      for (i = 0; i < b.candidate.npages; ++i)
        ones_page |= bitmap_page (&b.candidate, i) == bitmap_ones;
      ck_assert_int_eq (ones_page,
                        (first + 32767) / 32768 * 32768 + 32768
                        <= first + len);
      bitmap_close (&b);
    }
}
END_TEST

START_TEST (test_count_mask)
{
  struct bitmap_file b;
  const uint64_t n = 1000;
  uint64_t i, want = 0;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 1), 0);
  for (i = 0; i < n; ++i) {
    if (i % 3 == 0)
      ck_assert_int_eq (bitmap_set (&b, &b.candidate, i), 0);
    if (i % 5 == 0)
      ck_assert_int_eq (bitmap_set (&b, &b.copied, i), 0);
    want += i % 15 == 0;
  }
  ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 334);
  ck_assert_uint_eq (bitmap_count (&b.copied, NULL), 200);
  ck_assert_uint_eq (bitmap_count (&b.copied, &b.candidate), want);
  bitmap_close (&b);
}
END_TEST

/* Open reads only the pages the file has data in and keeps only the ones
 * that are neither all zeros nor all ones: a 16-page array with one page
 * of ones, one page of zeros written out, and one page with one bit holds
 * one private page. */
START_TEST (test_resident)
{
  struct bitmap_file b;
  const uint64_t n = 16 * 32768;
  static const uint64_t zeros[512];
  char p[512];
  int fd;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 1), 0);
  ck_assert_int_eq (bitmap_set_range (&b.candidate, 3 * 32768, 32768), 0);
  ck_assert_int_eq (bitmap_write_pages (&b, &b.candidate), 0);
  ck_assert_int_eq (bitmap_set (&b, &b.copied, 9 * 32768 + 5), 0);
  ck_assert_uint_eq (bitmap_resident (&b), 4096);
  bitmap_close (&b);
  fd = open (tpath (p, sizeof p, "b"), O_RDWR);
  ck_assert_int_eq (pwrite (fd, zeros, 4096, HDR + 7 * 4096), 4096);
  close (fd);

  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", n), 0);
  ck_assert_ptr_eq (bitmap_page (&b.candidate, 3), bitmap_ones);
  ck_assert_ptr_null (bitmap_page (&b.candidate, 7));
  ck_assert_ptr_nonnull (bitmap_page (&b.copied, 9));
  ck_assert_uint_eq (bitmap_resident (&b), 4096);
  ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 32768);
  ck_assert_uint_eq (bitmap_count (&b.copied, &b.candidate), 0);
  ck_assert (bitmap_test (&b.copied, 9 * 32768 + 5));
  /* Setting a bit in a page of ones changes nothing. */
  ck_assert_int_eq (bitmap_set (&b, &b.candidate, 3 * 32768 + 1), 0);
  ck_assert_ptr_eq (bitmap_page (&b.candidate, 3), bitmap_ones);
  bitmap_close (&b);
}
END_TEST

START_TEST (test_sync)
{
  struct bitmap_file b;
  const uint64_t n = 100000;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 1), 0);
  ck_assert_int_eq (bitmap_set (&b, &b.copied, 64 * 1000 + 5), 0);
  ck_assert_int_eq (bitmap_sync (&b), 0);
  ck_assert_uint_eq (file_word ("b", HDR + expected_array_bytes (n)
                                + 1000 * 8), UINT64_C (1) << 5);
  /* or_word sets several bits at once. */
  ck_assert_int_eq (bitmap_or_word (&b, &b.copied, 1000, 0xf0), 0);
  ck_assert_uint_eq (file_word ("b", HDR + expected_array_bytes (n)
                                + 1000 * 8), 0xf0 | (UINT64_C (1) << 5));
  /* Syncing again with nothing new is fine. */
  ck_assert_int_eq (bitmap_sync (&b), 0);
  bitmap_close (&b);
}
END_TEST

/* A failed write leaves the bit clear in memory too: nobody may believe
 * it is on disk. */
START_TEST (test_set_fails)
{
  struct bitmap_file b;
  int fd;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", 1000, 1), 0);
  /* Make the descriptor read-only under it. */
  fd = openat (dirfd_, "b", O_RDONLY);
  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (dup2 (fd, b.fd), b.fd);
  close (fd);
  errno = 0;
  ck_assert_int_eq (bitmap_set (&b, &b.copied, 3), -1);
  ck_assert_int_eq (errno, EBADF);
  ck_assert (!bitmap_test (&b.copied, 3));
  ck_assert_int_eq (bitmap_set_state (&b, BITMAP_STATE_INVALID), -1);
  ck_assert_uint_eq (b.state, BITMAP_STATE_CREATING);
  bitmap_close (&b);
}
END_TEST

START_TEST (test_blank)
{
  struct bitmap_file b;

  ck_assert_int_eq (bitmap_blank (&b, 70000), 0);
  ck_assert_int_eq (b.fd, -1);
  ck_assert (!bitmap_test (&b.copied, 69999));
  ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 0);
  errno = 0;
  ck_assert_int_eq (bitmap_set (&b, &b.copied, 1), -1);
  ck_assert_int_eq (errno, EBADF);
  bitmap_close (&b);
}
END_TEST

/* Candidate pages equal to the previous snapshot's are shared, reference
 * counted: closing either file leaves the other's bits; a shared page
 * cannot be written. */
START_TEST (test_share)
{
  struct bitmap_file a, b;
  const uint64_t n = 4 * 32768;

  ck_assert_int_eq (bitmap_create (&a, dirfd_, "a", n, 1), 0);
  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n, 2), 0);
  /* Page 0 the same, page 1 different, page 2 only in b, page 3 ones. */
  ck_assert_int_eq (bitmap_set_range (&a.candidate, 5, 10), 0);
  ck_assert_int_eq (bitmap_set_range (&b.candidate, 5, 10), 0);
  ck_assert_int_eq (bitmap_set_range (&a.candidate, 32768 + 1, 1), 0);
  ck_assert_int_eq (bitmap_set_range (&b.candidate, 32768 + 2, 1), 0);
  ck_assert_int_eq (bitmap_set_range (&b.candidate, 2 * 32768 + 9, 1), 0);
  ck_assert_int_eq (bitmap_set_range (&a.candidate, 3 * 32768, 32768), 0);
  ck_assert_int_eq (bitmap_set_range (&b.candidate, 3 * 32768, 32768), 0);
  ck_assert_uint_eq (bitmap_share (&b, &a), 1);
  ck_assert_ptr_eq (bitmap_page (&b.candidate, 0),
                    bitmap_page (&a.candidate, 0));
  ck_assert_ptr_ne (bitmap_page (&b.candidate, 1),
                    bitmap_page (&a.candidate, 1));
  ck_assert_uint_eq (bitmap_share (&b, &a), 0);        /* idempotent */
  errno = 0;
  ck_assert_int_eq (bitmap_set (&a, &a.candidate, 100), -1);
  ck_assert_int_eq (errno, EPERM);
  ck_assert (!bitmap_test (&b.candidate, 100));
  /* Copied pages are never shared. */
  ck_assert_int_eq (bitmap_set (&a, &a.copied, 3), 0);
  ck_assert_int_eq (bitmap_set (&b, &b.copied, 3), 0);
  ck_assert_uint_eq (bitmap_share (&b, &a), 0);
  bitmap_close (&a);
  ck_assert_uint_eq (bitmap_count (&b.candidate, NULL), 10 + 1 + 1 + 32768);
  ck_assert (bitmap_test (&b.candidate, 14));
  ck_assert (!bitmap_test (&b.candidate, 15));
  bitmap_close (&b);
}
END_TEST

static Suite *
bitmap_suite (void)
{
  Suite *s = suite_create ("bitmap");
  struct { const char *name; const TTest *t; } tcs[] = {
    { "create", test_create },
    { "reopen", test_reopen },
    { "open_refuses", test_open_refuses },
    { "bits_word_edges", test_bits_word_edges },
    { "set_range", test_set_range },
    { "count_mask", test_count_mask },
    { "sync", test_sync },
    { "version1", test_version1 },
    { "peek", test_peek },
    { "state_in_place", test_state_in_place },
    { "resident", test_resident },
    { "set_fails", test_set_fails },
    { "blank", test_blank },
    { "share", test_share },
  };
  size_t i;

  for (i = 0; i < sizeof tcs / sizeof tcs[0]; ++i) {
    TCase *tc = tcase_create (tcs[i].name);
    tcase_add_checked_fixture (tc, setup, teardown);
    tcase_add_test (tc, tcs[i].t);
    suite_add_tcase (s, tc);
  }
  return s;
}

int
main (void)
{
  return helpers_run_suite (bitmap_suite (), "check_bitmap");
}
