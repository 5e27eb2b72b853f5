/* nbdsnap: model test of the engine (src/engine.c, src/cow.c).
 *
 * A long random sequence of operations runs against the engine and
 * against an in-memory model (the origin's bytes and every snapshot's
 * bytes):
 *
 *   write     random size and alignment (bytes to several chunks)
 *   zero      with or without may_trim, sometimes "fast" (ENOTSUP allowed:
 *             then nothing changed)
 *   trim      the origin's content there is undefined after it; the model
 *             takes what the file holds (snapshots must not change)
 *   create    (sometimes temporary), up to MAXSNAPS live snapshots
 *   delete    of any snapshot, oldest, middle or newest; half of them
 *             move their chunks in batches of 1-4 chunks with a random
 *             handful of writes, zeroes, trims, reads, flushes and now and
 *             then a create run between batches (the engine's move hook):
 *             moves interleaved with the data path
 *   rollback  to a random snapshot: the origin must read as it (an
 *             invalid one refuses with EIO); every other snapshot stays
 *   reopen    close and open the engine (temporary snapshots vanish)
 *   inject    one write with the store-error hook on: the snapshots that
 *             needed a copy turn invalid (the model asks which), and must
 *             then fail reads with EIO; every other one must stay exact
 *   read      a random range of a random snapshot
 *   flush
 *
 * Every snapshot is compared byte for byte with the model after each
 * create, delete and reopen and at the end; the origin file too; and its
 * changes() are checked: every chunk a request changed since the snapshot
 * must be listed, and only chunks that some request touched may be.  The
 * image is small (1 MiB, 4K chunks) so that the comparisons are cheap,
 * starts with holes, and its last chunk is partial.
 *
 * The seed is printed at the start and in every failure; replay with
 * NBDSNAP_SEED=N.  NBDSNAP_MODEL_OPS=N changes the number of operations.
 * On failure the last operations are printed.
 */
#include <config.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

#define CHUNK 4096u
#define SIZE (1 * MiB - 1000)
#define MAXSNAPS 10
#define NCHUNKS ((SIZE + CHUNK - 1) / CHUNK)
#define HISTORY 40

struct msnap {
  bool used;
  char name[32];
  bool temporary;
  bool invalid;
  bool deleting;                /* its delete is moving chunks: unread */
  struct nbdsnap_snap *s;
  unsigned char *bytes;
  /* Per chunk, since the snapshot was taken: a request that changed the
   * origin covered it (changes() must list it), any request that reached
   * the engine covered it (changes() may list it). */
  unsigned char written[NCHUNKS], touched[NCHUNKS];
};

static char img[512], sdpath[512];
static struct nbdsnap_origin o = { .fd = -1 };
static struct nbdsnap_engine *e;
static enum nbdsnap_durability dur;
static uint64_t seed, rng;
static long opno;
static unsigned char origin[SIZE];
static const unsigned char zeros[SIZE];
static struct msnap snaps[MAXSNAPS];
static int nlive, max_live, name_counter;
static char history[HISTORY][160];
static long counts[16];

static uint64_t
rnd (uint64_t n)
{
  return n ? splitmix64 (&rng) % n : 0;
}

static void
note (const char *fmt, ...)
{
  va_list ap;
  char *h = history[opno % HISTORY];
  int k;

  k = snprintf (h, sizeof history[0], "op %ld: ", opno);
  va_start (ap, fmt);
  vsnprintf (h + k, sizeof history[0] - k, fmt, ap);
  va_end (ap);
}

static void
print_history (void)
{
  long i;

  fprintf (stderr, "check_model: seed %" PRIu64 " (replay with "
           "NBDSNAP_SEED=%" PRIu64 "), last operations:\n", seed, seed);
  for (i = opno - HISTORY + 1; i <= opno; ++i)
    if (i >= 0 && history[i % HISTORY][0])
      fprintf (stderr, "  %s\n", history[i % HISTORY]);
}

#define MCHECK(cond, ...)                                               \
  do {                                                                  \
    if (!(cond)) {                                                      \
      char m_[512];                                                     \
      print_history ();                                                 \
      snprintf (m_, sizeof m_, __VA_ARGS__);                            \
      ck_abort_msg ("seed %" PRIu64 " op %ld: %s (engine: %s)", seed,   \
                    opno, m_, last_error);                              \
    }                                                                   \
  } while (0)

static void
eopen (void)
{
  struct nbdsnap_engine_config cfg = { 0 };

  MCHECK (nbdsnap_origin_open (&o, img, false) == 0, "origin open");
  cfg.origin = &o;
  cfg.statedir = sdpath;
  cfg.chunk_size = CHUNK;
  cfg.durability = dur;
  e = nbdsnap_engine_open (&cfg);
  MCHECK (e != NULL, "engine open");
}

static void
eclose (void)
{
  nbdsnap_engine_close (e);
  e = NULL;
  nbdsnap_origin_close (&o);
  o.fd = -1;
}

static void
setup (void)
{
  helpers_tmpdir_make ("check_model");
  quiet_errors = 1;             /* injected errors are expected */
  tpath (img, sizeof img, "disk.img");
  tpath (sdpath, sizeof sdpath, "state");
  seed = helpers_seed ("check_model");
  rng = seed;
  opno = 0;
  memset (history, 0, sizeof history);
  memset (snaps, 0, sizeof snaps);
  memset (counts, 0, sizeof counts);
  nlive = max_live = name_counter = 0;
}

static void
teardown (void)
{
  int i;

  if (e)
    eclose ();
  for (i = 0; i < MAXSNAPS; ++i)
    free (snaps[i].bytes);
  helpers_tmpdir_remove ();
}

/* An image with holes: some chunks of random data, some partial. */
static void
make_start_image (void)
{
  int fd, i;
  unsigned char buf[3 * CHUNK];

  make_image (img, SIZE, 0);
  fd = open (img, O_RDWR);
  ck_assert_int_ge (fd, 0);
  for (i = 0; i < 60; ++i) {
    uint64_t off = rnd (SIZE);
    uint32_t n = rnd (sizeof buf) + 1;
    if (n > SIZE - off)
      n = SIZE - off;
    pattern_fill (buf, n, rnd (1u << 30) + 1, off);
    ck_assert_int_eq (pwrite (fd, buf, n, off), (ssize_t) n);
  }
  close (fd);
  {
    unsigned char *p = slurp (img, SIZE);
    memcpy (origin, p, SIZE);
    free (p);
  }
}

static void
compare_snap (struct msnap *m, const char *why)
{
  static unsigned char buf[SIZE];
  ssize_t d;
  int r;

  errno = 0;
  r = nbdsnap_snap_pread (e, m->s, buf, SIZE, 0);
  if (m->invalid) {
    MCHECK (r == -1 && errno == EIO, "%s: invalid snapshot %s: read "
            "returned %d errno %d, want EIO", why, m->name, r, errno);
    return;
  }
  MCHECK (r == 0, "%s: read snapshot %s failed: %s", why, m->name,
          strerror (errno));
  d = first_diff (buf, m->bytes, SIZE);
  MCHECK (d == -1, "%s: snapshot %s differs from the model at byte %zd "
          "(chunk %zd): 0x%02x, want 0x%02x", why, m->name, d,
          d / (ssize_t) CHUNK, buf[d], m->bytes[d]);
}

struct chg {
  unsigned char in[NCHUNKS];
  uint64_t end;                 /* end of the previous range */
  bool last_zero;               /* its zero mark */
  const unsigned char *to;      /* the newer instant's bytes */
  int bad;
};

static int
chg_cb (void *opaque, uint64_t off, uint64_t len, bool hole)
{
  struct chg *c = opaque;
  uint64_t k;

  if (len == 0 || off + len > SIZE || off % CHUNK != 0
      || (c->end && off < c->end)
      || (c->end && off == c->end && hole == c->last_zero))
    c->bad = 1;                 /* empty, unaligned, unmerged, unordered */
  else if (hole && first_diff (c->to + off, zeros, len) != -1)
    c->bad = 2;                 /* marked zero, but the bytes are not */
  else
    for (k = off / CHUNK; k <= (off + len - 1) / CHUNK; ++k)
      c->in[k] = 1;
  c->end = off + len;
  c->last_zero = hole;
  return 0;
}

/* changes from m to every newer live snapshot n: lists every chunk where
 * their bytes differ, marks zero only what n reads as zeros. */
static void
check_changes_between (struct msnap *m, const char *why)
{
  struct chg c;
  uint64_t k;
  int i, r;

  for (i = 0; i < MAXSNAPS; ++i) {
    struct msnap *n = &snaps[i];

    if (!n->used || n->invalid || n->deleting)
      continue;
    memset (&c, 0, sizeof c);
    c.to = n->bytes;
    errno = 0;
    r = helpers_changes (e, m->s, n->s, chg_cb, &c);
    if (r == -1 && errno == EINVAL)
      continue;                 /* n is older than m */
    MCHECK (r == 0 && !c.bad, "%s: changes %s %s: r=%d, bad ranges=%d",
            why, m->name, n->name, r, c.bad);
    for (k = 0; k < NCHUNKS; ++k)
      MCHECK (c.in[k] || first_diff (m->bytes + k * CHUNK,
                                     n->bytes + k * CHUNK,
                                     k * CHUNK + CHUNK <= SIZE ? CHUNK
                                     : SIZE - k * CHUNK) == -1,
              "%s: changes %s %s miss chunk %" PRIu64 ", which differs",
              why, m->name, n->name, k);
  }
}

static void
check_changes (struct msnap *m, const char *why)
{
  struct chg c;
  uint64_t k;
  int r;

  memset (&c, 0, sizeof c);
  c.to = origin;
  errno = 0;
  r = helpers_changes (e, m->s, NULL, chg_cb, &c);
  if (m->invalid) {
    MCHECK (r == -1 && errno == EIO, "%s: changes of invalid %s: %d",
            why, m->name, r);
    return;
  }
  MCHECK (r == 0 && !c.bad, "%s: changes of %s: r=%d, bad ranges=%d", why,
          m->name, r, c.bad);
  check_changes_between (m, why);
  for (k = 0; k < NCHUNKS; ++k) {
    MCHECK (c.in[k] || !m->written[k], "%s: changes of %s miss chunk %"
            PRIu64 ", written since", why, m->name, k);
    MCHECK (!c.in[k] || m->touched[k], "%s: changes of %s list chunk %"
            PRIu64 ", untouched since", why, m->name, k);
  }
}

/* A request covered [off, off+n); changed: it changed the origin. */
static void
touch (uint64_t off, uint32_t n, bool changed)
{
  uint64_t k;
  int i;

  for (i = 0; i < MAXSNAPS; ++i)
    if (snaps[i].used)
      for (k = off / CHUNK; k <= (off + n - 1) / CHUNK; ++k) {
        snaps[i].touched[k] = 1;
        if (changed)
          snaps[i].written[k] = 1;
      }
}

static void
compare_all (const char *why)
{
  static unsigned char buf[SIZE];
  ssize_t d;
  int i;

  for (i = 0; i < MAXSNAPS; ++i)
    if (snaps[i].used && !snaps[i].deleting) {
      compare_snap (&snaps[i], why);
      check_changes (&snaps[i], why);
    }
  MCHECK (pread (o.fd, buf, SIZE, 0) == SIZE, "pread origin");
  d = first_diff (buf, origin, SIZE);
  MCHECK (d == -1, "%s: origin differs from the model at byte %zd", why, d);
}

/* Refresh the invalid flags from the engine (after an injected error). */
static void
refresh_invalid (void)
{
  struct nbdsnap_snap_info in;
  int i;

  for (i = 0; i < MAXSNAPS; ++i)
    if (snaps[i].used) {
      nbdsnap_snap_info (e, snaps[i].s, &in);
      if (snaps[i].deleting)
        continue;
      if (in.state == NBDSNAP_STATE_INVALID)
        snaps[i].invalid = true;
      else
        MCHECK (!snaps[i].invalid, "snapshot %s became valid again",
                snaps[i].name);
    }
}

static void
random_range (uint64_t *off, uint32_t *n)
{
  switch (rnd (4)) {
  case 0:                       /* a few bytes anywhere */
    *off = rnd (SIZE);
    *n = rnd (512) + 1;
    break;
  case 1:                       /* up to 3 chunks, unaligned */
    *off = rnd (SIZE);
    *n = rnd (3 * CHUNK) + 1;
    break;
  case 2:                       /* aligned chunks */
    *off = rnd (SIZE / CHUNK + 1) * CHUNK;
    *n = (rnd (8) + 1) * CHUNK;
    break;
  default:                      /* the tail */
    *n = rnd (2 * CHUNK) + 1;
    *off = *n > SIZE ? 0 : SIZE - *n;
    break;
  }
  if (*off >= SIZE)
    *off = SIZE - 1;
  if (*n > SIZE - *off)
    *n = SIZE - *off;
}

static void
op_write (bool inject)
{
  static unsigned char buf[8 * CHUNK];
  uint64_t off, pseed = rnd (UINT64_MAX) | 1;
  uint32_t n;
  int r;

  random_range (&off, &n);
  pattern_fill (buf, n, pseed, off);
  note ("%swrite %u at %" PRIu64, inject ? "inject+" : "", n, off);
  if (inject)
    nbdsnap_engine_inject_store_error (e, rnd (2) ? EIO : ENOSPC);
  r = nbdsnap_engine_pwrite (e, buf, n, off, rnd (200) == 0);
  if (inject)
    nbdsnap_engine_inject_store_error (e, 0);
  MCHECK (r == 0, "write %u at %" PRIu64 " failed: %s", n, off,
          strerror (errno));
  memcpy (origin + off, buf, n);
  touch (off, n, true);
  if (inject)
    refresh_invalid ();
}

static void
op_zero (void)
{
  uint64_t off;
  uint32_t n;
  bool may_trim = rnd (2), fast = rnd (4) == 0;
  int r;

  random_range (&off, &n);
  note ("zero %u at %" PRIu64 " may_trim=%d fast=%d", n, off, may_trim,
        fast);
  errno = 0;
  r = nbdsnap_engine_zero (e, n, off, may_trim, false, fast);
  if (r == -1 && fast && (errno == ENOTSUP || errno == EOPNOTSUPP)) {
    touch (off, n, false);      /* nothing changed (copies are harmless) */
    return;
  }
  MCHECK (r == 0, "zero %u at %" PRIu64 " failed: %s", n, off,
          strerror (errno));
  memset (origin + off, 0, n);
  touch (off, n, true);
}

static void
op_trim (void)
{
  uint64_t off;
  uint32_t n;

  random_range (&off, &n);
  note ("trim %u at %" PRIu64, n, off);
  MCHECK (nbdsnap_engine_trim (e, n, off, false) == 0, "trim failed: %s",
          strerror (errno));
  /* Undefined content: take what the origin holds now. */
  MCHECK (pread (o.fd, origin + off, n, off) == (ssize_t) n, "pread");
  touch (off, n, true);
}

static void
op_create (void)
{
  int i;
  struct msnap *m = NULL;

  if (nlive >= MAXSNAPS)
    return;
  for (i = 0; i < MAXSNAPS; ++i)
    if (!snaps[i].used) {
      m = &snaps[i];
      break;
    }
  snprintf (m->name, sizeof m->name, "m%d", name_counter++);
  m->temporary = rnd (5) == 0;
  note ("create %s%s", m->name, m->temporary ? " (temporary)" : "");
  m->s = nbdsnap_snap_create (e, m->name, m->temporary);
  MCHECK (m->s != NULL, "create %s failed: %s", m->name, strerror (errno));
  m->used = true;
  m->invalid = false;
  if (m->bytes == NULL)
    m->bytes = malloc (SIZE);
  memcpy (m->bytes, origin, SIZE);
  memset (m->written, 0, sizeof m->written);
  memset (m->touched, 0, sizeof m->touched);
  if (++nlive > max_live)
    max_live = nlive;
  /* A duplicate is refused. */
  errno = 0;
  MCHECK (nbdsnap_snap_create (e, m->name, false) == NULL && errno == EEXIST,
          "duplicate create of %s not refused with EEXIST", m->name);
  compare_all ("after create");
}

static void op_create (void);
static void op_read (void);

/* Between two batches of a delete's move: a few operations of the data
 * path (and now and then a create), as other threads would run them. */
static void
between_batches (void *opaque)
{
  int n = rnd (4);

  note ("(between move batches)");
  counts[10]++;
  while (n-- > 0) {
    switch (rnd (12)) {
    case 0: case 1: case 2: case 3: op_write (false); break;
    case 4: op_zero (); break;
    case 5: op_trim (); break;
    case 6:
      note ("flush");
      MCHECK (nbdsnap_engine_flush (e) == 0, "flush failed");
      break;
    case 7:
      if (rnd (4) == 0)
        op_create ();
      break;
    default: op_read (); break;
    }
  }
}

static void
op_delete (void)
{
  int i, k, pick;
  bool interleave;

  if (nlive == 0)
    return;
  pick = rnd (nlive);
  for (i = 0, k = 0; i < MAXSNAPS; ++i)
    if (snaps[i].used && k++ == pick)
      break;
  interleave = rnd (2);
  note ("delete %s%s%s", snaps[i].name,
        snaps[i].invalid ? " (invalid)" : "",
        interleave ? ", interleaved" : "");
  if (interleave)
    nbdsnap_engine_test_move_hook (e, rnd (4) + 1, between_batches, NULL);
  snaps[i].deleting = true;
  MCHECK (nbdsnap_snap_delete (e, snaps[i].s) == 0, "delete %s failed: %s",
          snaps[i].name, strerror (errno));
  snaps[i].deleting = false;
  nbdsnap_engine_test_move_hook (e, 0, NULL, NULL);
  errno = 0;
  MCHECK (nbdsnap_snap_lookup (e, snaps[i].name) == NULL && errno == ENOENT,
          "%s still found after delete", snaps[i].name);
  snaps[i].used = false;
  nlive--;
  compare_all ("after delete");
}

static void
op_rollback (void)
{
  struct chg c;
  int i, k, pick, r;
  uint64_t ch;

  if (nlive == 0)
    return;
  pick = rnd (nlive);
  for (i = 0, k = 0; i < MAXSNAPS; ++i)
    if (snaps[i].used && k++ == pick)
      break;
  note ("rollback to %s%s", snaps[i].name,
        snaps[i].invalid ? " (invalid)" : "");
  errno = 0;
  if (snaps[i].invalid) {
    r = nbdsnap_rollback (e, snaps[i].s, NULL);
    MCHECK (r == -1 && errno == EIO, "rollback to invalid %s: %d (%s)",
            snaps[i].name, r, strerror (errno));
    return;
  }
  /* What it writes: the chunks of the changes set. */
  memset (&c, 0, sizeof c);
  c.to = origin;
  MCHECK (helpers_changes (e, snaps[i].s, NULL, chg_cb, &c) == 0,
          "changes of %s", snaps[i].name);
  r = nbdsnap_rollback (e, snaps[i].s, NULL);
  MCHECK (r == 0, "rollback to %s failed: %s", snaps[i].name,
          strerror (errno));
  for (ch = 0; ch < NCHUNKS; ++ch) {
    uint64_t off = ch * CHUNK, len = off + CHUNK > SIZE ? SIZE - off : CHUNK;
    if (c.in[ch])
      touch (off, len,
             memcmp (origin + off, snaps[i].bytes + off, len) != 0);
    else
      MCHECK (memcmp (origin + off, snaps[i].bytes + off, len) == 0,
              "chunk %" PRIu64 " differs from %s but is not in its "
              "changes", ch, snaps[i].name);
  }
  memcpy (origin, snaps[i].bytes, SIZE);
  compare_all ("after rollback");
}

static void
op_reopen (void)
{
  int i;

  note ("reopen");
  eclose ();
  eopen ();
  for (i = 0; i < MAXSNAPS; ++i) {
    if (!snaps[i].used)
      continue;
    errno = 0;
    snaps[i].s = nbdsnap_snap_lookup (e, snaps[i].name);
    if (snaps[i].temporary) {
      MCHECK (snaps[i].s == NULL, "temporary %s survived reopen",
              snaps[i].name);
      snaps[i].used = false;
      nlive--;
      continue;
    }
    MCHECK (snaps[i].s != NULL, "%s lost at reopen", snaps[i].name);
  }
  refresh_invalid ();
  {
    struct nbdsnap_snap_info *l;
    ssize_t n = nbdsnap_snap_list (e, &l);
    MCHECK (n == nlive, "list has %zd snapshots, the model %d", n, nlive);
    free (l);
  }
  compare_all ("after reopen");
}

static void
op_read (void)
{
  static unsigned char buf[8 * CHUNK];
  uint64_t off;
  uint32_t n;
  int i, k, pick, r;

  if (nlive == 0)
    return;
  pick = rnd (nlive);
  for (i = 0, k = 0; i < MAXSNAPS; ++i)
    if (snaps[i].used && k++ == pick)
      break;
  if (snaps[i].deleting)
    return;
  random_range (&off, &n);
  note ("read %s %u at %" PRIu64, snaps[i].name, n, off);
  errno = 0;
  r = nbdsnap_snap_pread (e, snaps[i].s, buf, n, off);
  if (snaps[i].invalid) {
    MCHECK (r == -1 && errno == EIO, "invalid %s read: %d", snaps[i].name,
            r);
    return;
  }
  MCHECK (r == 0, "read %s failed: %s", snaps[i].name, strerror (errno));
  MCHECK (memcmp (buf, snaps[i].bytes + off, n) == 0,
          "read %s %u at %" PRIu64 ": differs at +%zd", snaps[i].name, n,
          off, first_diff (buf, snaps[i].bytes + off, n));
}

static void
run (long nops)
{
  long i;
  double t0 = now_s ();

  make_start_image ();
  eopen ();
  for (i = 0; i < nops; ++i) {
    uint64_t p = rnd (10000);
    opno = i;
    if (p < 4000)
      op_write (false), counts[0]++;
    else if (p < 4800)
      op_zero (), counts[1]++;
    else if (p < 5200)
      op_trim (), counts[2]++;
    else if (p < 5245)
      op_create (), counts[3]++;
    else if (p < 5285)
      op_delete (), counts[4]++;
    else if (p < 5293)
      op_reopen (), counts[5]++;
    else if (p < 5313)
      op_write (true), counts[6]++;
    else if (p < 5318)
      op_rollback (), counts[9]++;
    else if (p < 5323) {
      note ("flush");
      MCHECK (nbdsnap_engine_flush (e) == 0, "flush failed");
      counts[7]++;
    }
    else
      op_read (), counts[8]++;
  }
  opno = nops;
  note ("final check");
  compare_all ("at the end");
  op_reopen ();
  printf ("check_model: %s, %ld ops in %.1f s: %ld writes, %ld zeros, "
          "%ld trims, %ld creates, %ld deletes, %ld reopens, %ld injected, "
          "%ld flushes, %ld reads, %ld rollbacks, %ld pauses between "
          "move batches; at most %d live snapshots\n",
          dur == NBDSNAP_DURABILITY_POWER ? "power" : "process", nops,
          now_s () - t0, counts[0], counts[1], counts[2], counts[3],
          counts[4], counts[5], counts[6], counts[7], counts[8], counts[9],
          counts[10], max_live);
}

static long
nops_from_env (long dflt)
{
  const char *s = getenv ("NBDSNAP_MODEL_OPS");
  return s && *s ? atol (s) : dflt;
}

START_TEST (test_model_process)
{
  long n = nops_from_env (100000);

  dur = NBDSNAP_DURABILITY_PROCESS;
  run (n);
  if (n >= 100000)
    MCHECK (max_live >= 8, "only %d live snapshots at most", max_live);
}
END_TEST

START_TEST (test_model_power)
{
  dur = NBDSNAP_DURABILITY_POWER;
  run (nops_from_env (100000) / 20);
}
END_TEST

static Suite *
model_suite (void)
{
  Suite *s = suite_create ("model");
  TCase *tc;

  tc = tcase_create ("process");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_model_process);
  suite_add_tcase (s, tc);
  tc = tcase_create ("power");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 600);
  tcase_add_test (tc, test_model_power);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  return helpers_run_suite (model_suite (), "check_model");
}
