/* nbdsnap: helper for test-engine-power-order.sh (not a test by itself).
 *
 *   power_order power|process NTHREADS
 *
 * Opens the engine on a fresh image in a temporary directory with the
 * given durability, creates a snapshot, then runs three phases, each
 * delimited by a marker that shows up in strace as a failing
 * pwrite64(-1, "MARK <phase>", ...):
 *
 *   single    one write to a chunk (its first), then a second write to
 *             the same chunk;
 *   spread    NTHREADS threads each write a different fresh chunk at once
 *             (group commit: they share fdatasync calls);
 *   same      NTHREADS threads write one fresh chunk: the first copies it,
 *             the others start the moment its copied bit is set in memory
 *             (polling the bitmap) -- none may overwrite the origin before
 *             the copy and its bitmap bit are durable.
 *
 * It prints on stdout the facts the script needs to read the trace:
 *   origin_fd= store_fd= bitmap_fd= chunk= and the chunks each phase uses.
 * It then checks the snapshot still reads the old bytes and exits 0, or 1
 * on any error.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"
#include "engine-internal.h"

#define CHUNK (64 * 1024)
#define NCHUNKS 64

static struct nbdsnap_engine *e;
static char dir[256];

static void
remove_dir (void)
{
  char cmd[400];
  int r;

  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  r = system (cmd);
  (void) r;
}
static pthread_barrier_t barrier;
static unsigned char oldimg[CHUNK * NCHUNKS];

static void
mark (const char *what)
{
  char buf[64];
  ssize_t r;

  snprintf (buf, sizeof buf, "MARK %s", what);
  r = pwrite (-1, buf, strlen (buf), 0);       /* fails: EBADF */
  (void) r;
}

static void
die (const char *what)
{
  fprintf (stderr, "power_order: %s: %m\n", what);
  exit (1);
}

static void
write_chunk (uint64_t c, int val)
{
  unsigned char buf[4096];

  memset (buf, val, sizeof buf);
  if (nbdsnap_engine_pwrite (e, buf, sizeof buf, c * CHUNK + 100, false)
      == -1)
    die ("nbdsnap_engine_pwrite");
}

struct arg {
  uint64_t chunk;
  int val;
  struct nbdsnap_snap *wait_bit;        /* wait for its copied bit first */
};

static void *
writer (void *varg)
{
  struct arg *a = varg;

  pthread_barrier_wait (&barrier);
  /* Aim at the window between the copier setting the bit and the bit
   * being durable: a writer arriving then must not overtake the copier. */
  if (a->wait_bit)
    while (!bitmap_test (&a->wait_bit->bm.copied, a->chunk))
      ;
  write_chunk (a->chunk, a->val);
  return NULL;
}

static void
run_threads (int n, uint64_t first_chunk, struct nbdsnap_snap *same)
{
  pthread_t th[256];
  struct arg a[256];
  int i;

  pthread_barrier_init (&barrier, NULL, n);
  for (i = 0; i < n; ++i) {
    a[i].chunk = same ? first_chunk : first_chunk + i;
    a[i].val = 0x40 + i;
    a[i].wait_bit = same && i > 0 ? same : NULL;
    if (pthread_create (&th[i], NULL, writer, &a[i]) != 0)
      die ("pthread_create");
  }
  for (i = 0; i < n; ++i)
    pthread_join (th[i], NULL);
  pthread_barrier_destroy (&barrier);
}

int
main (int argc, char *argv[])
{
  char img[300], sd[300];
  const char *t = getenv ("TMPDIR");
  struct nbdsnap_origin o;
  struct nbdsnap_engine_config cfg = { 0 };
  struct nbdsnap_snap *s;
  unsigned char *buf;
  int fd, n, i;

  if (argc != 3 || (strcmp (argv[1], "power") && strcmp (argv[1], "process"))
      || (n = atoi (argv[2])) < 1 || n > 32) {
    fprintf (stderr, "usage: power_order power|process NTHREADS(1-32)\n");
    exit (2);
  }
  snprintf (dir, sizeof dir, "%s/power_order.XXXXXX", t && *t ? t : "/tmp");
  if (mkdtemp (dir) == NULL)
    die ("mkdtemp");
  atexit (remove_dir);
  snprintf (img, sizeof img, "%s/disk.img", dir);
  snprintf (sd, sizeof sd, "%s/state", dir);
  fd = open (img, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd == -1)
    die (img);
  for (i = 0; i < (int) sizeof oldimg; ++i)
    oldimg[i] = (unsigned char) (i * 7 + i / CHUNK);
  if (pwrite (fd, oldimg, sizeof oldimg, 0) != (ssize_t) sizeof oldimg)
    die ("pwrite image");
  close (fd);

  if (nbdsnap_origin_open (&o, img, false) == -1)
    exit (1);
  cfg.origin = &o;
  cfg.statedir = sd;
  cfg.chunk_size = CHUNK;
  cfg.durability = strcmp (argv[1], "power") == 0
    ? NBDSNAP_DURABILITY_POWER : NBDSNAP_DURABILITY_PROCESS;
  e = nbdsnap_engine_open (&cfg);
  if (e == NULL)
    exit (1);
  s = nbdsnap_snap_create (e, "snap", false);
  if (s == NULL)
    exit (1);

  printf ("origin_fd=%d\n", o.fd);
  printf ("store_fd=%d\n", s->store_fd);
  printf ("bitmap_fd=%d\n", s->bm.fd);
  printf ("chunk=%d\n", CHUNK);
  printf ("single_chunk=3\n");
  printf ("spread_chunks=%d-%d\n", 10, 10 + n - 1);
  printf ("same_chunk=%d\n", 50);
  fflush (stdout);

  mark ("single");
  write_chunk (3, 0xaa);
  mark ("again");
  write_chunk (3, 0xbb);
  mark ("spread");
  run_threads (n, 10, NULL);
  mark ("same");
  run_threads (n, 50, s);
  mark ("end");

  buf = malloc (sizeof oldimg);
  if (nbdsnap_snap_pread (e, s, buf, sizeof oldimg, 0) == -1)
    exit (1);
  if (memcmp (buf, oldimg, sizeof oldimg) != 0) {
    fprintf (stderr, "power_order: the snapshot changed\n");
    exit (1);
  }
  free (buf);
  nbdsnap_engine_close (e);
  nbdsnap_origin_close (&o);
  return 0;
}
