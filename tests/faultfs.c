/* nbdsnap: faultfs, a FUSE passthrough file system that injects errors,
 * for the integration tests (tests/test-fault-*.sh).
 *
 *   faultfs SOURCE_DIR MOUNTPOINT [-f] [-d] [-o FUSE-OPTION,...]
 *
 * Notes on the design
 *
 * MOUNTPOINT mirrors SOURCE_DIR (libfuse3's high-level API, every
 * operation done with the *at () calls relative to an fd of SOURCE_DIR,
 * so the mount may hide SOURCE_DIR itself).  What nbdsnap does to its
 * state directory passes through: open/create/rename/unlink, fsync and
 * fdatasync of files and of directories (FSYNCDIR), pread/pwrite at
 * offsets, ftruncate, fallocate (any mode, punch hole included),
 * lseek SEEK_DATA/SEEK_HOLE, copy_file_range, and shared writable mmap
 * (no direct_io: the kernel pages through READ and WRITE requests, msync
 * sends WRITEs then FSYNC with datasync set).
 *
 * Control: the file MOUNTPOINT/.faultfs-ctl (not listed by readdir, not
 * in SOURCE_DIR).  Each line written to it is one command; a bad line
 * fails the write with EINVAL and changes nothing after it:
 *
 *   fail OPS GLOB ERRNO [after N] [once|always]
 *       OPS, comma-separated: read write fsync fdatasync open create
 *       rename truncate unlink fallocate lseek mkdir, or all.  GLOB
 *       (fnmatch) is matched against the file's name, or, if it holds a
 *       '/', against its path below the mount point.  ERRNO: EIO,
 *       ENOSPC, EDQUOT, EROFS, EFBIG, ENOMEM or a number.  The first N
 *       matching calls pass (default 0), then every one fails (always,
 *       the default) or only the next one (once).
 *   clear [ID]
 *       removes every rule, or rule ID.
 *   invalidate GLOB
 *       drops the kernel's cached pages of the open files that match,
 *       mmap'd pages included (fuse_invalidate_path): the next access
 *       is a READ request, which a rule can fail.  drop_caches cannot
 *       evict mapped pages; this can.
 *
 * Reading .faultfs-ctl lists the rules, one a line, with counters:
 *
 *   ID fail OPS GLOB ERRNO after N once|always calls=C failed=F
 *
 * (calls: matching calls seen; failed: errors injected).  Every injected
 * error is also logged on stderr.
 *
 * What is matched: read/write of a file (copy_file_range is a read of
 * its source and a write of its destination; mmap page-ins and
 * writebacks are reads and writes too), fsync vs fdatasync (a FUSE
 * FSYNC/FSYNCDIR with or without datasync: msync () is an fdatasync),
 * open (files and directories), create (O_CREAT of a new name), rename
 * (source or destination), truncate (ftruncate, O_TRUNC), unlink
 * (unlink and rmdir).  A failing call does nothing to SOURCE_DIR.  An
 * open file is known by the path it was opened with (kept up to date
 * across renames): the kernel does not give paths for I/O on open files.
 *
 * Caching: entry/attr timeouts are 0 and neither kernel_cache nor
 * auto_cache is set, so the kernel drops a file's page cache whenever
 * it is opened: a restarted server reads through to faultfs.  Writes
 * are write-through (no writeback_cache): a pwrite returns the error of
 * its WRITE request.
 *
 * Locks: no flock or lock operation is implemented, so the kernel keeps
 * flock and POSIX/OFD locks locally, which is right for one host (a
 * second nbdkit on the same state directory is refused).
 *
 * Threads: libfuse's multi-threaded loop; one mutex (lock) protects the
 * rules and the table of open files.
 */
#define FUSE_USE_VERSION 31

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <fuse.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CTL_PATH "/.faultfs-ctl"
#define MAX_RULES 64

enum fault_op {
  OP_READ, OP_WRITE, OP_FSYNC, OP_FDATASYNC, OP_OPEN, OP_CREATE,
  OP_RENAME, OP_TRUNCATE, OP_UNLINK, OP_FALLOCATE, OP_LSEEK, OP_MKDIR,
  NR_OPS
};

static const char *op_names[NR_OPS] = {
  "read", "write", "fsync", "fdatasync", "open", "create",
  "rename", "truncate", "unlink", "fallocate", "lseek", "mkdir",
};

static const struct { const char *name; int err; } errnos[] = {
  { "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EDQUOT", EDQUOT },
  { "EROFS", EROFS }, { "EFBIG", EFBIG }, { "ENOMEM", ENOMEM },
};

struct rule {
  unsigned id;
  unsigned ops;                 /* bit (1 << OP_x) per operation */
  char glob[256];
  int err;
  uint64_t after;               /* matching calls that pass first */
  bool once;                    /* fail one call, then the rule is spent */
  uint64_t calls, failed;
};

/* An open file or directory (fi->fh), or the control file. */
struct node {
  struct node *next, *prev;     /* the open-file table, under lock */
  int fd;
  DIR *dir;                     /* directories: readdir state */
  off_t dir_off;
  struct dirent *dir_ent;       /* read ahead, not yet given to filler */
  char *path;                   /* as opened ("/a/b"), renames followed */
  bool ctl;
  char *text;                   /* ctl: the rules listing, read at open */
  size_t text_len;
};

static int srcfd;               /* SOURCE_DIR */

/* lock protects rules, nrules, next_rule_id and the table of open
 * files (nodes).  Taken by every operation briefly; never held over a
 * system call on SOURCE_DIR or a call into libfuse. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static size_t nrules;
static unsigned next_rule_id = 1;
static struct node nodes = { .next = &nodes, .prev = &nodes };

/* The path relative to SOURCE_DIR: "/" is ".", "/a/b" is "a/b". */
static const char *
rel (const char *path)
{
  return path[1] ? path + 1 : ".";
}

static bool
rule_matches (const struct rule *r, enum fault_op op, const char *path)
{
  const char *name;

  if (path == NULL || !(r->ops & (1u << op)))
    return false;
  if (strchr (r->glob, '/'))
    return fnmatch (r->glob, rel (path), FNM_PATHNAME) == 0;
  name = strrchr (path, '/');
  name = name && name[1] ? name + 1 : path;
  return fnmatch (r->glob, name, 0) == 0;
}

static const char *
errno_name (int err)
{
  size_t i;

  for (i = 0; i < sizeof errnos / sizeof errnos[0]; ++i)
    if (errnos[i].err == err)
      return errnos[i].name;
  return "errno";
}

/* Should OP on PATH (or on PATH2, for rename and copy) fail?  Returns 0
 * or the negative errno to return instead of doing it. */
static int
fault2 (enum fault_op op, const char *path, const char *path2)
{
  int err = 0;
  unsigned id = 0;
  size_t i;

  pthread_mutex_lock (&lock);
  for (i = 0; i < nrules && err == 0; ++i) {
    struct rule *r = &rules[i];
    if (r->once && r->failed > 0)
      continue;                 /* spent */
    if (!rule_matches (r, op, path) && !rule_matches (r, op, path2))
      continue;
    if (++r->calls <= r->after)
      continue;
    r->failed++;
    err = r->err;
    id = r->id;
  }
  pthread_mutex_unlock (&lock);
  if (err == 0)
    return 0;
  fprintf (stderr, "faultfs: %s %s%s%s: %s (rule %u)\n", op_names[op],
           path ? path : "?", path2 ? " " : "", path2 ? path2 : "",
           errno_name (err), id);
  return -err;
}

static int
fault (enum fault_op op, const char *path)
{
  return fault2 (op, path, NULL);
}

static struct node *
node_of (struct fuse_file_info *fi)
{
  return (struct node *) (uintptr_t) fi->fh;
}

static struct node *
node_new (const char *path, int fd)
{
  struct node *n = calloc (1, sizeof *n);

  if (n == NULL || (n->path = strdup (path)) == NULL) {
    free (n);
    return NULL;
  }
  n->fd = fd;
  pthread_mutex_lock (&lock);
  n->next = &nodes;
  n->prev = nodes.prev;
  nodes.prev->next = n;
  nodes.prev = n;
  pthread_mutex_unlock (&lock);
  return n;
}

static void
node_free (struct node *n)
{
  pthread_mutex_lock (&lock);
  n->prev->next = n->next;
  n->next->prev = n->prev;
  pthread_mutex_unlock (&lock);
  if (n->dir)
    closedir (n->dir);
  else if (n->fd >= 0)
    close (n->fd);
  free (n->path);
  free (n->text);
  free (n);
}

/* The control file. */

static int
parse_errno (const char *s)
{
  size_t i;
  char *end;
  long v;

  for (i = 0; i < sizeof errnos / sizeof errnos[0]; ++i)
    if (strcmp (s, errnos[i].name) == 0)
      return errnos[i].err;
  v = strtol (s, &end, 10);
  return *end == '\0' && v > 0 && v < 4096 ? (int) v : -1;
}

static int
parse_ops (char *s, unsigned *ops)
{
  char *tok, *save;
  int i;

  *ops = 0;
  for (tok = strtok_r (s, ",", &save); tok; tok = strtok_r (NULL, ",", &save)) {
    if (strcmp (tok, "all") == 0) {
      *ops |= (1u << NR_OPS) - 1;
      continue;
    }
    for (i = 0; i < NR_OPS; ++i)
      if (strcmp (tok, op_names[i]) == 0)
        break;
    if (i == NR_OPS)
      return -1;
    *ops |= 1u << i;
  }
  return *ops ? 0 : -1;
}

static void invalidate (const char *glob);

/* Run one command line (modified in place).  Returns 0 or -1. */
static int
ctl_command (char *line)
{
  char *w[8], *save, *tok;
  size_t n = 0, i;
  struct rule r = { 0 };
  char *end;

  for (tok = strtok_r (line, " \t\r", &save); tok;
       tok = strtok_r (NULL, " \t\r", &save)) {
    if (n == sizeof w / sizeof w[0])
      return -1;
    w[n++] = tok;
  }
  if (n == 0 || w[0][0] == '#')
    return 0;

  if (strcmp (w[0], "clear") == 0 && n <= 2) {
    unsigned long id = 0;
    if (n == 2) {
      id = strtoul (w[1], &end, 10);
      if (*end != '\0' || id == 0)
        return -1;
    }
    pthread_mutex_lock (&lock);
    for (i = 0; i < nrules; ) {
      if (id == 0 || rules[i].id == id) {
        memmove (&rules[i], &rules[i + 1],
                 (nrules - i - 1) * sizeof rules[0]);
        nrules--;
      }
      else
        i++;
    }
    pthread_mutex_unlock (&lock);
    return 0;
  }

  if (strcmp (w[0], "invalidate") == 0 && n == 2) {
    invalidate (w[1]);
    return 0;
  }

  if (strcmp (w[0], "fail") != 0 || n < 4)
    return -1;
  if (parse_ops (w[1], &r.ops) == -1
      || strlen (w[2]) >= sizeof r.glob
      || (r.err = parse_errno (w[3])) == -1)
    return -1;
  strcpy (r.glob, w[2]);
  for (i = 4; i < n; ++i) {
    if (strcmp (w[i], "after") == 0 && i + 1 < n) {
      r.after = strtoull (w[++i], &end, 10);
      if (*end != '\0' || w[i][0] == '-')
        return -1;
    }
    else if (strcmp (w[i], "once") == 0)
      r.once = true;
    else if (strcmp (w[i], "always") == 0)
      r.once = false;
    else
      return -1;
  }
  pthread_mutex_lock (&lock);
  if (nrules == MAX_RULES) {
    pthread_mutex_unlock (&lock);
    return -1;
  }
  r.id = next_rule_id++;
  rules[nrules++] = r;
  pthread_mutex_unlock (&lock);
  return 0;
}

/* The listing of the rules, for a read of the control file. */
static char *
ctl_text (size_t *len)
{
  char *buf = NULL;
  size_t size = 0;
  FILE *f = open_memstream (&buf, &size);
  size_t i;
  int op;

  if (f == NULL)
    return NULL;
  pthread_mutex_lock (&lock);
  for (i = 0; i < nrules; ++i) {
    const struct rule *r = &rules[i];
    const char *sep = "";
    fprintf (f, "%u fail ", r->id);
    if (r->ops == (1u << NR_OPS) - 1)
      fputs ("all", f);
    else
      for (op = 0; op < NR_OPS; ++op)
        if (r->ops & (1u << op)) {
          fprintf (f, "%s%s", sep, op_names[op]);
          sep = ",";
        }
    if (strcmp (errno_name (r->err), "errno") == 0)
      fprintf (f, " %s %d", r->glob, r->err);
    else
      fprintf (f, " %s %s", r->glob, errno_name (r->err));
    fprintf (f, " after %" PRIu64 " %s calls=%" PRIu64 " failed=%" PRIu64
             "\n", r->after, r->once ? "once" : "always", r->calls,
             r->failed);
  }
  pthread_mutex_unlock (&lock);
  if (fclose (f) != 0) {
    free (buf);
    return NULL;
  }
  *len = size;
  return buf;
}

static void
invalidate (const char *glob)
{
  struct fuse *fuse = fuse_get_context ()->fuse;
  struct rule r = { .ops = 1u << OP_READ };
  char *paths[256];
  size_t n = 0, i;
  struct node *node;

  snprintf (r.glob, sizeof r.glob, "%s", glob);
  pthread_mutex_lock (&lock);
  for (node = nodes.next; node != &nodes && n < 256; node = node->next)
    if (!node->ctl && rule_matches (&r, OP_READ, node->path))
      paths[n++] = strdup (node->path);
  pthread_mutex_unlock (&lock);
  /* Outside the lock: the kernel writes dirty pages back (WRITE
   * requests, served by other threads) before it drops them. */
  for (i = 0; i < n; ++i) {
    if (paths[i] == NULL)
      continue;
    if (fuse_invalidate_path (fuse, paths[i]) == 0)
      fprintf (stderr, "faultfs: invalidated %s\n", paths[i]);
    free (paths[i]);
  }
}

/* The passthrough. */

static void *
ffs_init (struct fuse_conn_info *conn, struct fuse_config *cfg)
{
  cfg->use_ino = 1;
  cfg->nullpath_ok = 1;         /* I/O on open files goes by fi->fh */
  cfg->hard_remove = 1;         /* no .fuse_hidden files in the state dir */
  cfg->entry_timeout = 0;
  cfg->attr_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->kernel_cache = 0;
  cfg->auto_cache = 0;
  cfg->direct_io = 0;           /* mmap must work */
  return NULL;
}

static int
ffs_getattr (const char *path, struct stat *st, struct fuse_file_info *fi)
{
  if (fi && node_of (fi)->ctl)
    path = CTL_PATH;
  if (path && strcmp (path, CTL_PATH) == 0) {
    memset (st, 0, sizeof *st);
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    st->st_uid = getuid ();
    st->st_gid = getgid ();
    st->st_mtime = st->st_ctime = st->st_atime = time (NULL);
    return 0;
  }
  if (fi)
    return fstat (node_of (fi)->fd, st) == -1 ? -errno : 0;
  return fstatat (srcfd, rel (path), st, AT_SYMLINK_NOFOLLOW) == -1
    ? -errno : 0;
}

static int
ffs_access (const char *path, int mask)
{
  if (strcmp (path, CTL_PATH) == 0)
    return 0;
  return faccessat (srcfd, rel (path), mask, 0) == -1 ? -errno : 0;
}

static int
ffs_readlink (const char *path, char *buf, size_t size)
{
  ssize_t r = readlinkat (srcfd, rel (path), buf, size - 1);

  if (r == -1)
    return -errno;
  buf[r] = '\0';
  return 0;
}

static int
ffs_opendir (const char *path, struct fuse_file_info *fi)
{
  struct node *n;
  int fd, r;

  if ((r = fault (OP_OPEN, path)) != 0)
    return r;
  fd = openat (srcfd, rel (path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    return -errno;
  n = node_new (path, fd);
  if (n == NULL) {
    close (fd);
    return -ENOMEM;
  }
  n->dir = fdopendir (fd);
  if (n->dir == NULL) {
    r = -errno;
    node_free (n);
    return r;
  }
  fi->fh = (uintptr_t) n;
  return 0;
}

static int
ffs_readdir (const char *path, void *buf, fuse_fill_dir_t filler,
             off_t offset, struct fuse_file_info *fi,
             enum fuse_readdir_flags flags)
{
  struct node *n = node_of (fi);

  if (offset != n->dir_off) {
    seekdir (n->dir, offset);
    n->dir_ent = NULL;
    n->dir_off = offset;
  }
  for (;;) {
    struct stat st;
    off_t next;

    if (n->dir_ent == NULL) {
      errno = 0;
      n->dir_ent = readdir (n->dir);
      if (n->dir_ent == NULL)
        return -errno;
    }
    memset (&st, 0, sizeof st);
    st.st_ino = n->dir_ent->d_ino;
    st.st_mode = DTTOIF (n->dir_ent->d_type);
    next = telldir (n->dir);
    if (filler (buf, n->dir_ent->d_name, &st, next, 0))
      return 0;
    n->dir_ent = NULL;
    n->dir_off = next;
  }
}

static int
ffs_releasedir (const char *path, struct fuse_file_info *fi)
{
  node_free (node_of (fi));
  return 0;
}

static int
ffs_fsyncdir (const char *path, int datasync, struct fuse_file_info *fi)
{
  struct node *n = node_of (fi);
  int r = fault (datasync ? OP_FDATASYNC : OP_FSYNC, n->path);

  if (r != 0)
    return r;
  return (datasync ? fdatasync (dirfd (n->dir)) : fsync (dirfd (n->dir)))
    == -1 ? -errno : 0;
}

static int
ffs_mknod (const char *path, mode_t mode, dev_t rdev)
{
  int r = fault (OP_CREATE, path);

  if (r != 0)
    return r;
  return mknodat (srcfd, rel (path), mode, rdev) == -1 ? -errno : 0;
}

static int
ffs_mkdir (const char *path, mode_t mode)
{
  int r = fault (OP_MKDIR, path);

  if (r != 0)
    return r;
  return mkdirat (srcfd, rel (path), mode) == -1 ? -errno : 0;
}

static int
ffs_unlink (const char *path)
{
  int r = fault (OP_UNLINK, path);

  if (r != 0)
    return r;
  return unlinkat (srcfd, rel (path), 0) == -1 ? -errno : 0;
}

static int
ffs_rmdir (const char *path)
{
  int r = fault (OP_UNLINK, path);

  if (r != 0)
    return r;
  return unlinkat (srcfd, rel (path), AT_REMOVEDIR) == -1 ? -errno : 0;
}

static int
ffs_symlink (const char *target, const char *path)
{
  int r = fault (OP_CREATE, path);

  if (r != 0)
    return r;
  return symlinkat (target, srcfd, rel (path)) == -1 ? -errno : 0;
}

static int
ffs_link (const char *from, const char *to)
{
  int r = fault (OP_CREATE, to);

  if (r != 0)
    return r;
  return linkat (srcfd, rel (from), srcfd, rel (to), 0) == -1 ? -errno : 0;
}

static int
ffs_rename (const char *from, const char *to, unsigned int flags)
{
  size_t flen = strlen (from);
  struct node *n;
  int r;

  if (strcmp (from, CTL_PATH) == 0 || strcmp (to, CTL_PATH) == 0)
    return -EPERM;
  if ((r = fault2 (OP_RENAME, from, to)) != 0)
    return r;
  if (renameat2 (srcfd, rel (from), srcfd, rel (to), flags) == -1)
    return -errno;
  /* Open files below FROM are now known by their new path. */
  pthread_mutex_lock (&lock);
  for (n = nodes.next; n != &nodes; n = n->next) {
    if (strncmp (n->path, from, flen) == 0
        && (n->path[flen] == '\0' || n->path[flen] == '/')) {
      char *p;
      if (asprintf (&p, "%s%s", to, n->path + flen) != -1) {
        free (n->path);
        n->path = p;
      }
    }
  }
  pthread_mutex_unlock (&lock);
  return 0;
}

static int
ffs_chmod (const char *path, mode_t mode, struct fuse_file_info *fi)
{
  if (fi)
    return fchmod (node_of (fi)->fd, mode) == -1 ? -errno : 0;
  return fchmodat (srcfd, rel (path), mode, 0) == -1 ? -errno : 0;
}

static int
ffs_chown (const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
  if (fi)
    return fchown (node_of (fi)->fd, uid, gid) == -1 ? -errno : 0;
  return fchownat (srcfd, rel (path), uid, gid, AT_SYMLINK_NOFOLLOW) == -1
    ? -errno : 0;
}

static int
ffs_truncate (const char *path, off_t size, struct fuse_file_info *fi)
{
  int fd, r;

  if (fi && node_of (fi)->ctl)
    return 0;
  if (path && strcmp (path, CTL_PATH) == 0)
    return 0;
  if ((r = fault (OP_TRUNCATE, fi ? node_of (fi)->path : path)) != 0)
    return r;
  if (fi)
    return ftruncate (node_of (fi)->fd, size) == -1 ? -errno : 0;
  fd = openat (srcfd, rel (path), O_WRONLY | O_CLOEXEC);
  if (fd == -1)
    return -errno;
  r = ftruncate (fd, size) == -1 ? -errno : 0;
  close (fd);
  return r;
}

static int
ffs_utimens (const char *path, const struct timespec ts[2],
             struct fuse_file_info *fi)
{
  if (fi && node_of (fi)->ctl)
    return 0;
  if (fi)
    return futimens (node_of (fi)->fd, ts) == -1 ? -errno : 0;
  if (strcmp (path, CTL_PATH) == 0)
    return 0;
  return utimensat (srcfd, rel (path), ts, AT_SYMLINK_NOFOLLOW) == -1
    ? -errno : 0;
}

static int
open_node (const char *path, struct fuse_file_info *fi, int fd)
{
  struct node *n = node_new (path, fd);

  if (n == NULL) {
    close (fd);
    return -ENOMEM;
  }
  fi->fh = (uintptr_t) n;
  return 0;
}

static int
ffs_create (const char *path, mode_t mode, struct fuse_file_info *fi)
{
  int fd, r;

  if (strcmp (path, CTL_PATH) == 0)
    return -EEXIST;
  if ((r = fault (OP_CREATE, path)) != 0)
    return r;
  fd = openat (srcfd, rel (path), fi->flags | O_CLOEXEC, mode);
  if (fd == -1)
    return -errno;
  return open_node (path, fi, fd);
}

static int
ffs_open (const char *path, struct fuse_file_info *fi)
{
  int fd, r;

  if (strcmp (path, CTL_PATH) == 0) {
    struct node *n = node_new (path, -1);
    if (n == NULL)
      return -ENOMEM;
    n->ctl = true;
    n->text = ctl_text (&n->text_len);
    fi->fh = (uintptr_t) n;
    fi->direct_io = 1;          /* no caching, reads past st_size */
    fi->nonseekable = 0;
    return 0;
  }
  if ((r = fault (OP_OPEN, path)) != 0)
    return r;
  if ((fi->flags & O_TRUNC) && (r = fault (OP_TRUNCATE, path)) != 0)
    return r;
  fd = openat (srcfd, rel (path), fi->flags | O_CLOEXEC);
  if (fd == -1)
    return -errno;
  return open_node (path, fi, fd);
}

static int
ffs_read (const char *path, char *buf, size_t size, off_t off,
          struct fuse_file_info *fi)
{
  struct node *n = node_of (fi);
  ssize_t r;

  if (n->ctl) {
    if (n->text == NULL)
      return -ENOMEM;
    if ((size_t) off >= n->text_len)
      return 0;
    if (size > n->text_len - off)
      size = n->text_len - off;
    memcpy (buf, n->text + off, size);
    return size;
  }
  if ((r = fault (OP_READ, n->path)) != 0)
    return r;
  r = pread (n->fd, buf, size, off);
  return r == -1 ? -errno : r;
}

static int
ffs_write (const char *path, const char *buf, size_t size, off_t off,
           struct fuse_file_info *fi)
{
  struct node *n = node_of (fi);
  ssize_t r;

  if (n->ctl) {
    char *copy = strndup (buf, size), *line, *save;
    int bad = 0;
    if (copy == NULL)
      return -ENOMEM;
    for (line = strtok_r (copy, "\n", &save); line && !bad;
         line = strtok_r (NULL, "\n", &save)) {
      char *orig = strdup (line);
      if (ctl_command (line) == -1) {
        fprintf (stderr, "faultfs: bad control line: %s\n",
                 orig ? orig : line);
        bad = 1;
      }
      else
        fprintf (stderr, "faultfs: control: %s\n", orig ? orig : line);
      free (orig);
    }
    free (copy);
    return bad ? -EINVAL : (int) size;
  }
  if ((r = fault (OP_WRITE, n->path)) != 0)
    return r;
  r = pwrite (n->fd, buf, size, off);
  return r == -1 ? -errno : r;
}

static int
ffs_statfs (const char *path, struct statvfs *st)
{
  return fstatvfs (srcfd, st) == -1 ? -errno : 0;
}

static int
ffs_flush (const char *path, struct fuse_file_info *fi)
{
  struct node *n = node_of (fi);

  if (n->ctl)
    return 0;
  /* close () of a duplicate: what a close on SOURCE_DIR would report. */
  return close (dup (n->fd)) == -1 ? -errno : 0;
}

static int
ffs_release (const char *path, struct fuse_file_info *fi)
{
  node_free (node_of (fi));
  return 0;
}

static int
ffs_fsync (const char *path, int datasync, struct fuse_file_info *fi)
{
  struct node *n = node_of (fi);
  int r;

  if (n->ctl)
    return 0;
  if ((r = fault (datasync ? OP_FDATASYNC : OP_FSYNC, n->path)) != 0)
    return r;
  return (datasync ? fdatasync (n->fd) : fsync (n->fd)) == -1 ? -errno : 0;
}

static int
ffs_fallocate (const char *path, int mode, off_t off, off_t len,
               struct fuse_file_info *fi)
{
  struct node *n = node_of (fi);
  int r;

  if (n->ctl)
    return -EOPNOTSUPP;
  if ((r = fault (OP_FALLOCATE, n->path)) != 0)
    return r;
  return fallocate (n->fd, mode, off, len) == -1 ? -errno : 0;
}

static ssize_t
ffs_copy_file_range (const char *path_in, struct fuse_file_info *fi_in,
                     off_t off_in, const char *path_out,
                     struct fuse_file_info *fi_out, off_t off_out,
                     size_t len, int flags)
{
  struct node *in = node_of (fi_in), *out = node_of (fi_out);
  ssize_t r;

  if (in->ctl || out->ctl)
    return -EOPNOTSUPP;
  if ((r = fault (OP_READ, in->path)) != 0
      || (r = fault (OP_WRITE, out->path)) != 0)
    return r;
  r = copy_file_range (in->fd, &off_in, out->fd, &off_out, len, flags);
  return r == -1 ? -errno : r;
}

static off_t
ffs_lseek (const char *path, off_t off, int whence,
           struct fuse_file_info *fi)
{
  struct node *n = node_of (fi);
  off_t r;

  if (n->ctl)
    return -ESPIPE;
  if ((r = fault (OP_LSEEK, n->path)) != 0)
    return r;
  r = lseek (n->fd, off, whence);
  return r == -1 ? -errno : r;
}

static const struct fuse_operations ffs_ops = {
  .init = ffs_init,
  .getattr = ffs_getattr,
  .access = ffs_access,
  .readlink = ffs_readlink,
  .opendir = ffs_opendir,
  .readdir = ffs_readdir,
  .releasedir = ffs_releasedir,
  .fsyncdir = ffs_fsyncdir,
  .mknod = ffs_mknod,
  .mkdir = ffs_mkdir,
  .symlink = ffs_symlink,
  .unlink = ffs_unlink,
  .rmdir = ffs_rmdir,
  .rename = ffs_rename,
  .link = ffs_link,
  .chmod = ffs_chmod,
  .chown = ffs_chown,
  .truncate = ffs_truncate,
  .utimens = ffs_utimens,
  .create = ffs_create,
  .open = ffs_open,
  .read = ffs_read,
  .write = ffs_write,
  .statfs = ffs_statfs,
  .flush = ffs_flush,
  .release = ffs_release,
  .fsync = ffs_fsync,
  .fallocate = ffs_fallocate,
  .copy_file_range = ffs_copy_file_range,
  .lseek = ffs_lseek,
  /* No .flock, no .lock: the kernel keeps locks locally. */
};

int
main (int argc, char *argv[])
{
  char **fargv;
  int i, r;

  if (argc < 3 || argv[1][0] == '-' || argv[2][0] == '-') {
    fprintf (stderr, "usage: %s SOURCE_DIR MOUNTPOINT [-f] [-d] "
             "[-o FUSE-OPTION,...]\n"
             "Control: write lines to MOUNTPOINT" CTL_PATH
             "; see the top of tests/faultfs.c.\n", argv[0]);
    return 2;
  }
  srcfd = open (argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (srcfd == -1) {
    fprintf (stderr, "%s: %s: %m\n", argv[0], argv[1]);
    return 1;
  }
  /* FUSE's arguments: MOUNTPOINT and the options, then ours. */
  fargv = calloc (argc + 3, sizeof *fargv);
  if (fargv == NULL) {
    perror ("calloc");
    return 1;
  }
  fargv[0] = argv[0];
  for (i = 2; i < argc; ++i)
    fargv[i - 1] = argv[i];
  fargv[argc - 1] = (char *) "-o";
  fargv[argc] = (char *) "fsname=faultfs,subtype=faultfs";
  umask (0);
  r = fuse_main (argc + 1, fargv, &ffs_ops, NULL);
  free (fargv);
  return r;
}
