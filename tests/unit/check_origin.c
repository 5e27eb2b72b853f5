/* nbdsnap: Check suite for the origin layer (src/origin.c).
 *
 * One TCase per behaviour: what open refuses (missing file, directory,
 * empty image, FIFO) and accepts; bytes round-trip; every request past the
 * end refused with EINVAL and nothing changed; a read-only origin refuses
 * changes with EROFS; zero (each method, and "fast" answering ENOTSUP
 * honestly) and trim read back as zeros; extents, including at the image's
 * end and a callback that stops the walk.  Every test works in its own
 * temporary directory (checked fixture) and reads the file back with plain
 * pread to check the bytes independently of the code under test.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>

#include "nbdsnap/err.h"
#include "nbdsnap/origin.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static char tmpdir[64];
static char path[128];
static struct nbdsnap_origin o = { .fd = -1 };
static char last_error[512];

static void
capture_error (const char *fmt, va_list args)
{
  vsnprintf (last_error, sizeof last_error, fmt, args);
}

static void
setup (void)
{
  snprintf (tmpdir, sizeof tmpdir, "%s/check_origin.XXXXXX",
            getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp");
  ck_assert_ptr_nonnull (mkdtemp (tmpdir));
  snprintf (path, sizeof path, "%s/disk.img", tmpdir);
  last_error[0] = '\0';
  nbdsnap_set_log_handlers (capture_error, NULL);
}

static void
teardown (void)
{
  char cmd[128];

  nbdsnap_origin_close (&o);
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq (system (cmd), 0);
}

/* A file of size bytes, each byte = fill (0 = sparse). */
static void
make_file (uint64_t size, int fill)
{
  int fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  char buf[64 * KiB];

  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (ftruncate (fd, size), 0);
  memset (buf, fill, sizeof buf);
  for (uint64_t off = 0; fill && off < size; off += sizeof buf) {
    size_t n = size - off < sizeof buf ? size - off : sizeof buf;
    ck_assert_int_eq (pwrite (fd, buf, n, off), (ssize_t)n);
  }
  close (fd);
}

static void
write_at (uint64_t offset, size_t len, int byte)
{
  int fd = open (path, O_WRONLY);
  char *buf = malloc (len);

  ck_assert_int_ge (fd, 0);
  memset (buf, byte, len);
  ck_assert_int_eq (pwrite (fd, buf, len, offset), (ssize_t)len);
  free (buf);
  close (fd);
}

/* Assert that [offset, offset+len) of the file holds only byte. */
static void
ck_file_bytes (uint64_t offset, size_t len, int byte)
{
  int fd = open (path, O_RDONLY);
  unsigned char *buf = malloc (len);

  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (pread (fd, buf, len, offset), (ssize_t)len);
  /* One assertion, not one per byte (slow under the sanitizers). */
  size_t i = 0;
  while (i < len && buf[i] == byte)
    i++;
  ck_assert_msg (i == len, "byte at %ju is 0x%02x, expected 0x%02x",
                 (uintmax_t)(offset + i), i < len ? buf[i] : 0, byte);
  free (buf);
  close (fd);
}

START_TEST (test_open_missing)
{
  ck_assert_int_eq (nbdsnap_origin_open (&o, "/nonexistent/disk.img", false),
                    -1);
  ck_assert_int_eq (errno, ENOENT);
  ck_assert_int_eq (o.fd, -1);
  ck_assert_ptr_nonnull (strstr (last_error, "/nonexistent/disk.img"));
}
END_TEST

START_TEST (test_open_directory)
{
  ck_assert_int_eq (nbdsnap_origin_open (&o, tmpdir, false), -1);
  ck_assert_int_eq (errno, EISDIR);
  ck_assert_ptr_nonnull (strstr (last_error, "is a directory"));
  ck_assert_int_eq (nbdsnap_origin_open (&o, tmpdir, true), -1);
  ck_assert_int_eq (errno, EISDIR);
}
END_TEST

START_TEST (test_open_empty)
{
  make_file (0, 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "empty"));
}
END_TEST

START_TEST (test_open_fifo)
{
  ck_assert_int_eq (mkfifo (path, 0600), 0);
  /* Must not block waiting for a writer. */
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, true), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "not a regular file"));
}
END_TEST

START_TEST (test_open_ok)
{
  struct stat st;

  make_file (MiB + 123, 0);
  ck_assert_int_eq (stat (path, &st), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);
  ck_assert_uint_eq (o.size, MiB + 123);
  ck_assert (!o.is_blockdev);
  ck_assert_uint_eq (o.block_size, 1);
  ck_assert (!o.readonly);
  ck_assert_uint_eq (o.dev, st.st_dev);
  ck_assert_uint_eq (o.ino, st.st_ino);
  ck_assert_str_eq (o.path, path);
  nbdsnap_origin_close (&o);
  ck_assert_int_eq (o.fd, -1);
  nbdsnap_origin_close (&o); /* twice is harmless */
}
END_TEST

START_TEST (test_read_write)
{
  char buf[10000], back[10000];

  make_file (MiB, 0x11);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);
  memset (buf, 0x5a, sizeof buf);
  ck_assert_int_eq (nbdsnap_origin_pwrite (&o, buf, sizeof buf, 4093, false),
                    0);
  ck_assert_int_eq (nbdsnap_origin_pwrite (&o, buf, 100, MiB - 100, true), 0);
  ck_assert_int_eq (nbdsnap_origin_flush (&o), 0);
  ck_file_bytes (0, 4093, 0x11);
  ck_file_bytes (4093, sizeof buf, 0x5a);
  ck_file_bytes (4093 + sizeof buf, 4096, 0x11);
  ck_file_bytes (MiB - 100, 100, 0x5a);
  ck_assert_int_eq (nbdsnap_origin_pread (&o, back, sizeof back, 4093), 0);
  ck_assert_int_eq (memcmp (buf, back, sizeof back), 0);
  ck_assert_int_eq (nbdsnap_origin_cache (&o, 64 * KiB, 0), 0);
}
END_TEST

static int
ignore_extent (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  return 0;
}

START_TEST (test_out_of_range)
{
  const uint64_t size = 64 * KiB;
  char buf[4096] = { 0 };

  make_file (size, 0x77);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);

#define ck_einval(call)                                                        \
  do {                                                                         \
    errno = 0;                                                                 \
    ck_assert_int_eq ((call), -1);                                             \
    ck_assert_int_eq (errno, EINVAL);                                          \
  } while (0)
  ck_einval (nbdsnap_origin_pread (&o, buf, 4096, size - 4095));
  ck_einval (nbdsnap_origin_pread (&o, buf, 1, size));
  ck_einval (nbdsnap_origin_pwrite (&o, buf, 4096, size - 1, false));
  ck_einval (nbdsnap_origin_pwrite (&o, buf, 4096, UINT64_MAX - 100, false));
  ck_einval (nbdsnap_origin_zero (&o, 8192, size - 4096, true, false, false));
  ck_einval (nbdsnap_origin_trim (&o, 8192, size - 4096, false));
  ck_einval (nbdsnap_origin_cache (&o, 2, size - 1));
  ck_einval (nbdsnap_origin_extents (&o, size, 1, ignore_extent, NULL));
  ck_assert_ptr_nonnull (strstr (last_error, "past the end"));
#undef ck_einval

  /* Nothing was half-done. */
  ck_file_bytes (0, size, 0x77);
  ck_assert_int_eq (nbdsnap_origin_pread (&o, buf, 4096, size - 4096), 0);
  ck_assert_int_eq (nbdsnap_origin_pread (&o, buf, 0, size), 0);
}
END_TEST

START_TEST (test_readonly)
{
  char buf[512] = { 0 };

  make_file (64 * KiB, 0x33);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, true), 0);
  ck_assert (o.readonly);
  errno = 0;
  ck_assert_int_eq (nbdsnap_origin_pwrite (&o, buf, 512, 0, false), -1);
  ck_assert_int_eq (errno, EROFS);
  errno = 0;
  ck_assert_int_eq (nbdsnap_origin_zero (&o, 512, 0, true, false, false), -1);
  ck_assert_int_eq (errno, EROFS);
  errno = 0;
  ck_assert_int_eq (nbdsnap_origin_trim (&o, 512, 0, false), -1);
  ck_assert_int_eq (errno, EROFS);
  ck_file_bytes (0, 64 * KiB, 0x33);
  ck_assert_int_eq (nbdsnap_origin_pread (&o, buf, 512, 0), 0);
  ck_assert_int_eq (buf[0], 0x33);
}
END_TEST

START_TEST (test_zero)
{
  make_file (MiB, 0xaa);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);

  /* Unaligned, without holes, then with holes allowed. */
  ck_assert_int_eq (nbdsnap_origin_zero (&o, 10000, 1000, false, false, false),
                    0);
  ck_file_bytes (0, 1000, 0xaa);
  ck_file_bytes (1000, 10000, 0);
  ck_file_bytes (11000, 1000, 0xaa);
  ck_assert_int_eq (
      nbdsnap_origin_zero (&o, 128 * KiB, 256 * KiB, true, true, false), 0);
  ck_file_bytes (256 * KiB - 1, 1, 0xaa);
  ck_file_bytes (256 * KiB, 128 * KiB, 0);
  ck_file_bytes (384 * KiB, 1, 0xaa);
}
END_TEST

START_TEST (test_zero_fast)
{
  int r;

  make_file (MiB, 0xaa);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);
  /* Either done fast, or refused with ENOTSUP and nothing changed. */
  errno = 0;
  r = nbdsnap_origin_zero (&o, 64 * KiB, 64 * KiB, false, false, true);
  if (r == 0)
    ck_file_bytes (64 * KiB, 64 * KiB, 0);
  else {
    ck_assert_int_eq (errno, ENOTSUP);
    ck_assert (!o.can_zero_range);
    ck_file_bytes (64 * KiB, 64 * KiB, 0xaa);
  }
  ck_file_bytes (0, 64 * KiB, 0xaa);
  ck_file_bytes (128 * KiB, 64 * KiB, 0xaa);
}
END_TEST

/* As on a filesystem that can neither punch holes nor zero ranges. */
START_TEST (test_zero_fallback)
{
  make_file (MiB, 0xaa);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);
  o.can_punch_hole = o.can_zero_range = false;

  errno = 0;
  ck_assert_int_eq (nbdsnap_origin_zero (&o, 200 * KiB, 100, true, false, true),
                    -1);
  ck_assert_int_eq (errno, ENOTSUP);
  ck_file_bytes (0, MiB, 0xaa);

  ck_assert_int_eq (nbdsnap_origin_zero (&o, 200 * KiB, 100, true, true, false),
                    0);
  ck_file_bytes (0, 100, 0xaa);
  ck_file_bytes (100, 200 * KiB, 0);
  ck_file_bytes (100 + 200 * KiB, 100, 0xaa);

  /* Trim is advisory: without hole punching it changes nothing. */
  ck_assert_int_eq (nbdsnap_origin_trim (&o, 64 * KiB, 512 * KiB, false), 0);
  ck_file_bytes (512 * KiB, 64 * KiB, 0xaa);
}
END_TEST

START_TEST (test_trim)
{
  make_file (MiB, 0xaa);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);
  ck_assert_int_eq (nbdsnap_origin_trim (&o, 128 * KiB, 128 * KiB, true), 0);
  if (!o.can_punch_hole)
    return; /* the filesystem cannot: advisory no-op */
  ck_file_bytes (128 * KiB - 1, 1, 0xaa);
  ck_file_bytes (128 * KiB, 128 * KiB, 0);
  ck_file_bytes (256 * KiB, 1, 0xaa);
}
END_TEST

/* Extents collected by the walk. */
#define MAX_EXT 16
static struct ext {
  uint64_t offset, length;
  bool hole;
} ext[MAX_EXT];
static int next_ext, stop_after;

static int
collect (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  ck_assert_int_lt (next_ext, MAX_EXT);
  ext[next_ext++] = (struct ext){ offset, length, hole };
  if (stop_after && next_ext == stop_after)
    return 1;
  return 0;
}

static void
walk (uint64_t offset, uint64_t count)
{
  uint64_t pos = offset;

  next_ext = 0;
  ck_assert_int_eq (nbdsnap_origin_extents (&o, offset, count, collect, NULL),
                    0);
  for (int i = 0; i < next_ext; i++) { /* contiguous, in order */
    ck_assert_uint_eq (ext[i].offset, pos);
    ck_assert_uint_gt (ext[i].length, 0);
    pos += ext[i].length;
  }
  if (!stop_after)
    ck_assert_uint_eq (pos, offset + count);
}

/* The extent that covers offset. */
static bool
hole_at (uint64_t offset)
{
  for (int i = 0; i < next_ext; i++)
    if (offset >= ext[i].offset && offset < ext[i].offset + ext[i].length)
      return ext[i].hole;
  ck_abort_msg ("no extent covers %ju", (uintmax_t)offset);
  return false;
}

START_TEST (test_extents)
{
  /* data [0,64K), hole, data [512K,576K), hole up to 1M, then 123 bytes
   * of data at the (unaligned) end. */
  const uint64_t size = MiB + 123;

  make_file (size, 0);
  write_at (0, 64 * KiB, 1);
  write_at (512 * KiB, 64 * KiB, 2);
  write_at (MiB, 123, 3);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, true), 0);

  walk (0, size);
  ck_assert (!hole_at (0));
  ck_assert (!hole_at (64 * KiB - 1));
  ck_assert (hole_at (64 * KiB));
  ck_assert (hole_at (300 * KiB));
  ck_assert (!hole_at (512 * KiB));
  ck_assert (hole_at (576 * KiB));
  ck_assert (hole_at (MiB - 1));
  ck_assert (!hole_at (size - 1));

  /* At the end: exactly up to the size, never past it. */
  walk (size - 100, 100);
  ck_assert_int_eq (next_ext, 1);
  ck_assert (!ext[0].hole);
  ck_assert_uint_eq (ext[0].length, 100);
  walk (MiB - 4096, 4096 + 123);
  ck_assert (hole_at (MiB - 4096));
  ck_assert (!hole_at (MiB));

  /* Inside one hole. */
  walk (100 * KiB, 8 * KiB);
  ck_assert_int_eq (next_ext, 1);
  ck_assert (ext[0].hole);
  ck_assert_uint_eq (ext[0].length, 8 * KiB);
}
END_TEST

START_TEST (test_extents_hole_at_end)
{
  const uint64_t size = 256 * KiB;

  make_file (size, 0);
  write_at (0, 4096, 9);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);
  walk (0, size);
  ck_assert_int_eq (next_ext, 2);
  ck_assert (!ext[0].hole);
  ck_assert (ext[1].hole);
  ck_assert_uint_eq (ext[1].offset + ext[1].length, size);
  walk (size - 1, 1);
  ck_assert_int_eq (next_ext, 1);
  ck_assert (ext[0].hole);
  ck_assert_uint_eq (ext[0].length, 1);
}
END_TEST

static int
fail_extent (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  return -1;
}

START_TEST (test_extents_stop)
{
  make_file (MiB, 0);
  write_at (0, 4096, 1);
  write_at (512 * KiB, 4096, 1);
  ck_assert_int_eq (nbdsnap_origin_open (&o, path, false), 0);

  stop_after = 1;
  walk (0, MiB);
  stop_after = 0;
  ck_assert_int_eq (next_ext, 1);
  ck_assert (!ext[0].hole);
  ck_assert_int_eq (nbdsnap_origin_extents (&o, 0, MiB, fail_extent, NULL), -1);
}
END_TEST

static Suite *
origin_suite (void)
{
  Suite *s = suite_create ("origin");
  const struct {
    const char *name;
    const TTest *test;
  } t[] = {
    { "open_missing", test_open_missing },
    { "open_directory", test_open_directory },
    { "open_empty", test_open_empty },
    { "open_fifo", test_open_fifo },
    { "open_ok", test_open_ok },
    { "read_write", test_read_write },
    { "out_of_range", test_out_of_range },
    { "readonly", test_readonly },
    { "zero", test_zero },
    { "zero_fast", test_zero_fast },
    { "zero_fallback", test_zero_fallback },
    { "trim", test_trim },
    { "extents", test_extents },
    { "extents_hole_at_end", test_extents_hole_at_end },
    { "extents_stop", test_extents_stop },
  };

  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    TCase *tc = tcase_create (t[i].name);

    tcase_add_checked_fixture (tc, setup, teardown);
    tcase_add_test (tc, t[i].test);
    suite_add_tcase (s, tc);
  }
  return s;
}

int
main (void)
{
  SRunner *sr = srunner_create (origin_suite ());
  int failed;

  srunner_run_all (sr, CK_ENV);
  failed = srunner_ntests_failed (sr);
  srunner_free (sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
