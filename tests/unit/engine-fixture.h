/* nbdsnap: the engine fixture shared by check_engine and check_faults —
 * one image and one state directory per test, the engine opened on them,
 * and a model of what the origin holds.  Header only (static), included
 * after unit-helpers.h by a suite that defines nothing of the same name.
 *
 *   fixture_setup (tag)      per-test temporary directory, paths, state
 *   fixture_teardown ()      close whatever is open, remove the directory
 *   start (size, seed, durability, chunk)
 *                            a new image (seed 0 = sparse), engine opened
 *                            with cfg as set so far plus these
 *   eopen / eclose / ereopen the engine on the existing image
 *   write_model, wpat        origin writes that the model follows
 *   check_origin ()          the image file equals the model
 *   dup_model                a copy of the model (what a snapshot taken
 *                            now must return)
 *   info_of, mksnap          a snapshot's info; a create that must work
 *   snapfile (id, ext)       the path of one of a snapshot's files
 */
#ifndef NBDSNAP_ENGINE_FIXTURE_H
#define NBDSNAP_ENGINE_FIXTURE_H

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

static char img[512], sdpath[512];
static struct nbdsnap_origin o = { .fd = -1 };
static struct nbdsnap_engine *e;
static struct nbdsnap_engine_config cfg;
static uint64_t size;           /* of the current image */
static unsigned char *model;    /* what the origin holds */

static void
fixture_setup (const char *tag)
{
  helpers_tmpdir_make (tag);
  tpath (img, sizeof img, "disk.img");
  tpath (sdpath, sizeof sdpath, "state");
  e = NULL;
  model = NULL;
  memset (&cfg, 0, sizeof cfg);
}

static void
fixture_teardown (void)
{
  nbdsnap_engine_close (e);
  e = NULL;
  if (o.fd >= 0)
    nbdsnap_origin_close (&o);
  o.fd = -1;
  free (model);
  helpers_tmpdir_remove ();
}

/* Open origin + engine on the existing image; the open must succeed. */
static void
eopen (void)
{
  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
  cfg.origin = &o;
  cfg.statedir = sdpath;
  e = nbdsnap_engine_open (&cfg);
  ck_assert_msg (e != NULL, "engine open: %s", last_error);
  size = nbdsnap_engine_size (e);
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
ereopen (void)
{
  eclose ();
  eopen ();
}

/* A new image of sz bytes: pattern seed (0 = sparse), engine opened with
 * durability mode dur and chunk size chunk. */
static void
start (uint64_t sz, uint64_t seed, int dur, uint32_t chunk)
{
  make_image (img, sz, seed);
  cfg.durability = dur;
  cfg.chunk_size = chunk;
  eopen ();
  model = slurp (img, sz);
}

static void
write_model (const void *buf, uint32_t n, uint64_t off)
{
  ck_assert_msg (nbdsnap_engine_pwrite (e, buf, n, off, false) == 0,
                 "pwrite %u at %" PRIu64 ": %s", n, off, last_error);
  memcpy (model + off, buf, n);
}

/* Write pattern seed over [off, off+n). */
static void
wpat (uint64_t seed, uint32_t n, uint64_t off)
{
  unsigned char *buf = malloc (n);
  pattern_fill (buf, n, seed, off);
  write_model (buf, n, off);
  free (buf);
}

/* The origin file equals the model. */
static void
check_origin_ (int line)
{
  unsigned char *got = slurp (img, size);
  ssize_t d = first_diff (got, model, size);
  ck_assert_msg (d == -1, "line %d: origin differs at byte %zd", line, d);
  free (got);
}
#define check_origin() check_origin_ (__LINE__)

static unsigned char *
dup_model (void)
{
  unsigned char *p = malloc (size);
  memcpy (p, model, size);
  return p;
}

/* A snapshot's info; create one that must succeed. */
static struct nbdsnap_snap_info
info_of (struct nbdsnap_snap *s)
{
  struct nbdsnap_snap_info i;
  ck_assert_int_eq (nbdsnap_snap_info (e, s, &i), 0);
  return i;
}

static struct nbdsnap_snap *
mksnap (const char *name)
{
  struct nbdsnap_snap *s = nbdsnap_snap_create (e, name, false);
  ck_assert_msg (s != NULL, "create %s: %s", name, last_error);
  return s;
}

/* The path of a snapshot's file: sdpath/snap-ID.EXT (four calls may be
 * used at once). */
static char *
snapfile (uint64_t id, const char *ext)
{
  static char p[4][600];
  static int k;
  k = (k + 1) % 4;
  snprintf (p[k], sizeof p[k], "%s/snap-%06" PRIu64 ".%s", sdpath, id, ext);
  return p[k];
}

#endif /* NBDSNAP_ENGINE_FIXTURE_H */
