/* nbdsnap: Check suite for group commit (src/gcommit.c).
 *
 * One TCase per behaviour:
 *   single       one caller runs one sync per call; statistics count them.
 *   shared       N threads calling at once share syncs (fewer syncs than
 *                callers), syncs never overlap, and every caller returns
 *                only after a sync that *started after* its write ended.
 *   failure      a failing sync fails its caller with the sync's errno, a
 *                later call succeeds.
 *   failure_waiters  callers queued behind a failing sync fail with it;
 *                callers covered by an earlier successful sync do not.
 *   stale_waiter a caller whose own sync succeeded is not failed because a
 *                later sync (covering other callers) failed before it woke.
 * Events are ordered with one global atomic clock: a caller's "write" is
 * a tick taken before gcommit_sync, a sync's start and end are ticks taken
 * inside the sync function.
 */
#include <config.h>

#include <pthread.h>
#include <semaphore.h>

#include "unit-helpers.h"

#include "gcommit.h"

static uint64_t clock_;         /* atomic */

static uint64_t
tick (void)
{
  return __atomic_add_fetch (&clock_, 1, __ATOMIC_SEQ_CST);
}

#define MAX_SYNCS 100000

struct sync_log {
  pthread_mutex_t lock;
  size_t n;
  uint64_t start[MAX_SYNCS], end[MAX_SYNCS];
  int result[MAX_SYNCS];
  int running;                  /* atomic: overlapping syncs detector */
  int overlap;
  useconds_t delay;
  int fail_every;               /* fail sync number k if k % fail_every == 0
                                   (1-based); 0 = never */
};

static struct sync_log *logp;

static int
logged_sync (void *opaque)
{
  struct sync_log *l = opaque;
  uint64_t s, e;
  size_t k;
  int r = 0;

  if (__atomic_add_fetch (&l->running, 1, __ATOMIC_SEQ_CST) != 1)
    l->overlap = 1;
  s = tick ();
  if (l->delay)
    usleep (l->delay);
  e = tick ();
  __atomic_sub_fetch (&l->running, 1, __ATOMIC_SEQ_CST);
  pthread_mutex_lock (&l->lock);
  k = l->n++;
  ck_assert_uint_lt (k, MAX_SYNCS);
  l->start[k] = s;
  l->end[k] = e;
  if (l->fail_every && (k + 1) % l->fail_every == 0)
    r = -1;
  l->result[k] = r;
  pthread_mutex_unlock (&l->lock);
  if (r == -1)
    errno = EIO;
  else
    errno = 12345;              /* must not leak into a success */
  return r;
}

static void
setup (void)
{
  logp = calloc (1, sizeof *logp);
  ck_assert_ptr_nonnull (logp);
  pthread_mutex_init (&logp->lock, NULL);
  clock_ = 0;
}

static void
teardown (void)
{
  free (logp);
}

START_TEST (test_single)
{
  struct gcommit g;
  int i;

  gcommit_init (&g);
  for (i = 0; i < 5; ++i) {
    uint64_t w = tick ();
    ck_assert_int_eq (gcommit_sync (&g, logged_sync, logp), 0);
    ck_assert_uint_eq (logp->n, (size_t) i + 1);
    ck_assert_uint_gt (logp->start[i], w);
  }
  ck_assert_uint_eq (g.syncs, 5);
  ck_assert_uint_eq (g.started, 5);
  ck_assert_uint_eq (g.done, 5);
  ck_assert (!g.running);
  gcommit_destroy (&g);
}
END_TEST

/* Threads for "shared": each does rounds of write + sync. */
#define NTHREADS 16
#define ROUNDS 50

struct caller {
  struct gcommit *g;
  pthread_barrier_t *barrier;
  uint64_t w[ROUNDS], r[ROUNDS];
  int ret[ROUNDS], err[ROUNDS];
};

static void *
caller_thread (void *arg)
{
  struct caller *c = arg;
  int i;

  for (i = 0; i < ROUNDS; ++i) {
    pthread_barrier_wait (c->barrier);
    c->w[i] = tick ();
    errno = 0;
    c->ret[i] = gcommit_sync (c->g, logged_sync, logp);
    c->err[i] = errno;
    c->r[i] = tick ();
  }
  return NULL;
}

/* Is there a sync that started after w, ended before r, with result
 * want (0 or -1; 1 = any)? */
static bool
covered (uint64_t w, uint64_t r, int want)
{
  size_t k;

  for (k = 0; k < logp->n; ++k)
    if (logp->start[k] > w && logp->end[k] < r
        && (want == 1 || logp->result[k] == want))
      return true;
  return false;
}

static void
run_callers (struct caller *c, struct gcommit *g)
{
  pthread_t th[NTHREADS];
  pthread_barrier_t barrier;
  int t;

  pthread_barrier_init (&barrier, NULL, NTHREADS);
  for (t = 0; t < NTHREADS; ++t) {
    c[t].g = g;
    c[t].barrier = &barrier;
    ck_assert_int_eq (pthread_create (&th[t], NULL, caller_thread, &c[t]),
                      0);
  }
  for (t = 0; t < NTHREADS; ++t)
    pthread_join (th[t], NULL);
  pthread_barrier_destroy (&barrier);
}

START_TEST (test_shared)
{
  static struct caller c[NTHREADS];
  struct gcommit g;
  int t, i;

  gcommit_init (&g);
  logp->delay = 2000;           /* a 2 ms "fdatasync" */
  run_callers (c, &g);

  printf ("gcommit shared: %d callers, %zu syncs\n", NTHREADS * ROUNDS,
          logp->n);
  ck_assert_msg (!logp->overlap, "two syncs ran at the same time");
  ck_assert_uint_eq (g.syncs, logp->n);
  ck_assert_msg (logp->n < (size_t) NTHREADS * ROUNDS,
                 "%zu syncs for %d callers: nothing was shared", logp->n,
                 NTHREADS * ROUNDS);
  /* About two syncs per round of N simultaneous callers, not N. */
  ck_assert_msg (logp->n <= (size_t) ROUNDS * NTHREADS / 2,
                 "%zu syncs for %d rounds of %d callers", logp->n, ROUNDS,
                 NTHREADS);
  for (t = 0; t < NTHREADS; ++t)
    for (i = 0; i < ROUNDS; ++i) {
      ck_assert_int_eq (c[t].ret[i], 0);
      ck_assert_msg (covered (c[t].w[i], c[t].r[i], 0),
                     "thread %d round %d: wrote at %" PRIu64 ", returned at %"
                     PRIu64 " without a sync started after its write",
                     t, i, c[t].w[i], c[t].r[i]);
    }
  gcommit_destroy (&g);
}
END_TEST

START_TEST (test_shared_failures)
{
  static struct caller c[NTHREADS];
  struct gcommit g;
  int t, i, fails = 0;

  gcommit_init (&g);
  logp->delay = 500;
  logp->fail_every = 3;
  run_callers (c, &g);
  ck_assert (!logp->overlap);
  for (t = 0; t < NTHREADS; ++t)
    for (i = 0; i < ROUNDS; ++i) {
      if (c[t].ret[i] == -1) {
        fails++;
        ck_assert_int_eq (c[t].err[i], EIO);
        ck_assert_msg (covered (c[t].w[i], c[t].r[i], -1),
                       "thread %d round %d failed without a failed sync "
                       "after its write", t, i);
      }
      else {
        ck_assert_int_eq (c[t].ret[i], 0);
        ck_assert_msg (covered (c[t].w[i], c[t].r[i], 0),
                       "thread %d round %d succeeded without a successful "
                       "sync after its write", t, i);
      }
    }
  ck_assert_int_gt (fails, 0);
  gcommit_destroy (&g);
}
END_TEST

START_TEST (test_failure)
{
  struct gcommit g;

  gcommit_init (&g);
  logp->fail_every = 1;
  errno = 0;
  ck_assert_int_eq (gcommit_sync (&g, logged_sync, logp), -1);
  ck_assert_int_eq (errno, EIO);
  ck_assert_int_eq (gcommit_sync (&g, logged_sync, logp), -1);
  ck_assert_int_eq (errno, EIO);
  logp->fail_every = 0;
  /* The failure is not sticky: a later sync succeeds. */
  ck_assert_int_eq (gcommit_sync (&g, logged_sync, logp), 0);
  ck_assert_int_eq (gcommit_sync (&g, logged_sync, logp), 0);
  ck_assert_uint_eq (logp->n, 4);
  ck_assert_uint_eq (g.syncs, 4);
  gcommit_destroy (&g);
}
END_TEST

/* A sync function that blocks until released, then returns a preset
 * result. */
struct gate {
  sem_t entered, release;
  int result[8];
  int n;                        /* syncs entered */
};

static int
gated_sync (void *opaque)
{
  struct gate *gt = opaque;
  int k = gt->n++;

  sem_post (&gt->entered);
  sem_wait (&gt->release);
  if (gt->result[k] == -1) {
    errno = ENOSPC;
    return -1;
  }
  return 0;
}

struct gcaller {
  struct gcommit *g;
  struct gate *gt;
  int ret, err;
  int started, finished;        /* atomic */
};

static void *
gcaller_thread (void *arg)
{
  struct gcaller *c = arg;

  __atomic_store_n (&c->started, 1, __ATOMIC_SEQ_CST);
  errno = 0;
  c->ret = gcommit_sync (c->g, gated_sync, c->gt);
  c->err = errno;
  __atomic_store_n (&c->finished, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

/* Wait until the waiters are inside gcommit_sync, blocked on the condvar:
 * there is no way to observe that, so give them time. */
static void
settle (void)
{
  usleep (100 * 1000);
}

START_TEST (test_failure_waiters)
{
  struct gcommit g;
  struct gate gt = { .result = { 0, -1, 0 } };
  struct gcaller a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
  pthread_t ta, tb, tc, td;

  sem_init (&gt.entered, 0, 0);
  sem_init (&gt.release, 0, 0);
  gcommit_init (&g);
  a.g = b.g = c.g = d.g = &g;
  a.gt = b.gt = c.gt = d.gt = &gt;

  /* A leads sync 1 (will succeed) and blocks in it. */
  pthread_create (&ta, NULL, gcaller_thread, &a);
  sem_wait (&gt.entered);
  /* B and C write while sync 1 runs: sync 1 does not cover them. */
  pthread_create (&tb, NULL, gcaller_thread, &b);
  pthread_create (&tc, NULL, gcaller_thread, &c);
  settle ();
  ck_assert (!b.finished && !c.finished);
  sem_post (&gt.release);       /* sync 1 succeeds */
  pthread_join (ta, NULL);
  ck_assert_int_eq (a.ret, 0);
  /* One of B, C leads sync 2, which fails; the other waits for it. */
  sem_wait (&gt.entered);
  settle ();
  ck_assert (!b.finished && !c.finished);
  sem_post (&gt.release);
  pthread_join (tb, NULL);
  pthread_join (tc, NULL);
  ck_assert_int_eq (gt.n, 2);   /* B and C shared sync 2 */
  ck_assert_int_eq (b.ret, -1);
  ck_assert_int_eq (b.err, ENOSPC);
  ck_assert_int_eq (c.ret, -1);
  ck_assert_int_eq (c.err, ENOSPC);
  /* D comes later: sync 3 succeeds. */
  pthread_create (&td, NULL, gcaller_thread, &d);
  sem_wait (&gt.entered);
  sem_post (&gt.release);
  pthread_join (td, NULL);
  ck_assert_int_eq (d.ret, 0);
  ck_assert_int_eq (gt.n, 3);
  ck_assert_uint_eq (g.syncs, 3);
  gcommit_destroy (&g);
  sem_destroy (&gt.entered);
  sem_destroy (&gt.release);
}
END_TEST

/* White box: B waits for sync 2.  Before B gets to run again, sync 2
 * succeeds and a sync 3 for later callers fails (a real schedule: B can
 * stay off the CPU while other threads lead two syncs).  B's sync
 * succeeded, so B must succeed.  The other threads are simulated by
 * changing the fields under g.lock, exactly as gcommit_sync does. */
START_TEST (test_stale_waiter)
{
  struct gcommit g;
  struct gate gt = { .result = { 0 } };
  struct gcaller b = { 0 };
  pthread_t tb;

  sem_init (&gt.entered, 0, 0);
  sem_init (&gt.release, 0, 0);
  gcommit_init (&g);
  b.g = &g;
  b.gt = &gt;

  /* Sync 1 is running (led by a simulated thread). */
  pthread_mutex_lock (&g.lock);
  g.started = 1;
  g.running = true;
  pthread_mutex_unlock (&g.lock);
  pthread_create (&tb, NULL, gcaller_thread, &b);
  settle ();                    /* B: target 2, waiting */
  ck_assert (!b.finished);

  pthread_mutex_lock (&g.lock);
  /* sync 1 ends OK; sync 2 (covering B) starts and ends OK; sync 3
   * starts after another caller's write and fails. */
  g.done = 3;
  g.started = 3;
  g.result[2 % GCOMMIT_HISTORY] = 0;
  g.result[3 % GCOMMIT_HISTORY] = EIO;
  g.running = false;
  pthread_cond_broadcast (&g.cond);
  pthread_mutex_unlock (&g.lock);
  pthread_join (tb, NULL);
  ck_assert_int_eq (gt.n, 0);   /* B ran no sync of its own */
  ck_assert_msg (b.ret == 0, "a caller covered by a successful sync failed "
                 "because a later sync failed");
  gcommit_destroy (&g);
  sem_destroy (&gt.entered);
  sem_destroy (&gt.release);
}
END_TEST

static Suite *
gcommit_suite (void)
{
  Suite *s = suite_create ("gcommit");
  struct { const char *name; const TTest *t; } tcs[] = {
    { "single", test_single },
    { "shared", test_shared },
    { "shared_failures", test_shared_failures },
    { "failure", test_failure },
    { "failure_waiters", test_failure_waiters },
    { "stale_waiter", test_stale_waiter },
  };
  size_t i;

  for (i = 0; i < sizeof tcs / sizeof tcs[0]; ++i) {
    TCase *tc = tcase_create (tcs[i].name);
    tcase_add_checked_fixture (tc, setup, teardown);
    tcase_set_timeout (tc, 60);
    tcase_add_test (tc, tcs[i].t);
    suite_add_tcase (s, tc);
  }
  return s;
}

int
main (void)
{
  return helpers_run_suite (gcommit_suite (), "check_gcommit");
}
