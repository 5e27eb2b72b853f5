/* nbdsnap: the seal.  See seal.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "nbdsnap/checksum.h"
#include "nbdsnap/err.h"
#include "nbdsnap/io.h"
#include "nbdsnap/origin.h"
#include "seal.h"

#define SEAL_FILE "seal"
#define SLOT_SIZE 512
#define MAGIC "nbdsnap-seal 1\n"

struct record {
  bool valid;
  bool running;
  uint64_t seq;
  uint64_t size;
  int64_t mtime, ctime;         /* ns */
  int64_t lease;                /* ns */
  char boot[40];
  uint64_t sect_w, sect_d;
  bool have_sectors;
};

static int64_t
ts_ns (const struct timespec *t)
{
  return (int64_t) t->tv_sec * 1000000000LL + t->tv_nsec;
}

static int64_t
now_ns (clockid_t clock)
{
  struct timespec t;

  clock_gettime (clock, &t);
  return ts_ns (&t);
}

/* "YYYY-MM-DD HH:MM:SS.nnnnnnnnn UTC" */
static void
format_ns (int64_t ns, char *buf, size_t len)
{
  time_t s = ns / 1000000000LL;
  struct tm tm;

  gmtime_r (&s, &tm);
  snprintf (buf, len, "%04d-%02d-%02d %02d:%02d:%02d.%09lld UTC",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, (long long) (ns % 1000000000LL));
}

static void
read_boot_id (char *buf, size_t len)
{
  int fd = open ("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  ssize_t n = -1;

  buf[0] = '\0';
  if (fd >= 0) {
    n = read (fd, buf, len - 1);
    close (fd);
  }
  buf[n > 0 ? n : 0] = '\0';
  buf[strcspn (buf, "\n")] = '\0';
}

/* A block device's written and discarded sectors since boot: fields 7
 * and 15 of /sys/dev/block/M:N/stat (Documentation/block/stat.rst). */
static bool
read_sectors (uint64_t rdev, uint64_t *w, uint64_t *d)
{
  char path[64], buf[512];
  unsigned long long f[17] = { 0 };
  int fd, n;
  ssize_t r;

  snprintf (path, sizeof path, "/sys/dev/block/%u:%u/stat",
            major (rdev), minor (rdev));
  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return false;
  r = read (fd, buf, sizeof buf - 1);
  close (fd);
  if (r <= 0)
    return false;
  buf[r] = '\0';
  n = sscanf (buf, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
              "%llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3], &f[4],
              &f[5], &f[6], &f[7], &f[8], &f[9], &f[10], &f[11], &f[12],
              &f[13], &f[14]);
  if (n < 7)
    return false;
  *w = f[6];
  *d = n >= 15 ? f[14] : 0;
  return true;
}

/* What the image looks like now. */
static int
sample (const struct nbdsnap_origin *o, struct record *r)
{
  struct stat st;

  memset (r, 0, sizeof *r);
  if (fstat (o->fd, &st) == -1) {
    nbdsnap_error ("%s: fstat: %m", o->path);
    return -1;
  }
  r->size = o->size;
  r->mtime = ts_ns (&st.st_mtim);
  r->ctime = ts_ns (&st.st_ctim);
  read_boot_id (r->boot, sizeof r->boot);
  if (o->is_blockdev)
    r->have_sectors = read_sectors (st.st_rdev, &r->sect_w, &r->sect_d);
  return 0;
}

static void
parse_slot (const char *buf, struct record *r)
{
  const char *end = memchr (buf, '\0', SLOT_SIZE);
  const char *sum, *p;
  uint64_t want;
  char state[16];

  memset (r, 0, sizeof *r);
  if (end == NULL || strncmp (buf, MAGIC, strlen (MAGIC)) != 0)
    return;
  sum = strstr (buf, "checksum ");
  if (sum == NULL || sscanf (sum, "checksum %" SCNx64, &want) != 1
      || want != checksum_fnv1a64 (buf, sum - buf))
    return;
  for (p = buf; p < sum; p = strchr (p, '\n') + 1) {
    if (sscanf (p, "state %15s", state) == 1)
      r->running = strcmp (state, "running") == 0;
    else if (sscanf (p, "seq %" SCNu64, &r->seq) == 1
             || sscanf (p, "size %" SCNu64, &r->size) == 1
             || sscanf (p, "mtime %" SCNd64, &r->mtime) == 1
             || sscanf (p, "ctime %" SCNd64, &r->ctime) == 1
             || sscanf (p, "lease %" SCNd64, &r->lease) == 1
             || sscanf (p, "boot %39s", r->boot) == 1)
      ;
    else if (sscanf (p, "sectors %" SCNu64 " %" SCNu64, &r->sect_w,
                     &r->sect_d) == 2)
      r->have_sectors = true;
  }
  r->valid = true;
}

/* Write r into slot seq % 2; fdatasync in power mode.  Caller holds the
 * lock (or is alone, at open and close). */
static int
write_record (struct seal *seal, struct record *r)
{
  char buf[SLOT_SIZE];
  int n, m;

  memset (buf, 0, sizeof buf);
  /* A failed write leaves seal->seq: the next one goes to the same
   * slot, never over the last good record. */
  r->seq = seal->seq + 1;
  n = snprintf (buf, sizeof buf,
                MAGIC "state %s\nseq %" PRIu64 "\nsize %" PRIu64 "\n"
                "mtime %" PRId64 "\nctime %" PRId64 "\nlease %" PRId64 "\n"
                "boot %s\n",
                r->running ? "running" : "clean", r->seq, r->size, r->mtime,
                r->ctime, r->lease, r->boot[0] ? r->boot : "-");
  if (r->have_sectors)
    n += snprintf (buf + n, sizeof buf - n, "sectors %" PRIu64 " %" PRIu64
                   "\n", r->sect_w, r->sect_d);
  m = snprintf (buf + n, sizeof buf - n, "checksum %016" PRIx64 "\n",
                checksum_fnv1a64 (buf, n));
  if (n + m >= SLOT_SIZE) {
    errno = ENAMETOOLONG;
    return -1;
  }
  if (seal->fd < 0) {             /* the first record */
    seal->fd = openat (seal->dirfd, SEAL_FILE,
                       O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (seal->fd == -1)
      return -1;
  }
  if (io_pwrite_full (seal->fd, buf, sizeof buf, (r->seq % 2) * SLOT_SIZE)
      == -1)
    return -1;
  if (seal->sync && fdatasync (seal->fd) == -1)
    return -1;
  seal->seq = r->seq;
  return 0;
}

int
seal_check (struct seal *seal, int dirfd, const struct nbdsnap_origin *o,
            enum nbdsnap_durability durability, int64_t lease_ns,
            enum seal_verdict *verdict, char *why, size_t len)
{
  char buf[2 * SLOT_SIZE];
  struct record slot[2], *rec, now;
  ssize_t n;
  char t1[64], t2[64];

  memset (seal, 0, sizeof *seal);
  seal->fd = -1;
  seal->origin = o;
  seal->sync = durability == NBDSNAP_DURABILITY_POWER;
  seal->lease_ns = lease_ns > 0 ? lease_ns : SEAL_LEASE_NS;
  pthread_mutex_init (&seal->lock, NULL);
  {
    pthread_condattr_t ca;
    pthread_condattr_init (&ca);
    pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
    pthread_cond_init (&seal->wake, &ca);
    pthread_condattr_destroy (&ca);
  }
  why[0] = '\0';

  seal->dirfd = dirfd;
  seal->active = true;
  /* Created by the first record written: a start that fails before the
   * server writes anything leaves the state directory as it was. */
  seal->fd = openat (dirfd, SEAL_FILE, O_RDWR | O_CLOEXEC);
  if (seal->fd == -1 && errno != ENOENT) {
    nbdsnap_error ("state directory: %s: %m", SEAL_FILE);
    return -1;
  }
  memset (buf, 0, sizeof buf);
  n = seal->fd >= 0 ? pread (seal->fd, buf, sizeof buf, 0) : 0;
  if (n == -1) {
    nbdsnap_error ("state directory: %s: read: %m", SEAL_FILE);
    return -1;
  }
  parse_slot (buf, &slot[0]);
  parse_slot (buf + SLOT_SIZE, &slot[1]);
  rec = slot[0].valid && (!slot[1].valid || slot[0].seq > slot[1].seq)
        ? &slot[0] : slot[1].valid ? &slot[1] : NULL;
  if (sample (o, &now) == -1)
    return -1;
  if (rec == NULL && n > 0) {
    *verdict = SEAL_UNCHECKED;
    snprintf (why, len, "the state directory's %s file is damaged (no "
              "valid record)", SEAL_FILE);
    return 0;
  }
  if (rec == NULL) {
    *verdict = SEAL_NONE;
    snprintf (why, len, "no record of the image yet");
    return 0;
  }
  seal->seq = rec->seq;

  if (rec->size != now.size) {
    *verdict = SEAL_CHANGED;
    snprintf (why, len, "its size is %" PRIu64 ", the server left %"
              PRIu64, now.size, rec->size);
    return 0;
  }
  if (o->is_blockdev) {
    if (rec->running || !rec->have_sectors || !now.have_sectors
        || strcmp (rec->boot, now.boot) != 0) {
      *verdict = SEAL_UNCHECKED;
      snprintf (why, len, "a block device's writes can be checked only "
                "after a clean stop in the same boot (%s)",
                rec->running ? "the server did not stop cleanly"
                : strcmp (rec->boot, now.boot) != 0 ? "rebooted since"
                : "no sector counts");
      return 0;
    }
    if (rec->sect_w != now.sect_w || rec->sect_d != now.sect_d) {
      *verdict = SEAL_CHANGED;
      snprintf (why, len, "%" PRIu64 " sectors were written and %" PRIu64
                " discarded since the server stopped (/sys/dev/block stat)",
                now.sect_w - rec->sect_w, now.sect_d - rec->sect_d);
      return 0;
    }
    *verdict = SEAL_SAME;
    return 0;
  }

  if (!rec->running) {
    if (now.mtime == rec->mtime && now.ctime == rec->ctime) {
      *verdict = SEAL_SAME;
      return 0;
    }
    *verdict = SEAL_CHANGED;
    format_ns (now.mtime, t1, sizeof t1);
    format_ns (now.ctime, t2, sizeof t2);
    if (now.mtime != rec->mtime)
      snprintf (why, len, "it was modified at %s, after the server "
                "stopped cleanly", t1);
    else
      snprintf (why, len, "its inode changed at %s, after the server "
                "stopped cleanly, though its modification time did not "
                "(a write hidden by touch -d, or chmod, chown)", t2);
    return 0;
  }
  /* The server died: its own writes are inside the lease. */
  if (now.mtime <= rec->lease && now.ctime <= rec->lease) {
    *verdict = SEAL_SAME;
    return 0;
  }
  *verdict = SEAL_CHANGED;
  format_ns (now.mtime > now.ctime ? now.mtime : now.ctime, t1, sizeof t1);
  format_ns (rec->lease, t2, sizeof t2);
  snprintf (why, len, "it was changed at %s, after the server that had it "
            "open stopped (it could write it until %s)", t1, t2);
  return 0;
}

static int
renew (struct seal *seal)
{
  struct record r;
  int64_t lease = now_ns (CLOCK_REALTIME) + seal->lease_ns;

  if (sample (seal->origin, &r) == -1)
    return -1;
  r.running = true;
  r.lease = lease;
  if (write_record (seal, &r) == -1) {
    if (!seal->failed)
      nbdsnap_error ("state directory: %s: writing the server's lease: %m "
                     "(the origin is written all the same; after a crash "
                     "the next start may take the server's own writes for "
                     "outside ones: then adopt=1)", SEAL_FILE);
    seal->failed = true;
    return -1;
  }
  seal->failed = false;
  __atomic_store_n (&seal->lease, lease, __ATOMIC_RELEASE);
  return 0;
}

int
seal_running (struct seal *seal)
{
  int r;

  pthread_mutex_lock (&seal->lock);
  r = renew (seal);
  pthread_mutex_unlock (&seal->lock);
  return r;
}

void
seal_lease (struct seal *seal)
{
  int64_t renew_ns = seal->lease_ns / 5 * 3;

  if (!seal->active
      || __atomic_load_n (&seal->lease, __ATOMIC_ACQUIRE)
         - now_ns (CLOCK_REALTIME) >= renew_ns)
    return;
  pthread_mutex_lock (&seal->lock);
  if (seal->lease - now_ns (CLOCK_REALTIME) < renew_ns)
    renew (seal);               /* a failure is logged once */
  pthread_mutex_unlock (&seal->lock);
}

static void *
keeper (void *vseal)
{
  struct seal *seal = vseal;
  struct timespec until;

  pthread_mutex_lock (&seal->lock);
  while (!seal->stop) {
    clock_gettime (CLOCK_MONOTONIC, &until);
    until.tv_sec += 1;
    while (!seal->stop
           && pthread_cond_timedwait (&seal->wake, &seal->lock, &until) == 0)
      ;
    if (!seal->stop)
      renew (seal);
  }
  pthread_mutex_unlock (&seal->lock);
  return NULL;
}

int
seal_start (struct seal *seal)
{
  sigset_t all, old;
  int err;

  if (!seal->active || seal->started)
    return 0;
  /* Signals are nbdkit's. */
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  err = pthread_create (&seal->thread, NULL, keeper, seal);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (err != 0) {
    errno = err;
    nbdsnap_error ("seal: pthread_create: %m");
    return -1;
  }
  seal->started = true;
  return 0;
}

static void
stop_thread (struct seal *seal)
{
  if (!seal->started)
    return;
  pthread_mutex_lock (&seal->lock);
  seal->stop = true;
  pthread_cond_signal (&seal->wake);
  pthread_mutex_unlock (&seal->lock);
  pthread_join (seal->thread, NULL);
  seal->started = false;
}

void
seal_clean (struct seal *seal)
{
  struct record r;

  if (!seal->active)
    return;
  stop_thread (seal);
  /* A block device's counters must include the server's last writes. */
  if (fsync (seal->origin->fd) == -1)
    nbdsnap_debug ("%s: fsync: %m", seal->origin->path);
  if (sample (seal->origin, &r) == 0) {
    r.running = false;
    if (write_record (seal, &r) == -1)
      nbdsnap_error ("state directory: %s: writing the clean record: %m "
                     "(the next start checks the image as after a crash)",
                     SEAL_FILE);
    /* Any later write must stamp a later ctime than the one recorded
     * (the kernel stamps the coarse clock); at most 100 ms, should the
     * clock be behind the stamp. */
    for (int i = 0; i < 100 && now_ns (CLOCK_REALTIME_COARSE) <= r.ctime;
         ++i) {
      struct timespec t = { 0, 1000000 };
      nanosleep (&t, NULL);
    }
  }
  seal_close (seal);
}

void
seal_close (struct seal *seal)
{
  if (seal->active) {
    stop_thread (seal);
    if (seal->fd >= 0)
      close (seal->fd);
    seal->fd = -1;
    seal->active = false;
    pthread_mutex_destroy (&seal->lock);
    pthread_cond_destroy (&seal->wake);
  }
}
