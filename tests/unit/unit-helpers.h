/* nbdsnap: small helpers shared by the engine's Check suites
 * (check_bitmap, check_gcommit, check_statedir, check_engine, check_model,
 * check_stress, check_crash, check_faults).  Header only: every function
 * is static.
 *
 * - a temporary directory per test, removed at teardown, inside one
 *   directory per run under $TMPDIR, removed by main () at the end (a
 *   failed test skips its teardown);
 * - an error handler that keeps the last engine message (so tests can
 *   assert what a message says) and echoes it to stderr;
 * - a deterministic byte pattern (pattern_fill) so that expected bytes can
 *   be recomputed from a seed instead of stored;
 * - image creation (sparse or filled) and whole-file helpers.
 */
#ifndef NBDSNAP_UNIT_HELPERS_H
#define NBDSNAP_UNIT_HELPERS_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <check.h>

#include "nbdsnap/checksum.h"
#include "nbdsnap/engine.h"
#include "nbdsnap/err.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static char tmpdir[256];
static char last_error[1024];
static int quiet_errors;        /* don't echo engine errors to stderr */

static inline void
capture_error (const char *fmt, va_list args)
{
  vsnprintf (last_error, sizeof last_error, fmt, args);
  if (!quiet_errors)
    fprintf (stderr, "nbdsnap: error: %s\n", last_error);
}

/* The whole run's directory, made by main () before the tests fork and
 * removed after they ran: a failed assertion ends a forked test with
 * _exit (), skipping its teardown, and its directory goes with this. */
static char basedir[128];

static inline void
helpers_tmpdir_make (const char *tag)
{
  const char *t = getenv ("TMPDIR");

  snprintf (tmpdir, sizeof tmpdir, "%s/%s.XXXXXX",
            basedir[0] ? basedir : t && *t ? t : "/tmp", tag);
  ck_assert_ptr_nonnull (mkdtemp (tmpdir));
  last_error[0] = '\0';
  nbdsnap_set_log_handlers (capture_error, NULL);
}

static inline int
rm_one (const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
  return remove (p);
}

static inline void
helpers_tmpdir_remove (void)
{
  if (tmpdir[0])
    nftw (tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  tmpdir[0] = '\0';
}

/* In main (): around srunner_run_all. */
static inline void
helpers_run_begin (const char *tag)
{
  const char *t = getenv ("TMPDIR");

  snprintf (basedir, sizeof basedir, "%s/%s.XXXXXX", t && *t ? t : "/tmp",
            tag);
  if (mkdtemp (basedir) == NULL) {
    perror (basedir);
    exit (EXIT_FAILURE);
  }
}

static inline void
helpers_run_end (void)
{
  nftw (basedir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The whole main () of a suite: run it in a fresh base directory, remove
 * that, exit status for automake. */
static inline int
helpers_run_suite (Suite *suite, const char *tag)
{
  SRunner *sr = srunner_create (suite);
  int failed;

  helpers_run_begin (tag);
  srunner_run_all (sr, CK_ENV);
  failed = srunner_ntests_failed (sr);
  srunner_free (sr);
  helpers_run_end ();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* The TCases of a suite, each with the same fixture and timeout;
 * loops > 1 runs the test with _i from 0 to loops - 1. */
struct helpers_tcase {
  const char *name;
  const TTest *t;
  int loops;
};

static inline void
helpers_add_tcases (Suite *s, const struct helpers_tcase *tcs, size_t n,
                    void (*setup) (void), void (*teardown) (void),
                    int timeout)
{
  size_t i;

  for (i = 0; i < n; ++i) {
    TCase *tc = tcase_create (tcs[i].name);
    tcase_add_checked_fixture (tc, setup, teardown);
    tcase_set_timeout (tc, timeout);
    tcase_add_loop_test (tc, tcs[i].t, 0, tcs[i].loops);
    suite_add_tcase (s, tc);
  }
}

/* The bitmap file's header as src/bitmap.c writes it (struct
 * bitmap_header there), for suites that read it or plant damage by hand;
 * checksum is helpers_fnv1a of the bytes before it. */
struct disk_bitmap_header {
  char magic[8];
  uint32_t version, zero;
  uint64_t nchunks, id;
  uint32_t state, zero2;
  uint64_t checksum;
};

/* FNV-1a 64, the checksum of bitmap headers and meta files. */
static inline uint64_t
helpers_fnv1a (const void *v, size_t n)
{
  return checksum_fnv1a64 (v, n);
}

/* tmpdir/name into buf. */
static inline const char *
tpath (char *buf, size_t n, const char *name)
{
  snprintf (buf, n, "%s/%s", tmpdir, name);
  return buf;
}

/* A random run's seed: $NBDSNAP_SEED if set (a replay), else one made
 * from the clock and the pid; printed as "TAG: seed N" either way. */
static inline uint64_t
helpers_seed (const char *tag)
{
  const char *s = getenv ("NBDSNAP_SEED");
  uint64_t seed;

  if (s && *s)
    seed = strtoull (s, NULL, 0);
  else {
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    seed = ((uint64_t) ts.tv_nsec << 16) ^ ts.tv_sec ^ getpid ();
  }
  printf ("%s: seed %" PRIu64 "\n", tag, seed);
  fflush (stdout);
  return seed;
}

/* Deterministic pseudo-random bytes: splitmix64 of (seed, position). */
static inline uint64_t
splitmix64 (uint64_t *x)
{
  uint64_t z = (*x += UINT64_C (0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Bytes of "pattern seed" for image offsets [off, off+len): byte at image
 * offset o depends only on (seed, o), so a sub-range can be recomputed. */
static inline void
pattern_fill (void *vbuf, size_t len, uint64_t seed, uint64_t off)
{
  unsigned char *buf = vbuf;
  size_t i = 0;

  while (i < len) {
    uint64_t word_off = (off + i) & ~UINT64_C (7);
    uint64_t x = seed * UINT64_C (0x100000001b3) ^ word_off;
    uint64_t v = splitmix64 (&x);
    unsigned k = (off + i) & 7;
    for (; k < 8 && i < len; ++k, ++i)
      buf[i] = (unsigned char) (v >> (8 * k)) | 1;  /* never zero */
  }
}

/* Create path with size bytes: sparse if seed == 0, else pattern seed. */
static inline void
make_image (const char *path, uint64_t size, uint64_t seed)
{
  int fd = open (path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  static char buf[256 * 1024];

  ck_assert_msg (fd >= 0, "create %s: %s", path, strerror (errno));
  ck_assert_int_eq (ftruncate (fd, size), 0);
  for (uint64_t off = 0; seed && off < size; off += sizeof buf) {
    size_t n = size - off < sizeof buf ? size - off : sizeof buf;
    pattern_fill (buf, n, seed, off);
    ck_assert_int_eq (pwrite (fd, buf, n, off), (ssize_t) n);
  }
  close (fd);
}

/* Whole file into a malloc'd buffer of size bytes (zeros past EOF). */
static inline unsigned char *
slurp (const char *path, uint64_t size)
{
  unsigned char *buf = calloc (1, size ? size : 1);
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  ssize_t n;

  ck_assert_ptr_nonnull (buf);
  ck_assert_msg (fd >= 0, "open %s: %s", path, strerror (errno));
  n = pread (fd, buf, size, 0);
  ck_assert_int_ge (n, 0);
  close (fd);
  return buf;
}

static inline int
file_exists (const char *path)
{
  struct stat st;
  return stat (path, &st) == 0;
}

static inline double
now_s (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Index of the first differing byte, or -1. */
static inline ssize_t
first_diff (const void *a, const void *b, size_t n)
{
  const unsigned char *x = a, *y = b;
  size_t i;

  if (memcmp (a, b, n) == 0)
    return -1;
  for (i = 0; i < n; ++i)
    if (x[i] != y[i])
      return (ssize_t) i;
  return -1;
}

/* Every page of nbdsnap_snap_changes from a to b (NULL: now), pages of 2
 * extents so that paging is exercised everywhere; 0 or -1. */
static inline int
helpers_changes (struct nbdsnap_engine *e, struct nbdsnap_snap *a,
                 struct nbdsnap_snap *b, nbdsnap_extent_fn fn, void *opaque)
{
  uint64_t off = 0, size = nbdsnap_engine_size (e);

  while (off < size)
    if (nbdsnap_snap_changes (e, a, b, &off, 2, fn, opaque) == -1)
      return -1;
  return 0;
}

#endif /* NBDSNAP_UNIT_HELPERS_H */
