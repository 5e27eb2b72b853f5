/* nbdsnap: threaded stress test of the engine (src/engine.c, src/cow.c).
 *
 * The image is cut into NREGIONS regions of REGION bytes (not a multiple
 * of the chunk size, so neighbouring regions of different writers share
 * chunks).  Region r belongs to writer r % NWRITERS.  Running at once:
 *
 *   4 writers   each writes its own regions: whole-region or partial
 *               writes and zeroes, one request each, with a pattern seed;
 *               every write is logged per region (an intent counter before
 *               the request, a done counter after), and every CP writes
 *               the writer keeps a copy of the region's state
 *               (checkpoint) so that any prefix can be rebuilt cheaply;
 *   2 readers   read random regions (or the whole image) of random live
 *               snapshots and check them;
 *   1 manager   creates snapshots (recording, per region, the done counter
 *               before create and the intent counter after: the snapshot
 *               must hold the region as it was after k writes, lo <= k <=
 *               hi) and deletes random ones (oldest, middle, newest) once
 *               no reader uses them.
 *
 * The check: a snapshot's content of a region equals the region's state
 * after some prefix k of its writer's log, with lo <= k <= hi, for the
 * whole region at once (every request is atomic with respect to create).
 * At the end every live snapshot is checked in full, then again after the
 * engine is closed and reopened.  NBDSNAP_STRESS_SECONDS changes the run
 * time (default 3 s with durability=process, half that with power).
 */
#include <config.h>

#include <pthread.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

#define CHUNK 4096u
#define REGION 10000u
#define NREGIONS 32
#define NWRITERS 4
#define NREADERS 2
#define SIZE ((uint64_t) NREGIONS * REGION + 777)  /* a tail nobody owns */
#define MAXLOG 20000                    /* writes per region */
#define CP 256                          /* checkpoint every CP writes */
#define MAXLIVE 4
#define MAXRECS 4096

struct entry {
  uint32_t off, len;            /* within the region */
  uint64_t seed;                /* 0 = zeroes */
};

struct region {
  struct entry log[MAXLOG + 1]; /* 1-based: entry k is the k-th write */
  unsigned started, done;       /* atomic */
  unsigned char *cp;            /* (MAXLOG / CP + 1) states of REGION */
  unsigned char cur[REGION];    /* writer's own copy */
};

struct rec {
  char name[32];
  struct nbdsnap_snap *s;
  unsigned lo[NREGIONS], hi[NREGIONS];
  unsigned char tail[777];
  int users;                    /* readers inside; under table_lock */
  bool live, dying;
};

static char img[512], sdpath[512];
static struct nbdsnap_origin o = { .fd = -1 };
static struct nbdsnap_engine *e;
static struct region *regions;
static struct rec *recs;
static int nrecs;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t table_cond = PTHREAD_COND_INITIALIZER;
static int stop;                        /* atomic */
static uint64_t nwrites, nreads, ncreates, ndeletes;   /* atomic stats */
static unsigned char tail0[777];        /* the tail never changes */

static void
eopen (enum nbdsnap_durability dur)
{
  struct nbdsnap_engine_config cfg = { 0 };

  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
  cfg.origin = &o;
  cfg.statedir = sdpath;
  cfg.chunk_size = CHUNK;
  cfg.durability = dur;
  e = nbdsnap_engine_open (&cfg);
  ck_assert_msg (e != NULL, "engine open: %s", last_error);
}

static void
setup (void)
{
  int r;

  helpers_tmpdir_make ("check_stress");
  tpath (img, sizeof img, "disk.img");
  tpath (sdpath, sizeof sdpath, "state");
  regions = calloc (NREGIONS, sizeof *regions);
  recs = calloc (MAXRECS, sizeof *recs);
  ck_assert (regions && recs);
  for (r = 0; r < NREGIONS; ++r) {
    regions[r].cp = malloc ((size_t) (MAXLOG / CP + 1) * REGION);
    ck_assert_ptr_nonnull (regions[r].cp);
  }
  nrecs = 0;
  stop = 0;
  nwrites = nreads = ncreates = ndeletes = 0;
}

static void
teardown (void)
{
  int r;

  nbdsnap_engine_close (e);
  e = NULL;
  if (o.fd >= 0)
    nbdsnap_origin_close (&o);
  o.fd = -1;
  for (r = 0; r < NREGIONS; ++r)
    free (regions[r].cp);
  free (regions);
  free (recs);
  helpers_tmpdir_remove ();
}

/* Start image: odd regions hold data, even ones are holes (so that the
 * snapshot's candidate bits differ between regions); then the logs. */
static void
make_start (void)
{
  unsigned char *p;
  int fd, r;

  make_image (img, SIZE, 0);
  fd = open (img, O_RDWR);
  for (r = 1; r < NREGIONS; r += 2) {
    unsigned char buf[REGION];
    pattern_fill (buf, REGION, 7000 + r, (uint64_t) r * REGION);
    ck_assert_int_eq (pwrite (fd, buf, REGION, (uint64_t) r * REGION),
                      REGION);
  }
  pattern_fill (tail0, sizeof tail0, 6999, NREGIONS * REGION);
  ck_assert_int_eq (pwrite (fd, tail0, sizeof tail0, NREGIONS * REGION),
                    (ssize_t) sizeof tail0);
  close (fd);
  p = slurp (img, SIZE);
  for (r = 0; r < NREGIONS; ++r) {
    memcpy (regions[r].cur, p + (uint64_t) r * REGION, REGION);
    memcpy (regions[r].cp, regions[r].cur, REGION);
  }
  free (p);
}

static void
apply (unsigned char *state, int r, const struct entry *en)
{
  if (en->seed == 0)
    memset (state + en->off, 0, en->len);
  else
    pattern_fill (state + en->off, en->len, en->seed,
                  (uint64_t) r * REGION + en->off);
}

struct writer_arg {
  int w;
  uint64_t rng;
};

static void *
writer_thread (void *varg)
{
  struct writer_arg *a = varg;
  unsigned char buf[REGION];

  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    int r = a->w + NWRITERS * (int) (splitmix64 (&a->rng) % (NREGIONS
                                                             / NWRITERS));
    struct region *rg = &regions[r];
    unsigned k = rg->started + 1;
    struct entry *en;
    uint64_t x = splitmix64 (&a->rng);
    int ret;

    if (k > MAXLOG) {
      usleep (1000);
      continue;
    }
    en = &rg->log[k];
    if (x % 3 == 0) {           /* the whole region */
      en->off = 0;
      en->len = REGION;
    }
    else {
      en->off = (x >> 8) % REGION;
      en->len = (x >> 24) % (REGION - en->off) + 1;
    }
    en->seed = x % 7 == 0 ? 0 : (x | 1);
    __atomic_store_n (&rg->started, k, __ATOMIC_RELEASE);
    if (en->seed == 0)
      ret = nbdsnap_engine_zero (e, en->len, (uint64_t) r * REGION + en->off,
                                 (x >> 40) & 1, false, false);
    else {
      pattern_fill (buf, en->len, en->seed, (uint64_t) r * REGION + en->off);
      ret = nbdsnap_engine_pwrite (e, buf, en->len,
                                   (uint64_t) r * REGION + en->off, false);
    }
    ck_assert_msg (ret == 0, "writer %d: %s", a->w, last_error);
    apply (rg->cur, r, en);
    if (k % CP == 0)
      memcpy (rg->cp + (size_t) (k / CP) * REGION, rg->cur, REGION);
    __atomic_store_n (&rg->done, k, __ATOMIC_RELEASE);
    __atomic_add_fetch (&nwrites, 1, __ATOMIC_RELAXED);
  }
  return NULL;
}

/* Does got (region r of snapshot rec) equal the region after some prefix
 * k of its log, lo <= k <= hi?  Returns k, or -1. */
static int
match_prefix (const struct rec *rc, int r, const unsigned char *got,
              char *why, size_t whylen)
{
  struct region *rg = &regions[r];
  unsigned lo = rc->lo[r], hi = rc->hi[r], k, base = lo / CP * CP;
  unsigned char state[REGION];
  ssize_t d = -1;

  memcpy (state, rg->cp + (size_t) (base / CP) * REGION, REGION);
  for (k = base + 1; k <= lo; ++k)
    apply (state, r, &rg->log[k]);
  for (k = lo;; ++k) {
    if (k > lo)
      apply (state, r, &rg->log[k]);
    d = first_diff (got, state, REGION);
    if (d == -1)
      return (int) k;
    if (k == hi)
      break;
  }
  snprintf (why, whylen, "snapshot %s region %d (offset %" PRIu64
            "): matches no prefix %u..%u of its log (after %u writes it "
            "differs at +%zd: 0x%02x, want 0x%02x)", rc->name, r,
            (uint64_t) r * REGION, lo, hi, hi, d, got[d], state[d]);
  return -1;
}

static void
check_rec_full (struct rec *rc, const char *when)
{
  static unsigned char buf[SIZE];
  char why[512];
  int r;

  ck_assert_msg (nbdsnap_snap_pread (e, rc->s, buf, SIZE, 0) == 0,
                 "%s: read %s: %s", when, rc->name, last_error);
  for (r = 0; r < NREGIONS; ++r)
    ck_assert_msg (match_prefix (rc, r, buf + (uint64_t) r * REGION, why,
                                 sizeof why) >= 0, "%s: %s", when, why);
  ck_assert_msg (memcmp (buf + NREGIONS * REGION, tail0, sizeof tail0) == 0,
                 "%s: snapshot %s: the tail changed", when, rc->name);
}

static void *
reader_thread (void *varg)
{
  uint64_t rng = (uintptr_t) varg;
  unsigned char *buf = malloc (SIZE);
  char why[512];

  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    struct rec *rc = NULL;
    int i, n = 0, pick;

    pthread_mutex_lock (&table_lock);
    for (i = 0; i < nrecs; ++i)
      n += recs[i].live && !recs[i].dying;
    if (n > 0) {
      pick = splitmix64 (&rng) % n;
      for (i = 0; i < nrecs; ++i)
        if (recs[i].live && !recs[i].dying && pick-- == 0) {
          rc = &recs[i];
          rc->users++;
          break;
        }
    }
    pthread_mutex_unlock (&table_lock);
    if (rc == NULL) {
      usleep (1000);
      continue;
    }
    if (splitmix64 (&rng) % 8 == 0) {
      int r;
      ck_assert_msg (nbdsnap_snap_pread (e, rc->s, buf, SIZE, 0) == 0,
                     "read %s: %s", rc->name, last_error);
      for (r = 0; r < NREGIONS; ++r)
        ck_assert_msg (match_prefix (rc, r, buf + (uint64_t) r * REGION, why,
                                     sizeof why) >= 0, "%s", why);
    }
    else {
      int r = splitmix64 (&rng) % NREGIONS;
      ck_assert_msg (nbdsnap_snap_pread (e, rc->s, buf, REGION,
                                         (uint64_t) r * REGION) == 0,
                     "read %s: %s", rc->name, last_error);
      ck_assert_msg (match_prefix (rc, r, buf, why, sizeof why) >= 0, "%s",
                     why);
    }
    __atomic_add_fetch (&nreads, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock (&table_lock);
    rc->users--;
    pthread_cond_broadcast (&table_cond);
    pthread_mutex_unlock (&table_lock);
  }
  free (buf);
  return NULL;
}

static int
count_live (void)
{
  int i, n = 0;
  for (i = 0; i < nrecs; ++i)
    n += recs[i].live;
  return n;
}

static void *
manager_thread (void *varg)
{
  uint64_t rng = (uintptr_t) varg;
  int serial = 0;

  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    usleep (5000 + splitmix64 (&rng) % 20000);
    pthread_mutex_lock (&table_lock);
    if (count_live () >= MAXLIVE) {
      /* Delete the oldest, a middle or the newest live one. */
      int live[MAXRECS], n = 0, i, which;
      struct rec *rc;
      for (i = 0; i < nrecs; ++i)
        if (recs[i].live)
          live[n++] = i;
      which = splitmix64 (&rng) % 3;
      rc = &recs[live[which == 0 ? 0 : which == 1 ? n / 2 : n - 1]];
      rc->dying = true;
      while (rc->users > 0)
        pthread_cond_wait (&table_cond, &table_lock);
      pthread_mutex_unlock (&table_lock);
      ck_assert_msg (nbdsnap_snap_delete (e, rc->s) == 0, "delete %s: %s",
                     rc->name, last_error);
      pthread_mutex_lock (&table_lock);
      rc->live = false;
      pthread_mutex_unlock (&table_lock);
      __atomic_add_fetch (&ndeletes, 1, __ATOMIC_RELAXED);
    }
    else if (nrecs < MAXRECS) {
      struct rec *rc = &recs[nrecs];
      int r;
      pthread_mutex_unlock (&table_lock);
      snprintf (rc->name, sizeof rc->name, "st%d", serial++);
      for (r = 0; r < NREGIONS; ++r)
        rc->lo[r] = __atomic_load_n (&regions[r].done, __ATOMIC_ACQUIRE);
      rc->s = nbdsnap_snap_create (e, rc->name, false);
      ck_assert_msg (rc->s != NULL, "create %s: %s", rc->name, last_error);
      for (r = 0; r < NREGIONS; ++r)
        rc->hi[r] = __atomic_load_n (&regions[r].started, __ATOMIC_ACQUIRE);
      pthread_mutex_lock (&table_lock);
      rc->live = true;
      nrecs++;
      pthread_mutex_unlock (&table_lock);
      __atomic_add_fetch (&ncreates, 1, __ATOMIC_RELAXED);
    }
    else
      pthread_mutex_unlock (&table_lock);
  }
  return NULL;
}

static double
seconds_from_env (double dflt)
{
  const char *s = getenv ("NBDSNAP_STRESS_SECONDS");
  return s && *s ? atof (s) : dflt;
}

static void
run (enum nbdsnap_durability dur, double secs)
{
  pthread_t w[NWRITERS], rd[NREADERS], mg;
  struct writer_arg wa[NWRITERS];
  int i, checked = 0;
  double t0;

  make_start ();
  eopen (dur);
  t0 = now_s ();
  for (i = 0; i < NWRITERS; ++i) {
    wa[i].w = i;
    wa[i].rng = 100 + i;
    pthread_create (&w[i], NULL, writer_thread, &wa[i]);
  }
  for (i = 0; i < NREADERS; ++i)
    pthread_create (&rd[i], NULL, reader_thread, (void *) (uintptr_t) (200 + i));
  pthread_create (&mg, NULL, manager_thread, (void *) (uintptr_t) 300);
  usleep ((useconds_t) (secs * 1e6));
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  for (i = 0; i < NWRITERS; ++i)
    pthread_join (w[i], NULL);
  for (i = 0; i < NREADERS; ++i)
    pthread_join (rd[i], NULL);
  pthread_join (mg, NULL);

  /* Quiet now: every live snapshot in full, and the origin. */
  for (i = 0; i < nrecs; ++i)
    if (recs[i].live) {
      check_rec_full (&recs[i], "at the end");
      checked++;
    }
  {
    unsigned char *p = slurp (img, SIZE);
    int r;
    for (r = 0; r < NREGIONS; ++r)
      ck_assert_msg (memcmp (p + (uint64_t) r * REGION, regions[r].cur,
                             REGION) == 0, "origin region %d differs", r);
    free (p);
  }
  /* And after reopening. */
  nbdsnap_engine_close (e);
  nbdsnap_origin_close (&o);
  eopen (dur);
  for (i = 0; i < nrecs; ++i)
    if (recs[i].live) {
      recs[i].s = nbdsnap_snap_lookup (e, recs[i].name);
      ck_assert_ptr_nonnull (recs[i].s);
      check_rec_full (&recs[i], "after reopen");
    }
  printf ("check_stress: %s, %.1f s: %" PRIu64 " writes, %" PRIu64
          " snapshot reads checked, %" PRIu64 " creates, %" PRIu64
          " deletes, %d live at the end\n",
          dur == NBDSNAP_DURABILITY_POWER ? "power" : "process",
          now_s () - t0, nwrites, nreads, ncreates, ndeletes, checked);
  ck_assert_uint_gt (nwrites, 0);
  ck_assert_uint_gt (nreads, 0);
  ck_assert_uint_gt (ncreates, 2);
  ck_assert_uint_gt (ndeletes, 0);
}

START_TEST (test_stress_process)
{
  run (NBDSNAP_DURABILITY_PROCESS, seconds_from_env (3));
}
END_TEST

START_TEST (test_stress_power)
{
  run (NBDSNAP_DURABILITY_POWER, seconds_from_env (3) / 2);
}
END_TEST

static Suite *
stress_suite (void)
{
  Suite *s = suite_create ("stress");
  TCase *tc;

  tc = tcase_create ("process");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 300);
  tcase_add_test (tc, test_stress_process);
  suite_add_tcase (s, tc);
  tc = tcase_create ("power");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 300);
  tcase_add_test (tc, test_stress_power);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  return helpers_run_suite (stress_suite (), "check_stress");
}
