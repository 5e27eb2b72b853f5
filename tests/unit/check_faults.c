/* nbdsnap: Check suite for the engine under faults (src/cow.c,
 * src/engine.c, src/snap.c, src/bitmap.c): what issue 7 promises, "a
 * snapshot never lies and the server never dies".
 *
 * Every test drives the engine through its API (white box through
 * engine-internal.h where a fault must be planted under it: a descriptor
 * replaced with dup2, a per-snapshot limit) and asserts bytes and errnos:
 * a snapshot either returns exactly the bytes the origin held at its
 * instant or fails with EIO; it never returns other bytes, not during a
 * fault, not after a restart.  Damage is planted in the state directory
 * between close and open, the way a crash or an administrator would.
 * A check that fails because the engine breaks its promise says
 * "ENGINE BUG" in its message.
 *
 * One TCase per behaviour:
 *   invalid_durable      (loop: durability) a store write fails: the
 *                        snapshot is invalid, its bitmap header says so on
 *                        disk before the origin write returns, and after
 *                        close + open it is still invalid (EIO)
 *   invalid_not_durable_fails_write  (loop: durability) the invalid mark
 *                        cannot be written (read-only bitmap descriptor)
 *                        and the store fails: the origin write fails with
 *                        EIO and changes nothing; so do later writes
 *                        (pwrite, zero, trim) to chunks the snapshot needs;
 *                        once the mark can be written, writes succeed and
 *                        the snapshot is invalid after open
 *   delete_no_space      delete creates no file (inotify; filling a disk
 *                        needs root, test-fault-*.sh do that): deleting
 *                        the oldest snapshot, live or invalid, only
 *                        rewrites its own bitmap header, in an already
 *                        allocated page, then unlinks; deleting one that
 *                        holds chunks an older one needs also writes that
 *                        one's store and bitmap, nothing else
 *   read_race            readers of two snapshots against a writer of the
 *                        origin, small max-store so that both turn invalid
 *                        mid-run, 200 rounds ($SEED, $READ_RACE_ROUNDS):
 *                        every read is the snapshot's bytes or EIO, and
 *                        EIO only from a snapshot that ends invalid
 *   recovery_creating    (5a) a v2 bitmap saying "creating" is an
 *                        unfinished create, with or without its meta
 *                        file: removed, the chunks an older snapshot
 *                        reads through it moved into that one first
 *   recovery_lost_meta   (5b) a newer snapshot lost its meta file: kept,
 *                        invalid, named lost-ID; the older one reads
 *                        through it, byte for byte, also after lost-ID is
 *                        deleted (chunks moved) and after another open
 *   recovery_meta_checksum  (5c) a flipped byte in a meta file: invalid,
 *                        lost-ID; the older one is fine
 *   recovery_truncated_store  (5d, loop: 0 = the older one reads through
 *                        it, 1 = it does not) invalid with "truncated";
 *                        the older one invalid too / still exact
 *   recovery_bad_bitmap_header  (5e) every older snapshot is invalid, the
 *                        newer one is fine
 *   recovery_duplicate_name  (5f) two meta files with one name: the newer
 *                        one becomes lost-ID and invalid, the older one
 *                        keeps the name and its bytes
 *   recovery_all         (5g) all of the above in one directory: open
 *                        succeeds, twice, and every snapshot is what it
 *                        should be
 *   delete_damaged       a snapshot whose bitmap could not be read at open
 *                        (invalid, listed) can be deleted; lost-DIGITS
 *                        names are reserved
 *   fd_budget            (forked child, low RLIMIT_NOFILE) create refuses
 *                        with EMFILE and a message naming RLIMIT_NOFILE,
 *                        leaves nothing behind, the others read right; an
 *                        open with a lower limit starts with a warning
 *                        (create refuses), with a much lower one refuses
 *   scale_memory         300 snapshots of a 1 TiB sparse image: after open
 *                        the bitmaps hold only the pages with bits; the
 *                        changes of the oldest are exactly the writes
 *   sync_failure_invalidates  process mode: a snapshot's store cannot be
 *                        synced at flush (a pipe under its descriptor):
 *                        flush succeeds, it turns invalid, so does the
 *                        older one that reads through it, not the one that
 *                        holds its own copies; still so after open
 */
#include <config.h>

#include <pthread.h>
#include <sys/inotify.h>
#include <sys/resource.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"
#include "engine-internal.h"        /* white box: descriptors, limits */
#include "engine-fixture.h"

#define CHUNK (64 * KiB)
#define NCHUNKS 20
#define SIZE ((uint64_t) NCHUNKS * CHUNK - 12345)   /* partial last chunk */

/* Every engine message of a test, not only the last one (open reports
 * one per damaged snapshot); thread-safe for read_race. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char msgs[64 * KiB];
static size_t msgs_len;

static void
faults_log (const char *fmt, va_list args)
{
  char line[sizeof last_error];
  size_t n;

  vsnprintf (line, sizeof line, fmt, args);
  n = strlen (line);
  pthread_mutex_lock (&log_lock);
  memcpy (last_error, line, n + 1);
  if (msgs_len + n + 2 < sizeof msgs) {
    memcpy (msgs + msgs_len, line, n);
    msgs_len += n;
    msgs[msgs_len++] = '\n';
    msgs[msgs_len] = '\0';
  }
  pthread_mutex_unlock (&log_lock);
  if (!quiet_errors)
    fprintf (stderr, "nbdsnap: error: %s\n", line);
}

static bool
logged (const char *needle)
{
  return strstr (msgs, needle) != NULL;
}

static void
setup (void)
{
  fixture_setup ("check_faults");
  nbdsnap_set_log_handlers (faults_log, NULL);
  msgs_len = 0;
  msgs[0] = '\0';
  quiet_errors = 0;
}

static void
teardown (void)
{
  fixture_teardown ();
}

/* -1 if the whole snapshot equals want, -2 if the read failed, else the
 * first differing byte. */
static ssize_t
snap_diff (struct nbdsnap_snap *s, const unsigned char *want)
{
  unsigned char *got = malloc (size);
  ssize_t d;

  if (got == NULL)
    return -2;
  if (nbdsnap_snap_pread (e, s, got, size, 0) == -1)
    d = -2;
  else
    d = first_diff (got, want, size);
  free (got);
  return d;
}

static void
check_snap_ (struct nbdsnap_snap *s, const unsigned char *want, int line)
{
  ssize_t d;

  ck_assert_ptr_nonnull (s);
  d = snap_diff (s, want);
  ck_assert_msg (d != -2, "line %d: snapshot %s: read: %s", line, s->name,
                 last_error);
  ck_assert_msg (d == -1, "line %d: snapshot %s differs at byte %zd "
                 "(chunk %zd)", line, s->name, d,
                 d / (ssize_t) nbdsnap_engine_chunk_size (e));
}
#define check_snap(s, want) check_snap_ ((s), (want), __LINE__)

/* An invalid snapshot: state, and reads (whole, first and last byte)
 * fail with EIO. */
static void
check_invalid_ (struct nbdsnap_snap *s, int line)
{
  struct nbdsnap_snap_info in;
  unsigned char *buf = malloc (size);

  ck_assert_msg (s != NULL, "line %d: no such snapshot", line);
  ck_assert_int_eq (nbdsnap_snap_info (e, s, &in), 0);
  ck_assert_msg (in.state == NBDSNAP_STATE_INVALID, "line %d: snapshot %s "
                 "is %d, not invalid", line, s->name, in.state);
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, size, 0), -1);
  ck_assert_msg (errno == EIO, "line %d: errno %d", line, errno);
  errno = 0;
  ck_assert_int_eq (nbdsnap_snap_pread (e, s, buf, 1, size - 1), -1);
  ck_assert_int_eq (errno, EIO);
  free (buf);
}
#define check_invalid(s) check_invalid_ ((s), __LINE__)

static void
check_live_ (struct nbdsnap_snap *s, const unsigned char *want, int line)
{
  struct nbdsnap_snap_info in;

  ck_assert_msg (s != NULL, "line %d: no such snapshot", line);
  ck_assert_int_eq (nbdsnap_snap_info (e, s, &in), 0);
  ck_assert_msg (in.state == NBDSNAP_STATE_LIVE, "line %d: snapshot %s is "
                 "%d, not live", line, s->name, in.state);
  check_snap_ (s, want, line);
}
#define check_live(s, want) check_live_ ((s), (want), __LINE__)

static struct nbdsnap_snap *
lookup (const char *name)
{
  return nbdsnap_snap_lookup (e, name);
}

static ssize_t
count_snaps (void)
{
  struct nbdsnap_snap_info *l;
  ssize_t n = nbdsnap_snap_list (e, &l);
  ck_assert_int_ge (n, 0);
  free (l);
  return n;
}

/* 16 rotating buffers: check_events takes up to 7 names at once. */
static char *
snapbase (uint64_t id, const char *ext)
{
  static char p[16][64];
  static int k;
  k = (k + 1) % 16;
  snprintf (p[k], sizeof p[k], "snap-%06" PRIu64 ".%s", id, ext);
  return p[k];
}

/* The persistent state in a snapshot's bitmap header, as on disk now. */
static uint32_t
disk_state (uint64_t id)
{
  uint64_t hid;
  uint32_t st;
  int dfd = open (sdpath, O_RDONLY | O_DIRECTORY);

  ck_assert_int_ge (dfd, 0);
  ck_assert_msg (bitmap_peek (dfd, snapbase (id, "bitmap"), &hid, &st) == 0,
                 "bitmap_peek %" PRIu64 ": %s", id, strerror (errno));
  close (dfd);
  ck_assert_uint_eq (hid, id);
  return st;
}

/* ---- On-disk formats, written by hand (bitmap.c, snap.c) ------------- */

/* Rewrite the header of a snapshot's bitmap with this state, a correct
 * checksum. */
static void
set_bitmap_state (uint64_t id, uint32_t state)
{
  struct disk_bitmap_header h;
  int fd = open (snapfile (id, "bitmap"), O_RDWR);

  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (pread (fd, &h, sizeof h, 0), (ssize_t) sizeof h);
  ck_assert_int_eq (memcmp (h.magic, "NBDSNAPB", 8), 0);
  ck_assert_uint_eq (h.version, 2);
  h.state = state;
  h.checksum = helpers_fnv1a (&h, offsetof (struct disk_bitmap_header, checksum));
  ck_assert_int_eq (pwrite (fd, &h, sizeof h, 0), (ssize_t) sizeof h);
  close (fd);
}

/* Flip a byte of the header (its nchunks) without fixing the checksum. */
static void
corrupt_bitmap_header (uint64_t id)
{
  int fd = open (snapfile (id, "bitmap"), O_RDWR);
  unsigned char ch;
  const off_t at = offsetof (struct disk_bitmap_header, nchunks) + 1;

  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (pread (fd, &ch, 1, at), 1);
  ch ^= 0x40;
  ck_assert_int_eq (pwrite (fd, &ch, 1, at), 1);
  close (fd);
}

/* A meta file as snap_write_meta writes it, with a correct checksum. */
static void
write_meta (uint64_t id, const char *name, const char *state)
{
  char buf[512];
  int n, fd;

  n = snprintf (buf, sizeof buf,
                "nbdsnap-snapshot 1\n"
                "id %" PRIu64 "\n"
                "name %s\n"
                "created 1763690400.123456789\n"
                "state %s\n"
                "temporary 0\n"
                "max-store 0\n", id, name, state);
  snprintf (buf + n, sizeof buf - n, "checksum %016llx\n",
            (unsigned long long) helpers_fnv1a (buf, n));
  fd = open (snapfile (id, "meta"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (write (fd, buf, strlen (buf)), (ssize_t) strlen (buf));
  close (fd);
}

/* Flip one bit of the byte right after the first occurrence of what in
 * a meta file (the checksum line is left as it was). */
static void
flip_meta_byte (uint64_t id, const char *what)
{
  char buf[1024], *p;
  int fd = open (snapfile (id, "meta"), O_RDWR);
  ssize_t n;

  ck_assert_int_ge (fd, 0);
  n = pread (fd, buf, sizeof buf - 1, 0);
  ck_assert_int_gt (n, 0);
  buf[n] = '\0';
  p = strstr (buf, what);
  ck_assert_ptr_nonnull (p);
  p += strlen (what);
  *p ^= 0x01;
  ck_assert_int_eq (pwrite (fd, p, 1, p - buf), 1);
  close (fd);
}

static void
truncate_file (const char *path, uint64_t len)
{
  ck_assert_int_eq (truncate (path, len), 0);
}

/* ---------------------------------------------------------------------- */

START_TEST (test_invalid_durable)       /* loop: _i = durability */
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa;

  start (SIZE, 1100, _i, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1101, CHUNK, 0);                /* chunk 0 into a */
  b = mksnap ("b");
  ck_assert_uint_eq (disk_state (2), BITMAP_STATE_LIVE);
  /* b's store fails; chunk 0 is needed by b only (a holds its own). */
  nbdsnap_engine_inject_store_error (e, ENOSPC);
  wpat (1102, 100, 50);                 /* the origin write succeeds */
  nbdsnap_engine_inject_store_error (e, 0);
  check_origin ();
  check_invalid (b);
  ck_assert_ptr_nonnull (strstr (last_error, "invalid"));
  /* Durable before the write returned: the header on disk says so now,
   * not only after some later flush or close. */
  ck_assert_uint_eq (disk_state (2), BITMAP_STATE_INVALID);
  ck_assert_uint_eq (disk_state (1), BITMAP_STATE_LIVE);
  check_live (a, wa);
  /* b takes no more copies: a chunk a needs goes into a. */
  wpat (1103, CHUNK, 7 * CHUNK);
  ck_assert_uint_eq (info_of (a).chunks_copied, 2);
  check_live (a, wa);

  ereopen ();
  a = lookup ("a");
  b = lookup ("b");
  check_invalid (b);
  check_live (a, wa);
  wpat (1104, CHUNK, 9 * CHUNK);
  check_live (a, wa);
  ereopen ();
  check_invalid (lookup ("b"));
  check_live (lookup ("a"), wa);
  free (wa);
}
END_TEST

START_TEST (test_invalid_not_durable)   /* loop: _i = durability */
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa, buf[100];
  int rw, ro;

  start (SIZE, 1200, _i, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1201, CHUNK, 0);                /* chunk 0 into a */
  b = mksnap ("b");
  /* b's invalid mark cannot be written: its bitmap descriptor is made
   * read-only under it, and its meta file, the second place, cannot be
   * replaced (a directory where its temporary file goes). */
  rw = dup (b->bm.fd);
  ro = open (snapfile (2, "bitmap"), O_RDONLY);
  ck_assert_int_ge (rw, 0);
  ck_assert_int_ge (ro, 0);
  ck_assert_int_eq (dup2 (ro, b->bm.fd), b->bm.fd);
  close (ro);
  ck_assert_int_eq (mkdir (snapfile (2, "meta.tmp"), 0700), 0);

  /* ... and its store fails: the write must fail, or b would be live
   * again after a restart and read the new bytes. */
  nbdsnap_engine_inject_store_error (e, ENOSPC);
  pattern_fill (buf, sizeof buf, 1202, 2 * CHUNK + 7);
  errno = 0;
  ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, sizeof buf,
                                           2 * CHUNK + 7, false), -1);
  ck_assert_int_eq (errno, EIO);
  nbdsnap_engine_inject_store_error (e, 0);
  check_origin ();                      /* old bytes at chunk 2 */
  check_invalid (b);                    /* in memory */
  ck_assert_uint_eq (disk_state (2), BITMAP_STATE_LIVE);

  /* Invalid in memory, not on disk: writes to chunks b would need fail
   * (the store works again: only the mark is missing). */
  errno = 0;
  ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, sizeof buf, 4 * CHUNK,
                                           false), -1);
  ck_assert_int_eq (errno, EIO);
  errno = 0;
  ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, sizeof buf,
                                           2 * CHUNK + 7, true), -1);
  ck_assert_int_eq (errno, EIO);
  errno = 0;
  ck_assert_int_eq (nbdsnap_engine_zero (e, CHUNK, 6 * CHUNK, true, false,
                                         false), -1);
  ck_assert_int_eq (errno, EIO);
  errno = 0;
  ck_assert_int_eq (nbdsnap_engine_trim (e, CHUNK, 8 * CHUNK, false), -1);
  ck_assert_int_eq (errno, EIO);
  check_origin ();
  check_live (a, wa);
  ck_assert_uint_eq (info_of (a).chunks_copied, 1);
  ck_assert_uint_eq (disk_state (2), BITMAP_STATE_LIVE);

  /* The mark can be written again: the next write to chunk 2 succeeds,
   * b is invalid on disk, a took the copy. */
  ck_assert_int_eq (dup2 (rw, b->bm.fd), b->bm.fd);
  close (rw);
  ck_assert_int_eq (rmdir (snapfile (2, "meta.tmp")), 0);
  wpat (1203, 100, 2 * CHUNK + 7);
  ck_assert_uint_eq (disk_state (2), BITMAP_STATE_INVALID);
  check_origin ();
  check_invalid (b);
  check_live (a, wa);
  ck_assert_uint_eq (info_of (a).chunks_copied, 2);

  ereopen ();
  check_invalid (lookup ("b"));
  check_live (lookup ("a"), wa);
  free (wa);
}
END_TEST

/* Issue 18: b's bitmap file cannot be written at all (its header
 * included), the state directory can: the invalid mark goes into b's meta
 * file, and the origin writes succeed; b is invalid after a reopen, though
 * its header still says live. */
START_TEST (test_invalid_in_meta)       /* loop: _i = durability */
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa;
  int rw, ro;

  start (SIZE, 1250, _i, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1251, CHUNK, 0);                /* chunk 0 into a */
  b = mksnap ("b");
  rw = dup (b->bm.fd);
  ro = open (snapfile (2, "bitmap"), O_RDONLY);
  ck_assert_int_ge (rw, 0);
  ck_assert_int_ge (ro, 0);
  ck_assert_int_eq (dup2 (ro, b->bm.fd), b->bm.fd);
  close (ro);

  /* The bit cannot be written (EBADF on the read-only descriptor): b
   * goes invalid, recorded in its meta file; the writes succeed. */
  wpat (1252, 100, 2 * CHUNK + 7);
  wpat (1253, CHUNK, 4 * CHUNK);
  ck_assert_int_eq (nbdsnap_engine_zero (e, CHUNK, 6 * CHUNK, true, false,
                                         false), 0);
  memset (model + 6 * CHUNK, 0, CHUNK);
  check_origin ();
  check_invalid (b);
  ck_assert_uint_eq (disk_state (2), BITMAP_STATE_LIVE);
  check_live (a, wa);

  ck_assert_int_eq (dup2 (rw, b->bm.fd), b->bm.fd);
  close (rw);
  ereopen ();
  check_invalid (lookup ("b"));
  check_live (lookup ("a"), wa);
  free (wa);
}
END_TEST

/* inotify events on the state directory since the watch was set. */
struct dir_events {
  int n;
  uint32_t mask[64];
  char name[64][64];
};

static void
read_events (int fd, struct dir_events *ev)
{
  char buf[8192] __attribute__ ((aligned (__alignof__ (struct inotify_event))));
  ssize_t len;
  char *p;

  ev->n = 0;
  while ((len = read (fd, buf, sizeof buf)) > 0)
    for (p = buf; p < buf + len;
         p += sizeof (struct inotify_event)
              + ((struct inotify_event *) p)->len) {
      const struct inotify_event *ie = (const struct inotify_event *) p;
      ck_assert_int_lt (ev->n, 64);
      ev->mask[ev->n] = ie->mask;
      snprintf (ev->name[ev->n], sizeof ev->name[0], "%s",
                ie->len ? ie->name : "");
      fprintf (stderr, "  inotify: %s%s%s%s %s\n",
               ie->mask & IN_CREATE ? "CREATE " : "",
               ie->mask & IN_MOVED_TO ? "MOVED_TO " : "",
               ie->mask & IN_MODIFY ? "MODIFY " : "",
               ie->mask & IN_DELETE ? "DELETE " : "", ev->name[ev->n]);
      ev->n++;
    }
  ck_assert_msg (len == -1 && errno == EAGAIN, "inotify read: %s",
                 strerror (errno));
}

/* No file was created; every file modified is one of allowed (NULL
 * terminated); every one of deleted was deleted. */
static void
check_events (const struct dir_events *ev, const char **allowed,
              const char **deleted)
{
  int i, j;

  for (i = 0; i < ev->n; ++i) {
    ck_assert_msg (!(ev->mask[i] & (IN_CREATE | IN_MOVED_TO)),
                   "delete created %s: it needs free space", ev->name[i]);
    if (ev->mask[i] & IN_MODIFY) {
      bool ok = false;
      for (j = 0; allowed[j]; ++j)
        ok |= strcmp (ev->name[i], allowed[j]) == 0;
      ck_assert_msg (ok, "delete modified %s", ev->name[i]);
    }
  }
  for (j = 0; deleted[j]; ++j) {
    bool found = false;
    for (i = 0; i < ev->n; ++i)
      found |= (ev->mask[i] & IN_DELETE) && strcmp (ev->name[i],
                                                    deleted[j]) == 0;
    ck_assert_msg (found, "%s was not deleted", deleted[j]);
  }
}

/* Its header page is allocated (data at offset 0): rewriting it in place
 * needs no block. */
static void
check_header_allocated (uint64_t id)
{
  int fd = open (snapfile (id, "bitmap"), O_RDONLY);
  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (lseek (fd, 0, SEEK_DATA), 0);
  close (fd);
}

START_TEST (test_delete_no_space)
{
  struct nbdsnap_snap *a, *b, *c, *d;
  unsigned char *wa, *wc, *wd;
  struct dir_events ev;
  int in;

  /* Filling a file system takes root or a FUSE mount (the integration
   * test test-fault-eio-*.sh does that).  What makes delete work on a
   * full one is that it allocates nothing: no new file (no .tmp, no
   * rename), and for the oldest snapshot no write but its own header.
   * inotify sees exactly that. */
  start (SIZE, 1300, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1301, 2 * CHUNK, 0);            /* chunks 0-1 into a */
  b = mksnap ("b");
  wpat (1302, 2 * CHUNK, 4 * CHUNK);    /* 4-5 into b: a reads via b */
  wc = dup_model ();
  c = mksnap ("c");
  wpat (1303, CHUNK, 8 * CHUNK);        /* 8 into c: a, b read via c */
  wd = dup_model ();
  d = mksnap ("d");
  wpat (1304, CHUNK, 10 * CHUNK);       /* 10 into d */
  check_header_allocated (1);
  check_header_allocated (2);
  check_header_allocated (3);
  check_header_allocated (4);

  in = inotify_init1 (IN_NONBLOCK | IN_CLOEXEC);
  ck_assert_int_ge (in, 0);
  ck_assert_int_ge (inotify_add_watch (in, sdpath, IN_CREATE | IN_MOVED_TO
                                       | IN_MODIFY | IN_DELETE), 0);

  /* The middle one, b: its chunks move into a (a's store and bitmap are
   * written, in place or into holes of its sparse store), then only its
   * own header is rewritten. */
  ck_assert_int_eq (nbdsnap_snap_delete (e, b), 0);
  read_events (in, &ev);
  check_events (&ev, (const char *[]) { snapbase (1, "store"),
                                        snapbase (1, "bitmap"),
                                        snapbase (2, "bitmap"), NULL },
                (const char *[]) { snapbase (2, "meta"),
                                   snapbase (2, "store"),
                                   snapbase (2, "bitmap"), NULL });
  check_live (a, wa);
  check_live (c, wc);

  /* The oldest, a: its header only. */
  ck_assert_int_eq (nbdsnap_snap_delete (e, a), 0);
  read_events (in, &ev);
  check_events (&ev, (const char *[]) { snapbase (1, "bitmap"), NULL },
                (const char *[]) { snapbase (1, "meta"),
                                   snapbase (1, "store"),
                                   snapbase (1, "bitmap"), NULL });
  check_live (c, wc);
  check_live (d, wd);

  /* The oldest again, c, now invalid (its store failed). */
  nbdsnap_engine_inject_store_error (e, EIO);
  wpat (1305, 10, 12 * CHUNK);          /* d fails, then c: both invalid */
  nbdsnap_engine_inject_store_error (e, 0);
  check_invalid (c);
  read_events (in, &ev);                /* the invalid marks */
  ck_assert_int_eq (nbdsnap_snap_delete (e, c), 0);
  read_events (in, &ev);
  check_events (&ev, (const char *[]) { snapbase (3, "bitmap"), NULL },
                (const char *[]) { snapbase (3, "meta"),
                                   snapbase (3, "store"),
                                   snapbase (3, "bitmap"), NULL });
  close (in);
  ereopen ();
  ck_assert_int_eq (count_snaps (), 1);
  check_invalid (lookup ("d"));
  free (wa);
  free (wc);
  free (wd);
}
END_TEST

/* ---- read_race --------------------------------------------------------- */

#define RR_CHUNK 4096u
#define RR_NCHUNKS 16u
#define RR_SIZE ((uint64_t) RR_NCHUNKS * RR_CHUNK - 1000)
#define RR_READERS 2

struct rr_count {
  uint64_t ok, eio, wrong, other;
};

struct rr_reader {
  pthread_t th;
  uint64_t x;                           /* random state */
  struct nbdsnap_snap *snaps[2];
  const unsigned char *want[2];
  struct rr_count count[2];
  char first_wrong[256];
  const int *stop;
};

static void *
rr_read (void *arg)
{
  struct rr_reader *r = arg;
  unsigned char buf[2 * RR_CHUNK];
  uint64_t c, off, len;
  int k, ret, err;

  while (!__atomic_load_n (r->stop, __ATOMIC_ACQUIRE)) {
    for (k = 0; k < 2; ++k)
      for (c = 0; c < RR_NCHUNKS; ++c) {
        /* Chunk by chunk, and one read in four unaligned, up to two
         * chunks long. */
        off = c * RR_CHUNK;
        len = RR_SIZE - off < RR_CHUNK ? RR_SIZE - off : RR_CHUNK;
        if (splitmix64 (&r->x) % 4 == 0) {
          off = splitmix64 (&r->x) % RR_SIZE;
          len = 1 + splitmix64 (&r->x) % (2 * RR_CHUNK);
          if (len > RR_SIZE - off)
            len = RR_SIZE - off;
        }
        errno = 0;
        ret = nbdsnap_snap_pread (e, r->snaps[k], buf, len, off);
        err = errno;
        if (ret == 0 && memcmp (buf, r->want[k] + off, len) == 0)
          r->count[k].ok++;
        else if (ret == 0) {
          ssize_t d = first_diff (buf, r->want[k] + off, len);
          if (r->count[k].wrong++ == 0)
            snprintf (r->first_wrong, sizeof r->first_wrong,
                      "snapshot %s: read %" PRIu64 "+%" PRIu64 " differs "
                      "at image byte %" PRIu64 " (chunk %" PRIu64 ")",
                      k ? "b" : "a", off, len, off + d,
                      (off + d) / RR_CHUNK);
        }
        else if (err == EIO)
          r->count[k].eio++;
        else
          r->count[k].other++;
      }
  }
  return NULL;
}

START_TEST (test_read_race)
{
  const char *env = getenv ("SEED");
  uint64_t seed = env && *env ? strtoull (env, NULL, 0)
                              : (uint64_t) time (NULL) ^ getpid ();
  unsigned rounds = 200, r, i, k;
  struct rr_count total[2] = { { 0 } };
  int cur_mode = -1, stop;
  uint64_t x;
  unsigned char buf[2 * RR_CHUNK];

  env = getenv ("READ_RACE_ROUNDS");
  if (env && *env)
    rounds = atoi (env);
  printf ("read_race: SEED=%" PRIu64 " (%u rounds)\n", seed, rounds);
  fflush (stdout);
  x = seed;
  make_image (img, RR_SIZE, seed | 1);
  model = slurp (img, RR_SIZE);
  quiet_errors = 1;               /* thousands of "cannot be read" */

  for (r = 0; r < rounds; ++r) {
    int mode = r % 8 == 7 ? NBDSNAP_DURABILITY_POWER
                          : NBDSNAP_DURABILITY_PROCESS;
    struct rr_reader rd[RR_READERS];
    struct nbdsnap_snap *a, *b;
    unsigned char *wa, *wb;
    unsigned nwrites;

    if (mode != cur_mode) {
      if (e)
        eclose ();
      cfg.durability = mode;
      cfg.chunk_size = RR_CHUNK;
      eopen ();
      cur_mode = mode;
    }
    /* a, one chunk copied into a, b; each with a small store limit (white
     * box), b's smaller: b turns invalid first, then a takes the copies
     * until it is full too. */
    wa = dup_model ();
    a = mksnap ("a");
    a->max_store = (3 + splitmix64 (&x) % 8) * RR_CHUNK;
    wpat (seed + r * 1000, RR_CHUNK / 2,
          (splitmix64 (&x) % RR_NCHUNKS) * RR_CHUNK);
    wb = dup_model ();
    b = mksnap ("b");
    b->max_store = (1 + splitmix64 (&x) % 6) * RR_CHUNK;

    stop = 0;
    for (i = 0; i < RR_READERS; ++i) {
      memset (&rd[i], 0, sizeof rd[i]);
      rd[i].x = seed ^ (r * 7919 + i * 104729);
      rd[i].snaps[0] = a;
      rd[i].snaps[1] = b;
      rd[i].want[0] = wa;
      rd[i].want[1] = wb;
      rd[i].stop = &stop;
      ck_assert_int_eq (pthread_create (&rd[i].th, NULL, rr_read, &rd[i]),
                        0);
    }
    /* The writer: random unaligned writes and zeroes over the image. */
    nwrites = 3 * RR_NCHUNKS;
    for (i = 0; i < nwrites; ++i) {
      uint64_t off = splitmix64 (&x) % RR_SIZE;
      uint64_t len = 1 + splitmix64 (&x) % (2 * RR_CHUNK);
      if (len > RR_SIZE - off)
        len = RR_SIZE - off;
      if (splitmix64 (&x) % 8 == 0) {
        ck_assert_msg (nbdsnap_engine_zero (e, len, off, true, false,
                                            false) == 0,
                       "round %u: zero: %s", r, last_error);
        memset (model + off, 0, len);
      }
      else {
        pattern_fill (buf, len, seed + r * 1000 + i + 1, off);
        write_model (buf, len, off);
      }
    }
    __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
    for (i = 0; i < RR_READERS; ++i)
      pthread_join (rd[i].th, NULL);

    for (k = 0; k < 2; ++k) {
      struct nbdsnap_snap *s = k ? b : a;
      uint64_t eio = 0;
      for (i = 0; i < RR_READERS; ++i) {
        ck_assert_msg (rd[i].count[k].wrong == 0, "round %u (SEED=%" PRIu64
                       "): %" PRIu64 " wrong reads, first: %s", r, seed,
                       rd[i].count[k].wrong, rd[i].first_wrong);
        ck_assert_msg (rd[i].count[k].other == 0, "round %u (SEED=%" PRIu64
                       "): %" PRIu64 " reads failed with another errno "
                       "than EIO", r, seed, rd[i].count[k].other);
        total[k].ok += rd[i].count[k].ok;
        total[k].eio += rd[i].count[k].eio;
        eio += rd[i].count[k].eio;
      }
      /* At the end: exact, or invalid; and only an invalid snapshot ever
       * answered EIO (states never go back to live). */
      if (info_of (s).state == NBDSNAP_STATE_INVALID)
        check_invalid (s);
      else {
        ck_assert_msg (eio == 0, "round %u (SEED=%" PRIu64 "): snapshot %s "
                       "is live but %" PRIu64 " reads failed with EIO", r,
                       seed, k ? "b" : "a", eio);
        check_snap (s, k ? wb : wa);
      }
    }
    check_origin ();
    ck_assert_int_eq (nbdsnap_snap_delete (e, b), 0);
    ck_assert_int_eq (nbdsnap_snap_delete (e, a), 0);
    free (wa);
    free (wb);
  }
  printf ("read_race: a: %" PRIu64 " exact reads, %" PRIu64 " EIO; b: %"
          PRIu64 " exact, %" PRIu64 " EIO; 0 wrong\n", total[0].ok,
          total[0].eio, total[1].ok, total[1].eio);
  /* The race happened: both outcomes were seen. */
  if (rounds >= 50) {
    ck_assert_uint_gt (total[0].ok + total[1].ok, 0);
    ck_assert_uint_gt (total[0].eio + total[1].eio, 0);
  }
}
END_TEST

/* ---- recovery ---------------------------------------------------------- */

START_TEST (test_recovery_creating)
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa, *wb;
  struct bitmap_file bm;
  int dfd, fd;

  start (SIZE, 1500, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1501, CHUNK, 0);                /* into a */
  wb = dup_model ();
  b = mksnap ("b");
  wpat (1502, CHUNK, 3 * CHUNK);        /* into b; a reads it via b */
  mksnap ("c");                         /* nothing copied into c */
  (void) a;
  (void) b;
  eclose ();
  /* c: a create that got as far as its files, not its meta file. */
  ck_assert_int_eq (unlink (snapfile (3, "meta")), 0);
  set_bitmap_state (3, BITMAP_STATE_CREATING);
  /* id 5: the same, made by bitmap_create itself, with a store. */
  dfd = open (sdpath, O_RDONLY | O_DIRECTORY);
  ck_assert_int_ge (dfd, 0);
  ck_assert_int_eq (bitmap_create (&bm, dfd, snapbase (5, "bitmap"),
                                   (SIZE + CHUNK - 1) / CHUNK, 5), 0);
  bitmap_close (&bm);
  close (dfd);
  fd = open (snapfile (5, "store"), O_CREAT | O_WRONLY, 0600);
  ck_assert_int_eq (ftruncate (fd, SIZE), 0);
  close (fd);
  /* b has its meta file but a header still saying "creating": it never
   * became live (create makes it live only once it is durable), but
   * writes copied a chunk into it that a reads through it. */
  set_bitmap_state (2, BITMAP_STATE_CREATING);

  eopen ();
  ck_assert (!file_exists (snapfile (3, "bitmap")));
  ck_assert (!file_exists (snapfile (3, "store")));
  ck_assert (!file_exists (snapfile (5, "bitmap")));
  ck_assert (!file_exists (snapfile (5, "store")));
  ck_assert_ptr_null (lookup ("c"));
  ck_assert_ptr_null (lookup ("b"));
  ck_assert (!file_exists (snapfile (2, "bitmap")));
  ck_assert_int_eq (count_snaps (), 1);
  check_live (lookup ("a"), wa);
  (void) wb;
  /* The ids of leftovers are not reused. */
  ck_assert_uint_ge (info_of (mksnap ("c")).id, 6);
  check_live (lookup ("a"), wa);
  free (wa);
  free (wb);
}
END_TEST

START_TEST (test_recovery_lost_meta)
{
  struct nbdsnap_snap *a, *b, *l;
  unsigned char *wa;

  start (SIZE, 1600, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1601, CHUNK, 0);                /* into a */
  b = mksnap ("b");
  wpat (1602, 3 * CHUNK, 2 * CHUNK);    /* 2-4 into b: a reads via b */
  ck_assert_uint_eq (info_of (b).chunks_copied, 3);
  (void) a;
  eclose ();
  ck_assert_int_eq (unlink (snapfile (2, "meta")), 0);

  eopen ();
  ck_assert_int_eq (count_snaps (), 2);
  ck_assert_ptr_null (lookup ("b"));
  l = lookup ("lost-2");
  ck_assert_msg (l != NULL, "no snapshot lost-2");
  ck_assert_uint_eq (info_of (l).id, 2);
  check_invalid (l);
  ck_assert (file_exists (snapfile (2, "store")));
  a = lookup ("a");
  check_live (a, wa);
  /* Writes go on: the lost one takes no copies, a does. */
  wpat (1603, CHUNK, 6 * CHUNK);
  check_live (a, wa);
  ereopen ();                           /* the same again */
  l = lookup ("lost-2");
  check_invalid (l);
  a = lookup ("a");
  check_live (a, wa);
  /* Deleting it moves the chunks a needs into a. */
  ck_assert_int_eq (nbdsnap_snap_delete (e, l), 0);
  ck_assert (!file_exists (snapfile (2, "store")));
  ck_assert (!file_exists (snapfile (2, "bitmap")));
  check_live (a, wa);
  ck_assert_uint_eq (info_of (a).chunks_copied, 5);
  ereopen ();
  ck_assert_int_eq (count_snaps (), 1);
  check_live (lookup ("a"), wa);
  free (wa);
}
END_TEST

START_TEST (test_recovery_meta_checksum)
{
  struct nbdsnap_snap *a, *b, *l;
  unsigned char *wa, *wc;

  start (SIZE, 1700, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  b = mksnap ("b");
  wpat (1701, 2 * CHUNK, CHUNK);        /* 1-2 into b: a reads via b */
  wc = dup_model ();
  mksnap ("c");
  wpat (1702, CHUNK, 2 * CHUNK);        /* 2 into c */
  (void) a;
  (void) b;
  eclose ();
  flip_meta_byte (2, "\nname ");        /* "b" -> "c": only the checksum
                                           tells it from c */

  eopen ();
  ck_assert_int_eq (count_snaps (), 3);
  ck_assert (logged ("checksum"));
  l = lookup ("lost-2");
  ck_assert_msg (l != NULL, "no snapshot lost-2");
  check_invalid (l);
  check_live (lookup ("a"), wa);
  check_live (lookup ("c"), wc);
  ck_assert_uint_eq (info_of (lookup ("c")).id, 3);
  ereopen ();
  check_invalid (lookup ("lost-2"));
  check_live (lookup ("a"), wa);
  check_live (lookup ("c"), wc);
  ck_assert_int_eq (nbdsnap_snap_delete (e, lookup ("lost-2")), 0);
  check_live (lookup ("a"), wa);
  check_live (lookup ("c"), wc);
  free (wa);
  free (wc);
}
END_TEST

START_TEST (test_recovery_truncated_store)  /* loop: _i = a reads via b? */
{
  struct nbdsnap_snap *a, *b;
  unsigned char *wa, *wc;
  const bool through = _i == 0;

  start (SIZE, 1800, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (1801, CHUNK, 0);                /* chunk 0 into a */
  if (!through)
    wpat (1802, CHUNK, CHUNK);          /* chunk 1 into a */
  b = mksnap ("b");
  /* Chunk 1 into b: a reads it through b unless it has its own. */
  wpat (1803, CHUNK, CHUNK);
  wpat (1804, CHUNK, 0);                /* chunk 0 into b (a has it) */
  wc = dup_model ();
  mksnap ("c");
  wpat (1805, CHUNK, 5 * CHUNK);        /* into c */
  ck_assert (cow_depends (a, b) == through);
  (void) b;
  eclose ();
  truncate_file (snapfile (2, "store"), CHUNK);

  eopen ();
  b = lookup ("b");
  check_invalid (b);
  ck_assert_msg (logged ("truncated"), "no message says truncated: %s",
                 msgs);
  a = lookup ("a");
  if (through)
    check_invalid (a);
  else
    check_live (a, wa);
  check_live (lookup ("c"), wc);
  wpat (1806, CHUNK, 7 * CHUNK);
  if (!through)
    check_live (a, wa);
  check_live (lookup ("c"), wc);
  ereopen ();
  check_invalid (lookup ("b"));
  if (through)
    check_invalid (lookup ("a"));
  else
    check_live (lookup ("a"), wa);
  check_live (lookup ("c"), wc);
  /* The damaged one can be deleted (nothing of it is moved). */
  ck_assert_int_eq (nbdsnap_snap_delete (e, lookup ("b")), 0);
  if (!through)
    check_live (lookup ("a"), wa);
  check_live (lookup ("c"), wc);
  free (wa);
  free (wc);
}
END_TEST

/* a, b, c, d, each with one chunk copied into it after it was taken
 * (a reads chunks 1, 2, 3 through b, c, d); wants for each. */
static void
four_snaps (uint64_t seed, unsigned char *w[4])
{
  static const char *names[] = { "a", "b", "c", "d" };
  int i;

  for (i = 0; i < 4; ++i) {
    w[i] = dup_model ();
    mksnap (names[i]);
    wpat (seed + i, CHUNK, (uint64_t) i * CHUNK);
  }
}

START_TEST (test_recovery_bad_bitmap_header)
{
  unsigned char *w[4];
  int i;

  start (SIZE, 1900, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  four_snaps (1901, w);
  eclose ();
  corrupt_bitmap_header (3);            /* c */

  eopen ();
  ck_assert_int_eq (count_snaps (), 4);
  check_invalid (lookup ("c"));
  /* Every older one, whatever it read: their bits cannot be trusted. */
  check_invalid (lookup ("b"));
  check_invalid (lookup ("a"));
  ck_assert_str_eq (lookup ("a")->name, "a");
  check_live (lookup ("d"), w[3]);
  wpat (1910, CHUNK, 6 * CHUNK);        /* into d */
  check_live (lookup ("d"), w[3]);
  check_origin ();
  ereopen ();
  check_invalid (lookup ("c"));
  check_invalid (lookup ("b"));
  check_invalid (lookup ("a"));
  check_live (lookup ("d"), w[3]);
  for (i = 0; i < 4; ++i)
    free (w[i]);
}
END_TEST

START_TEST (test_recovery_duplicate_name)
{
  struct nbdsnap_snap *a, *l;
  unsigned char *wa, *wb, *wc;
  char buf[1024];
  int fd;
  ssize_t n;

  start (SIZE, 2000, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wa = dup_model ();
  a = mksnap ("a");
  wpat (2001, CHUNK, 0);                /* into a */
  wb = dup_model ();
  mksnap ("b");
  wpat (2002, 2 * CHUNK, 2 * CHUNK);    /* into b: a reads via b */
  wc = dup_model ();
  mksnap ("c");
  wpat (2003, CHUNK, 2 * CHUNK);        /* into c */
  (void) a;
  eclose ();
  /* b's meta file now says "name a", with a correct checksum. */
  write_meta (2, "a", "live");

  eopen ();
  ck_assert_int_eq (count_snaps (), 3);
  a = lookup ("a");
  ck_assert_uint_eq (info_of (a).id, 1);
  check_live (a, wa);
  l = lookup ("lost-2");
  ck_assert_msg (l != NULL, "no snapshot lost-2");
  check_invalid (l);
  check_live (lookup ("c"), wc);
  /* The rename is recorded: its meta file says lost-2 now. */
  fd = open (snapfile (2, "meta"), O_RDONLY);
  ck_assert_int_ge (fd, 0);
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  ck_assert_int_gt (n, 0);
  buf[n] = '\0';
  ck_assert_ptr_nonnull (strstr (buf, "\nname lost-2\n"));
  ereopen ();
  ck_assert_uint_eq (info_of (lookup ("a")).id, 1);
  check_live (lookup ("a"), wa);
  check_invalid (lookup ("lost-2"));
  check_live (lookup ("c"), wc);
  ck_assert_int_eq (nbdsnap_snap_delete (e, lookup ("lost-2")), 0);
  check_live (lookup ("a"), wa);
  ereopen ();
  check_live (lookup ("a"), wa);
  check_live (lookup ("c"), wc);
  free (wa);
  free (wb);
  free (wc);
}
END_TEST

START_TEST (test_recovery_all)
{
  static const char *names[] = { "a", "b", "c", "d", "e", "f", "g", "h" };
  unsigned char *w[8];
  struct nbdsnap_snap *s;
  struct bitmap_file bm;
  ssize_t n;
  int i, dfd, fd, pass;

  start (SIZE, 2100, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  /* Eight snapshots, each with chunk i copied into it. */
  for (i = 0; i < 8; ++i) {
    w[i] = dup_model ();
    mksnap (names[i]);
    wpat (2101 + i, CHUNK, (uint64_t) i * CHUNK);
  }
  eclose ();
  write_meta (2, "a", "live");                    /* b: duplicate of a */
  ck_assert_int_eq (unlink (snapfile (3, "meta")), 0);   /* c: lost */
  flip_meta_byte (4, "\ncreated ");               /* d: checksum */
  truncate_file (snapfile (5, "store"), 0);       /* e: truncated */
  corrupt_bitmap_header (6);                      /* f: bad header */
  /* g, h fine; 9: an unfinished create; 10: a meta.tmp. */
  dfd = open (sdpath, O_RDONLY | O_DIRECTORY);
  ck_assert_int_ge (dfd, 0);
  ck_assert_int_eq (bitmap_create (&bm, dfd, snapbase (9, "bitmap"),
                                   (SIZE + CHUNK - 1) / CHUNK, 9), 0);
  bitmap_close (&bm);
  close (dfd);
  fd = open (snapfile (10, "meta.tmp"), O_CREAT | O_WRONLY, 0600);
  ck_assert_int_ge (fd, 0);
  close (fd);

  for (pass = 0; pass < 2; ++pass) {
    eopen ();                           /* (g): it never fails */
    n = count_snaps ();
    ck_assert_int_eq (n, 8);
    ck_assert (!file_exists (snapfile (9, "bitmap")));
    ck_assert (!file_exists (snapfile (10, "meta.tmp")));
    /* f's bitmap is unknown: a..f are all invalid. */
    check_invalid (lookup ("a"));
    ck_assert_uint_eq (info_of (lookup ("a")).id, 1);
    check_invalid (lookup ("lost-2"));
    check_invalid (lookup ("lost-3"));
    check_invalid (lookup ("lost-4"));
    check_invalid (lookup ("e"));
    check_invalid (lookup ("f"));
    check_live (lookup ("g"), w[6]);
    check_live (lookup ("h"), w[7]);
    wpat (2120 + pass, CHUNK, 12 * CHUNK);
    check_live (lookup ("g"), w[6]);
    check_live (lookup ("h"), w[7]);
    check_origin ();
    eclose ();
  }
  eopen ();
  /* Everything invalid can be deleted, the one whose bitmap is unknown
   * too (see delete_damaged); g and h stay right. */
  for (i = 0; i < 6; ++i) {
    static const char *inv[] = { "a", "lost-2", "lost-3", "lost-4", "e",
                                 "f" };
    s = lookup (inv[i]);
    ck_assert_ptr_nonnull (s);
    ck_assert_msg (nbdsnap_snap_delete (e, s) == 0, "delete %s: %s",
                   inv[i], last_error);
    check_live (lookup ("g"), w[6]);
    check_live (lookup ("h"), w[7]);
  }
  ereopen ();
  check_live (lookup ("g"), w[6]);
  check_live (lookup ("h"), w[7]);
  for (i = 0; i < 8; ++i)
    free (w[i]);
}
END_TEST

START_TEST (test_delete_damaged)
{
  unsigned char *w[4];
  struct nbdsnap_snap *c;
  int i, r;

  start (SIZE, 2200, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  four_snaps (2201, w);
  eclose ();
  corrupt_bitmap_header (3);            /* c */
  eopen ();
  c = lookup ("c");
  check_invalid (c);
  /* It is listed as invalid "until deleted": so it can be deleted. */
  r = nbdsnap_snap_delete (e, c);
  ck_assert_msg (r == 0, "ENGINE BUG: a snapshot whose bitmap could not "
                 "be read at open cannot be deleted: %s", last_error);
  /* lost-ID names are the engine's: a user cannot take one, so a lost
   * snapshot never collides with a healthy one. */
  errno = 0;
  ck_assert_ptr_null (nbdsnap_snap_create (e, "lost-9", false));
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "reserved"));
  ck_assert_ptr_nonnull (nbdsnap_snap_create (e, "lost-9a", false));
  ck_assert_ptr_null (lookup ("c"));
  ck_assert (!file_exists (snapfile (3, "bitmap")));
  ck_assert (!file_exists (snapfile (3, "store")));
  ck_assert (!file_exists (snapfile (3, "meta")));
  check_live (lookup ("d"), w[3]);
  ereopen ();
  ck_assert_int_eq (count_snaps (), 4);         /* a, b, d, lost-9a */
  check_live (lookup ("d"), w[3]);
  for (i = 0; i < 4; ++i)
    free (w[i]);
}
END_TEST

/* ---- fd_budget ---------------------------------------------------------- */

#define CHILD_CHECK(cond, ...)                                          \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "fd_budget child, line %d: %s: ", __LINE__,      \
               #cond);                                                  \
      fprintf (stderr, __VA_ARGS__);                                    \
      fprintf (stderr, "\n");                                           \
      _exit (1);                                                        \
    }                                                                   \
  } while (0)

static int
set_nofile (rlim_t n)
{
  struct rlimit rl;

  if (getrlimit (RLIMIT_NOFILE, &rl) == -1)
    return -1;
  rl.rlim_cur = n;
  return setrlimit (RLIMIT_NOFILE, &rl);
}

static int
child_open (void)
{
  if (nbdsnap_origin_open (&o, img, false) == -1)
    return -1;
  cfg.origin = &o;
  cfg.statedir = sdpath;
  e = nbdsnap_engine_open (&cfg);
  if (e == NULL) {
    int err = errno;
    nbdsnap_origin_close (&o);
    o.fd = -1;
    errno = err;
    return -1;
  }
  return 0;
}

static void
child_close (void)
{
  nbdsnap_engine_close (e);
  e = NULL;
  nbdsnap_origin_close (&o);
  o.fd = -1;
}

/* In a child: never ck_assert here (the limit must not outlive it). */
static int
fd_budget_child (void)
{
  enum { RESERVE = 40, FIT = 10 };     /* RESERVE > NBDSNAP_FD_RESERVE_MIN */
  unsigned char *want[FIT + 1], buf[100];
  char name[16];
  int n, i, err;
  ssize_t d;

  CHILD_CHECK (set_nofile (RESERVE + 2 * FIT) == 0, "%m");
  cfg.fd_reserve = RESERVE;
  CHILD_CHECK (child_open () == 0, "%s", last_error);
  for (n = 0; n <= FIT; ++n) {
    snprintf (name, sizeof name, "s%d", n);
    want[n] = malloc (size);
    memcpy (want[n], model, size);
    errno = 0;
    if (nbdsnap_snap_create (e, name, false) == NULL)
      break;
    pattern_fill (buf, sizeof buf, 2300 + n, (uint64_t) n * CHUNK);
    CHILD_CHECK (nbdsnap_engine_pwrite (e, buf, sizeof buf,
                                        (uint64_t) n * CHUNK, false) == 0,
                 "%s", last_error);
    memcpy (model + (uint64_t) n * CHUNK, buf, sizeof buf);
  }
  err = errno;
  CHILD_CHECK (n == FIT, "%d snapshots fit, not %d (last error: %s)", n,
               FIT, last_error);
  CHILD_CHECK (err == EMFILE, "errno %d", err);
  CHILD_CHECK (strstr (last_error, "RLIMIT_NOFILE") != NULL, "message: %s",
               last_error);
  fprintf (stderr, "fd_budget: create refused: %s\n", last_error);
  /* Nothing of the refused one is left. */
  CHILD_CHECK (!file_exists (snapfile (FIT + 1, "bitmap"))
               && !file_exists (snapfile (FIT + 1, "store"))
               && !file_exists (snapfile (FIT + 1, "meta")), "leftovers");
  CHILD_CHECK (nbdsnap_snap_lookup (e, name) == NULL, "listed");
  /* The others still read right, and writes go on. */
  pattern_fill (buf, sizeof buf, 2399, 17 * CHUNK);
  CHILD_CHECK (nbdsnap_engine_pwrite (e, buf, sizeof buf, 17 * CHUNK,
                                      false) == 0, "%s", last_error);
  for (i = 0; i < FIT; ++i) {
    snprintf (name, sizeof name, "s%d", i);
    d = snap_diff (nbdsnap_snap_lookup (e, name), want[i]);
    CHILD_CHECK (d == -1, "s%d: %zd: %s", i, d, last_error);
  }
  child_close ();

  /* An open with a lower limit: the snapshots eat into the reserve.  It
   * starts (so that they can be deleted), says so, and create refuses. */
  CHILD_CHECK (set_nofile (NBDSNAP_FD_RESERVE_MIN + 2 * FIT + 2) == 0,
               "%m");
  last_error[0] = '\0';
  CHILD_CHECK (child_open () == 0, "open refused: %s", last_error);
  CHILD_CHECK (strstr (last_error, "starting all the same") != NULL,
               "message: %s", last_error);
  errno = 0;
  CHILD_CHECK (nbdsnap_snap_create (e, "more", false) == NULL
               && errno == EMFILE, "create was not refused");
  child_close ();

  /* Lower still: the snapshots cannot all be opened with a few
   * descriptors to spare.  A clear refusal, not a server that runs out of
   * descriptors later. */
  CHILD_CHECK (set_nofile (NBDSNAP_FD_RESERVE_MIN + 2 * FIT - 2) == 0, "%m");
  last_error[0] = '\0';
  errno = 0;
  CHILD_CHECK (child_open () == -1, "open succeeded");
  CHILD_CHECK (errno == EMFILE, "errno %d", errno);
  CHILD_CHECK (strstr (last_error, "RLIMIT_NOFILE") != NULL
               && strstr (last_error, "10 snapshots") != NULL,
               "message: %s", last_error);
  fprintf (stderr, "fd_budget: open refused: %s\n", last_error);
  /* Nothing was changed by the refused open. */
  CHILD_CHECK (set_nofile (RESERVE + 2 * FIT) == 0, "%m");
  CHILD_CHECK (child_open () == 0, "%s", last_error);
  for (i = 0; i < FIT; ++i) {
    snprintf (name, sizeof name, "s%d", i);
    d = snap_diff (nbdsnap_snap_lookup (e, name), want[i]);
    CHILD_CHECK (d == -1, "s%d after reopen: %zd: %s", i, d, last_error);
  }
  child_close ();
  for (i = 0; i <= FIT; ++i)
    free (want[i]);
  return 0;
}

START_TEST (test_fd_budget)
{
  pid_t pid;
  int status;

  make_image (img, SIZE, 2300);
  model = slurp (img, SIZE);
  size = SIZE;
  cfg.durability = NBDSNAP_DURABILITY_PROCESS;
  cfg.chunk_size = CHUNK;
  fflush (NULL);
  pid = fork ();
  ck_assert_int_ge (pid, 0);
  if (pid == 0)
    _exit (fd_budget_child ());
  ck_assert_int_eq (waitpid (pid, &status, 0), pid);
  ck_assert_msg (WIFEXITED (status) && WEXITSTATUS (status) == 0,
                 "the child failed (status 0x%x): see its message above",
                 status);
}
END_TEST

/* ---- scale_memory ------------------------------------------------------- */

#define SM_SNAPS 300
#define SM_WRITES 30                    /* one after every 10th snapshot */
#define SM_INITIAL 8

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* Distinct bitmap pages of chunks[0..n). */
static uint64_t
distinct_pages (const uint64_t *chunks, size_t n)
{
  uint64_t pages[SM_INITIAL + SM_WRITES], np = 0;
  size_t i, j;

  for (i = 0; i < n; ++i) {
    uint64_t pg = chunks[i] >> BITMAP_PAGE_SHIFT;
    for (j = 0; j < np && pages[j] != pg; ++j)
      ;
    if (j == np)
      pages[np++] = pg;
  }
  return np;
}

struct ext {
  uint64_t off, len;
};
struct ext_list {
  struct ext e[64];
  int n;
};

static int
collect_ext (void *opaque, uint64_t off, uint64_t len, bool hole)
{
  struct ext_list *l = opaque;

  ck_assert (!hole);
  ck_assert_int_lt (l->n, 64);
  l->e[l->n].off = off;
  l->e[l->n].len = len;
  l->n++;
  return 0;
}

/* changes(s) must be exactly the chunks in written[0..n), merged. */
static void
check_changes (struct nbdsnap_snap *s, const uint64_t *written, size_t n)
{
  uint64_t sorted[SM_WRITES];
  struct ext_list got = { .n = 0 };
  struct ext want[SM_WRITES];
  size_t i, nw = 0;
  int k;
  const uint64_t chunk = nbdsnap_engine_chunk_size (e);

  memcpy (sorted, written, n * sizeof *sorted);
  qsort (sorted, n, sizeof *sorted, cmp_u64);
  for (i = 0; i < n; ++i) {
    if (nw > 0 && want[nw - 1].off + want[nw - 1].len == sorted[i] * chunk)
      want[nw - 1].len += chunk;
    else if (nw == 0 || want[nw - 1].off + want[nw - 1].len
                        < sorted[i] * chunk + chunk) {
      want[nw].off = sorted[i] * chunk;
      want[nw].len = chunk;
      nw++;
    }
  }
  ck_assert_int_eq (helpers_changes (e, s, NULL, collect_ext, &got), 0);
  ck_assert_msg ((size_t) got.n == nw, "%s: %d changed extents, want %zu",
                 s->name, got.n, nw);
  for (k = 0; k < got.n; ++k) {
    ck_assert_uint_eq (got.e[k].off, want[k].off);
    ck_assert_uint_eq (got.e[k].len, want[k].len);
  }
}

START_TEST (test_scale_memory)
{
  const uint64_t tib = UINT64_C (1) << 40;
  const uint64_t chunk = NBDSNAP_CHUNK_DEFAULT, nch = tib / chunk;
  uint64_t data[SM_INITIAL + SM_WRITES];        /* chunks holding data */
  uint64_t written[SM_WRITES];
  uint64_t bound = 0, resident = 0, full, x = 2400;
  size_t ndata = 0, nwritten = 0, i;
  unsigned char old[16], buf[16];
  struct nbdsnap_snap *s, *oldest, *mid;
  char name[16];
  double t0 = now_s (), t1;
  int fd, k;

  make_image (img, tib, 0);
  /* A little data, scattered over the whole image. */
  fd = open (img, O_RDWR);
  ck_assert_int_ge (fd, 0);
  for (i = 0; i < SM_INITIAL; ++i) {
    data[ndata] = splitmix64 (&x) % nch;
    pattern_fill (buf, sizeof buf, 2401, data[ndata] * chunk);
    ck_assert_int_eq (pwrite (fd, buf, sizeof buf, data[ndata] * chunk + 100),
                      (ssize_t) sizeof buf);
    ndata++;
  }
  close (fd);
  pattern_fill (old, sizeof old, 2401, data[0] * chunk);
  cfg.durability = NBDSNAP_DURABILITY_PROCESS;
  eopen ();

  for (k = 0; k < SM_SNAPS; ++k) {
    size_t copied_from = nwritten;
    snprintf (name, sizeof name, "s%03d", k);
    mksnap (name);
    /* The pages this snapshot may hold: its candidates (the chunks with
     * data now) and its copied bits (the writes while it is newest). */
    bound += distinct_pages (data, ndata);
    if (k % 10 == 9) {
      uint64_t c = k == 9 ? data[0] : splitmix64 (&x) % nch;
      pattern_fill (buf, sizeof buf, 2402 + k, c * chunk);
      ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, sizeof buf,
                                               c * chunk + 100, false), 0);
      written[nwritten++] = c;
      data[ndata++] = c;
    }
    bound += distinct_pages (written + copied_from, nwritten - copied_from);
  }
  t1 = now_s ();
  printf ("scale_memory: %d snapshots of a 1 TiB image in %.2f s\n",
          SM_SNAPS, t1 - t0);
  fflush (stdout);

  ereopen ();
  for (s = e->oldest, k = 0; s != NULL; s = s->newer, ++k)
    resident += bitmap_resident (&s->bm);
  ck_assert_int_eq (k, SM_SNAPS);
  /* What mmap'd or fully read bitmaps would hold: 2 arrays of nch bits. */
  full = (uint64_t) SM_SNAPS * 2 * (nch / 8);
  printf ("scale_memory: bitmaps resident after open: %" PRIu64 " KiB "
          "(bound from pages touched %" PRIu64 " KiB; whole bitmaps %"
          PRIu64 " MiB); open %.2f s\n", resident / KiB,
          bound * BITMAP_PAGE / KiB, full / MiB, now_s () - t1);
  fflush (stdout);
  ck_assert_uint_le (resident, bound * BITMAP_PAGE);
  ck_assert_uint_lt (resident * 20, full);
  ck_assert_uint_ge (resident, SM_SNAPS * BITMAP_PAGE);  /* candidates */

  oldest = lookup ("s000");
  snprintf (name, sizeof name, "s%03d", SM_SNAPS / 2);
  mid = lookup (name);
  check_changes (oldest, written, nwritten);
  /* The middle one: the writes after it (after every 10th snapshot,
   * from s159 on). */
  check_changes (mid, written + (SM_SNAPS / 2) / 10, nwritten
                 - (SM_SNAPS / 2) / 10);
  /* The oldest still reads the old bytes of the first chunk written. */
  ck_assert_int_eq (nbdsnap_snap_pread (e, oldest, buf, sizeof buf,
                                        data[0] * chunk + 100), 0);
  ck_assert_int_eq (memcmp (buf, old, sizeof buf), 0);
  printf ("scale_memory: total %.2f s\n", now_s () - t0);
}
END_TEST

/* ---- sync_failure_invalidates ----------------------------------------- */

START_TEST (test_sync_failure_invalidates)
{
  struct nbdsnap_snap *z, *a, *b;
  unsigned char *wz, *wa;
  int p[2], saved;

  start (SIZE, 2500, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  wz = dup_model ();
  z = mksnap ("z");
  wpat (2501, 3 * CHUNK, 0);            /* 0-2 into z: z has its own */
  wa = dup_model ();
  a = mksnap ("a");
  b = mksnap ("b");
  wpat (2502, 3 * CHUNK, 0);            /* 0-2 into b: a reads via b */
  ck_assert_uint_eq (info_of (b).chunks_copied, 3);
  ck_assert (cow_depends (a, b));
  ck_assert (!cow_depends (z, b));
  /* b's store cannot be synced: fdatasync on a pipe fails (EINVAL). */
  ck_assert_int_eq (pipe (p), 0);
  saved = dup (b->store_fd);
  ck_assert_int_ge (saved, 0);
  ck_assert_int_eq (dup2 (p[1], b->store_fd), b->store_fd);
  ck_assert_int_eq (fdatasync (b->store_fd), -1);

  ck_assert_msg (nbdsnap_engine_flush (e) == 0, "flush: %s", last_error);
  ck_assert_int_eq (dup2 (saved, b->store_fd), b->store_fd);
  close (saved);
  close (p[0]);
  close (p[1]);
  check_invalid (b);
  check_invalid (a);
  ck_assert (logged ("reads through b"));
  check_live (z, wz);
  ck_assert_uint_eq (disk_state (3), BITMAP_STATE_INVALID);
  ck_assert_uint_eq (disk_state (2), BITMAP_STATE_INVALID);
  ck_assert_uint_eq (disk_state (1), BITMAP_STATE_LIVE);
  check_origin ();
  /* Writes go on: z takes the copies. */
  wpat (2503, CHUNK, 5 * CHUNK);
  check_live (z, wz);
  ck_assert_int_eq (nbdsnap_engine_flush (e), 0);

  ereopen ();
  check_invalid (lookup ("b"));
  check_invalid (lookup ("a"));
  check_live (lookup ("z"), wz);
  free (wz);
  free (wa);
}
END_TEST

static Suite *
faults_suite (void)
{
  Suite *s = suite_create ("faults");
  const struct helpers_tcase tcs[] = {
    { "invalid_durable", test_invalid_durable, 2 },
    { "invalid_not_durable_fails_write", test_invalid_not_durable, 2 },
    { "invalid_in_meta", test_invalid_in_meta, 2 },
    { "delete_no_space", test_delete_no_space, 1 },
    { "read_race", test_read_race, 1 },
    { "recovery_creating", test_recovery_creating, 1 },
    { "recovery_lost_meta", test_recovery_lost_meta, 1 },
    { "recovery_meta_checksum", test_recovery_meta_checksum, 1 },
    { "recovery_truncated_store", test_recovery_truncated_store, 2 },
    { "recovery_bad_bitmap_header", test_recovery_bad_bitmap_header, 1 },
    { "recovery_duplicate_name", test_recovery_duplicate_name, 1 },
    { "recovery_all", test_recovery_all, 1 },
    { "delete_damaged", test_delete_damaged, 1 },
    { "fd_budget", test_fd_budget, 1 },
    { "scale_memory", test_scale_memory, 1 },
    { "sync_failure_invalidates", test_sync_failure_invalidates, 1 },
  };

  helpers_add_tcases (s, tcs, sizeof tcs / sizeof tcs[0], setup, teardown,
                      300);
  return s;
}

int
main (void)
{
  return helpers_run_suite (faults_suite (), "check_faults");
}
