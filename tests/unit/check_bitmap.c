/* nbdsnap: Check suite for the mmap'd bitmap files (src/bitmap.c).
 *
 * One TCase per behaviour: create (header bytes, size, sparse, O_EXCL),
 * open/reopen keeps bits, what open refuses (wrong chunk count, bad magic
 * or version, truncated, missing), single bits at word edges, set_range
 * against a naive reference for every (first, n) around word edges,
 * count with and without a mask, and sync making bits visible in the file.
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

START_TEST (test_create)
{
  struct bitmap_file b;
  char p[512], hdr[24];
  struct stat st;
  int fd;
  const uint64_t n = 100000;    /* 1563 words: 3 pages per array */

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n), 0);
  ck_assert_uint_eq (b.nchunks, n);
  ck_assert_uint_eq (b.nwords, expected_array_bytes (n) / 8);
  ck_assert_ptr_nonnull (b.map);
  ck_assert_ptr_eq ((char *) b.candidate, (char *) b.map + HDR);
  ck_assert_ptr_eq ((char *) b.copied,
                    (char *) b.map + HDR + expected_array_bytes (n));
  ck_assert_uint_eq (bitmap_count (b.candidate, NULL, b.nwords), 0);
  ck_assert_uint_eq (bitmap_count (b.copied, NULL, b.nwords), 0);

  ck_assert_int_eq (stat (tpath (p, sizeof p, "b"), &st), 0);
  ck_assert_uint_eq (st.st_size, HDR + 2 * expected_array_bytes (n));
  ck_assert_uint_eq (st.st_mode & 0777, 0600);
  /* Sparse: only the header page is allocated. */
  ck_assert_int_le (st.st_blocks * 512, 2 * 4096);

  fd = open (p, O_RDONLY);
  ck_assert_int_eq (pread (fd, hdr, sizeof hdr, 0), (ssize_t) sizeof hdr);
  close (fd);
  ck_assert_int_eq (memcmp (hdr, "NBDSNAPB", 8), 0);
  ck_assert_uint_eq (*(uint32_t *) (hdr + 8), 1);
  ck_assert_uint_eq (*(uint32_t *) (hdr + 12), 0);
  ck_assert_uint_eq (*(uint64_t *) (hdr + 16), n);
  bitmap_close (&b);
  ck_assert_int_eq (b.fd, -1);
  ck_assert_ptr_null (b.map);
  bitmap_close (&b);            /* idempotent */

  /* O_EXCL: never clobbers an existing bitmap. */
  errno = 0;
  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n), -1);
  ck_assert_int_eq (errno, EEXIST);
  ck_assert_ptr_nonnull (strstr (last_error, "b"));
  ck_assert (file_exists (p)); /* the existing file is not removed */

  /* Bad directory. */
  errno = 0;
  ck_assert_int_eq (bitmap_create (&b, -1, "c", n), -1);
  ck_assert_int_eq (errno, EBADF);
}
END_TEST

START_TEST (test_reopen)
{
  struct bitmap_file b;
  const uint64_t n = 4097;
  uint64_t i;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n), 0);
  bitmap_set (b.candidate, 0);
  bitmap_set (b.candidate, 4096);
  bitmap_set (b.copied, 77);
  bitmap_set_range (b.copied, 1000, 300);
  bitmap_close (&b);

  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", n), 0);
  ck_assert_uint_eq (b.nchunks, n);
  for (i = 0; i < n; ++i) {
    ck_assert_int_eq (bitmap_test (b.candidate, i), i == 0 || i == 4096);
    ck_assert_int_eq (bitmap_test (b.copied, i),
                      i == 77 || (i >= 1000 && i < 1300));
  }
  ck_assert_uint_eq (bitmap_count (b.candidate, NULL, b.nwords), 2);
  ck_assert_uint_eq (bitmap_count (b.copied, NULL, b.nwords), 301);
  /* And again, after changing it through the second mapping. */
  bitmap_set (b.candidate, 4095);
  bitmap_close (&b);
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", n), 0);
  ck_assert_uint_eq (bitmap_count (b.candidate, NULL, b.nwords), 3);
  ck_assert (bitmap_test (b.candidate, 4095));
  bitmap_close (&b);
}
END_TEST

START_TEST (test_open_refuses)
{
  struct bitmap_file b;
  char p[512];
  int fd;
  uint32_t v;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", 1000), 0);
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

  /* Bad version. */
  fd = open (tpath (p, sizeof p, "b"), O_RDWR);
  v = 2;
  ck_assert_int_eq (pwrite (fd, &v, 4, 8), 4);
  errno = 0;
  ck_assert_int_eq (bitmap_open (&b, dirfd_, "b", 1000), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "bad header"));
  v = 1;
  ck_assert_int_eq (pwrite (fd, &v, 4, 8), 4);
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

START_TEST (test_bits_word_edges)
{
  struct bitmap_file b;
  const uint64_t n = 64 * 5 + 7;       /* partial last word */
  const uint64_t edges[] = { 0, 1, 62, 63, 64, 65, 127, 128, 191, 255, 256,
                             319, 320, n - 1 };
  size_t k;
  uint64_t i;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n), 0);
  for (k = 0; k < sizeof edges / sizeof edges[0]; ++k) {
    uint64_t e = edges[k];
    ck_assert (!bitmap_test (b.copied, e));
    bitmap_set (b.copied, e);
    ck_assert (bitmap_test (b.copied, e));
    bitmap_set (b.copied, e);       /* idempotent */
    /* Every other bit is as expected: the ones set so far only. */
    for (i = 0; i < n; ++i) {
      size_t j;
      bool want = false;
      for (j = 0; j <= k; ++j)
        want |= edges[j] == i;
      ck_assert_msg (bitmap_test (b.copied, i) == want,
                     "after setting %" PRIu64 ": bit %" PRIu64 " is %d",
                     e, i, !want);
    }
    ck_assert_uint_eq (bitmap_count (b.copied, NULL, b.nwords), k + 1);
    /* The other array is untouched. */
    ck_assert_uint_eq (bitmap_count (b.candidate, NULL, b.nwords), 0);
  }
  /* The words hold the bits where the format says. */
  ck_assert_uint_eq (b.copied[0], UINT64_C (0xc000000000000003));
  ck_assert_uint_eq (b.copied[1], UINT64_C (0x8000000000000003));
  bitmap_close (&b);
}
END_TEST

START_TEST (test_set_range)
{
  struct bitmap_file b;
  const uint64_t n = 64 * 8;
  const uint64_t firsts[] = { 0, 1, 31, 63, 64, 65, 127, 128, 200 };
  const uint64_t lens[] = { 0, 1, 2, 62, 63, 64, 65, 127, 128, 129, 190,
                            256 };
  size_t fi, li;
  uint64_t i;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n), 0);
  for (fi = 0; fi < sizeof firsts / sizeof firsts[0]; ++fi)
    for (li = 0; li < sizeof lens / sizeof lens[0]; ++li) {
      uint64_t first = firsts[fi], len = lens[li];
      memset (b.candidate, 0, b.nwords * 8);
      /* A neighbour bit set before must survive. */
      bitmap_set (b.candidate, n - 1);
      bitmap_set_range (b.candidate, first, len);
      for (i = 0; i < n; ++i) {
        bool want = (i >= first && i < first + len) || i == n - 1;
        ck_assert_msg (bitmap_test (b.candidate, i) == want,
                       "set_range(%" PRIu64 ", %" PRIu64 "): bit %" PRIu64
                       " is %d", first, len, i, !want);
      }
      ck_assert_uint_eq (bitmap_count (b.candidate, NULL, b.nwords),
                         len + (first + len <= n - 1));
    }
  bitmap_close (&b);
}
END_TEST

START_TEST (test_count_mask)
{
  struct bitmap_file b;
  const uint64_t n = 1000;
  uint64_t i, want = 0;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n), 0);
  for (i = 0; i < n; ++i) {
    if (i % 3 == 0)
      bitmap_set (b.candidate, i);
    if (i % 5 == 0)
      bitmap_set (b.copied, i);
    want += i % 15 == 0;
  }
  ck_assert_uint_eq (bitmap_count (b.candidate, NULL, b.nwords), 334);
  ck_assert_uint_eq (bitmap_count (b.copied, NULL, b.nwords), 200);
  ck_assert_uint_eq (bitmap_count (b.copied, b.candidate, b.nwords), want);
  ck_assert_uint_eq (bitmap_count (b.copied, b.candidate, 0), 0);
  ck_assert_uint_eq (bitmap_count (b.copied, b.candidate, 1),
                     4 + 1);   /* 0, 15, 30, 45, 60 */
  bitmap_close (&b);
}
END_TEST

START_TEST (test_sync)
{
  struct bitmap_file b;
  char p[512];
  uint64_t word;
  int fd;
  const uint64_t n = 100000;

  ck_assert_int_eq (bitmap_create (&b, dirfd_, "b", n), 0);
  bitmap_set (b.copied, 64 * 1000 + 5);
  ck_assert_int_eq (bitmap_sync (&b), 0);
  fd = open (tpath (p, sizeof p, "b"), O_RDONLY);
  ck_assert_int_eq (pread (fd, &word, 8,
                           HDR + expected_array_bytes (n) + 1000 * 8), 8);
  close (fd);
  ck_assert_uint_eq (word, UINT64_C (1) << 5);
  /* Syncing again with nothing dirty is fine. */
  ck_assert_int_eq (bitmap_sync (&b), 0);
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
