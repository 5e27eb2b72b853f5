/* nbdsnap: crash test of the long jobs: kill -9 in the middle of a
 * delete's chunk move and of a rollback.
 *
 * Every round builds the same kind of chain from its own seed: a 16 MiB
 * image with data and holes, snapshot a, 6 MiB overwritten (copied into
 * a), snapshot b, 10 MiB overwritten across and beyond that (copied into
 * b; a reads 8 MiB of it through b), then closes the engine.  A child
 * opens it and runs one job, "move" (delete b: its chunks move into a) or
 * "rollback" (roll the origin back to a), in batches of 16 chunks so that
 * there is a lot of in between to be killed in; the parent SIGKILLs it
 * after a random delay within the job's measured duration, reopens the
 * engine (which finishes what was interrupted) and checks:
 *
 *   move      a exact; b either gone (with every file) or, if the kill
 *             came before its header said deleting, still there and
 *             exact; the origin as it was
 *   rollback  a and b exact; the origin exactly a's bytes, or exactly as
 *             it was if the kill came before the rollback record was
 *             written; no rollback record left
 *
 * ROUNDS rounds of each, alternating durability=process and power.  The
 * seed is printed; replay with NBDSNAP_SEED=N.
 */
#include <config.h>

#include <signal.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

#define CHUNK 4096u
#define SIZE (16 * MiB)
#define ROUNDS 30

static char img[512], sdpath[512];
static uint64_t seed;
static unsigned char *bytes_a, *bytes_b, *bytes_end;
static long killed_mid, killed_before, killed_after;

static void
setup (void)
{
  helpers_tmpdir_make ("check_jobs_crash");
  quiet_errors = 1;
  tpath (img, sizeof img, "disk.img");
  tpath (sdpath, sizeof sdpath, "state");
  seed = helpers_seed ("check_jobs_crash");
}

static void
teardown (void)
{
  free (bytes_a);
  free (bytes_b);
  free (bytes_end);
  bytes_a = bytes_b = bytes_end = NULL;
  helpers_tmpdir_remove ();
}

static struct nbdsnap_engine *
open_engine (struct nbdsnap_origin *o, enum nbdsnap_durability dur)
{
  struct nbdsnap_engine_config cfg = { 0 };

  if (nbdsnap_origin_open (o, img, false) == -1)
    return NULL;
  cfg.origin = o;
  cfg.statedir = sdpath;
  cfg.chunk_size = CHUNK;
  cfg.durability = dur;
  return nbdsnap_engine_open (&cfg);
}

static void
close_engine (struct nbdsnap_engine *e, struct nbdsnap_origin *o)
{
  nbdsnap_engine_close (e);
  nbdsnap_origin_close (o);
}

/* Write [off, off+len) with pattern pseed, in 1 MiB requests, some of
 * them zeroes. */
static void
overwrite (struct nbdsnap_engine *e, uint64_t off, uint64_t len,
           uint64_t pseed)
{
  static unsigned char buf[MiB];
  uint64_t end = off + len, n;

  for (; off < end; off += n) {
    n = end - off < MiB ? end - off : MiB;
    if ((off / MiB + pseed) % 5 == 0)
      ck_assert_int_eq (nbdsnap_engine_zero (e, n, off, true, false, false),
                        0);
    else {
      pattern_fill (buf, n, pseed, off);
      ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, n, off, false), 0);
    }
  }
}

/* A fresh image and state directory holding a and b (see the top). */
static void
build_chain (uint64_t rseed, enum nbdsnap_durability dur)
{
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e;
  char cmd[1100];

  snprintf (cmd, sizeof cmd, "rm -rf '%s' '%s'", img, sdpath);
  ck_assert_int_eq (system (cmd), 0);
  make_image (img, SIZE, 0);
  e = open_engine (&o, dur);
  ck_assert_ptr_nonnull (e);
  overwrite (e, 0, 3 * MiB, rseed);             /* data, then holes */
  overwrite (e, 12 * MiB + 5000, 2 * MiB, rseed + 1);
  free (bytes_a);
  bytes_a = slurp (img, SIZE);
  ck_assert_ptr_nonnull (nbdsnap_snap_create (e, "a", false));
  overwrite (e, 1 * MiB, 6 * MiB, rseed + 2);
  free (bytes_b);
  bytes_b = slurp (img, SIZE);
  ck_assert_ptr_nonnull (nbdsnap_snap_create (e, "b", false));
  overwrite (e, 4 * MiB + 100, 10 * MiB, rseed + 3);
  free (bytes_end);
  bytes_end = slurp (img, SIZE);
  close_engine (e, &o);
}

/* The child: run the job, exit 0 when it is done. */
static void __attribute__ ((noreturn))
child (bool rollback, enum nbdsnap_durability dur)
{
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e = open_engine (&o, dur);
  struct nbdsnap_snap *s;

  if (e == NULL)
    _exit (3);
  nbdsnap_engine_test_move_hook (e, 16, NULL, NULL);
  s = nbdsnap_snap_lookup (e, rollback ? "a" : "b");
  if (s == NULL)
    _exit (4);
  if (rollback ? nbdsnap_rollback (e, s, NULL)
               : nbdsnap_snap_delete (e, s))
    _exit (5);
  _exit (0);
}

static void
check_snap (struct nbdsnap_engine *e, const char *name,
            const unsigned char *want, const char *why)
{
  static unsigned char buf[SIZE];
  struct nbdsnap_snap *s = nbdsnap_snap_lookup (e, name);
  ssize_t d;

  ck_assert_msg (s != NULL, "%s: snapshot %s is gone", why, name);
  ck_assert_msg (nbdsnap_snap_pread (e, s, buf, SIZE, 0) == 0,
                 "%s: read %s: %s", why, name, last_error);
  d = first_diff (buf, want, SIZE);
  ck_assert_msg (d == -1, "%s: snapshot %s differs at byte %zd", why, name,
                 d);
}

/* How long the job takes uninterrupted, in microseconds. */
static useconds_t
calibrate (bool rollback, enum nbdsnap_durability dur)
{
  double t0;
  int status;
  pid_t pid;

  build_chain (seed, dur);
  t0 = now_s ();
  pid = fork ();
  ck_assert_int_ge (pid, 0);
  if (pid == 0)
    child (rollback, dur);
  ck_assert_int_eq (waitpid (pid, &status, 0), pid);
  ck_assert_msg (WIFEXITED (status) && WEXITSTATUS (status) == 0,
                 "the %s job failed (status 0x%x)",
                 rollback ? "rollback" : "move", status);
  return (now_s () - t0) * 1e6;
}

static void
run (bool rollback)
{
  uint64_t rng = seed ^ (rollback ? 0x5a5a : 0);
  useconds_t took[2];
  int round, d;

  for (d = 0; d < 2; ++d)
    took[d] = calibrate (rollback, d ? NBDSNAP_DURABILITY_POWER
                                     : NBDSNAP_DURABILITY_PROCESS);
  for (round = 0; round < ROUNDS; ++round) {
    enum nbdsnap_durability dur = round % 2 ? NBDSNAP_DURABILITY_POWER
                                            : NBDSNAP_DURABILITY_PROCESS;
    uint64_t rseed = splitmix64 (&rng);
    /* The child opens the engine first (a few ms): the delay covers
     * that, the job, and a little after. */
    useconds_t delay = splitmix64 (&rng) % (took[round % 2] * 6 / 5 + 1);
    struct nbdsnap_origin o;
    struct nbdsnap_engine *e;
    static unsigned char buf[SIZE];
    char why[96];
    int status;
    pid_t pid;
    bool same_as_end, same_as_a;

    snprintf (why, sizeof why, "seed %" PRIu64 " %s round %d", seed,
              rollback ? "rollback" : "move", round);
    build_chain (rseed, dur);
    fflush (stdout);
    fflush (stderr);
    pid = fork ();
    ck_assert_int_ge (pid, 0);
    if (pid == 0)
      child (rollback, dur);
    usleep (delay);
    kill (pid, SIGKILL);
    ck_assert_int_eq (waitpid (pid, &status, 0), pid);
    if (WIFEXITED (status)) {
      ck_assert_msg (WEXITSTATUS (status) == 0, "%s: the job failed "
                     "(exit %d)", why, WEXITSTATUS (status));
      killed_after++;
    }

    e = open_engine (&o, dur);
    ck_assert_msg (e != NULL, "%s: reopen failed: %s", why, last_error);
    check_snap (e, "a", bytes_a, why);
    ck_assert_int_eq (pread (o.fd, buf, SIZE, 0), (ssize_t) SIZE);
    same_as_end = memcmp (buf, bytes_end, SIZE) == 0;
    same_as_a = memcmp (buf, bytes_a, SIZE) == 0;
    if (rollback) {
      char rec[600];
      check_snap (e, "b", bytes_b, why);
      ck_assert_msg (same_as_a || same_as_end, "%s: the origin is neither "
                     "a's bytes nor what it held before the rollback", why);
      snprintf (rec, sizeof rec, "%s/rollback", sdpath);
      ck_assert_msg (!file_exists (rec), "%s: the rollback record is left",
                     why);
      if (WIFSIGNALED (status))
        same_as_a ? killed_mid++ : killed_before++;
    }
    else {
      struct nbdsnap_snap_info *l;
      ssize_t n = nbdsnap_snap_list (e, &l);
      ck_assert_msg (same_as_end, "%s: the origin changed", why);
      ck_assert_int_ge (n, 1);
      if (n == 2) {
        ck_assert_msg (WIFSIGNALED (status), "%s: b outlived its delete",
                       why);
        check_snap (e, "b", bytes_b, why);
        killed_before++;
      }
      else {
        char f[600];
        ck_assert_int_eq (n, 1);
        snprintf (f, sizeof f, "%s/snap-000002.bitmap", sdpath);
        ck_assert_msg (!file_exists (f), "%s: b's bitmap is left", why);
        snprintf (f, sizeof f, "%s/snap-000002.store", sdpath);
        ck_assert_msg (!file_exists (f), "%s: b's store is left", why);
        if (WIFSIGNALED (status))
          killed_mid++;
      }
      free (l);
    }
    close_engine (e, &o);
  }
  printf ("check_jobs_crash: %s: %d rounds (job %.0f/%.0f ms uninterrupted, "
          "process/power): killed before it began %ld, during or after "
          "%ld, finished first %ld\n", rollback ? "rollback" : "move",
          ROUNDS, took[0] / 1e3, took[1] / 1e3, killed_before, killed_mid,
          killed_after);
  fflush (stdout);
  killed_before = killed_mid = killed_after = 0;
}

START_TEST (test_kill_mid_move)
{
  run (false);
}
END_TEST

START_TEST (test_kill_mid_rollback)
{
  run (true);
}
END_TEST

static Suite *
jobs_crash_suite (void)
{
  Suite *s = suite_create ("jobs_crash");
  TCase *tc = tcase_create ("kill9");

  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 300);
  tcase_add_test (tc, test_kill_mid_move);
  tcase_add_test (tc, test_kill_mid_rollback);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  return helpers_run_suite (jobs_crash_suite (), "check_jobs_crash");
}
