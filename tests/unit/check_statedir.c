/* nbdsnap: Check suite for the state directory (src/statedir.c).
 *
 * One TCase per behaviour: the directory and its header are created (the
 * header's lines checked one by one), the lock refuses a second opener
 * (flock is per open file description, so even a second statedir_open in
 * this process conflicts) and is released at close, the image's mark is
 * its identity (a copy with the mark is the image, the same inode without
 * it is not), a second state directory for a marked image is refused, the
 * image itself is locked (OFD), a missing header is not recreated where
 * snapshots are, version 1 headers are read, every header mismatch
 * is refused with a message naming what differs (image resized while it
 * has snapshots, another image, chunk-size asked differs), a resize with
 * no snapshots is recorded, adopt takes a refused image of the same size
 * as the disk, statedir_abandon removes what a failed start created, malformed headers are refused,
 * chunk-size is validated (statedir and engine), and statedir_write_file
 * replaces a file atomically without leaving its .tmp behind.
 */
#include <config.h>

#include <limits.h>
#include <sys/xattr.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"
#include "statedir.h"

static char img[512], sdpath[512];
static struct nbdsnap_origin o = { .fd = -1 };

static void
setup (void)
{
  helpers_tmpdir_make ("check_statedir");
  tpath (img, sizeof img, "disk.img");
  tpath (sdpath, sizeof sdpath, "disk.img.nbdsnap");
  make_image (img, 1 * MiB, 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
}

static void
teardown (void)
{
  if (o.fd >= 0)
    nbdsnap_origin_close (&o);
  o.fd = -1;
  helpers_tmpdir_remove ();
}

static char *
read_text (const char *dir, const char *name)
{
  static char buf[8192];
  char p[1024];
  int fd;
  ssize_t n;

  snprintf (p, sizeof p, "%s/%s", dir, name);
  fd = open (p, O_RDONLY);
  ck_assert_msg (fd >= 0, "%s: %s", p, strerror (errno));
  n = read (fd, buf, sizeof buf - 1);
  ck_assert_int_ge (n, 0);
  buf[n] = '\0';
  close (fd);
  return buf;
}

static void
write_text (const char *dir, const char *name, const char *text)
{
  char p[1024];
  int fd;

  snprintf (p, sizeof p, "%s/%s", dir, name);
  fd = open (p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
  close (fd);
}

START_TEST (test_create_header)
{
  struct statedir sd;
  struct stat st;
  char want[2048], *abs;

  ck_assert (!file_exists (sdpath));
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  ck_assert_uint_eq (sd.chunk_size, NBDSNAP_CHUNK_DEFAULT);
  ck_assert_int_ge (sd.dirfd, 0);
  ck_assert_int_ge (sd.lockfd, 0);
  ck_assert_int_eq (stat (sdpath, &st), 0);
  ck_assert (S_ISDIR (st.st_mode));
  ck_assert_uint_eq (st.st_mode & 0777, 0700);

  abs = realpath (img, NULL);
  {
    char id[64], mark[PATH_MAX + 64], *absdir = realpath (sdpath, NULL);
    const char *h = read_text (sdpath, "header");
    const char *p = strstr (h, "state-id ");
    ssize_t n;

    ck_assert_ptr_nonnull (p);
    ck_assert_int_eq (sscanf (p, "state-id %63s", id), 1);
    ck_assert_uint_eq (strlen (id), 32);
    snprintf (want, sizeof want,
              "nbdsnap-state 2\n"
              "chunk-size 16384\n"
              "image-size 1048576\n"
              "image-kind file\n"
              "image-dev %" PRIu64 "\n"
              "image-ino %" PRIu64 "\n"
              "state-id %s\n"
              "image-mark xattr\n"
              "image-path %s\n", o.dev, o.ino, id, abs);
    ck_assert_str_eq (h, want);
    /* The image carries the mark: the id and the directory. */
    n = getxattr (img, "user.nbdsnap.state-id", mark, sizeof mark - 1);
    ck_assert_int_gt (n, 0);
    mark[n] = '\0';
    snprintf (want, sizeof want, "%s %s", id, absdir);
    ck_assert_str_eq (mark, want);
    free (absdir);
  }
  free (abs);
  ck_assert (file_exists (strcat (strcpy (want, sdpath), "/lock")));
  ck_assert (!file_exists (strcat (strcpy (want, sdpath), "/header.tmp")));
  statedir_close (&sd);
  ck_assert_int_eq (sd.dirfd, -1);
  ck_assert_ptr_null (sd.path);

  /* Reopen: the header is kept, chunk size 0 = the directory's. */
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  ck_assert_uint_eq (sd.chunk_size, 16384);
  statedir_close (&sd);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 16384, false), 0);
  statedir_close (&sd);
}
END_TEST

START_TEST (test_create_chunk_size)
{
  struct statedir sd;

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 4096, false), 0);
  ck_assert_uint_eq (sd.chunk_size, 4096);
  statedir_close (&sd);
  ck_assert_ptr_nonnull (strstr (read_text (sdpath, "header"),
                                 "\nchunk-size 4096\n"));
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  ck_assert_uint_eq (sd.chunk_size, 4096);
  statedir_close (&sd);
}
END_TEST

START_TEST (test_lock)
{
  struct statedir a, b;

  ck_assert_int_eq (statedir_open (&a, sdpath, &o, 0, false), 0);
  /* Same process, another open file description: refused. */
  last_error[0] = '\0';
  errno = 0;
  ck_assert_int_eq (statedir_open (&b, sdpath, &o, 0, false), -1);
  ck_assert_int_eq (errno, EBUSY);
  ck_assert_msg (strstr (last_error, "state directory in use"),
                 "message: %s", last_error);
  ck_assert_ptr_nonnull (strstr (last_error, sdpath));
  ck_assert_int_eq (b.dirfd, -1);
  ck_assert_int_eq (b.lockfd, -1);

  /* Another process is refused too. */
  {
    pid_t pid = fork ();
    int status;
    if (pid == 0) {
      struct statedir c;
      int r = statedir_open (&c, sdpath, &o, 0, false);
      _exit (r == -1 && errno == EBUSY ? 0 : 1);
    }
    ck_assert_int_eq (waitpid (pid, &status, 0), pid);
    ck_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0);
  }

  /* The engine says the same. */
  {
    struct nbdsnap_engine_config cfg = { .origin = &o, .statedir = sdpath };
    errno = 0;
    ck_assert_ptr_null (nbdsnap_engine_open (&cfg));
    ck_assert_int_eq (errno, EBUSY);
    ck_assert_ptr_nonnull (strstr (last_error, "state directory in use"));
  }

  /* Released at close. */
  statedir_close (&a);
  ck_assert_int_eq (statedir_open (&b, sdpath, &o, 0, false), 0);
  statedir_close (&b);
}
END_TEST

START_TEST (test_resized)
{
  struct statedir sd;
  char snapfile[512];

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  /* A snapshot file: the size is fixed. */
  write_text (sdpath, "snap-000001.meta", "x");
  nbdsnap_origin_close (&o);
  ck_assert_int_eq (truncate (img, 2 * MiB), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
  last_error[0] = '\0';
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_msg (strstr (last_error, "resized")
                 && strstr (last_error, "grown from 1048576 to 2097152")
                 && strstr (last_error, "truncate -s 1048576")
                 && strstr (last_error, "delete every snapshot"),
                 "message: %s", last_error);
  ck_assert_ptr_null (sd.path);
  /* adopt=1 does not change that. */
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, true), -1);
  /* The header is not rewritten by the refusal. */
  ck_assert_ptr_nonnull (strstr (read_text (sdpath, "header"),
                                 "image-size 1048576\n"));
  /* And the lock was released: back to the old size, it opens. */
  nbdsnap_origin_close (&o);
  ck_assert_int_eq (truncate (img, 1 * MiB), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);

  /* With no snapshot file, the header takes the new size. */
  ck_assert_int_eq (unlink (tpath (snapfile, sizeof snapfile,
                                   "disk.img.nbdsnap/snap-000001.meta")), 0);
  nbdsnap_origin_close (&o);
  ck_assert_int_eq (truncate (img, 2 * MiB), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  ck_assert_ptr_nonnull (strstr (read_text (sdpath, "header"),
                                 "image-size 2097152\n"));
}
END_TEST

/* adopt: the user says a refused image is the disk.  The header and the
 * mark follow it, the state id stays; a size that differs is refused. */
START_TEST (test_adopt)
{
  struct statedir sd;
  struct nbdsnap_origin o2;
  char img2[512], id[128], *p;

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  p = strstr (read_text (sdpath, "header"), "state-id ");
  ck_assert_ptr_nonnull (p);
  snprintf (id, sizeof id, "%.41s", p);     /* "state-id " + 32 */
  write_text (sdpath, "snap-000001.meta", "x");

  /* cp without -a, then the copy put in the image's place. */
  make_image (tpath (img2, sizeof img2, "copy.img"), 1 * MiB, 0);
  ck_assert_int_eq (rename (img2, img), 0);
  nbdsnap_origin_close (&o);
  ck_assert_int_eq (nbdsnap_origin_open (&o2, img, false), 0);
  last_error[0] = '\0';
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o2, 0, false), -1);
  /* In words, the path once, and the way on. */
  ck_assert_msg (strstr (last_error, "lacks the mark")
                 && strstr (last_error, "adopt=1")
                 && strstr (last_error, img)
                 && strstr (last_error, "the disk was") == NULL,
                 "message: %s", last_error);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o2, 0, true), 0);
  statedir_close (&sd);
  ck_assert_ptr_nonnull (strstr (read_text (sdpath, "header"), id));
  /* Adopted for good: no adopt needed any more. */
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o2, 0, false), 0);
  statedir_close (&sd);
  nbdsnap_origin_close (&o2);

  /* Another size: refused, even with adopt. */
  make_image (tpath (img2, sizeof img2, "big.img"), 2 * MiB, 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o2, img2, false), 0);
  last_error[0] = '\0';
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o2, 0, true), -1);
  ck_assert_msg (strstr (last_error, "adopt=1")
                 && strstr (last_error, "another size"),
                 "message: %s", last_error);
  nbdsnap_origin_close (&o2);
  o.fd = -1;
}
END_TEST

/* statedir_abandon: a failed start leaves nothing it created. */
START_TEST (test_abandon)
{
  struct statedir sd;
  struct stat st;
  char mark[256], header[512];

  tpath (header, sizeof header, "disk.img.nbdsnap/header");
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_abandon (&sd);
  ck_assert_int_eq (stat (sdpath, &st), -1);
  ck_assert_int_eq (errno, ENOENT);
  ck_assert_int_eq (getxattr (img, "user.nbdsnap.state-id", mark,
                              sizeof mark), -1);

  /* A directory that existed (systemd's StateDirectory=) stays, empty. */
  ck_assert_int_eq (mkdir (sdpath, 0700), 0);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_abandon (&sd);
  ck_assert_int_eq (stat (sdpath, &st), 0);
  ck_assert_int_eq (rmdir (sdpath), 0);

  /* Snapshots made meanwhile: everything stays. */
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  write_text (sdpath, "snap-000001.meta", "x");
  statedir_abandon (&sd);
  ck_assert_int_eq (stat (header, &st), 0);
  ck_assert_int_gt (getxattr (img, "user.nbdsnap.state-id", mark,
                              sizeof mark), 0);

  /* An open of an existing directory that fails removes nothing. */
  nbdsnap_origin_close (&o);
  ck_assert_int_eq (truncate (img, 2 * MiB), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
  ck_assert_int_eq (stat (header, &st), 0);
}
END_TEST

START_TEST (test_other_image)
{
  struct statedir sd;
  struct nbdsnap_origin o2;
  char img2[512];

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  /* Same size, another inode: a copy of the image, or another image. */
  make_image (tpath (img2, sizeof img2, "other.img"), 1 * MiB, 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o2, img2, false), 0);
  last_error[0] = '\0';
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o2, 0, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_msg (strstr (last_error, "another image")
                 && strstr (last_error, img2)
                 && strstr (last_error, "disk.img"),
                 "message: %s", last_error);
  nbdsnap_origin_close (&o2);

  /* An image replaced by a new file at the same path (a new inode). */
  ck_assert_int_eq (rename (img2, img), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o2, img, false), 0);
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o2, 0, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "another image"));
  ck_assert_ptr_nonnull (strstr (last_error, "lacks the mark"));
  nbdsnap_origin_close (&o2);
}
END_TEST

/* The mark is the identity: the same bytes with the mark under another
 * inode (mv to another file system, cp -a) are the image; the same inode
 * without the mark (a file rewritten in place by a restore that dropped
 * the attribute) is not. */
START_TEST (test_mark_identity)
{
  struct statedir sd;
  struct nbdsnap_origin o2;
  char img2[512], mark[PATH_MAX + 64];
  ssize_t n;

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  n = getxattr (img, "user.nbdsnap.state-id", mark, sizeof mark);
  ck_assert_int_gt (n, 0);

  /* cp -a: a new inode with the mark. */
  make_image (tpath (img2, sizeof img2, "copy.img"), 1 * MiB, 0);
  ck_assert_int_eq (setxattr (img2, "user.nbdsnap.state-id", mark, n, 0), 0);
  nbdsnap_origin_close (&o);
  o.fd = -1;
  ck_assert_int_eq (nbdsnap_origin_open (&o2, img2, false), 0);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o2, 0, false), 0);
  statedir_close (&sd);
  nbdsnap_origin_close (&o2);

  /* The same inode, its mark gone. */
  ck_assert_int_eq (removexattr (img, "user.nbdsnap.state-id"), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o, img, false), 0);
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "another image"));
  ck_assert_ptr_nonnull (strstr (last_error, "adopt=1"));
}
END_TEST

/* One image, one state directory: a second directory for a marked image
 * is refused (its writes would not be copied for the first one's
 * snapshots), naming the first; nothing is written into the second. */
START_TEST (test_second_statedir)
{
  struct statedir sd;
  char sd2[512], p[1024];

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  tpath (sd2, sizeof sd2, "second");
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sd2, &o, 0, false), -1);
  ck_assert_int_eq (errno, EBUSY);
  ck_assert_ptr_nonnull (strstr (last_error, "belongs to state directory"));
  ck_assert_ptr_nonnull (strstr (last_error, "disk.img.nbdsnap"));
  ck_assert_ptr_nonnull (strstr (last_error, "setfattr -x"));
  snprintf (p, sizeof p, "%s/header", sd2);
  ck_assert (!file_exists (p));
  /* The first directory still opens. */
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
}
END_TEST

/* The image itself is locked: another open file description of it (a
 * second server) is refused even with another state directory, and the
 * lock goes with the first one's close. */
START_TEST (test_image_lock)
{
  struct statedir a, b;
  struct nbdsnap_origin o2;
  char sd2[512];

  ck_assert_int_eq (statedir_open (&a, sdpath, &o, 0, false), 0);
  ck_assert_int_eq (nbdsnap_origin_open (&o2, img, false), 0);
  tpath (sd2, sizeof sd2, "second");
  errno = 0;
  ck_assert_int_eq (statedir_open (&b, sd2, &o2, 0, false), -1);
  ck_assert_int_eq (errno, EBUSY);
  ck_assert_ptr_nonnull (strstr (last_error, "image in use"));
  /* Read-only servers share a read lock, which a writer's lock excludes. */
  nbdsnap_origin_close (&o2);
  ck_assert_int_eq (nbdsnap_origin_open (&o2, img, true), 0);
  errno = 0;
  ck_assert_int_eq (statedir_open (&b, sdpath, &o2, 0, false), -1);
  ck_assert (errno == EBUSY);
  statedir_close (&a);
  ck_assert_int_eq (statedir_open (&b, sdpath, &o2, 0, false), 0);
  statedir_close (&b);
  nbdsnap_origin_close (&o2);
}
END_TEST

/* A missing header is never recreated for a directory that holds
 * snapshots: which image they belong to is unknown. */
START_TEST (test_missing_header)
{
  struct statedir sd;
  char p[1024];

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  write_text (sdpath, "snap-000001.meta", "x");
  snprintf (p, sizeof p, "%s/header", sdpath);
  ck_assert_int_eq (unlink (p), 0);
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "header is missing"));
  ck_assert (!file_exists (p));
}
END_TEST

/* A version 1 header (inode only) is still accepted for its image. */
START_TEST (test_header_v1)
{
  struct statedir sd;
  char h[1024];

  ck_assert_int_eq (mkdir (sdpath, 0700), 0);
  snprintf (h, sizeof h,
            "nbdsnap-state 1\n"
            "chunk-size 65536\n"
            "image-size 1048576\n"
            "image-kind file\n"
            "image-id 0:%" PRIu64 "\n"
            "image-path %s\n", o.ino, img);
  write_text (sdpath, "header", h);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  snprintf (h, sizeof h,
            "nbdsnap-state 1\n"
            "chunk-size 65536\n"
            "image-size 1048576\n"
            "image-kind file\n"
            "image-id 0:%" PRIu64 "\n"
            "image-path %s\n", o.ino + 1, img);
  write_text (sdpath, "header", h);
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (last_error, "another image"));
}
END_TEST

START_TEST (test_chunk_differs)
{
  struct statedir sd;

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 8192, false), 0);
  statedir_close (&sd);
  last_error[0] = '\0';
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 65536, false), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_msg (strstr (last_error, "chunk-size=65536")
                 && strstr (last_error, "8192"),
                 "message: %s", last_error);
  /* Through the engine as well. */
  {
    struct nbdsnap_engine_config cfg = { .origin = &o, .statedir = sdpath,
                                         .chunk_size = 4096 };
    struct nbdsnap_engine *e;
    errno = 0;
    ck_assert_ptr_null (nbdsnap_engine_open (&cfg));
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_ptr_nonnull (strstr (last_error, "chunk-size=4096"));
    cfg.chunk_size = 0;
    e = nbdsnap_engine_open (&cfg);
    ck_assert_ptr_nonnull (e);
    ck_assert_uint_eq (nbdsnap_engine_chunk_size (e), 8192);
    nbdsnap_engine_close (e);
  }
}
END_TEST

START_TEST (test_malformed)
{
  struct statedir sd;
  char good[2048];
  const char *bad[] = {
    "",
    "garbage\n",
    "nbdsnap-state 2\nchunk-size 65536\n",
    "nbdsnap-state 1\n",
    "nbdsnap-state 1\nchunk-size 65536\nimage-size\n",
    "nbdsnap-state 1\nchunk-size x\n",
  };
  size_t i;

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  strcpy (good, read_text (sdpath, "header"));
  for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    write_text (sdpath, "header", bad[i]);
    last_error[0] = '\0';
    errno = 0;
    ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_msg (strstr (last_error, "header"), "bad[%zu]: message: %s",
                   i, last_error);
    /* Never "repaired" by overwriting it. */
    ck_assert_str_eq (read_text (sdpath, "header"), bad[i]);
  }
  /* A bad chunk size in an otherwise good header. */
  {
    char *p, edited[2048];
    strcpy (edited, good);
    p = strstr (edited, "chunk-size 16384");
    ck_assert_ptr_nonnull (p);
    memcpy (p, "chunk-size 16383", 16);
    write_text (sdpath, "header", edited);
    errno = 0;
    ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_ptr_nonnull (strstr (last_error, "bad chunk-size 16383"));
  }
  /* The good one opens again. */
  write_text (sdpath, "header", good);
  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  statedir_close (&sd);
  /* A header that is a directory. */
  {
    char p[1024];
    snprintf (p, sizeof p, "%s/header", sdpath);
    ck_assert_int_eq (unlink (p), 0);
    ck_assert_int_eq (mkdir (p, 0700), 0);
    ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), -1);
  }
}
END_TEST

START_TEST (test_chunk_validation)
{
  struct statedir sd;
  const uint32_t bad[] = { 1, 512, 2048, 4095, 4097, 12288, 65535,
                           2 * 1024 * 1024, 0x80000000u };
  const uint32_t good[] = { 4096, 8192, 65536, 1024 * 1024 };
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    struct nbdsnap_engine_config cfg = { .origin = &o, .statedir = sdpath,
                                         .chunk_size = bad[i] };
    last_error[0] = '\0';
    errno = 0;
    ck_assert_ptr_null (nbdsnap_engine_open (&cfg));
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_msg (strstr (last_error, "chunk-size"), "%s", last_error);
    /* Refused before anything was created. */
    ck_assert (!file_exists (sdpath));
    /* statedir_open alone refuses it too, rather than writing a header
     * that the next open rejects. */
    errno = 0;
    ck_assert_int_eq (statedir_open (&sd, sdpath, &o, bad[i], false), -1);
    ck_assert_int_eq (errno, EINVAL);
    {
      char p[1024];
      snprintf (p, sizeof p, "%s/header", sdpath);
      ck_assert (!file_exists (p));
    }
  }
  for (i = 0; i < sizeof good / sizeof good[0]; ++i) {
    struct nbdsnap_engine_config cfg = { .origin = &o, .statedir = sdpath,
                                         .chunk_size = good[i] };
    struct nbdsnap_engine *e;
    char cmd[1100];
    e = nbdsnap_engine_open (&cfg);
    ck_assert_ptr_nonnull (e);
    ck_assert_uint_eq (nbdsnap_engine_chunk_size (e), good[i]);
    ck_assert_uint_eq (nbdsnap_engine_size (e), 1 * MiB);
    nbdsnap_engine_close (e);
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", sdpath);
    ck_assert_int_eq (system (cmd), 0);
  }
}
END_TEST

START_TEST (test_missing_parent)
{
  struct statedir sd;
  char p[1024];

  snprintf (p, sizeof p, "%s/no/such/dir", tmpdir);
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, p, &o, 0, false), -1);
  ck_assert_int_eq (errno, ENOENT);
  ck_assert_ptr_nonnull (strstr (last_error, p));
  /* A regular file where the directory should be. */
  errno = 0;
  ck_assert_int_eq (statedir_open (&sd, img, &o, 0, false), -1);
  ck_assert_int_eq (errno, ENOTDIR);
}
END_TEST

START_TEST (test_write_file)
{
  struct statedir sd;
  char p[1024];

  ck_assert_int_eq (statedir_open (&sd, sdpath, &o, 0, false), 0);
  ck_assert_int_eq (statedir_write_file (&sd, "x", "one\n"), 0);
  ck_assert_str_eq (read_text (sdpath, "x"), "one\n");
  ck_assert_int_eq (statedir_write_file (&sd, "x", "two, longer\n"), 0);
  ck_assert_str_eq (read_text (sdpath, "x"), "two, longer\n");
  ck_assert_int_eq (statedir_write_file (&sd, "x", "3\n"), 0);
  ck_assert_str_eq (read_text (sdpath, "x"), "3\n");
  snprintf (p, sizeof p, "%s/x.tmp", sdpath);
  ck_assert (!file_exists (p));
  /* A failing rename (target is a non-empty directory) leaves the old
   * content and no .tmp. */
  snprintf (p, sizeof p, "%s/d", sdpath);
  ck_assert_int_eq (mkdir (p, 0700), 0);
  snprintf (p, sizeof p, "%s/d/f", sdpath);
  write_text (sdpath, "d/f", "f");
  errno = 0;
  ck_assert_int_eq (statedir_write_file (&sd, "d", "new\n"), -1);
  ck_assert_int_ne (errno, 0);
  snprintf (p, sizeof p, "%s/d.tmp", sdpath);
  ck_assert (!file_exists (p));
  statedir_close (&sd);
}
END_TEST

static Suite *
statedir_suite (void)
{
  Suite *s = suite_create ("statedir");
  struct { const char *name; const TTest *t; } tcs[] = {
    { "create_header", test_create_header },
    { "create_chunk_size", test_create_chunk_size },
    { "lock", test_lock },
    { "mark_identity", test_mark_identity },
    { "second_statedir", test_second_statedir },
    { "image_lock", test_image_lock },
    { "missing_header", test_missing_header },
    { "header_v1", test_header_v1 },
    { "resized", test_resized },
    { "adopt", test_adopt },
    { "abandon", test_abandon },
    { "other_image", test_other_image },
    { "chunk_differs", test_chunk_differs },
    { "malformed", test_malformed },
    { "chunk_validation", test_chunk_validation },
    { "missing_parent", test_missing_parent },
    { "write_file", test_write_file },
  };
  size_t i;

  for (i = 0; i < sizeof tcs / sizeof tcs[0]; ++i) {
    TCase *tc = tcase_create (tcs[i].name);
    tcase_add_checked_fixture (tc, setup, teardown);
    tcase_add_test (tc, tcs[i].t);
    suite_add_tcase (s, tc);
  }
  return s;
}

int
main (void)
{
  return helpers_run_suite (statedir_suite (), "check_statedir");
}
