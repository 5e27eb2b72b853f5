/* nbdsnap: Check suite for the snapshot engine (src/engine.c, src/cow.c,
 * src/snap.c) through its public API (nbdsnap/engine.h).
 *
 * Every test works on a real image in its own temporary directory, keeps
 * in memory the bytes each snapshot must return (what the origin held when
 * it was taken) and compares whole snapshots byte for byte.  The image
 * size is not a multiple of the chunk size, so the partial last chunk is
 * always exercised.  Tests marked "loop" run once per durability mode.
 *
 * One TCase per behaviour:
 *   basic          create / overwrite (unaligned, spanning chunks) / read;
 *                  origin holds the new bytes; a chunk is copied once
 *   zero_trim      zero and trim of the origin preserve the snapshot
 *   holes          chunks that were holes are not candidates, read zeros,
 *                  are never copied (the store stays sparse); an
 *                  all-zero data chunk is copied right (copy_file_range
 *                  copies it like any other; by hand it stays a hole)
 *   extents        holes/data of a snapshot, merged, clamped, sub-ranges,
 *                  callback stop and error
 *   reads          random unaligned reads spanning copied and uncopied
 *                  chunks, up to the partial last chunk
 *   many           a write copies into the newest snapshot only
 *   delete         oldest / middle / newest, content of the others kept,
 *                  chunks moved into the older one, files removed
 *   reopen         everything survives close + open (content, info)
 *   recovery_*     half-done create removed; "deleting" finished (meta
 *                  file of a version without checksums); temporary
 *                  snapshots deleted at open (their chunks moved)
 *   invalid_*      injected store error and max-store: the snapshot turns
 *                  invalid (EIO, persists), the origin write succeeds,
 *                  older snapshots still read correctly
 *   changes        union of copied bits, including chunks that were holes
 *   names          valid / invalid / duplicate / lookup
 *   range          out-of-range requests: EINVAL, nothing changed
 *   huge           a 1 TiB sparse image snapshots quickly
 *   flush_fua      flush and FUA writes in both modes
 *   flush_syncs    (white box) process mode: flush syncs only what is
 *                  dirty; a FUA write syncs the snapshot that took its
 *                  copy, also when the newest snapshot is invalid
 *   chunk_sizes    4K, 8K, 1M chunks
 *   create_window        (loop: 0 = a few writes, 1 = more than the
 *                        window holds) writes that land in holes after
 *                        create scanned the origin's data extents and
 *                        before it installed the snapshot (the create
 *                        hook) are in the snapshot: their chunks were
 *                        added as candidates
 *   create_scan_race     1000 creates while a thread punches holes and
 *                        fills them: the extents change under the scan
 *   create_during_writes  a snapshot taken under a running writer is the
 *                  state after exactly K writes
 *   create_fails / delete_fails  a failed meta write leaves nothing
 *                  behind / a failed bitmap header write leaves the
 *                  snapshot as it was
 */
#include <config.h>

#include <pthread.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"
#include "engine-internal.h"        /* white box: sync counters */
#include "engine-fixture.h"

#define CHUNK (64 * KiB)
#define NCHUNKS 20
#define SIZE ((uint64_t) NCHUNKS * CHUNK - 12345)   /* partial last chunk */

static void
setup (void)
{
  fixture_setup ("check_engine");
}

static void
teardown (void)
{
  fixture_teardown ();
}

/* The whole snapshot equals want. */
static void
check_snap_ (struct nbdsnap_snap *s, const unsigned char *want, int line)
{
  unsigned char *got = malloc (size);
  ssize_t d;

  ck_assert_msg (nbdsnap_snap_pread (e, s, got, size, 0) == 0,
                 "line %d: snapshot read: %s", line, last_error);
  d = first_diff (got, want, size);
  ck_assert_msg (d == -1, "line %d: snapshot differs at byte %zd (chunk "
                 "%zd): got 0x%02x, want 0x%02x", line, d,
                 d / (ssize_t) nbdsnap_engine_chunk_size (e), got[d],
                 want[d]);
  free (got);
}
#define check_snap(s, want) check_snap_ ((s), (want), __LINE__)

static uint64_t
blocks_of (const char *path)
{
  struct stat st;
  ck_assert_int_eq (stat (path, &st), 0);
  return (uint64_t) st.st_blocks * 512;
}

/* ---------------------------------------------------------------------- */

START_TEST (test_basic)         /* loop: _i = durability */
{
  struct nbdsnap_snap *s;
  struct nbdsnap_snap_info in;
  unsigned char *old;
  struct timespec before;

  start (SIZE, 1, _i, CHUNK);
  old = dup_model ();
  clock_gettime (CLOCK_REALTIME, &before);
  s = mksnap ("a");
  check_snap (s, old);
  in = info_of (s);
  ck_assert_uint_eq (in.id, 1);
  ck_assert_str_eq (in.name, "a");
  ck_assert_int_eq (in.state, NBDSNAP_STATE_LIVE);
  ck_assert (!in.temporary);
  ck_assert_uint_eq (in.chunks_candidate, NCHUNKS);
  ck_assert_uint_eq (in.chunks_copied, 0);
  ck_assert_int_ge (in.created.tv_sec, before.tv_sec);

  /* Unaligned, spanning chunks 0-1; then inside chunk 5; then the tail. */
  wpat (2, CHUNK + 100, 1000);
  ck_assert_uint_eq (info_of (s).chunks_copied, 2);
  ck_assert_uint_eq (info_of (s).cow_count, 2);
  wpat (3, 1, 5 * CHUNK + 7);
  ck_assert_uint_eq (info_of (s).chunks_copied, 3);
  wpat (4, 60000, size - 60000);          /* the last two chunks */
  ck_assert_uint_eq (info_of (s).chunks_copied, 5);
  check_snap (s, old);
  check_origin ();

  /* Overwrite the same chunks again: nothing more is copied. */
  wpat (5, 3 * CHUNK, 0);
  ck_assert_uint_eq (info_of (s).chunks_copied, 6);   /* chunk 2 is new */
  wpat (6, 10, 1000);
  ck_assert_uint_eq (info_of (s).chunks_copied, 6);
  ck_assert_uint_eq (info_of (s).cow_count, 6);
  check_snap (s, old);
  check_origin ();
  /* The store holds the copied chunks (at least their data). */
  ck_assert_uint_ge (info_of (s).store_bytes, 5 * (uint64_t) CHUNK);
  ck_assert_uint_eq (info_of (s).store_bytes,
                     blocks_of (snapfile (1, "store")));
  /* The whole-origin write lands too. */
  wpat (7, size, 0);
  ck_assert_uint_eq (info_of (s).chunks_copied, NCHUNKS);
  check_snap (s, old);
  check_origin ();
  /* Reading the origin through the origin layer agrees. */
  {
    unsigned char buf[100];
    ck_assert_int_eq (nbdsnap_origin_pread (&o, buf, 100, 333), 0);
    ck_assert_int_eq (memcmp (buf, model + 333, 100), 0);
  }
  free (old);
}
END_TEST

START_TEST (test_zero_trim)     /* loop */
{
  struct nbdsnap_snap *s;
  unsigned char *old;
  unsigned char buf[CHUNK];

  start (SIZE, 11, _i, CHUNK);
  old = dup_model ();
  s = mksnap ("z");
  /* zero, may_trim false */
  ck_assert_int_eq (nbdsnap_engine_zero (e, CHUNK, CHUNK / 2, false, false,
                                         false), 0);
  memset (model + CHUNK / 2, 0, CHUNK);
  /* zero, may_trim true */
  ck_assert_int_eq (nbdsnap_engine_zero (e, 2 * CHUNK, 4 * CHUNK, true,
                                         false, false), 0);
  memset (model + 4 * CHUNK, 0, 2 * CHUNK);
  ck_assert_uint_eq (info_of (s).chunks_copied, 4);
  check_origin ();
  check_snap (s, old);
  /* trim: the origin's content there is undefined; take what it is. */
  ck_assert_int_eq (nbdsnap_engine_trim (e, 3 * CHUNK, 8 * CHUNK, false), 0);
  ck_assert_int_eq (pread (o.fd, model + 8 * CHUNK, 3 * CHUNK, 8 * CHUNK),
                    3 * CHUNK);
  ck_assert_uint_eq (info_of (s).chunks_copied, 7);
  check_snap (s, old);
  /* trim + zero the partial last chunk */
  ck_assert_int_eq (nbdsnap_engine_zero (e, size - (NCHUNKS - 1) * CHUNK,
                                         (NCHUNKS - 1) * CHUNK, true, true,
                                         false), 0);
  memset (model + (NCHUNKS - 1) * CHUNK, 0, size - (NCHUNKS - 1) * CHUNK);
  check_origin ();
  check_snap (s, old);
  /* A snapshot taken now sees the zeros. */
  {
    struct nbdsnap_snap *s2 = mksnap ("z2");
    unsigned char *now = dup_model ();
    wpat (12, size, 0);
    check_snap (s2, now);
    check_snap (s, old);
    free (now);
  }
  (void) buf;
  free (old);
}
END_TEST

struct ext {
  uint64_t off, len;
  bool hole;
};
struct ext_list {
  struct ext e[256];
  int n;
  int stop_after;               /* return 1 after this many; 0 = never */
  int fail_after;               /* return -1 after this many */
};

static int
collect_ext (void *opaque, uint64_t off, uint64_t len, bool hole)
{
  struct ext_list *l = opaque;

  ck_assert_int_lt (l->n, 256);
  l->e[l->n].off = off;
  l->e[l->n].len = len;
  l->e[l->n].hole = hole;
  l->n++;
  if (l->fail_after && l->n == l->fail_after)
    return -1;
  if (l->stop_after && l->n == l->stop_after)
    return 1;
  return 0;
}

/* Sparse image with data in chunks 2, 5 (4 bytes), 6-8 and the last. */
static void
make_holey (int dur)
{
  int fd;
  unsigned char buf[3 * CHUNK];

  make_image (img, SIZE, 0);
  fd = open (img, O_RDWR);
  pattern_fill (buf, CHUNK, 21, 2 * CHUNK);
  ck_assert_int_eq (pwrite (fd, buf, CHUNK, 2 * CHUNK), CHUNK);
  ck_assert_int_eq (pwrite (fd, "abcd", 4, 5 * CHUNK + 500), 4);
  pattern_fill (buf, 3 * CHUNK, 21, 6 * CHUNK);
  ck_assert_int_eq (pwrite (fd, buf, 3 * CHUNK, 6 * CHUNK), 3 * CHUNK);
  ck_assert_int_eq (pwrite (fd, "z", 1, SIZE - 1), 1);
  fsync (fd);
  close (fd);
  cfg.durability = dur;
  cfg.chunk_size = CHUNK;
  eopen ();
  model = slurp (img, SIZE);
}

START_TEST (test_holes)         /* loop */
{
  struct nbdsnap_snap *s;
  unsigned char *old, zeros[CHUNK];
  uint64_t c, b0;

  make_holey (_i);
  old = dup_model ();
  s = mksnap ("h");
  ck_assert_uint_eq (info_of (s).chunks_candidate, 6);
  b0 = blocks_of (snapfile (1, "store"));
  ck_assert_uint_eq (b0, 0);
  /* Write every hole chunk (whole and partial writes). */
  for (c = 0; c < NCHUNKS; ++c) {
    if (c == 2 || c == 5 || (c >= 6 && c <= 8) || c == NCHUNKS - 1)
      continue;
    wpat (30 + c, c % 2 ? CHUNK : 100, c * CHUNK + (c % 2 ? 0 : 77));
  }
  check_snap (s, old);
  check_origin ();
  /* Holes are never copied: no store blocks, no copies counted. */
  ck_assert_uint_eq (blocks_of (snapfile (1, "store")), 0);
  ck_assert_uint_eq (info_of (s).store_bytes, 0);
  ck_assert_uint_eq (info_of (s).chunks_copied, 0);
  /* The snapshot reads zeros there, also piecewise. */
  memset (zeros, 0, sizeof zeros);
  {
    unsigned char buf[CHUNK];
    ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 1000, 3 * CHUNK + 5), 0);
    ck_assert_int_eq (memcmp (buf, zeros, 1000), 0);
  }
  /* Data chunks are copied: the store grows by their size. */
  wpat (40, CHUNK, 2 * CHUNK);
  ck_assert_uint_eq (info_of (s).chunks_copied, 1);
  ck_assert_uint_ge (blocks_of (snapfile (1, "store")), CHUNK);
  check_snap (s, old);
  free (old);
}
END_TEST

START_TEST (test_zero_chunk)
{
  struct nbdsnap_snap *s;
  unsigned char *old;
  int fd;
  unsigned char zeros[CHUNK];

  /* Chunk 3 is allocated but holds zeros: a candidate, copied once, at
   * most one chunk of store (none when copied by hand: a hole). */
  make_image (img, SIZE, 0);
  fd = open (img, O_RDWR);
  memset (zeros, 0, sizeof zeros);
  ck_assert_int_eq (pwrite (fd, zeros, CHUNK, 3 * CHUNK), CHUNK);
  fsync (fd);
  close (fd);
  cfg.chunk_size = CHUNK;
  eopen ();
  model = slurp (img, SIZE);
  old = dup_model ();
  s = mksnap ("zc");
  ck_assert_uint_eq (info_of (s).chunks_candidate, 1);
  wpat (50, CHUNK, 3 * CHUNK);
  ck_assert_uint_eq (info_of (s).chunks_copied, 1);
  ck_assert_uint_le (blocks_of (snapfile (1, "store")), CHUNK);
  check_snap (s, old);
  ereopen ();
  s = nbdsnap_snap_lookup (e, "zc");
  ck_assert_ptr_nonnull (s);
  check_snap (s, old);
  ck_assert_uint_eq (info_of (s).chunks_copied, 1);
  free (old);
}
END_TEST

START_TEST (test_extents)
{
  struct nbdsnap_snap *s;
  struct ext_list l;
  const uint64_t last = (uint64_t) (NCHUNKS - 1) * CHUNK;

  make_holey (NBDSNAP_DURABILITY_PROCESS);
  s = mksnap ("x");
  memset (&l, 0, sizeof l);
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, 0, size, collect_ext, &l), 0);
  {
    const struct ext want[] = {
      { 0, 2 * CHUNK, true },
      { 2 * CHUNK, CHUNK, false },
      { 3 * CHUNK, 2 * CHUNK, true },
      { 5 * CHUNK, 4 * CHUNK, false },
      { 9 * CHUNK, last - 9 * CHUNK, true },
      { last, SIZE - last, false },
    };
    int i;
    ck_assert_int_eq (l.n, 6);
    for (i = 0; i < 6; ++i) {
      ck_assert_uint_eq (l.e[i].off, want[i].off);
      ck_assert_uint_eq (l.e[i].len, want[i].len);
      ck_assert_int_eq (l.e[i].hole, want[i].hole);
    }
  }
  /* Writes after the snapshot do not change its extents. */
  wpat (60, 10 * CHUNK, 0);
  memset (&l, 0, sizeof l);
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, 0, size, collect_ext, &l), 0);
  ck_assert_int_eq (l.n, 6);

  /* A sub-range, unaligned at both ends. */
  memset (&l, 0, sizeof l);
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, CHUNK + 10, 2 * CHUNK,
                                          collect_ext, &l), 0);
  ck_assert_int_eq (l.n, 3);
  ck_assert_uint_eq (l.e[0].off, CHUNK + 10);
  ck_assert_uint_eq (l.e[0].len, CHUNK - 10);
  ck_assert (l.e[0].hole);
  ck_assert_uint_eq (l.e[1].off, 2 * CHUNK);
  ck_assert_uint_eq (l.e[1].len, CHUNK);
  ck_assert (!l.e[1].hole);
  ck_assert_uint_eq (l.e[2].off, 3 * CHUNK);
  ck_assert_uint_eq (l.e[2].len, 10);
  ck_assert (l.e[2].hole);
  /* Inside one chunk; and the tail. */
  memset (&l, 0, sizeof l);
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, 6 * CHUNK + 1, 5,
                                          collect_ext, &l), 0);
  ck_assert_int_eq (l.n, 1);
  ck_assert_uint_eq (l.e[0].off, 6 * CHUNK + 1);
  ck_assert_uint_eq (l.e[0].len, 5);
  ck_assert (!l.e[0].hole);
  memset (&l, 0, sizeof l);
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, size - 1, 1, collect_ext,
                                          &l), 0);
  ck_assert_int_eq (l.n, 1);
  ck_assert_uint_eq (l.e[0].off, size - 1);
  ck_assert_uint_eq (l.e[0].len, 1);
  /* Stop after 2: returns 0 with 2 calls. */
  memset (&l, 0, sizeof l);
  l.stop_after = 2;
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, 0, size, collect_ext, &l), 0);
  ck_assert_int_eq (l.n, 2);
  /* Callback error. */
  memset (&l, 0, sizeof l);
  l.fail_after = 3;
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, 0, size, collect_ext, &l),
                    -1);
  ck_assert_int_eq (l.n, 3);
  /* Out of range. */
  memset (&l, 0, sizeof l);
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_extents (e, s, size, 1, collect_ext, &l),
                    -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_int_eq (l.n, 0);
  /* A full image: one data extent. */
  {
    struct nbdsnap_snap *s2;
    wpat (61, size, 0);
    s2 = mksnap ("full");
    memset (&l, 0, sizeof l);
    ck_assert_int_eq (nbdsnap_snap_extents (e, s2, 0, size, collect_ext, &l),
                      0);
    ck_assert_int_eq (l.n, 1);
    ck_assert_uint_eq (l.e[0].len, size);
    ck_assert (!l.e[0].hole);
  }
}
END_TEST

START_TEST (test_reads)
{
  struct nbdsnap_snap *s;
  unsigned char *old, *buf;
  uint64_t x = 12345;
  int i;

  start (SIZE, 70, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  old = dup_model ();
  s = mksnap ("r");
  /* Copy every other chunk (the partial last one included). */
  for (i = 0; i < NCHUNKS; i += 2)
    wpat (71, 1, (uint64_t) i * CHUNK + 3);
  wpat (72, 1, size - 1);
  buf = malloc (4 * CHUNK);
  for (i = 0; i < 2000; ++i) {
    uint64_t off = splitmix64 (&x) % size;
    uint32_t n = splitmix64 (&x) % (4 * CHUNK) + 1;
    if (n > size - off)
      n = size - off;
    ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, n, off), 0);
    ck_assert_msg (memcmp (buf, old + off, n) == 0,
                   "read %u at %" PRIu64 " differs at +%zd", n, off,
                   first_diff (buf, old + off, n));
  }
  /* Exactly the last byte, the partial last chunk, count 0 at the end. */
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 1, size - 1), 0);
  ck_assert_int_eq (buf[0], old[size - 1]);
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf,
                                        size - (NCHUNKS - 1) * CHUNK,
                                        (NCHUNKS - 1) * CHUNK), 0);
  ck_assert_int_eq (memcmp (buf, old + (NCHUNKS - 1) * CHUNK,
                            size - (NCHUNKS - 1) * CHUNK), 0);
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 0, size), 0);
  check_snap (s, old);
  free (buf);
  free (old);
}
END_TEST

START_TEST (test_many)          /* loop */
{
  struct nbdsnap_snap *s[8];
  unsigned char *want[8];
  char name[16];
  int i, j;

  start (SIZE, 80, _i, CHUNK);
  for (i = 0; i < 8; ++i) {
    snprintf (name, sizeof name, "s%d", i);
    want[i] = dup_model ();
    s[i] = mksnap (name);
    /* Write chunk 0 and chunk i + 1: chunk 0 is copied into every
     * snapshot (it changes after each), chunk i+1 into s[i] only. */
    wpat (81 + i, 100, 0);
    wpat (91 + i, CHUNK, (uint64_t) (i + 1) * CHUNK);
    for (j = 0; j <= i; ++j)
      ck_assert_msg (info_of (s[j]).chunks_copied == 2,
                     "after write %d: s%d copied %" PRIu64, i, j,
                     info_of (s[j]).chunks_copied);
  }
  /* A chunk untouched so far, written now: into the newest only. */
  wpat (100, 10, 15 * CHUNK);
  for (i = 0; i < 7; ++i)
    ck_assert_uint_eq (info_of (s[i]).chunks_copied, 2);
  ck_assert_uint_eq (info_of (s[7]).chunks_copied, 3);
  for (i = 0; i < 8; ++i)
    check_snap (s[i], want[i]);
  /* List: oldest first. */
  {
    struct nbdsnap_snap_info *l;
    ssize_t n = nbdsnap_snap_list (e, &l);
    ck_assert_int_eq (n, 8);
    for (i = 0; i < 8; ++i) {
      snprintf (name, sizeof name, "s%d", i);
      ck_assert_str_eq (l[i].name, name);
      ck_assert_uint_eq (l[i].id, (uint64_t) i + 1);
    }
    free (l);
  }
  ereopen ();
  for (i = 0; i < 8; ++i) {
    snprintf (name, sizeof name, "s%d", i);
    s[i] = nbdsnap_snap_lookup (e, name);
    ck_assert_ptr_nonnull (s[i]);
    check_snap (s[i], want[i]);
    ck_assert_uint_eq (info_of (s[i]).chunks_copied, i == 7 ? 3 : 2);
    free (want[i]);
  }
}
END_TEST

/* Four snapshots with overlapping and disjoint changes between them. */
struct four {
  struct nbdsnap_snap *s[4];
  unsigned char *want[4];
};

static void
make_four (struct four *f)
{
  char name[8];
  int i;

  for (i = 0; i < 4; ++i) {
    snprintf (name, sizeof name, "d%d", i);
    f->want[i] = dup_model ();
    f->s[i] = mksnap (name);
    /* Chunk 1 changes after every snapshot, chunk 2 + i once, chunk 10
     * only after d1 (so d0 reads it through d1), the tail after d3. */
    wpat (200 + i, 333, CHUNK + 17);
    wpat (210 + i, 2 * CHUNK, (uint64_t) (2 + i) * CHUNK - 5);
    if (i == 1)
      wpat (220, CHUNK, 10 * CHUNK);
    if (i == 3)
      wpat (230, 5000, size - 5000);
  }
}

static void
check_four (struct four *f, const bool *gone)
{
  int i;
  for (i = 0; i < 4; ++i)
    if (!gone[i])
      check_snap (f->s[i], f->want[i]);
}

START_TEST (test_delete)        /* loop over which to delete first: _i */
{
  struct four f;
  bool gone[4] = { false };
  const int orders[4][4] = {
    { 1, 0, 3, 2 },             /* middle, oldest, newest, last */
    { 0, 1, 2, 3 },             /* oldest first */
    { 3, 2, 1, 0 },             /* newest first */
    { 2, 1, 3, 0 },
  };
  int k, i;

  start (SIZE, 190, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  make_four (&f);
  check_four (&f, gone);
  for (k = 0; k < 4; ++k) {
    int d = orders[_i][k];
    uint64_t id = info_of (f.s[d]).id;
    char name[8];
    ck_assert_int_eq (nbdsnap_snap_delete (e, f.s[d]), 0);
    gone[d] = true;
    snprintf (name, sizeof name, "d%d", d);
    errno = 0;
    ck_assert_ptr_null (nbdsnap_snap_lookup (e, name));
    ck_assert_int_eq (errno, ENOENT);
    ck_assert (!file_exists (snapfile (id, "meta")));
    ck_assert (!file_exists (snapfile (id, "bitmap")));
    ck_assert (!file_exists (snapfile (id, "store")));
    check_four (&f, gone);
    /* Writes go on correctly with the shorter chain. */
    wpat (300 + k, 3 * CHUNK, (uint64_t) (k * 4) * CHUNK + 99);
    check_four (&f, gone);
    ereopen ();
    for (i = 0; i < 4; ++i)
      if (!gone[i]) {
        snprintf (name, sizeof name, "d%d", i);
        f.s[i] = nbdsnap_snap_lookup (e, name);
        ck_assert_ptr_nonnull (f.s[i]);
      }
    check_four (&f, gone);
    check_origin ();
  }
  {
    struct nbdsnap_snap_info *l;
    ck_assert_int_eq (nbdsnap_snap_list (e, &l), 0);
    free (l);
  }
  for (i = 0; i < 4; ++i)
    free (f.want[i]);
}
END_TEST

START_TEST (test_delete_moves)
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa;
  uint64_t copied_a;

  start (SIZE, 400, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (401, CHUNK, 0);                 /* chunk 0 copied into a */
  b = mksnap ("b");
  wpat (402, 3 * CHUNK, 4 * CHUNK);     /* chunks 4-6 into b; a reads them
                                           through b */
  wpat (403, CHUNK, 0);                 /* chunk 0 into b too */
  copied_a = info_of (a).chunks_copied;
  ck_assert_uint_eq (copied_a, 1);
  ck_assert_uint_eq (info_of (b).chunks_copied, 4);
  ck_assert_int_eq (nbdsnap_snap_delete (e, b), 0);
  /* a needed 4-6 (not 0, it has its own): three moved. */
  ck_assert_uint_eq (info_of (a).chunks_copied, 4);
  check_snap (a, wa);
  /* The moved chunks are now a's: writing them again copies nothing. */
  wpat (404, 3 * CHUNK, 4 * CHUNK);
  ck_assert_uint_eq (info_of (a).chunks_copied, 4);
  check_snap (a, wa);
  ereopen ();
  a = nbdsnap_snap_lookup (e, "a");
  check_snap (a, wa);
  ck_assert_uint_eq (info_of (a).chunks_copied, 4);
  free (wa);
}
END_TEST

START_TEST (test_reopen)        /* loop */
{
  struct four f;
  struct nbdsnap_snap_info before[4], after;
  int i;
  char name[8];

  start (SIZE, 500, _i, CHUNK);
  make_four (&f);
  for (i = 0; i < 4; ++i)
    before[i] = info_of (f.s[i]);
  ereopen ();
  for (i = 0; i < 4; ++i) {
    snprintf (name, sizeof name, "d%d", i);
    f.s[i] = nbdsnap_snap_lookup (e, name);
    ck_assert_ptr_nonnull (f.s[i]);
    after = info_of (f.s[i]);
    ck_assert_uint_eq (after.id, before[i].id);
    ck_assert_str_eq (after.name, before[i].name);
    ck_assert_int_eq (after.created.tv_sec, before[i].created.tv_sec);
    ck_assert_int_eq (after.created.tv_nsec, before[i].created.tv_nsec);
    ck_assert_int_eq (after.state, NBDSNAP_STATE_LIVE);
    ck_assert_uint_eq (after.chunks_candidate, before[i].chunks_candidate);
    ck_assert_uint_eq (after.chunks_copied, before[i].chunks_copied);
    ck_assert_uint_eq (after.cow_count, 0);     /* since open */
    check_snap (f.s[i], f.want[i]);
  }
  check_origin ();
  /* New snapshots get new ids after reopen. */
  {
    struct nbdsnap_snap *n = mksnap ("new");
    ck_assert_uint_eq (info_of (n).id, 5);
  }
  /* And the chain keeps working: writes copy into the newest. */
  wpat (510, size, 0);
  for (i = 0; i < 4; ++i)
    check_snap (f.s[i], f.want[i]);
  for (i = 0; i < 4; ++i)
    free (f.want[i]);
}
END_TEST

START_TEST (test_create_fails)
{
  struct nbdsnap_snap *s;
  unsigned char *w;

  start (SIZE, 650, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  w = dup_model ();
  s = mksnap ("a");
  /* The meta file of the next snapshot (id 2) cannot be written: its
   * .tmp is a directory. */
  ck_assert_int_eq (mkdir (snapfile (2, "meta.tmp"), 0700), 0);
  errno = 0;
  ck_assert_ptr_null (nbdsnap_snap_create (e, "b", false));
  ck_assert_int_ne (errno, 0);
  /* Nothing is left: no files, not listed, the name is free. */
  ck_assert (!file_exists (snapfile (2, "bitmap")));
  ck_assert (!file_exists (snapfile (2, "store")));
  ck_assert (!file_exists (snapfile (2, "meta")));
  errno = 0;
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "b"));
  {
    struct nbdsnap_snap_info *l;
    ck_assert_int_eq (nbdsnap_snap_list (e, &l), 1);
    free (l);
  }
  /* Writes still copy into a, the newest. */
  wpat (651, CHUNK, 0);
  ck_assert_uint_eq (info_of (s).chunks_copied, 1);
  check_snap (s, w);
  ck_assert_int_eq (rmdir (snapfile (2, "meta.tmp")), 0);
  ck_assert_ptr_nonnull (mksnap ("b"));
  check_snap (s, w);
  free (w);
}
END_TEST

START_TEST (test_delete_fails)
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa, *wb;

  start (SIZE, 660, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (661, CHUNK, 0);
  wb = dup_model ();
  b = mksnap ("b");
  wpat (662, 2 * CHUNK, CHUNK);         /* into b; a reads them via b */
  /* b's bitmap header cannot be rewritten as "deleting": its descriptor
   * is made read-only under it. */
  {
    int rw = dup (b->bm.fd), ro = open (snapfile (2, "bitmap"), O_RDONLY);
    ck_assert_int_ge (rw, 0);
    ck_assert_int_ge (ro, 0);
    ck_assert_int_eq (dup2 (ro, b->bm.fd), b->bm.fd);
    close (ro);
    errno = 0;
    ck_assert_int_eq (nbdsnap_snap_delete (e, b), -1);
    ck_assert_int_ne (errno, 0);
    ck_assert_int_eq (dup2 (rw, b->bm.fd), b->bm.fd);
    close (rw);
  }
  /* b was not deleted: it is still live, listed, readable. */
  ck_assert_ptr_eq (nbdsnap_snap_lookup (e, "b"), b);
  ck_assert_int_eq (info_of (b).state, NBDSNAP_STATE_LIVE);
  check_snap (b, wb);
  check_snap (a, wa);
  wpat (663, CHUNK, 5 * CHUNK);
  check_snap (b, wb);
  check_snap (a, wa);
  ereopen ();
  a = nbdsnap_snap_lookup (e, "a");
  b = nbdsnap_snap_lookup (e, "b");
  ck_assert_ptr_nonnull (b);
  check_snap (a, wa);
  check_snap (b, wb);
  /* Now it can be deleted. */
  ck_assert_int_eq (nbdsnap_snap_delete (e, b), 0);
  check_snap (a, wa);
  free (wa);
  free (wb);
}
END_TEST

START_TEST (test_recovery_half_create)
{
  struct nbdsnap_snap *s;
  unsigned char *w;
  int fd;

  start (SIZE, 600, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  w = dup_model ();
  s = mksnap ("keep");
  wpat (601, CHUNK, 0);
  eclose ();
  /* A create that died before its meta file: bitmap + store, a meta.tmp;
   * and one that died right after the bitmap. */
  fd = open (snapfile (7, "bitmap"), O_CREAT | O_WRONLY, 0600);
  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (ftruncate (fd, 8192), 0);
  close (fd);
  fd = open (snapfile (7, "store"), O_CREAT | O_WRONLY, 0600);
  ck_assert_int_eq (ftruncate (fd, SIZE), 0);
  close (fd);
  fd = open (snapfile (7, "meta.tmp"), O_CREAT | O_WRONLY, 0600);
  ck_assert_int_eq (write (fd, "nbdsnap-snapshot 1\nid 7\n", 24), 24);
  close (fd);
  fd = open (snapfile (8, "bitmap"), O_CREAT | O_WRONLY, 0600);
  close (fd);
  eopen ();
  ck_assert (!file_exists (snapfile (7, "bitmap")));
  ck_assert (!file_exists (snapfile (7, "store")));
  ck_assert (!file_exists (snapfile (7, "meta.tmp")));
  ck_assert (!file_exists (snapfile (8, "bitmap")));
  ck_assert (file_exists (snapfile (1, "meta")));
  s = nbdsnap_snap_lookup (e, "keep");
  ck_assert_ptr_nonnull (s);
  check_snap (s, w);
  {
    struct nbdsnap_snap_info *l;
    ck_assert_int_eq (nbdsnap_snap_list (e, &l), 1);
    free (l);
  }
  /* The next create works (ids of leftovers are not reused). */
  s = mksnap ("next");
  ck_assert_uint_eq (info_of (s).id, 9);
  free (w);
}
END_TEST

/* Rewrite a snapshot's meta file with another state, as a version of
 * the program before meta checksums would have (no checksum line). */
static void
set_meta_state (uint64_t id, const char *from, const char *to)
{
  char buf[1024], out[2100], *p;
  int fd;
  ssize_t n;

  fd = open (snapfile (id, "meta"), O_RDWR);
  ck_assert_int_ge (fd, 0);
  n = pread (fd, buf, sizeof buf - 1, 0);
  ck_assert_int_gt (n, 0);
  buf[n] = '\0';
  p = strstr (buf, from);
  ck_assert_ptr_nonnull (p);
  *p = '\0';
  snprintf (out, sizeof out, "%s%s%s", buf, to, p + strlen (from));
  p = strstr (out, "checksum ");
  if (p)
    *p = '\0';
  ck_assert_int_eq (ftruncate (fd, 0), 0);
  ck_assert_int_eq (pwrite (fd, out, strlen (out), 0), (ssize_t) strlen (out));
  close (fd);
}

START_TEST (test_recovery_deleting)
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa;

  start (SIZE, 700, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  b = mksnap ("b");
  (void) a;
  (void) b;
  wpat (701, CHUNK, 0);                 /* into b only; a reads via b */
  eclose ();
  /* A delete of a (the oldest: nothing to move) that stopped after its
   * meta file said "deleting": open finishes it. */
  set_meta_state (1, "state live", "state deleting");
  eopen ();
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "a"));
  ck_assert (!file_exists (snapfile (1, "meta")));
  ck_assert (!file_exists (snapfile (1, "bitmap")));
  ck_assert (!file_exists (snapfile (1, "store")));
  b = nbdsnap_snap_lookup (e, "b");
  ck_assert_ptr_nonnull (b);
  check_snap (b, wa);                   /* b = the same point in time */
  {
    struct nbdsnap_snap_info *l;
    ck_assert_int_eq (nbdsnap_snap_list (e, &l), 1);
    ck_assert_str_eq (l[0].name, "b");
    free (l);
  }
  /* A new snapshot does not reuse b's id. */
  ck_assert_uint_ge (info_of (mksnap ("c")).id, 3);
  free (wa);
}
END_TEST

START_TEST (test_recovery_temporary)
{
  struct nbdsnap_snap *a, *t;
  unsigned char *wa, *wt;

  start (SIZE, 800, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (801, CHUNK, 0);                 /* into a */
  wt = dup_model ();
  t = nbdsnap_snap_create (e, "tmp", true);
  ck_assert_ptr_nonnull (t);
  ck_assert (info_of (t).temporary);
  wpat (802, 2 * CHUNK, 3 * CHUNK);     /* into t only; a needs them */
  check_snap (a, wa);
  check_snap (t, wt);
  ereopen ();
  errno = 0;
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "tmp"));
  ck_assert_int_eq (errno, ENOENT);
  ck_assert (!file_exists (snapfile (2, "meta")));
  ck_assert (!file_exists (snapfile (2, "store")));
  a = nbdsnap_snap_lookup (e, "a");
  ck_assert_ptr_nonnull (a);
  check_snap (a, wa);
  ck_assert_uint_eq (info_of (a).chunks_copied, 3);
  free (wa);
  free (wt);
}
END_TEST

START_TEST (test_invalid_inject)        /* loop */
{
  struct nbdsnap_snap *a, *b, *c;
  unsigned char *wa, *wb, *wc;
  struct nbdsnap_snap_info in;
  unsigned char buf[100];

  start (SIZE, 900, _i, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (901, CHUNK, 0);                 /* chunk 0 into a */
  wb = dup_model ();
  b = mksnap ("b");
  wc = NULL;
  /* The store of b fails: chunk 0 is needed by b only (a has it). */
  nbdsnap_engine_inject_store_error (e, ENOSPC);
  wpat (902, 100, 50);                  /* the write itself succeeds */
  nbdsnap_engine_inject_store_error (e, 0);
  check_origin ();
  in = info_of (b);
  ck_assert_int_eq (in.state, NBDSNAP_STATE_INVALID);
  ck_assert_ptr_nonnull (strstr (last_error, "invalid"));
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_pread (e, b, buf, 100, 0), -1);
  ck_assert_int_eq (errno, EIO);
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_pread (e, b, buf, 1, size - 1), -1);
  ck_assert_int_eq (errno, EIO);
  check_snap (a, wa);
  /* b takes no more copies: a chunk that a needs goes into a. */
  wpat (903, CHUNK, 5 * CHUNK);
  ck_assert_uint_eq (info_of (a).chunks_copied, 2);
  ck_assert_uint_eq (info_of (b).chunks_copied, 0);
  check_snap (a, wa);
  check_origin ();
  /* changes() of an invalid snapshot is an error. */
  errno = 0;
  ck_assert_int_eq (helpers_changes (e, b, NULL, collect_ext,
                                          &(struct ext_list){ .n = 0 }), -1);
  ck_assert_int_eq (errno, EIO);
  /* So is extents(): an invalid snapshot says nothing about its data. */
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_extents (e, b, 0, size, collect_ext,
                                          &(struct ext_list){ .n = 0 }), -1);
  ck_assert_int_eq (errno, EIO);
  /* A snapshot taken after the failure is fine. */
  wc = dup_model ();
  c = mksnap ("c");
  wpat (904, 3 * CHUNK, 0);
  check_snap (c, wc);
  check_snap (a, wa);
  /* Persists across reopen, listed as invalid. */
  ereopen ();
  a = nbdsnap_snap_lookup (e, "a");
  b = nbdsnap_snap_lookup (e, "b");
  c = nbdsnap_snap_lookup (e, "c");
  ck_assert_ptr_nonnull (b);
  ck_assert_int_eq (info_of (b).state, NBDSNAP_STATE_INVALID);
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_pread (e, b, buf, 100, 0), -1);
  ck_assert_int_eq (errno, EIO);
  {
    struct nbdsnap_snap_info *l;
    ck_assert_int_eq (nbdsnap_snap_list (e, &l), 3);
    ck_assert_int_eq (l[1].state, NBDSNAP_STATE_INVALID);
    ck_assert_int_eq (l[0].state, NBDSNAP_STATE_LIVE);
    ck_assert_int_eq (l[2].state, NBDSNAP_STATE_LIVE);
    free (l);
  }
  check_snap (a, wa);
  check_snap (c, wc);
  /* Deleting the invalid one keeps the others right. */
  ck_assert_int_eq (nbdsnap_snap_delete (e, b), 0);
  check_snap (a, wa);
  check_snap (c, wc);
  wpat (905, size, 0);
  check_snap (a, wa);
  check_snap (c, wc);
  ereopen ();
  check_snap (nbdsnap_snap_lookup (e, "a"), wa);
  check_snap (nbdsnap_snap_lookup (e, "c"), wc);
  free (wa);
  free (wb);
  free (wc);
}
END_TEST

START_TEST (test_invalid_inject_all)
{
  struct nbdsnap_snap *a, *b;

  /* The hook fails every store: both snapshots need the chunk, both
   * become invalid, and the origin write still succeeds. */
  start (SIZE, 950, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  a = mksnap ("a");
  b = mksnap ("b");
  nbdsnap_engine_inject_store_error (e, EIO);
  wpat (951, 10, 0);
  nbdsnap_engine_inject_store_error (e, 0);
  check_origin ();
  ck_assert_int_eq (info_of (b).state, NBDSNAP_STATE_INVALID);
  ck_assert_int_eq (info_of (a).state, NBDSNAP_STATE_INVALID);
  /* Later writes have nowhere to copy and succeed. */
  wpat (952, size, 0);
  check_origin ();
}
END_TEST

START_TEST (test_invalid_max_store)
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa, *wb, buf[10];

  make_image (img, SIZE, 1000);
  cfg.max_store = 2 * CHUNK;
  cfg.chunk_size = CHUNK;
  eopen ();
  model = slurp (img, SIZE);
  wa = dup_model ();
  a = mksnap ("a");
  ck_assert_uint_eq (info_of (a).max_store, 2 * CHUNK);
  wb = dup_model ();
  b = mksnap ("b");
  wpat (1001, 2 * CHUNK, 0);            /* 2 chunks into b: at the limit */
  ck_assert_int_eq (info_of (b).state, NBDSNAP_STATE_LIVE);
  check_snap (b, wb);
  wpat (1002, 10, 2 * CHUNK);           /* a third: b is invalid, a copies */
  check_origin ();
  ck_assert_int_eq (info_of (b).state, NBDSNAP_STATE_INVALID);
  ck_assert_ptr_nonnull (strstr (last_error, "max-store"));
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_pread (e, b, buf, 10, 0), -1);
  ck_assert_int_eq (errno, EIO);
  ck_assert_uint_eq (info_of (a).chunks_copied, 1);
  check_snap (a, wa);
  wpat (1003, 10, 3 * CHUNK);           /* a's second: at its limit */
  ck_assert_int_eq (info_of (a).state, NBDSNAP_STATE_LIVE);
  check_snap (a, wa);
  wpat (1004, 10, 4 * CHUNK);           /* a's third: a is invalid too */
  ck_assert_int_eq (info_of (a).state, NBDSNAP_STATE_INVALID);
  check_origin ();
  ereopen ();
  ck_assert_int_eq (info_of (nbdsnap_snap_lookup (e, "a")).state,
                    NBDSNAP_STATE_INVALID);
  ck_assert_int_eq (info_of (nbdsnap_snap_lookup (e, "b")).state,
                    NBDSNAP_STATE_INVALID);
  free (wa);
  free (wb);
}
END_TEST

static void
check_changes (struct nbdsnap_snap *s, const struct ext *want, int n)
{
  struct ext_list l;
  int i;

  memset (&l, 0, sizeof l);
  ck_assert_int_eq (helpers_changes (e, s, NULL, collect_ext, &l), 0);
  for (i = 0; i < l.n; ++i)
    fprintf (stderr, "  change %" PRIu64 "+%" PRIu64 "\n", l.e[i].off,
             l.e[i].len);
  ck_assert_int_eq (l.n, n);
  for (i = 0; i < n; ++i) {
    ck_assert_uint_eq (l.e[i].off, want[i].off);
    ck_assert_uint_eq (l.e[i].len, want[i].len);
    ck_assert (!l.e[i].hole);
  }
}

START_TEST (test_changes)
{
  struct nbdsnap_snap *a, *b;
  const uint64_t last = (uint64_t) (NCHUNKS - 1) * CHUNK;

  make_holey (NBDSNAP_DURABILITY_PROCESS);
  a = mksnap ("a");
  check_changes (a, NULL, 0);
  wpat (1100, 10, 2 * CHUNK + 5);       /* data chunk 2 */
  wpat (1101, 10, 3 * CHUNK + 5);       /* chunk 3 was a hole */
  wpat (1102, 1, 12 * CHUNK);           /* a hole, alone */
  {
    const struct ext w[] = { { 2 * CHUNK, 2 * CHUNK, false },
                             { 12 * CHUNK, CHUNK, false } };
    check_changes (a, w, 2);
  }
  b = mksnap ("b");
  check_changes (b, NULL, 0);
  wpat (1103, 1, size - 1);             /* the partial last chunk */
  wpat (1104, 1, 13 * CHUNK);           /* next to 12 */
  wpat (1105, 1, 2 * CHUNK);            /* again: b copies it */
  {
    const struct ext wa[] = { { 2 * CHUNK, 2 * CHUNK, false },
                              { 12 * CHUNK, 2 * CHUNK, false },
                              { last, size - last, false } };
    const struct ext wb[] = { { 2 * CHUNK, CHUNK, false },
                              { 13 * CHUNK, CHUNK, false },
                              { last, size - last, false } };
    check_changes (a, wa, 3);
    check_changes (b, wb, 3);
  }
  /* Deleting b keeps a's changes (its copies are moved). */
  ck_assert_int_eq (nbdsnap_snap_delete (e, b), 0);
  {
    const struct ext wa[] = { { 2 * CHUNK, 2 * CHUNK, false },
                              { 12 * CHUNK, 2 * CHUNK, false },
                              { last, size - last, false } };
    check_changes (a, wa, 3);
  }
  /* Everything, and a run reaching the end across word boundaries. */
  wpat (1106, size, 0);
  {
    const struct ext wa[] = { { 0, size, false } };
    check_changes (a, wa, 1);
  }
}
END_TEST

START_TEST (test_changes_words)
{
  /* Runs across 64-chunk words: 4K chunks, 300 chunks. */
  struct nbdsnap_snap *a;
  const uint64_t sz = 300 * 4096 - 1;

  start (sz, 1200, NBDSNAP_DURABILITY_PROCESS, 4096);
  a = mksnap ("a");
  wpat (1201, 10 * 4096, 60 * 4096);            /* 60..69 */
  wpat (1202, 1, 127 * 4096);                   /* 127 */
  wpat (1203, 1, 128 * 4096);                   /* 128 */
  wpat (1204, 1, 191 * 4096 + 4095);            /* 191 */
  wpat (1205, 10, 299 * 4096);                  /* 299 (partial) */
  {
    const struct ext w[] = { { 60 * 4096, 10 * 4096, false },
                             { 127 * 4096, 2 * 4096, false },
                             { 191 * 4096, 4096, false },
                             { 299 * 4096, sz - 299 * 4096, false } };
    check_changes (a, w, 4);
  }
  /* A callback that stops; one that fails. */
  {
    struct ext_list l = { .stop_after = 2 };
    ck_assert_int_eq (helpers_changes (e, a, NULL, collect_ext, &l), 0);
    ck_assert_int_eq (l.n, 2);
  }
  {
    struct ext_list l = { .fail_after = 1 };
    ck_assert_int_eq (helpers_changes (e, a, NULL, collect_ext, &l), -1);
    ck_assert_int_eq (l.n, 1);
  }
}
END_TEST

START_TEST (test_names)
{
  const char *good[] = { "a", "Z", "0", "nightly", "x.y_z-1", "A-.-_9",
    "1234567890123456789012345678901234567890123456789012345678901234" };
  const char *bad[] = { "", ".a", "-a", "_a", "a/b", "a b", "a\n", "..",
    "/", "a:b", "\xc3\xa4", "a\xc3\xa4",
    "12345678901234567890123456789012345678901234567890123456789012345" };
  size_t i;
  struct nbdsnap_snap *s;

  start (SIZE, 1300, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  for (i = 0; i < sizeof good / sizeof good[0]; ++i) {
    ck_assert_msg (nbdsnap_name_valid (good[i]) == 0, "\"%s\"", good[i]);
    s = mksnap (good[i]);
    ck_assert_ptr_eq (nbdsnap_snap_lookup (e, good[i]), s);
    ck_assert_str_eq (info_of (s).name, good[i]);
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    errno = 0;
    last_error[0] = '\0';
    ck_assert_msg (nbdsnap_name_valid (bad[i]) == -1, "\"%s\"", bad[i]);
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_ptr_nonnull (strstr (last_error, "invalid snapshot name"));
    errno = 0;
    ck_assert_ptr_null (nbdsnap_snap_create (e, bad[i], false));
    ck_assert_int_eq (errno, EINVAL);
  }
  /* Duplicates: EEXIST, nothing created. */
  errno = 0;
  ck_assert_ptr_null (nbdsnap_snap_create (e, "nightly", false));
  ck_assert_int_eq (errno, EEXIST);
  ck_assert_ptr_nonnull (strstr (last_error, "already exists"));
  errno = 0;
  ck_assert_ptr_null (nbdsnap_snap_create (e, "nightly", true));
  ck_assert_int_eq (errno, EEXIST);
  {
    struct nbdsnap_snap_info *l;
    ck_assert_int_eq (nbdsnap_snap_list (e, &l),
                      (ssize_t) (sizeof good / sizeof good[0]));
    free (l);
  }
  /* Names are case sensitive. */
  s = mksnap ("NIGHTLY");
  ck_assert_ptr_ne (s, nbdsnap_snap_lookup (e, "nightly"));
  /* Lookup of a missing name. */
  errno = 0;
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "nope"));
  ck_assert_int_eq (errno, ENOENT);
  /* A deleted name can be reused, and survives reopen. */
  ck_assert_int_eq (nbdsnap_snap_delete (e, nbdsnap_snap_lookup (e, "a")), 0);
  s = mksnap ("a");
  ereopen ();
  ck_assert_ptr_nonnull (nbdsnap_snap_lookup (e, "a"));
  ck_assert_ptr_nonnull (nbdsnap_snap_lookup (e, good[6]));
  /* The name is never a path: files are by id. */
  ck_assert (file_exists (snapfile (2, "meta")));
  ck_assert (!file_exists (snapfile (1, "meta")));
}
END_TEST

START_TEST (test_range)
{
  struct nbdsnap_snap *s;
  unsigned char *w, buf[256];
  struct ext_list l = { .n = 0 };
  const struct { uint64_t off; uint32_t n; } bad[] = {
    { SIZE - 1, 2 }, { SIZE, 1 }, { SIZE + 1, 0 }, { UINT64_MAX, 1 },
    { UINT64_MAX - 10, 100 }, { 0, 0 }, /* (0,0) is fine: skipped */
  };
  size_t i;

  start (SIZE, 1400, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  w = dup_model ();
  s = mksnap ("r");
  memset (buf, 0xee, sizeof buf);
  for (i = 0; i < sizeof bad / sizeof bad[0] - 1; ++i) {
    uint64_t off = bad[i].off;
    uint32_t n = bad[i].n;
    errno = 0;
    ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, n, off, false), -1);
    ck_assert_int_eq (errno, EINVAL);
    errno = 0;
    ck_assert_int_eq (nbdsnap_engine_zero (e, n, off, true, false, false),
                      -1);
    ck_assert_int_eq (errno, EINVAL);
    errno = 0;
    ck_assert_int_eq (nbdsnap_engine_trim (e, n, off, false), -1);
    ck_assert_int_eq (errno, EINVAL);
    errno = 0;
    ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, n, off), -1);
    ck_assert_int_eq (errno, EINVAL);
    errno = 0;
    ck_assert_int_eq (nbdsnap_snap_extents (e, s, off, n ? n : 1,
                                            collect_ext, &l), -1);
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_ptr_nonnull (strstr (last_error, "past the end"));
  }
  ck_assert_int_eq (l.n, 0);
  /* Nothing changed, nothing copied. */
  check_origin ();
  check_snap (s, w);
  ck_assert_uint_eq (info_of (s).chunks_copied, 0);
  /* Zero-length at the very end is fine; so is the last byte. */
  ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, 0, size, false), 0);
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 0, size), 0);
  ck_assert_uint_eq (info_of (s).chunks_copied, 0);
  wpat (1401, 1, size - 1);
  ck_assert_uint_eq (info_of (s).chunks_copied, 1);
  check_snap (s, w);
  free (w);
}
END_TEST

START_TEST (test_huge)
{
  struct nbdsnap_snap *s;
  const uint64_t tib = UINT64_C (1) << 40;
  double t0, t1;
  unsigned char buf[4096], zeros[4096];
  struct nbdsnap_snap_info in;

  make_image (img, tib, 0);
  cfg.durability = NBDSNAP_DURABILITY_POWER;
  eopen ();
  ck_assert_uint_eq (nbdsnap_engine_chunk_size (e), NBDSNAP_CHUNK_DEFAULT);
  /* A little data at the start and the end. */
  ck_assert_int_eq (pwrite (o.fd, "begin", 5, 0), 5);
  ck_assert_int_eq (pwrite (o.fd, "end", 3, tib - 3), 3);
  t0 = now_s ();
  s = nbdsnap_snap_create (e, "big", false);
  t1 = now_s ();
  ck_assert_ptr_nonnull (s);
  printf ("1 TiB sparse image: snapshot created in %.3f ms\n",
          (t1 - t0) * 1000);
  in = info_of (s);
  ck_assert_uint_eq (in.chunks_candidate, 2);
  ck_assert_uint_le (in.store_bytes, 0);
  /* Writes in the middle (holes) copy nothing; at the ends they do. */
  ck_assert_int_eq (nbdsnap_engine_pwrite (e, "x", 1, tib / 2, false), 0);
  ck_assert_int_eq (nbdsnap_engine_pwrite (e, "BEGIN", 5, 0, false), 0);
  ck_assert_int_eq (nbdsnap_engine_pwrite (e, "END", 3, tib - 3, false), 0);
  ck_assert_uint_eq (info_of (s).chunks_copied, 2);
  memset (zeros, 0, sizeof zeros);
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 4096, tib / 2 - 100), 0);
  ck_assert_int_eq (memcmp (buf, zeros, 4096), 0);
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 5, 0), 0);
  ck_assert_int_eq (memcmp (buf, "begin", 5), 0);
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 3, tib - 3), 0);
  ck_assert_int_eq (memcmp (buf, "end", 3), 0);
  /* The bitmap file stays sparse too. */
  ck_assert_uint_lt (blocks_of (snapfile (1, "bitmap")), 64 * KiB);
  t0 = now_s ();
  ereopen ();
  t1 = now_s ();
  printf ("1 TiB sparse image: reopen in %.3f ms\n", (t1 - t0) * 1000);
  s = nbdsnap_snap_lookup (e, "big");
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 3, tib - 3), 0);
  ck_assert_int_eq (memcmp (buf, "end", 3), 0);
  t0 = now_s ();
  ck_assert_int_eq (nbdsnap_snap_delete (e, s), 0);
  t1 = now_s ();
  printf ("1 TiB sparse image: delete in %.3f ms\n", (t1 - t0) * 1000);
}
END_TEST

START_TEST (test_flush_fua)     /* loop */
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa, *wb;

  start (SIZE, 1500, _i, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  {
    unsigned char buf[CHUNK];
    pattern_fill (buf, CHUNK, 1501, 0);
    ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, CHUNK, 0, true), 0);
    memcpy (model, buf, CHUNK);
  }
  ck_assert_int_eq (nbdsnap_engine_zero (e, 10, 2 * CHUNK, false, true,
                                         false), 0);
  memset (model + 2 * CHUNK, 0, 10);
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  wb = dup_model ();
  b = mksnap ("b");
  wpat (1502, 5 * CHUNK, 0);
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  check_snap (a, wa);
  check_snap (b, wb);
  check_origin ();
  free (wa);
  free (wb);
}
END_TEST

static uint64_t
store_syncs (struct nbdsnap_snap *s)
{
  uint64_t n;
  pthread_mutex_lock (&s->store_gc.lock);
  n = s->store_gc.syncs;
  pthread_mutex_unlock (&s->store_gc.lock);
  return n;
}

static uint64_t
bitmap_syncs (struct nbdsnap_snap *s)
{
  uint64_t n;
  pthread_mutex_lock (&s->bitmap_gc.lock);
  n = s->bitmap_gc.syncs;
  pthread_mutex_unlock (&s->bitmap_gc.lock);
  return n;
}

/* durability=process: copies are synced by flush (only when there is
 * something to sync) and by a FUA write that copied -- into whichever
 * snapshot took the copy, also when the newest one is invalid. */
START_TEST (test_flush_syncs)
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa, *wb;
  uint64_t sa, sb;

  make_image (img, SIZE, 1700);
  cfg.durability = NBDSNAP_DURABILITY_PROCESS;
  cfg.chunk_size = CHUNK;
  cfg.max_store = 2 * CHUNK;
  eopen ();
  model = slurp (img, SIZE);
  wa = dup_model ();
  a = mksnap ("a");
  wb = dup_model ();
  b = mksnap ("b");
  /* No syncs on the copy path. */
  wpat (1701, 10, 0);
  ck_assert_uint_eq (store_syncs (b), 0);
  ck_assert_uint_eq (bitmap_syncs (b), 0);
  /* Flush syncs b (dirty) once; a has nothing to sync. */
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  ck_assert_uint_eq (store_syncs (b), 1);
  ck_assert_uint_eq (bitmap_syncs (b), 1);
  ck_assert_uint_eq (store_syncs (a), 0);
  /* Nothing new: no sync. */
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  ck_assert_uint_eq (store_syncs (b), 1);
  /* A write that copies nothing: still nothing to sync. */
  wpat (1702, 10, 0);
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  ck_assert_uint_eq (store_syncs (b), 1);
  /* A FUA write that copies syncs the copy before returning. */
  {
    unsigned char buf[10];
    pattern_fill (buf, 10, 1703, CHUNK);
    ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, 10, CHUNK, true), 0);
    memcpy (model + CHUNK, buf, 10);
  }
  ck_assert_uint_eq (store_syncs (b), 2);
  ck_assert_uint_eq (bitmap_syncs (b), 2);
  /* b reaches max-store: the next copy goes into a, b is invalid. */
  wpat (1704, 10, 2 * CHUNK);
  ck_assert_int_eq (info_of (b).state, NBDSNAP_STATE_INVALID);
  ck_assert_uint_eq (info_of (a).chunks_copied, 1);
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);
  sa = store_syncs (a);
  sb = store_syncs (b);
  ck_assert_uint_eq (sa, 1);
  /* A FUA write whose copy goes into a (b is invalid) syncs a. */
  {
    unsigned char buf[10];
    pattern_fill (buf, 10, 1705, 3 * CHUNK);
    ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, 10, 3 * CHUNK, true),
                      0);
    memcpy (model + 3 * CHUNK, buf, 10);
  }
  ck_assert_uint_eq (info_of (a).chunks_copied, 2);
  ck_assert_msg (store_syncs (a) == sa + 1, "the FUA write's copy into a "
                 "was not synced (a: %" PRIu64 " syncs, b: %" PRIu64 ")",
                 store_syncs (a) - sa, store_syncs (b) - sb);
  check_snap (a, wa);
  check_origin ();
  (void) wb;
  free (wa);
  free (wb);
}
END_TEST

START_TEST (test_chunk_sizes)   /* loop over chunk sizes */
{
  const uint32_t sizes[] = { 4096, 8192, 1024 * 1024 };
  uint32_t cs = sizes[_i];
  uint64_t sz = 3 * (uint64_t) cs + cs / 2 + 1;
  struct nbdsnap_snap *a;
  unsigned char *wa;

  start (sz, 1600 + _i, NBDSNAP_DURABILITY_PROCESS, cs);
  ck_assert_uint_eq (nbdsnap_engine_chunk_size (e), cs);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1610, 7, cs - 3);
  wpat (1611, 1, sz - 1);
  ck_assert_uint_eq (info_of (a).chunks_copied, 3);
  check_snap (a, wa);
  ereopen ();
  check_snap (nbdsnap_snap_lookup (e, "a"), wa);
  free (wa);
}
END_TEST

/* Concurrency smoke test at this level (check_stress has the full one):
 * one thread writes while the main thread creates a snapshot; the
 * snapshot holds the origin as it was between two writes. */
struct bg {
  int stop;
  uint64_t writes;              /* atomic: writes completed */
};

static void *
bg_writer (void *arg)
{
  struct bg *b = arg;
  unsigned char buf[100];
  uint64_t k = 0;

  while (!__atomic_load_n (&b->stop, __ATOMIC_ACQUIRE)) {
    /* Write k into every chunk's first 8 bytes, chunk by chunk. */
    uint64_t c = k % NCHUNKS;
    memset (buf, 0, sizeof buf);
    memcpy (buf, &k, 8);
    ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, 8, c * CHUNK, false), 0);
    __atomic_store_n (&b->writes, ++k, __ATOMIC_RELEASE);
  }
  return NULL;
}

/* Punch holes and fill them again, chunk after chunk, until told to
 * stop. */
static void *
bg_puncher (void *arg)
{
  struct bg *b = arg;
  unsigned char buf[CHUNK];
  uint64_t k = 0;

  memset (buf, 0x5a, sizeof buf);
  while (!__atomic_load_n (&b->stop, __ATOMIC_ACQUIRE)) {
    uint64_t c = k % (NCHUNKS - 1);
    ck_assert_int_eq (nbdsnap_engine_zero (e, CHUNK, c * CHUNK, true, false,
                                           false), 0);
    ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, CHUNK, c * CHUNK,
                                             false), 0);
    __atomic_store_n (&b->writes, ++k, __ATOMIC_RELEASE);
  }
  return NULL;
}

START_TEST (test_create_scan_race)
{
  struct bg b = { 0 };
  pthread_t th;
  struct nbdsnap_snap *s;
  char name[16];
  int round;

  /* Create scans the origin's extents while writes go on: here they
   * punch holes and fill them, so that the extents change between the
   * scan's SEEK_DATA and SEEK_HOLE. */
  start (SIZE, 0, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  pthread_create (&th, NULL, bg_puncher, &b);
  for (round = 0; round < 1000; ++round) {
    snprintf (name, sizeof name, "r%d", round);
    s = mksnap (name);
    ck_assert_uint_le (info_of (s).chunks_candidate, NCHUNKS);
    ck_assert_int_eq (nbdsnap_snap_delete (e, s), 0);
  }
  __atomic_store_n (&b.stop, 1, __ATOMIC_RELEASE);
  pthread_join (th, NULL);
  ck_assert_uint_gt (b.writes, 0);
}
END_TEST

static int window_writes;

/* Between create's scan and its install: write into holes. */
static void
fill_holes (void *opaque)
{
  int i;

  for (i = 0; i < window_writes; ++i)
    wpat (7000 + i, 100, (uint64_t) (i % (NCHUNKS - 1)) * CHUNK + 777);
}

START_TEST (test_create_window)
{
  struct nbdsnap_snap *s;
  unsigned char *want;

  start (SIZE, 0, NBDSNAP_DURABILITY_PROCESS, CHUNK);   /* all holes */
  wpat (6999, 1000, 3 * CHUNK);                         /* one data chunk */
  window_writes = _i == 0 ? 5 : 3000;
  nbdsnap_engine_test_create_hook (e, fill_holes, NULL);
  s = mksnap ("w");
  nbdsnap_engine_test_create_hook (e, NULL, NULL);
  want = dup_model ();                  /* the hook's writes included */
  check_snap (s, want);
  /* And it stays so when those chunks are overwritten. */
  wpat (7999, (uint32_t) (SIZE - 5000), 0);
  check_snap (s, want);
  ereopen ();
  check_snap (nbdsnap_snap_lookup (e, "w"), want);
  free (want);
}
END_TEST

START_TEST (test_create_during_writes)
{
  struct bg b = { 0 };
  pthread_t th;
  struct nbdsnap_snap *s;
  uint64_t lo, hi, c, v, maxv = 0, minv = UINT64_MAX;
  char name[16];
  int round;

  start (SIZE, 0, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  pthread_create (&th, NULL, bg_writer, &b);
  for (round = 0; round < 20; ++round) {
    usleep (2000);
    lo = __atomic_load_n (&b.writes, __ATOMIC_ACQUIRE);
    snprintf (name, sizeof name, "c%d", round);
    s = mksnap (name);
    hi = __atomic_load_n (&b.writes, __ATOMIC_ACQUIRE);
    (void) hi;
    /* The snapshot is the state after exactly K writes for some K: the
     * values in chunks, in chunk order starting after the last written,
     * are consecutive. */
    maxv = 0;
    minv = UINT64_MAX;
    for (c = 0; c < NCHUNKS; ++c) {
      ck_assert_int_eq (nbdsnap_snap_pread (e, s, &v, 8, c * CHUNK), 0);
      if (v > maxv)
        maxv = v;
      if (v < minv)
        minv = v;
    }
    /* After K >= NCHUNKS writes chunk c holds the last k with
     * k % NCHUNKS == c and k < K: values are K-NCHUNKS .. K-1. */
    if (lo >= NCHUNKS) {
      ck_assert_uint_eq (maxv - minv, NCHUNKS - 1);
      ck_assert_uint_ge (maxv + 1, lo);
    }
  }
  __atomic_store_n (&b.stop, 1, __ATOMIC_RELEASE);
  pthread_join (th, NULL);
}
END_TEST

static Suite *
engine_suite (void)
{
  Suite *s = suite_create ("engine");
  const struct helpers_tcase tcs[] = {
    { "basic", test_basic, 2 },
    { "zero_trim", test_zero_trim, 2 },
    { "holes", test_holes, 2 },
    { "zero_chunk", test_zero_chunk, 1 },
    { "extents", test_extents, 1 },
    { "reads", test_reads, 1 },
    { "many", test_many, 2 },
    { "delete", test_delete, 4 },
    { "delete_moves", test_delete_moves, 1 },
    { "reopen", test_reopen, 2 },
    { "create_fails", test_create_fails, 1 },
    { "delete_fails", test_delete_fails, 1 },
    { "recovery_half_create", test_recovery_half_create, 1 },
    { "recovery_deleting", test_recovery_deleting, 1 },
    { "recovery_temporary", test_recovery_temporary, 1 },
    { "invalid_inject", test_invalid_inject, 2 },
    { "invalid_inject_all", test_invalid_inject_all, 1 },
    { "invalid_max_store", test_invalid_max_store, 1 },
    { "changes", test_changes, 1 },
    { "changes_words", test_changes_words, 1 },
    { "names", test_names, 1 },
    { "range", test_range, 1 },
    { "huge", test_huge, 1 },
    { "flush_fua", test_flush_fua, 2 },
    { "flush_syncs", test_flush_syncs, 1 },
    { "chunk_sizes", test_chunk_sizes, 3 },
    { "create_window", test_create_window, 2 },
    { "create_scan_race", test_create_scan_race, 1 },
    { "create_during_writes", test_create_during_writes, 1 },
  };

  helpers_add_tcases (s, tcs, sizeof tcs / sizeof tcs[0], setup, teardown,
                      120);
  return s;
}

int
main (void)
{
  return helpers_run_suite (engine_suite (), "check_engine");
}
