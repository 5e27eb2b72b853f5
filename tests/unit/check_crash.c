/* nbdsnap: crash test of the engine: kill -9 at random moments.
 *
 * Each round forks a child that opens the engine on the shared image and
 * state directory and runs random operations as fast as it can: writes
 * (random size and alignment, sometimes FUA), zeroes, creates (some
 * temporary) and deletes of random snapshots.  Before each operation it
 * appends an intent record to a log file, after it a done record (plain
 * write(2) to an O_APPEND file: what returned is in the page cache and
 * survives the kill).  The parent SIGKILLs it after a random delay, then:
 *
 *   - replays the log into its model (origin bytes + every snapshot's
 *     bytes): done operations happened; the one in flight (intent without
 *     done) may or may not have: a write or zero may have reached each
 *     byte of the origin or not, a create or delete may have happened or
 *     not -- the snapshots themselves must be exact either way;
 *   - reopens the engine (recovery: half-done creates and deletes,
 *     temporary snapshots), and checks the list of snapshots and every
 *     snapshot byte for byte against the model, and the origin.
 *
 * ROUNDS rounds (>= 20), alternating durability=process and power (both
 * must survive the process being killed).  The seed is printed; replay
 * with NBDSNAP_SEED=N.
 */
#include <config.h>

#include <signal.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

#define CHUNK 4096u
#define SIZE (512 * KiB - 300)
#define ROUNDS 30
#define MAXSNAPS 8

enum { OP_WRITE = 1, OP_ZERO, OP_CREATE, OP_DELETE };
#define REC_MAGIC 0x4e425352u

struct rec {
  uint32_t magic;
  uint32_t done;                /* 0 = intent, 1 = done */
  uint32_t op, len;
  uint64_t opno, off, seed;
  uint32_t temporary, pad;
  char name[32];
};

struct msnap {
  bool used, temporary;
  char name[32];
  unsigned char *bytes;
};

static char img[512], sdpath[512], logpath[512];
static uint64_t seed;
static unsigned char origin[SIZE];
static struct msnap snaps[MAXSNAPS + 1];
static long stats_pending[5], stats_rounds_killed;

static const char *op_names[] = { "?", "write", "zero", "create", "delete" };

static void
setup (void)
{
  helpers_tmpdir_make ("check_crash");
  quiet_errors = 1;
  tpath (img, sizeof img, "disk.img");
  tpath (sdpath, sizeof sdpath, "state");
  tpath (logpath, sizeof logpath, "ops.log");
  seed = helpers_seed ("check_crash");
  memset (snaps, 0, sizeof snaps);
}

static void
teardown (void)
{
  int i;
  for (i = 0; i <= MAXSNAPS; ++i)
    free (snaps[i].bytes);
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

/* ---- the child ---- */

static int logfd;

static void
log_rec (struct rec *r, uint32_t done)
{
  r->magic = REC_MAGIC;
  r->done = done;
  if (write (logfd, r, sizeof *r) != (ssize_t) sizeof *r)
    _exit (4);
}

static void __attribute__ ((noreturn))
child (uint64_t cseed, enum nbdsnap_durability dur, int round)
{
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e;
  static unsigned char buf[4 * CHUNK];
  uint64_t rng = cseed, opno = 0;
  int namec = 0;

  logfd = open (logpath, O_WRONLY | O_APPEND | O_CREAT, 0600);
  if (logfd == -1)
    _exit (2);
  e = open_engine (&o, dur);
  if (e == NULL)
    _exit (3);
  for (;;) {
    struct rec r;
    uint64_t p = splitmix64 (&rng) % 100;
    memset (&r, 0, sizeof r);
    r.opno = opno++;
    if (p < 70) {
      uint64_t x = splitmix64 (&rng);
      r.op = p < 60 ? OP_WRITE : OP_ZERO;
      r.off = x % SIZE;
      r.len = (x >> 32) % (3 * CHUNK) + 1;
      if (r.len > SIZE - r.off)
        r.len = SIZE - r.off;
      r.seed = splitmix64 (&rng) | 1;
      log_rec (&r, 0);
      if (r.op == OP_WRITE) {
        pattern_fill (buf, r.len, r.seed, r.off);
        if (nbdsnap_engine_pwrite (e, buf, r.len, r.off, (x & 15) == 0) == -1)
          _exit (5);
      }
      else if (nbdsnap_engine_zero (e, r.len, r.off, x & 1, false, false)
               == -1)
        _exit (6);
      log_rec (&r, 1);
    }
    else {
      struct nbdsnap_snap_info *l;
      ssize_t n = nbdsnap_snap_list (e, &l);
      if (n < 0)
        _exit (7);
      if (p < 85 && n < MAXSNAPS) {
        r.op = OP_CREATE;
        snprintf (r.name, sizeof r.name, "r%dn%d", round, namec++);
        r.temporary = splitmix64 (&rng) % 5 == 0;
        log_rec (&r, 0);
        if (nbdsnap_snap_create (e, r.name, r.temporary) == NULL)
          _exit (8);
        log_rec (&r, 1);
      }
      else if (n > 0) {
        struct nbdsnap_snap *s;
        r.op = OP_DELETE;
        strcpy (r.name, l[splitmix64 (&rng) % n].name);
        s = nbdsnap_snap_lookup (e, r.name);
        if (s == NULL)
          _exit (9);
        log_rec (&r, 0);
        if (nbdsnap_snap_delete (e, s) == -1)
          _exit (10);
        log_rec (&r, 1);
      }
      free (l);
    }
  }
}

/* ---- the parent's model ---- */

static struct msnap *
find_snap (const char *name)
{
  int i;
  for (i = 0; i <= MAXSNAPS; ++i)
    if (snaps[i].used && strcmp (snaps[i].name, name) == 0)
      return &snaps[i];
  return NULL;
}

static void
add_snap (const char *name, bool temporary, int round)
{
  int i;
  for (i = 0; i <= MAXSNAPS; ++i)
    if (!snaps[i].used) {
      snaps[i].used = true;
      snaps[i].temporary = temporary;
      strcpy (snaps[i].name, name);
      if (snaps[i].bytes == NULL)
        snaps[i].bytes = malloc (SIZE);
      memcpy (snaps[i].bytes, origin, SIZE);
      return;
    }
  ck_abort_msg ("seed %" PRIu64 " round %d: model full", seed, round);
}

static void
apply (const struct rec *r, int round)
{
  struct msnap *m;

  switch (r->op) {
  case OP_WRITE:
    pattern_fill (origin + r->off, r->len, r->seed, r->off);
    break;
  case OP_ZERO:
    memset (origin + r->off, 0, r->len);
    break;
  case OP_CREATE:
    add_snap (r->name, r->temporary, round);
    break;
  case OP_DELETE:
    m = find_snap (r->name);
    ck_assert_msg (m != NULL, "seed %" PRIu64 " round %d: delete of %s, "
                   "unknown to the model", seed, round, r->name);
    m->used = false;
    break;
  default:
    ck_abort_msg ("bad op %u", r->op);
  }
}

static void
verify (int round, const struct rec *pending, enum nbdsnap_durability dur)
{
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e;
  static unsigned char got[SIZE];
  struct nbdsnap_snap_info *l;
  ssize_t n, i, d;
  int k, nmodel = 0;

  e = open_engine (&o, dur);
  ck_assert_msg (e != NULL, "seed %" PRIu64 " round %d: reopen after the "
                 "kill failed: %s", seed, round, last_error);
  ck_assert_int_eq (pread (o.fd, got, SIZE, 0), SIZE);

  /* The operation in flight, either way. */
  if (pending) {
    stats_pending[pending->op]++;
    if (pending->op == OP_WRITE || pending->op == OP_ZERO) {
      static unsigned char want[SIZE];
      memcpy (want, origin, SIZE);
      apply (pending, round);   /* origin = the new bytes */
      for (i = 0; i < (ssize_t) pending->len; ++i) {
        uint64_t x = pending->off + i;
        ck_assert_msg (got[x] == want[x] || got[x] == origin[x],
                       "seed %" PRIu64 " round %d: origin byte %" PRIu64
                       " after an interrupted %s is neither old nor new",
                       seed, round, x, op_names[pending->op]);
      }
      memcpy (origin + pending->off, got + pending->off, pending->len);
    }
    else if (pending->op == OP_CREATE) {
      if (nbdsnap_snap_lookup (e, pending->name))
        add_snap (pending->name, pending->temporary, round);
    }
    else if (pending->op == OP_DELETE) {
      if (nbdsnap_snap_lookup (e, pending->name) == NULL)
        apply (pending, round);
    }
  }
  d = first_diff (got, origin, SIZE);
  ck_assert_msg (d == -1, "seed %" PRIu64 " round %d: origin differs from "
                 "the model at byte %zd", seed, round, d);

  /* Temporary snapshots die with the process that made them. */
  for (k = 0; k <= MAXSNAPS; ++k)
    if (snaps[k].used && snaps[k].temporary) {
      ck_assert_msg (nbdsnap_snap_lookup (e, snaps[k].name) == NULL,
                     "seed %" PRIu64 " round %d: temporary %s survived",
                     seed, round, snaps[k].name);
      snaps[k].used = false;
    }

  /* Exactly the model's snapshots, each exact. */
  n = nbdsnap_snap_list (e, &l);
  ck_assert_int_ge (n, 0);
  for (k = 0; k <= MAXSNAPS; ++k)
    nmodel += snaps[k].used;
  for (i = 0; i < n; ++i) {
    struct msnap *m = find_snap (l[i].name);
    ck_assert_msg (m != NULL, "seed %" PRIu64 " round %d: snapshot %s "
                   "exists, the model has no such snapshot", seed, round,
                   l[i].name);
    ck_assert_msg (l[i].state == NBDSNAP_STATE_LIVE, "seed %" PRIu64
                   " round %d: snapshot %s is %d", seed, round, l[i].name,
                   l[i].state);
  }
  ck_assert_msg (n == nmodel, "seed %" PRIu64 " round %d: %zd snapshots, "
                 "the model has %d", seed, round, n, nmodel);
  free (l);
  for (k = 0; k <= MAXSNAPS; ++k) {
    struct nbdsnap_snap *s;
    if (!snaps[k].used)
      continue;
    s = nbdsnap_snap_lookup (e, snaps[k].name);
    ck_assert_ptr_nonnull (s);
    ck_assert_msg (nbdsnap_snap_pread (e, s, got, SIZE, 0) == 0,
                   "seed %" PRIu64 " round %d: read %s: %s", seed, round,
                   snaps[k].name, last_error);
    d = first_diff (got, snaps[k].bytes, SIZE);
    ck_assert_msg (d == -1, "seed %" PRIu64 " round %d: snapshot %s "
                   "differs from the model at byte %zd (chunk %zd), in "
                   "flight: %s %s", seed, round, snaps[k].name, d,
                   d / (ssize_t) CHUNK,
                   pending ? op_names[pending->op] : "nothing",
                   pending ? pending->name : "");
  }
  nbdsnap_engine_close (e);
  nbdsnap_origin_close (&o);
}

/* Replay the child's log: returns the pending (intent-only) record. */
static bool
replay (int round, struct rec *pending)
{
  int fd = open (logpath, O_RDONLY);
  struct rec r;
  bool have = false;
  uint64_t nops = 0;

  if (fd == -1 && errno == ENOENT)
    return false;               /* killed before it opened the log */
  ck_assert_int_ge (fd, 0);
  while (read (fd, &r, sizeof r) == (ssize_t) sizeof r) {
    ck_assert_uint_eq (r.magic, REC_MAGIC);
    if (!r.done) {
      ck_assert_msg (!have, "two operations in flight");
      *pending = r;
      have = true;
    }
    else {
      ck_assert_msg (have && pending->opno == r.opno, "done without intent");
      apply (&r, round);
      have = false;
      nops++;
    }
  }
  close (fd);
  (void) nops;
  return have;
}

START_TEST (test_crash)
{
  uint64_t rng = seed;
  int round, fd;

  make_image (img, SIZE, 0);
  fd = open (img, O_RDWR);
  {
    unsigned char buf[64 * KiB];
    pattern_fill (buf, sizeof buf, 5, 100 * KiB);
    ck_assert_int_eq (pwrite (fd, buf, sizeof buf, 100 * KiB),
                      (ssize_t) sizeof buf);
    pattern_fill (buf, 1000, 6, SIZE - 1000);
    ck_assert_int_eq (pwrite (fd, buf, 1000, SIZE - 1000), 1000);
  }
  close (fd);
  {
    unsigned char *p = slurp (img, SIZE);
    memcpy (origin, p, SIZE);
    free (p);
  }

  for (round = 0; round < ROUNDS; ++round) {
    enum nbdsnap_durability dur = round % 2 ? NBDSNAP_DURABILITY_POWER
                                            : NBDSNAP_DURABILITY_PROCESS;
    uint64_t cseed = splitmix64 (&rng);
    useconds_t delay = 2000 + splitmix64 (&rng) % 40000;
    struct rec pending;
    bool have;
    int status;
    pid_t pid;

    unlink (logpath);           /* never replay an older round's log */
    fflush (stdout);
    fflush (stderr);
    pid = fork ();
    ck_assert_int_ge (pid, 0);
    if (pid == 0)
      child (cseed, dur, round);
    usleep (delay);
    kill (pid, SIGKILL);
    ck_assert_int_eq (waitpid (pid, &status, 0), pid);
    ck_assert_msg (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL,
                   "seed %" PRIu64 " round %d: the child exited by itself "
                   "(status 0x%x): an engine call failed", seed, round,
                   status);
    stats_rounds_killed++;
    have = replay (round, &pending);
    verify (round, have ? &pending : NULL, dur);
  }
  printf ("check_crash: %d rounds; killed during: %ld writes, %ld zeroes, "
          "%ld creates, %ld deletes\n", ROUNDS, stats_pending[OP_WRITE],
          stats_pending[OP_ZERO], stats_pending[OP_CREATE],
          stats_pending[OP_DELETE]);
}
END_TEST

static Suite *
crash_suite (void)
{
  Suite *s = suite_create ("crash");
  TCase *tc = tcase_create ("kill9");

  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 300);
  tcase_add_test (tc, test_crash);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  return helpers_run_suite (crash_suite (), "check_crash");
}
