/* nbdsnap: micro-benchmark of the engine's origin write path and of
 * snapshot creation (bench/engine-bench.c; run it with bench/run).
 *
 * Notes on the design
 *
 * The machine this runs on is noisy (a few shared cores), so absolute times
 * mean little; every figure that matters is a ratio between two things
 * measured side by side in the same round:
 *
 *   writes   Per directory (one filesystem) and durability mode, three files
 *            of the same size and kind, all filled with non-zero data (an
 *            all-zero chunk is never copied, a hole is never a candidate):
 *              A  an origin with 1 snapshot,
 *              B  an origin with 64 snapshots (63 created, then the last),
 *              P  a plain file written with pwrite (the baseline).
 *            One round: give A and B a fresh newest snapshot (delete the
 *            newest, create one: the chain length stays 1 or 64), then
 *            "first" writes (K writes, one per chunk, none of them copied
 *            yet: every write copies a chunk) on A, B and P at the same
 *            offsets, then "steady" writes (the same offsets again: the
 *            chunks are copied, the lock-free fast path) on A, B and P,
 *            repeated for at least -m ms.  The order of A, B and P rotates
 *            from round to round; caches are settled (engine flush,
 *            fdatasync) between rounds, never inside a timed window.  One
 *            warm-up round is not recorded and chooses K so that the first
 *            writes of A take about -t ms.  Reported: the median µs/op,
 *            and the medians of the per-round ratios A/P, B/P, B/A.
 *
 *   mt       First writes from T threads at once (disjoint chunks, one
 *            snapshot) against T threads of plain pwrite: shows what group
 *            commit shares in power mode.
 *
 *   create   nbdsnap_snap_create () on a 1 TiB sparse image, the same with
 *            1024 scattered data extents, a fully allocated 1 GiB image,
 *            and that image with 64 MiB of unflushed writes (create flushes
 *            the origin, so this is what a live VM sees); a prober thread
 *            measures how long origin writes stall meanwhile.
 *
 * Every timed engine window is checked afterwards (check_window): the
 * snapshot must be live and have made exactly the copies expected, else
 * the row is marked "!" and the program exits 1.  An invalidated snapshot
 * takes no copies, so without this check a failure would look fast.
 *
 * Counting syncs: this program defines fdatasync () and msync () itself, so
 * the engine (linked statically from libnbdsnap.a) calls these, which count
 * and then make the system call.  "syncs/op" is the number of fdatasync
 * plus msync (MS_SYNC) calls in a timed window divided by the writes in it:
 * 2.00 in power mode means one store sync and one bitmap sync per
 * copy-on-write, less means group commit shared them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

#define MIB (UINT64_C (1) << 20)
#define GIB (UINT64_C (1) << 30)
#define TIB (UINT64_C (1) << 40)
#define MAX_ROUNDS 64
#define MAX_THREADS 64

/* Options (see usage ()). */
static uint64_t opt_size = 256 * MIB;
static uint32_t opt_bs = 4096;
static uint32_t opt_chunk = 64 * 1024;
static int opt_rounds = 7;
static double opt_target_ms = 250;
static double opt_min_ms = 20;
static int opt_snaps = 64;
static bool opt_power = true, opt_process = true;

/* ---- sync counting (see the notes above) ---- */

static uint64_t n_fdatasync, n_msync;

int
fdatasync (int fd)
{
  __atomic_fetch_add (&n_fdatasync, 1, __ATOMIC_RELAXED);
  return syscall (SYS_fdatasync, fd);
}

int
msync (void *addr, size_t len, int flags)
{
  if (flags & MS_SYNC)
    __atomic_fetch_add (&n_msync, 1, __ATOMIC_RELAXED);
  return syscall (SYS_msync, addr, len, flags);
}

static uint64_t
syncs_now (void)
{
  return __atomic_load_n (&n_fdatasync, __ATOMIC_RELAXED)
    + __atomic_load_n (&n_msync, __ATOMIC_RELAXED);
}

/* ---- small helpers ---- */

static void __attribute__ ((noreturn, format (printf, 1, 2)))
die (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  fprintf (stderr, "engine-bench: ");
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
  va_end (ap);
  exit (EXIT_FAILURE);
}

static uint64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15;

static uint64_t
rng (void)
{
  uint64_t x = rng_state;

  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return rng_state = x;
}

/* Non-zero bytes: an all-zero chunk would not be copied. */
static void
fill_pattern (char *buf, size_t len, uint64_t seed)
{
  size_t i;

  for (i = 0; i < len; ++i)
    buf[i] = (char) (((seed + i) * 0x9d) | 1);
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

static double
median (const double *v, int n)
{
  double tmp[MAX_ROUNDS];

  memcpy (tmp, v, n * sizeof *v);
  qsort (tmp, n, sizeof *tmp, cmp_double);
  return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

static double
vmin (const double *v, int n)
{
  double m = v[0];
  for (int i = 1; i < n; ++i)
    if (v[i] < m)
      m = v[i];
  return m;
}

static double
vmax (const double *v, int n)
{
  double m = v[0];
  for (int i = 1; i < n; ++i)
    if (v[i] > m)
      m = v[i];
  return m;
}

static const char *
fs_name (const char *dir)
{
  struct statfs sf;

  if (statfs (dir, &sf) == -1)
    die ("statfs %s: %m", dir);
  switch ((unsigned long) sf.f_type) {
  case 0x01021994: return "tmpfs";
  case 0xEF53: return "ext4";
  case 0x58465342: return "xfs";
  case 0x9123683E: return "btrfs";
  default: return "other";
  }
}

static void
xpwrite (int fd, const void *buf, size_t n, uint64_t off)
{
  if (pwrite (fd, buf, n, off) != (ssize_t) n)
    die ("pwrite: %m");
}

/* Create path with size bytes of non-zero data, synced. */
static int
make_full_file (const char *path, uint64_t size)
{
  char *buf = malloc (MIB);
  uint64_t off;
  int fd;

  fd = open (path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd == -1 || buf == NULL)
    die ("%s: %m", path);
  fill_pattern (buf, MIB, 1);
  for (off = 0; off < size; off += MIB) {
    size_t n = size - off < MIB ? size - off : MIB;
    memcpy (buf + 8, &off, sizeof off);   /* a different block each MiB */
    xpwrite (fd, buf, n, off);
  }
  if (fdatasync (fd) == -1)
    die ("fdatasync %s: %m", path);
  free (buf);
  return fd;
}

/* The writes and mt images are kept between sections of one run. */
static void
ensure_full_file (const char *path)
{
  struct stat st;

  if (stat (path, &st) == 0 && (uint64_t) st.st_size == opt_size)
    return;
  close (make_full_file (path, opt_size));
}

static void
rm_rf (const char *path)
{
  char cmd[4200];

  snprintf (cmd, sizeof cmd, "rm -rf '%s'", path);
  if (system (cmd) != 0)
    die ("%s failed", cmd);
}

/* ---- an origin with its engine and its chain of snapshots ---- */

struct subject {
  char img[4096], statedir[4096];
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e;
  unsigned next_name;
};

static void
subject_open (struct subject *s, enum nbdsnap_durability d)
{
  struct nbdsnap_engine_config cfg = {
    .origin = &s->o, .statedir = s->statedir, .chunk_size = opt_chunk,
    .durability = d,
  };

  if (nbdsnap_origin_open (&s->o, s->img, false) == -1)
    die ("cannot open %s", s->img);
  rm_rf (s->statedir);
  s->e = nbdsnap_engine_open (&cfg);
  if (s->e == NULL)
    die ("cannot open the engine on %s", s->img);
}

static void
subject_close (struct subject *s)
{
  nbdsnap_engine_close (s->e);
  nbdsnap_origin_close (&s->o);
  rm_rf (s->statedir);
}

static struct nbdsnap_snap *
subject_create (struct subject *s)
{
  char name[32];
  struct nbdsnap_snap *snap;

  snprintf (name, sizeof name, "b%05u", s->next_name++);
  snap = nbdsnap_snap_create (s->e, name, false);
  if (snap == NULL)
    die ("create snapshot %s on %s failed", name, s->img);
  return snap;
}

/* Delete the newest snapshot and create a new one, so that every chunk is
 * uncopied again for the newest while the chain keeps its length.  The
 * newest, not the oldest: its copies are freed (or, with older snapshots,
 * moved into the next older one), so both subjects reuse the store space
 * of the previous round instead of one of them growing its stores. */
static struct nbdsnap_snap *
subject_rotate (struct subject *s, struct nbdsnap_snap *newest)
{
  if (nbdsnap_snap_delete (s->e, newest) == -1)
    die ("delete of the newest snapshot of %s failed", s->img);
  return subject_create (s);
}

/* ---- timed loops ---- */

enum kind { ENGINE, PLAIN };

struct target {
  enum kind kind;
  struct nbdsnap_engine *e;     /* ENGINE */
  int fd;                       /* PLAIN */
};

static inline void
do_write (const struct target *t, const char *buf, uint64_t off)
{
  if (t->kind == ENGINE) {
    if (nbdsnap_engine_pwrite (t->e, buf, opt_bs, off, false) == -1)
      die ("nbdsnap_engine_pwrite at %" PRIu64 " failed", off);
  }
  else
    xpwrite (t->fd, buf, opt_bs, off);
}

/* Write at every offset once (passes = 1) or over and over until min_ns
 * has passed (passes = 0).  Returns ns per write; *ops gets the count. */
static double
timed_writes (const struct target *t, const char *buf, const uint64_t *offs,
              size_t n, int passes, uint64_t min_ns, uint64_t *ops)
{
  uint64_t t0 = now_ns (), t1, done = 0;

  do {
    for (size_t i = 0; i < n; ++i)
      do_write (t, buf, offs[i]);
    done += n;
    t1 = now_ns ();
  } while (passes != 1 && t1 - t0 < min_ns);
  if (ops)
    *ops = done;
  return (double) (t1 - t0) / done;
}

/* Sanity check of one timed window on an engine: the snapshot must still
 * be live and have made exactly the copies expected (one per first write,
 * none for steady writes); otherwise the figures measure something else
 * (an invalid snapshot takes no copies) and the row is marked "!". */
static int failed_checks;

static bool
check_window (struct nbdsnap_engine *e, struct nbdsnap_snap *s,
              const struct nbdsnap_snap_info *before, uint64_t want,
              const char *what)
{
  struct nbdsnap_snap_info after;

  nbdsnap_snap_info (e, s, &after);
  if (after.state == NBDSNAP_STATE_LIVE
      && after.cow_count - before->cow_count == want)
    return true;
  failed_checks++;
  fprintf (stderr, "engine-bench: CHECK FAILED: %s: snapshot %s is %s "
           "(state %d) and made %" PRIu64 " copies, %" PRIu64 " expected\n",
           what, after.name,
           after.state == NBDSNAP_STATE_LIVE ? "live" : "not live",
           (int) after.state, after.cow_count - before->cow_count, want);
  return false;
}

/* Chunk-aligned offsets of every chunk of a size-byte file, shuffled. */
static uint64_t *
shuffled_offsets (uint64_t size, size_t *n)
{
  size_t nchunks = size / opt_chunk, i;
  uint64_t *v = malloc (nchunks * sizeof *v);

  if (v == NULL)
    die ("malloc: %m");
  for (i = 0; i < nchunks; ++i)
    v[i] = (uint64_t) i * opt_chunk;
  for (i = nchunks - 1; i > 0; --i) {
    size_t j = rng () % (i + 1);
    uint64_t x = v[i];
    v[i] = v[j];
    v[j] = x;
  }
  *n = nchunks;
  return v;
}

static void
settle (struct subject *a, struct subject *b, int pfd)
{
  if (nbdsnap_engine_flush (a->e) == -1 || nbdsnap_engine_flush (b->e) == -1
      || fdatasync (pfd) == -1)
    die ("flush failed");
}

static size_t
clamp_k (double per_op_ns, size_t lo, size_t hi)
{
  double k = opt_target_ms * 1e6 / (per_op_ns > 1 ? per_op_ns : 1);

  if (k < lo)
    return lo;
  if (k > hi)
    return hi;
  return (size_t) k;
}

static const char *
dur_name (enum nbdsnap_durability d)
{
  return d == NBDSNAP_DURABILITY_POWER ? "power" : "process";
}

/* ---- writes: first and steady, 1 vs N snapshots vs plain ---- */

static void
print_writes_header (void)
{
  printf ("%-6s %-7s %-6s %5s %9s %8s %8s %7s %5s %8s %-17s %8s %8s\n",
          "fs", "durab.", "phase", "snaps", "eng us/op", "plain us",
          "eng MB/s", "ratio", "K", "syncs/op", "N/1 [min-max]",
          "sync/cow", "p+fdsync");
}

static void
bench_writes (const char *dir, enum nbdsnap_durability d)
{
  const char *fs = fs_name (dir);
  struct subject a = { 0 }, b = { 0 };
  struct target ta = { .kind = ENGINE }, tb = { .kind = ENGINE },
    tp = { .kind = PLAIN };
  char plain[4096];
  char *buf;
  uint64_t *offs;
  size_t nchunks, k = 64, next_k = 64;
  int r, i;
  /* [phase][subject A, B, P] per round, and syncs per op, sync ns/cow. */
  double us[2][3][MAX_ROUNDS], ratio_ap[2][MAX_ROUNDS],
    ratio_bp[2][MAX_ROUNDS], ratio_ba[2][MAX_ROUNDS];
  double syncs[2][2][MAX_ROUNDS], cowsync[2][MAX_ROUNDS];
  double psync[MAX_ROUNDS] = { 0 };
  bool bad[2][2] = { { false } };
  struct nbdsnap_snap *newest_a, *newest_b;

  snprintf (a.img, sizeof a.img, "%s/img-1snap", dir);
  snprintf (a.statedir, sizeof a.statedir, "%s/state-1snap", dir);
  snprintf (b.img, sizeof b.img, "%s/img-nsnap", dir);
  snprintf (b.statedir, sizeof b.statedir, "%s/state-nsnap", dir);
  snprintf (plain, sizeof plain, "%s/img-plain", dir);
  ensure_full_file (a.img);
  ensure_full_file (b.img);
  ensure_full_file (plain);
  tp.fd = open (plain, O_RDWR | O_CLOEXEC);
  if (tp.fd == -1)
    die ("%s: %m", plain);
  subject_open (&a, d);
  subject_open (&b, d);
  ta.e = a.e;
  tb.e = b.e;
  newest_a = subject_create (&a);
  for (i = 0; i < opt_snaps - 1; ++i)
    subject_create (&b);
  newest_b = subject_create (&b);

  if (posix_memalign ((void **) &buf, 4096, opt_bs) != 0)
    die ("posix_memalign");
  fill_pattern (buf, opt_bs, 77);
  offs = shuffled_offsets (opt_size, &nchunks);

  for (r = -1; r < opt_rounds; ++r) {
    /* Round -1 is the warm-up: it picks k. */
    size_t start = r < 0 ? 0 : ((size_t) r * k) % (nchunks - k + 1);
    const uint64_t *o = offs + start;
    uint64_t min_ns = (uint64_t) (opt_min_ms * 1e6);
    struct target *order[3] = { &ta, &tb, &tp };
    int rot = r < 0 ? 0 : r % 3;
    int phase;

    if (r >= 0) {
      newest_a = subject_rotate (&a, newest_a);
      newest_b = subject_rotate (&b, newest_b);
    }
    settle (&a, &b, tp.fd);
    for (phase = 0; phase < 2; ++phase) {
      double t[3];
      for (i = 0; i < 3; ++i) {
        struct target *tg = order[(i + rot) % 3];
        int idx = tg == &ta ? 0 : tg == &tb ? 1 : 2;
        struct nbdsnap_snap_info i0, i1;
        struct nbdsnap_snap *nw = idx == 0 ? newest_a : newest_b;
        uint64_t s0 = syncs_now (), ops;
        /* An engine's first writes run once: a second pass is steady. */
        bool once = phase == 0 && tg->kind == ENGINE;

        if (tg->kind == ENGINE)
          nbdsnap_snap_info (tg->e, nw, &i0);
        t[idx] = timed_writes (tg, buf, o, k, once ? 1 : 0, min_ns, &ops);
        if (tg->kind == ENGINE
            && !check_window (tg->e, nw, &i0, once ? k : 0,
                              phase == 0 ? "first writes" : "steady writes"))
          bad[phase][idx] = true;
        if (tg->kind == ENGINE && r >= 0) {
          nbdsnap_snap_info (tg->e, nw, &i1);
          syncs[phase][idx][r] = (double) (syncs_now () - s0) / ops;
          if (phase == 0)
            cowsync[idx][r] = i1.cow_count > i0.cow_count
              ? (double) (i1.sync_ns - i0.sync_ns)
                / (i1.cow_count - i0.cow_count) / 1000 : 0;
        }
      }
      if (r < 0) {
        /* The warm-up's steady writes still use the warm-up's k. */
        if (phase == 0)
          next_k = clamp_k (t[0], 64, nchunks);
        continue;
      }
      if (phase == 0 && d == NBDSNAP_DURABILITY_POWER) {
        /* Reference: the cheapest durable write, pwrite + fdatasync. */
        uint64_t t0 = now_ns ();
        for (size_t j = 0; j < k; ++j) {
          xpwrite (tp.fd, buf, opt_bs, o[j]);
          if (fdatasync (tp.fd) == -1)
            die ("fdatasync: %m");
        }
        psync[r] = (now_ns () - t0) / 1000.0 / k;
      }
      for (i = 0; i < 3; ++i)
        us[phase][i][r] = t[i] / 1000;
      ratio_ap[phase][r] = t[0] / t[2];
      ratio_bp[phase][r] = t[1] / t[2];
      ratio_ba[phase][r] = t[1] / t[0];
    }
    settle (&a, &b, tp.fd);
    k = next_k;
  }

  for (int phase = 0; phase < 2; ++phase) {
    for (i = 0; i < 2; ++i) {
      double eus = median (us[phase][i], opt_rounds);
      char nn[40] = "", cs[16] = "-", ps[16] = "-";

      if (i == 1)
        snprintf (nn, sizeof nn, "%.2f [%.2f-%.2f]",
                  median (ratio_ba[phase], opt_rounds),
                  vmin (ratio_ba[phase], opt_rounds),
                  vmax (ratio_ba[phase], opt_rounds));
      if (phase == 0 && d == NBDSNAP_DURABILITY_POWER) {
        snprintf (cs, sizeof cs, "%.1f", median (cowsync[i], opt_rounds));
        snprintf (ps, sizeof ps, "%.1f", median (psync, opt_rounds));
      }
      printf ("%-6s %-7s %-6s %5d %9.2f %8.2f %8.1f %7.2f %5zu %8.2f "
              "%-17s %8s %8s%s\n",
              fs, dur_name (d), phase == 0 ? "first" : "steady",
              i == 0 ? 1 : opt_snaps, eus,
              median (us[phase][2], opt_rounds),
              opt_bs / eus,     /* bytes per µs = MB/s */
              median (i == 0 ? ratio_ap[phase] : ratio_bp[phase],
                      opt_rounds),
              k, median (syncs[phase][i], opt_rounds), nn, cs, ps,
              bad[phase][i] ? " !" : "");
    }
  }
  fflush (stdout);

  free (offs);
  free (buf);
  close (tp.fd);
  subject_close (&a);
  subject_close (&b);
}

/* ---- mt: first writes from T threads ---- */

struct worker {
  const struct target *t;
  const char *buf;
  const uint64_t *offs;
  size_t n;
  int passes;
  pthread_barrier_t *bar;
};

static void *
worker_main (void *arg)
{
  struct worker *w = arg;

  pthread_barrier_wait (w->bar);
  for (int p = 0; p < w->passes; ++p)
    for (size_t i = 0; i < w->n; ++i)
      do_write (w->t, w->buf, w->offs[i]);
  pthread_barrier_wait (w->bar);
  return NULL;
}

/* n offsets split between nthreads; returns wall ns per write. */
static double
mt_run (const struct target *t, const char *const *bufs,
        const uint64_t *offs, size_t n, int nthreads, int passes)
{
  pthread_t th[MAX_THREADS];
  struct worker w[MAX_THREADS];
  pthread_barrier_t bar;
  uint64_t t0, t1;
  size_t per = n / nthreads;

  pthread_barrier_init (&bar, NULL, nthreads + 1);
  for (int i = 0; i < nthreads; ++i) {
    w[i] = (struct worker) { t, bufs[i], offs + i * per, per, passes, &bar };
    if (pthread_create (&th[i], NULL, worker_main, &w[i]) != 0)
      die ("pthread_create");
  }
  pthread_barrier_wait (&bar);
  t0 = now_ns ();
  pthread_barrier_wait (&bar);
  t1 = now_ns ();
  for (int i = 0; i < nthreads; ++i)
    pthread_join (th[i], NULL);
  pthread_barrier_destroy (&bar);
  return (double) (t1 - t0) / (per * nthreads * passes);
}

static void
print_mt_header (void)
{
  printf ("%-6s %-7s %7s %10s %10s %8s %7s %8s %8s %8s %9s\n",
          "fs", "durab.", "threads", "eng us/op", "plain us", "ratio",
          "ops", "syncs/op", "fdsync", "msync", "vs 1 thr");
}

static void
bench_mt (const char *dir, enum nbdsnap_durability d, const int *threads,
          int nthr)
{
  const char *fs = fs_name (dir);
  struct subject a = { 0 };
  struct target ta = { .kind = ENGINE }, tp = { .kind = PLAIN };
  char plain[4096];
  char *bufs[MAX_THREADS];
  uint64_t *offs;
  size_t nchunks, n = 64;
  double base = 0;
  struct nbdsnap_snap *newest;

  snprintf (a.img, sizeof a.img, "%s/img-1snap", dir);
  snprintf (a.statedir, sizeof a.statedir, "%s/state-mt", dir);
  snprintf (plain, sizeof plain, "%s/img-plain", dir);
  ensure_full_file (a.img);
  ensure_full_file (plain);
  tp.fd = open (plain, O_RDWR | O_CLOEXEC);
  if (tp.fd == -1)
    die ("%s: %m", plain);
  subject_open (&a, d);
  ta.e = a.e;
  newest = subject_create (&a);
  for (int i = 0; i < MAX_THREADS; ++i) {
    if (posix_memalign ((void **) &bufs[i], 4096, opt_bs) != 0)
      die ("posix_memalign");
    fill_pattern (bufs[i], opt_bs, 100 + i);
  }
  offs = shuffled_offsets (opt_size, &nchunks);

  /* Warm-up with one thread: choose n so that the single-threaded round
   * takes about twice the target (threads split it, so they need more). */
  newest = subject_rotate (&a, newest);
  mt_run (&ta, (const char *const *) bufs, offs, 64, 1, 1);
  newest = subject_rotate (&a, newest);
  n = clamp_k (mt_run (&ta, (const char *const *) bufs, offs, 64, 1, 1) / 2,
               256, nchunks);

  for (int ti = 0; ti < nthr; ++ti) {
    int T = threads[ti];
    int rounds = opt_rounds < 5 ? opt_rounds : 5;
    double eng[MAX_ROUNDS], pl[MAX_ROUNDS], rat[MAX_ROUNDS],
      sp[MAX_ROUNDS], fd[MAX_ROUNDS], ms[MAX_ROUNDS];
    size_t nn = n - n % T;
    struct nbdsnap_snap_info i0;
    bool bad = false;

    for (int r = 0; r < rounds; ++r) {
      size_t start = ((size_t) r * nn) % (nchunks - nn + 1);
      uint64_t f0, m0;
      double tpl;
      int passes;

      newest = subject_rotate (&a, newest);
      if (nbdsnap_engine_flush (a.e) == -1 || fdatasync (tp.fd) == -1)
        die ("flush");
      f0 = __atomic_load_n (&n_fdatasync, __ATOMIC_RELAXED);
      m0 = __atomic_load_n (&n_msync, __ATOMIC_RELAXED);
      nbdsnap_snap_info (a.e, newest, &i0);
      eng[r] = mt_run (&ta, (const char *const *) bufs, offs + start, nn, T,
                       1);
      if (!check_window (a.e, newest, &i0, nn, "threaded first writes"))
        bad = true;
      fd[r] = (double) (__atomic_load_n (&n_fdatasync, __ATOMIC_RELAXED)
                        - f0) / nn;
      ms[r] = (double) (__atomic_load_n (&n_msync, __ATOMIC_RELAXED)
                        - m0) / nn;
      sp[r] = fd[r] + ms[r];
      /* Plain: enough passes over the same offsets to last min_ms. */
      tpl = mt_run (&tp, (const char *const *) bufs, offs + start, nn, T, 1);
      passes = (int) (opt_min_ms * 1e6 / (tpl * nn)) + 1;
      pl[r] = mt_run (&tp, (const char *const *) bufs, offs + start, nn, T,
                      passes);
      rat[r] = eng[r] / pl[r];
    }
    if (ti == 0)
      base = median (eng, rounds);
    printf ("%-6s %-7s %7d %10.2f %10.2f %8.2f %7zu %8.2f %8.2f %8.2f "
            "%8.2fx%s\n",
            fs, dur_name (d), T, median (eng, rounds) / 1000,
            median (pl, rounds) / 1000, median (rat, rounds), nn,
            median (sp, rounds), median (fd, rounds), median (ms, rounds),
            base / median (eng, rounds), bad ? " !" : "");
    fflush (stdout);
  }

  for (int i = 0; i < MAX_THREADS; ++i)
    free (bufs[i]);
  free (offs);
  close (tp.fd);
  subject_close (&a);
}

/* ---- create ---- */

static void
print_create_header (void)
{
  printf ("%-6s %-28s %9s %10s %7s %7s %13s %9s\n", "fs", "image",
          "chunks", "create ms", "min", "max", "stall ms (n)", "delete ms");
}

/* The prober: back-to-back origin writes (one 4 KiB block, copied once,
 * then the fast path) while snapshots are created.  Create holds the chain
 * lock exclusive, so a write that overlaps a create waits for it: the
 * longest such write is how long a client's writes stall.  Back to back,
 * so that the prober is already waiting on the lock when the create
 * starts instead of waiting for a CPU (a round without an overlapping
 * write has no figure). */
#define PROBE_RING 65536

struct prober {
  struct nbdsnap_engine *e;
  uint64_t off;
  uint64_t start[PROBE_RING], end[PROBE_RING];
  uint64_t seq;                 /* atomic: writes done */
  int stop;                     /* atomic */
};

static void *
prober_main (void *arg)
{
  struct prober *p = arg;
  char buf[4096];

  fill_pattern (buf, sizeof buf, 5);
  while (!__atomic_load_n (&p->stop, __ATOMIC_ACQUIRE)) {
    uint64_t seq = __atomic_load_n (&p->seq, __ATOMIC_RELAXED);
    uint64_t t0 = now_ns ();
    if (nbdsnap_engine_pwrite (p->e, buf, sizeof buf, p->off, false) == -1)
      die ("prober write failed");
    p->start[seq % PROBE_RING] = t0;
    p->end[seq % PROBE_RING] = now_ns ();
    __atomic_store_n (&p->seq, seq + 1, __ATOMIC_RELEASE);
  }
  return NULL;
}

/* The longest prober write that overlapped [t0, t1], in ms; -1 if none. */
static double
prober_stall (struct prober *p, uint64_t t0, uint64_t t1)
{
  uint64_t seq = __atomic_load_n (&p->seq, __ATOMIC_ACQUIRE), i;
  double worst = -1;

  for (i = seq > PROBE_RING ? seq - PROBE_RING : 0; i < seq; ++i) {
    uint64_t a = p->start[i % PROBE_RING], b = p->end[i % PROBE_RING];
    if (a < t1 && b > t0 && (b - a) / 1e6 > worst)
      worst = (b - a) / 1e6;
  }
  return worst;
}

/* Before each create (untimed): dirty bytes of new data in the image. */
static void
bench_create_one (const char *dir, const char *what, const char *img,
                  uint64_t dirty)
{
  struct subject s = { 0 };
  double c[MAX_ROUNDS], del[MAX_ROUNDS], stall[MAX_ROUNDS];
  int nstall = 0;
  int rounds = opt_rounds < 5 ? 5 : opt_rounds;
  char *buf = malloc (opt_chunk);
  static struct prober pr;
  pthread_t th;

  if (buf == NULL)
    die ("malloc");
  snprintf (s.img, sizeof s.img, "%s", img);
  snprintf (s.statedir, sizeof s.statedir, "%s/state-create", dir);
  /* Create does the same in both modes; process keeps the prober cheap. */
  subject_open (&s, NBDSNAP_DURABILITY_PROCESS);
  memset (&pr, 0, sizeof pr);
  pr.e = s.e;
  pr.off = s.o.size / 2 / opt_chunk * opt_chunk;
  if (pthread_create (&th, NULL, prober_main, &pr) != 0)
    die ("pthread_create");
  for (int r = -1; r < rounds; ++r) {
    struct nbdsnap_snap *snap;
    uint64_t t0, t1, t2, seq;

    for (uint64_t done = 0; done < dirty; done += opt_chunk) {
      uint64_t off = (rng () % (s.o.size / opt_chunk)) * opt_chunk;
      fill_pattern (buf, opt_chunk, rng ());
      xpwrite (s.o.fd, buf, opt_chunk, off);
    }
    t0 = now_ns ();
    snap = subject_create (&s);
    t1 = now_ns ();
    /* Let the write that waited for the create finish and be counted. */
    seq = __atomic_load_n (&pr.seq, __ATOMIC_ACQUIRE);
    while (__atomic_load_n (&pr.seq, __ATOMIC_ACQUIRE) < seq + 2)
      usleep (50);
    if (r >= 0 && (stall[nstall] = prober_stall (&pr, t0, t1)) >= 0)
      nstall++;
    t2 = now_ns ();
    if (nbdsnap_snap_delete (s.e, snap) == -1)
      die ("delete failed");
    if (r >= 0) {
      c[r] = (t1 - t0) / 1e6;
      del[r] = (now_ns () - t2) / 1e6;
    }
  }
  __atomic_store_n (&pr.stop, 1, __ATOMIC_RELEASE);
  pthread_join (th, NULL);
  printf ("%-6s %-28s %9" PRIu64 " %10.2f %7.2f %7.2f %7.2f %2d/%-2d %9.2f\n",
          fs_name (dir), what, s.o.size / opt_chunk, median (c, rounds),
          vmin (c, rounds), vmax (c, rounds),
          nstall ? median (stall, nstall) : 0.0, nstall, rounds,
          median (del, rounds));
  fflush (stdout);
  free (buf);
  subject_close (&s);
}

static void
bench_create (const char *dir)
{
  char img[4096];
  char *buf = malloc (opt_chunk);
  int fd;

  if (buf == NULL)
    die ("malloc");
  snprintf (img, sizeof img, "%s/img-sparse", dir);
  fd = open (img, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd == -1 || ftruncate (fd, TIB) == -1)
    die ("%s: %m", img);
  bench_create_one (dir, "1 TiB sparse", img, 0);
  for (int i = 0; i < 1024; ++i) {
    uint64_t off = (rng () % (TIB / opt_chunk)) * opt_chunk;
    fill_pattern (buf, opt_chunk, i);
    xpwrite (fd, buf, opt_chunk, off);
  }
  if (fdatasync (fd) == -1)
    die ("fdatasync: %m");
  close (fd);
  bench_create_one (dir, "1 TiB sparse, 1024 extents", img, 0);
  unlink (img);

  snprintf (img, sizeof img, "%s/img-full", dir);
  close (make_full_file (img, GIB));
  bench_create_one (dir, "1 GiB allocated", img, 0);
  bench_create_one (dir, "1 GiB allocated, 64M dirty", img, 64 * MIB);
  unlink (img);
  free (buf);
}

/* ---- main ---- */

static void
usage (FILE *f)
{
  fprintf (f,
"usage: engine-bench [OPTIONS] writes|mt|create|all DIR...\n"
"  DIR: a scratch directory per filesystem to test (tmpfs, ext4, ...)\n"
"  -s MIB     image size for writes/mt (default 256)\n"
"  -b BYTES   write size (default 4096)\n"
"  -c BYTES   chunk size (default 65536)\n"
"  -r N       recorded rounds (default 7; one warm-up round is added)\n"
"  -n N       snapshots in the many-snapshot case (default 64)\n"
"  -t MS      target duration of one round's first writes (default 250)\n"
"  -m MS      minimum duration of a repeated timed window (default 20)\n"
"  -d MODE    durability: power, process or both (default both)\n");
}

int
main (int argc, char **argv)
{
  static const int threads[] = { 1, 2, 4, 8 };
  const char *what;
  int c;

  while ((c = getopt (argc, argv, "s:b:c:r:n:t:m:d:h")) != -1) {
    switch (c) {
    case 's': opt_size = strtoull (optarg, NULL, 0) * MIB; break;
    case 'b': opt_bs = strtoul (optarg, NULL, 0); break;
    case 'c': opt_chunk = strtoul (optarg, NULL, 0); break;
    case 'r': opt_rounds = atoi (optarg); break;
    case 'n': opt_snaps = atoi (optarg); break;
    case 't': opt_target_ms = atof (optarg); break;
    case 'm': opt_min_ms = atof (optarg); break;
    case 'd':
      opt_power = strcmp (optarg, "process") != 0;
      opt_process = strcmp (optarg, "power") != 0;
      break;
    case 'h': usage (stdout); exit (EXIT_SUCCESS);
    default: usage (stderr); exit (EXIT_FAILURE);
    }
  }
  if (argc - optind < 2) {
    usage (stderr);
    exit (EXIT_FAILURE);
  }
  if (opt_rounds < 1 || opt_rounds > MAX_ROUNDS || opt_snaps < 1
      || opt_bs == 0 || opt_bs > opt_chunk || opt_size < 2 * opt_chunk
      || opt_size % opt_chunk != 0)
    die ("bad options (see -h)");
  what = argv[optind++];

  if (strcmp (what, "writes") == 0 || strcmp (what, "all") == 0) {
    printf ("# writes: %" PRIu64 " MiB images, %" PRIu32 "-byte writes at "
            "chunk starts, %" PRIu32 "-byte chunks, %d rounds (median)\n",
            opt_size / MIB, opt_bs, opt_chunk, opt_rounds);
    print_writes_header ();
    for (int i = optind; i < argc; ++i) {
      if (opt_process)
        bench_writes (argv[i], NBDSNAP_DURABILITY_PROCESS);
      if (opt_power)
        bench_writes (argv[i], NBDSNAP_DURABILITY_POWER);
    }
    printf ("\n");
  }
  if (strcmp (what, "mt") == 0 || strcmp (what, "all") == 0) {
    printf ("# mt: first writes from T threads, 1 snapshot, %" PRIu32
            "-byte writes, median of %d rounds\n", opt_bs,
            opt_rounds < 5 ? opt_rounds : 5);
    print_mt_header ();
    for (int i = optind; i < argc; ++i) {
      if (opt_power)
        bench_mt (argv[i], NBDSNAP_DURABILITY_POWER, threads, 4);
      if (opt_process)
        bench_mt (argv[i], NBDSNAP_DURABILITY_PROCESS, threads, 4);
    }
    printf ("\n");
  }
  if (strcmp (what, "create") == 0 || strcmp (what, "all") == 0) {
    printf ("# create: nbdsnap_snap_create, %" PRIu32 "-byte chunks, "
            "median of %d\n", opt_chunk, opt_rounds < 5 ? 5 : opt_rounds);
    print_create_header ();
    for (int i = optind; i < argc; ++i)
      bench_create (argv[i]);
  }
  if (failed_checks > 0) {
    printf ("\n! %d timed window(s) failed their check (see stderr): the "
            "rows marked ! do not measure what they say\n", failed_checks);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
