/* nbdsnap: many snapshots of a huge sparse image — what a restart costs in
 * memory and time, and what `changes` costs (bench/scale-bench.c; run it
 * with bench/scale).
 *
 * Notes on the design
 *
 *   scale-bench create DIR NSNAPS SIZE_GIB WRITES
 *   scale-bench open DIR
 *
 * In DIR: a sparse image of SIZE_GIB GiB (ftruncate) with WRITES scattered
 * 4 KiB data writes before the first snapshot (so each snapshot has
 * candidate chunks), then NSNAPS snapshots, each followed by WRITES / 4
 * scattered 4 KiB origin writes (copy-on-write into the newest), in
 * durability=process (syncs are not what is measured); it reports the
 * time and its resident memory at the end.  "open", a new process (so
 * that nothing of the first run is resident), opens the engine again and
 * reports the time of the open, its
 * resident memory before and after the open (VmRSS from /proc/self/status,
 * so it counts every page the open touched: bitmap pages read or faulted,
 * the page tables of the snapshots) and the time of nbdsnap_snap_changes
 * of the oldest snapshot (the union of NSNAPS copied bitmaps) with the
 * number of extents it found.
 *
 * It uses only the public API (nbdsnap/engine.h), so the same file builds
 * against any version of the engine: bench/scale builds it twice, against
 * two build trees, and runs both on the same machine in the same run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long
rss_kib (void)
{
  char line[256];
  long kib = -1;
  FILE *f = fopen ("/proc/self/status", "r");

  if (f == NULL)
    return -1;
  while (fgets (line, sizeof line, f))
    if (sscanf (line, "VmRSS: %ld kB", &kib) == 1)
      break;
  fclose (f);
  return kib;
}

static void
die (const char *what)
{
  fprintf (stderr, "scale-bench: %s: %s\n", what, strerror (errno));
  exit (1);
}

static uint64_t rng = 88172645463325252ULL;

static uint64_t
next (void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static int
count_extent (void *opaque, uint64_t off, uint64_t len, bool hole)
{
  (*(uint64_t *) opaque)++;
  return 0;
}

static struct nbdsnap_engine *
open_engine (struct nbdsnap_origin *o, const char *img, const char *sd)
{
  struct nbdsnap_engine_config cfg = { 0 };
  struct nbdsnap_engine *e;

  if (nbdsnap_origin_open (o, img, false) == -1)
    exit (1);
  cfg.origin = o;
  cfg.statedir = sd;
  cfg.durability = NBDSNAP_DURABILITY_PROCESS;
  e = nbdsnap_engine_open (&cfg);
  if (e == NULL)
    exit (1);
  return e;
}

static int
do_open (const char *dir)
{
  char img[512], sd[512];
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e;
  struct nbdsnap_snap *s;
  long before = rss_kib (), after;
  uint64_t n = 0;
  double t0, t_open, t_changes;

  snprintf (img, sizeof img, "%s/disk.img", dir);
  snprintf (sd, sizeof sd, "%s/state", dir);
  t0 = now ();
  e = open_engine (&o, img, sd);
  t_open = now () - t0;
  after = rss_kib ();
  s = nbdsnap_snap_lookup (e, "s0");
  if (s == NULL)
    return 1;
  t0 = now ();
#ifdef NBDSNAP_CHANGES_PAGED
  for (uint64_t off = 0; off < nbdsnap_engine_size (e);)
    if (nbdsnap_snap_changes (e, s, NULL, &off, UINT64_MAX, count_extent,
                              &n) == -1)
      return 1;
#else
  if (nbdsnap_snap_changes (e, s, count_extent, &n) == -1)
    return 1;
#endif
  t_changes = now () - t0;
  printf ("open: %.3f s, resident memory +%ld MiB (%ld -> %ld KiB)\n"
          "changes of the oldest: %.3f s, %" PRIu64 " extents\n",
          t_open, (after - before) / 1024, before, after, t_changes, n);
  nbdsnap_engine_close (e);
  nbdsnap_origin_close (&o);
  return 0;
}

int
main (int argc, char **argv)
{
  char img[512], sd[512], name[32], buf[4096];
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e;
  uint64_t size, i, w, nsnaps, writes;
  double t0;
  int fd;

  if (argc == 3 && strcmp (argv[1], "open") == 0)
    return do_open (argv[2]);
  if (argc != 6 || strcmp (argv[1], "create") != 0) {
    fprintf (stderr, "usage: scale-bench create DIR NSNAPS SIZE_GIB WRITES\n"
                     "       scale-bench open DIR\n");
    return 2;
  }
  argv++;
  nsnaps = strtoull (argv[2], NULL, 10);
  size = strtoull (argv[3], NULL, 10) << 30;
  writes = strtoull (argv[4], NULL, 10);
  snprintf (img, sizeof img, "%s/disk.img", argv[1]);
  snprintf (sd, sizeof sd, "%s/state", argv[1]);
  memset (buf, 0x5a, sizeof buf);

  fd = open (img, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd == -1 || ftruncate (fd, size) == -1)
    die (img);
  for (w = 0; w < writes; ++w)
    if (pwrite (fd, buf, sizeof buf, next () % (size / 4096) * 4096) != 4096)
      die ("pwrite");
  close (fd);

  e = open_engine (&o, img, sd);
  t0 = now ();
  for (i = 0; i < nsnaps; ++i) {
    snprintf (name, sizeof name, "s%" PRIu64, i);
    if (nbdsnap_snap_create (e, name, false) == NULL)
      exit (1);
    for (w = 0; w < writes / 4; ++w)
      if (nbdsnap_engine_pwrite (e, buf, sizeof buf,
                                 next () % (size / 4096) * 4096,
                                 false) == -1)
        exit (1);
  }
  printf ("create: %" PRIu64 " snapshots of a %" PRIu64 " GiB image in "
          "%.2f s, resident memory %ld MiB\n", nsnaps, size >> 30,
          now () - t0, rss_kib () / 1024);
  nbdsnap_engine_close (e);
  nbdsnap_origin_close (&o);
  return 0;
}
