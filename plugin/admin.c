/* nbdsnap: the admin loop: the control socket and its thread.
 *
 * Notes on the design:
 *
 * - One libev loop in one thread (ev.pod: one loop per thread).  The
 *   socket is bound in .get_ready (admin_bind) so that errors reach the
 *   user before nbdkit forks; the loop and its thread are created in
 *   .after_fork (admin_start); .cleanup wakes the loop with ev_async_send,
 *   the only call any other thread makes into it, and joins the thread
 *   (admin_stop).  The thread blocks every signal: they belong to nbdkit,
 *   and so do the job workers it starts (plugin/admin-job.c), which wake
 *   it with their own ev_async.  admin_stop cancels the running jobs and
 *   waits for them before it closes the connections.
 *
 * - Admin connections live in plugin/admin-conn.c; this file accepts them,
 *   checks the peer's uid (SO_PEERCRED: the uid running nbdkit, or root)
 *   and refuses the rest with one error line, as it refuses connections
 *   beyond admin_conn_limit () (a quarter of the descriptor limit, at
 *   most ADMIN_CONN_MAX) and those that would leave fewer than
 *   ADMIN_FDS_KEEP descriptors free (fdlimit_free).  Both are asked at
 *   each accept, of the limit in force: an administrator may lower it
 *   while the server runs, and NBD clients must still get their
 *   descriptors.
 *
 * - accept never spins.  The listening socket is level-triggered: when
 *   accept fails with EMFILE, ENFILE, ENOBUFS, ENOMEM (or anything but
 *   EAGAIN, EINTR, ECONNABORTED) the connection stays queued and the
 *   socket stays readable, so the watcher is stopped and an ev_timer
 *   starts it again ACCEPT_RETRY_SECONDS later (libev's manual, "special
 *   problem of accept()ing when you can't").  Clients wait in the listen
 *   queue meanwhile.  A burst of failures, from the first until an accept
 *   works again, is logged once (nbdkit_error) and its end once
 *   (nbdkit_debug); "stats" counts every failure (accept_errors).
 *
 * - The socket is created with umask 0177 and then chmod 0600.  A socket
 *   file left by a dead server is replaced only if connecting to it is
 *   refused; one that answers is "in use", and a path that is not a socket
 *   is never removed.  On exit the file is removed only if it is still the
 *   one we created (same device and inode).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "admin-internal.h"
#include "fdlimit.h"

/* -D nbdsnap.admin=1: log every admin request and connection. */
NBDKIT_DLL_PUBLIC int nbdsnap_debug_admin;

/* -D nbdsnap.admin_fd_keep=N: keep N descriptors, not ADMIN_FDS_KEEP
 * (-1: none, accept until it fails). */
NBDKIT_DLL_PUBLIC int nbdsnap_debug_admin_fd_keep;

/* How long accept pauses after a failure (EMFILE ...). */
#define ACCEPT_RETRY_SECONDS 0.1

/* The admin loop's state.  Written by the main thread in admin_bind and
 * admin_start before the admin thread exists, and in admin_stop after it
 * was joined; in between only the admin thread touches it (except
 * admin.loop and admin.stop_w, which ev_async_send may use from any
 * thread, and admin.ops, which job workers read; the admin thread joins
 * every worker before it ends).  Therefore no lock. */
struct admin_state admin = { .fd = -1 };

void
admin_set_ops (const struct admin_ops *ops)
{
  admin.ops = ops;
}

unsigned
admin_conn_limit (void)
{
  unsigned n = fdlimit_soft () / 4;

  return n < 1 ? 1 : n > ADMIN_CONN_MAX ? ADMIN_CONN_MAX : n;
}

unsigned
admin_fd_reserve (void)
{
  return admin_conn_limit () + ADMIN_FIXED_FDS;
}

/* bind with a umask that makes the socket 0600 from its first moment. */
static int
bind_private (int fd, const struct sockaddr_un *addr)
{
  mode_t old = umask (0177);
  int r = bind (fd, (const struct sockaddr *) addr, sizeof *addr);
  int saved = errno;

  umask (old);
  errno = saved;
  return r;
}

/* path exists: remove it if it is a socket nobody listens on. */
static int
replace_stale (const char *path, const struct sockaddr_un *addr)
{
  struct stat st;
  int fd, r, saved;

  if (lstat (path, &st) == -1) {
    nbdkit_error ("admin socket %s: %m", path);
    return -1;
  }
  if (!S_ISSOCK (st.st_mode)) {
    nbdkit_error ("admin socket %s: exists and is not a socket, "
                  "not replacing it", path);
    return -1;
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    nbdkit_error ("socket: %m");
    return -1;
  }
  r = connect (fd, (const struct sockaddr *) addr, sizeof *addr);
  saved = errno;
  close (fd);
  errno = saved;
  if (r == 0 || errno == EAGAIN) {
    nbdkit_error ("admin socket %s already in use: another server is "
                  "listening on it", path);
    return -1;
  }
  if (errno != ECONNREFUSED) {
    nbdkit_error ("admin socket %s: cannot tell whether it is in use: "
                  "connect: %m", path);
    return -1;
  }
  nbdkit_debug ("admin: replacing stale socket %s", path);
  if (unlink (path) == -1 && errno != ENOENT) {
    nbdkit_error ("unlink: %s: %m", path);
    return -1;
  }
  return 0;
}

int
admin_bind (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct stat st;
  int fd = -1;

  if (admin.fd >= 0) {
    nbdkit_error ("admin socket already bound to %s", admin.path);
    return -1;
  }
  if (strlen (path) >= sizeof addr.sun_path) {
    nbdkit_error ("admin socket path too long (%zu bytes, at most %zu): %s",
                  strlen (path), sizeof addr.sun_path - 1, path);
    return -1;
  }
  strcpy (addr.sun_path, path);

  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    nbdkit_error ("socket: %m");
    goto err;
  }
  if (bind_private (fd, &addr) == -1) {
    if (errno != EADDRINUSE) {
      nbdkit_error ("admin socket: bind: %s: %m", path);
      goto err;
    }
    if (replace_stale (path, &addr) == -1)
      goto err;
    if (bind_private (fd, &addr) == -1) {
      nbdkit_error ("admin socket: bind: %s: %m", path);
      goto err;
    }
  }
  /* From here on the file is ours: remove it on failure. */
  if (chmod (path, 0600) == -1) {
    nbdkit_error ("chmod: %s: %m", path);
    goto err_unlink;
  }
  if (stat (path, &st) == -1) {
    nbdkit_error ("stat: %s: %m", path);
    goto err_unlink;
  }
  if (listen (fd, SOMAXCONN) == -1) {
    nbdkit_error ("admin socket: listen: %s: %m", path);
    goto err_unlink;
  }
  admin.path = strdup (path);
  if (admin.path == NULL) {
    nbdkit_error ("strdup: %m");
    goto err_unlink;
  }
  admin.fd = fd;
  admin.dev = st.st_dev;
  admin.ino = st.st_ino;
  admin.conn_limit = admin_conn_limit ();
  nbdkit_debug ("admin: listening on %s, at most %u connections (the "
                "admin loop reserves %u descriptors of %u)", path,
                admin.conn_limit, admin_fd_reserve (), fdlimit_soft ());
  return 0;

 err_unlink:
  unlink (path);
 err:
  if (fd >= 0)
    close (fd);
  return -1;
}

/* One error line, best effort (never blocks), then close. */
static void
refuse (int fd, enum proto_err kind, const char *msg)
{
  json_t *r = proto_error (kind, 0, "%s", msg);
  size_t len;
  char *s = r ? proto_format (r, &len) : NULL;

  if (s != NULL && send (fd, s, len, MSG_DONTWAIT | MSG_NOSIGNAL) == -1)
    nbdkit_debug ("admin: refusing connection: send: %m");
  free (s);
  json_decref (r);
  close (fd);
  admin.stats.refused++;
}

/* Check the peer and hand the socket to admin-conn.c. */
static void
accept_one (int fd)
{
  struct ucred cred;
  socklen_t len = sizeof cred;
  uid_t me = geteuid ();

  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
    nbdkit_error ("admin: refused a connection: SO_PEERCRED: %m");
    refuse (fd, PROTO_ERR_PERMISSION, "cannot identify the peer");
    return;
  }
  if (cred.uid != me && cred.uid != 0) {
    nbdkit_error ("admin: refused connection from uid %u (pid %d) on %s: "
                  "only uid %u (running nbdkit) and root may use it",
                  (unsigned) cred.uid, (int) cred.pid, admin.path,
                  (unsigned) me);
    refuse (fd, PROTO_ERR_PERMISSION,
            "permission denied: this uid may not administer the server");
    return;
  }
  admin.conn_limit = admin_conn_limit ();
  if (admin.nconns >= admin.conn_limit) {
    nbdkit_error ("admin: refused connection from pid %d: already %u "
                  "admin connections, the most allowed (a quarter of the "
                  "descriptor limit, at most %d)", (int) cred.pid,
                  admin.nconns, ADMIN_CONN_MAX);
    refuse (fd, PROTO_ERR_LIMIT, "too many admin connections");
    return;
  }
  {
    int flag = nbdsnap_debug_admin_fd_keep;
    unsigned keep = flag > 0 ? (unsigned) flag : flag < 0 ? 0 : ADMIN_FDS_KEEP;
    unsigned left = fdlimit_free ();

    if (left < keep) {
      admin.stats.refused_fds++;
      if (admin.stats.refused_fds == 1 || nbdsnap_debug_admin)
        nbdkit_error ("admin: refused connection from pid %d: %u "
                      "descriptors free of the limit %u, %u are kept for "
                      "NBD clients (%" PRIu64 " refused so far)",
                      (int) cred.pid, left, fdlimit_soft (), keep,
                      admin.stats.refused_fds);
      refuse (fd, PROTO_ERR_LIMIT, "too many admin connections: the "
              "server is short of file descriptors");
      return;
    }
  }
  if (admin_conn_new (fd, cred.uid, cred.pid) == -1) {
    refuse (fd, PROTO_ERR_INTERNAL, "out of memory");
    return;
  }
  admin.stats.accepted++;
}

/* accept failed with err: stop the watcher, retry from the timer. */
static void
accept_pause (struct ev_loop *loop, int err)
{
  admin.stats.accept_errors++;
  if (admin.burst.failures++ == 0) {
    admin.burst.since = ev_now (loop);
    errno = err;
    nbdkit_error ("admin: accept: %m (descriptor limit %u): admin "
                  "connections wait; retrying every %g s, logged once "
                  "until accept works again", fdlimit_soft (),
                  ACCEPT_RETRY_SECONDS);
  }
  ev_io_stop (loop, &admin.accept_w);
  ev_timer_set (&admin.retry_w, ACCEPT_RETRY_SECONDS, 0.);
  ev_timer_start (loop, &admin.retry_w);
}

/* accept did not fail (a connection, or none queued): a burst is over. */
static void
accept_burst_end (struct ev_loop *loop)
{
  if (admin.burst.failures == 0)
    return;
  nbdkit_debug ("admin: accept works again after %" PRIu64 " failures in "
                "%.1f s", admin.burst.failures,
                ev_now (loop) - admin.burst.since);
  admin.burst.failures = 0;
}

static void
on_accept (struct ev_loop *loop, ev_io *w, int revents)
{
  for (;;) {
    int fd = accept4 (admin.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

    if (fd >= 0) {
      accept_burst_end (loop);
      accept_one (fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      accept_burst_end (loop);
    else
      /* EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unexpected: the
       * connection stays queued and the socket readable (level-triggered),
       * so retrying now would spin. */
      accept_pause (loop, errno);
    return;
  }
}

static void
on_accept_retry (struct ev_loop *loop, ev_timer *w, int revents)
{
  ev_io_start (loop, &admin.accept_w);
}

/* Woken by admin_stop: wait for the jobs (cancelled), close everything
 * and leave ev_run.  The jobs come first: a connection's conn_closed must
 * follow its job. */
static void
on_stop (struct ev_loop *loop, ev_async *w, int revents)
{
  admin.stopping = true;
  admin_job_stop_all ();
  nbdkit_debug ("admin: stopping, closing %u connections", admin.nconns);
  while (admin.conns != NULL)
    admin_conn_shutdown (admin.conns);
  ev_io_stop (loop, &admin.accept_w);
  ev_timer_stop (loop, &admin.retry_w);
  ev_async_stop (loop, &admin.stop_w);
  ev_break (loop, EVBREAK_ALL);
}

static void *
admin_thread (void *arg)
{
  ev_run (admin.loop, 0);
  return NULL;
}

int
admin_start (void)
{
  sigset_t all, old;
  int err;

  if (admin.fd == -1 || admin.running)
    return 0;
  admin.loop = ev_loop_new (EVFLAG_AUTO | EVFLAG_NOSIGMASK);
  if (admin.loop == NULL) {
    nbdkit_error ("admin: ev_loop_new failed");
    return -1;
  }
  ev_io_init (&admin.accept_w, on_accept, admin.fd, EV_READ);
  ev_timer_init (&admin.retry_w, on_accept_retry, ACCEPT_RETRY_SECONDS, 0.);
  ev_async_init (&admin.stop_w, on_stop);
  ev_io_start (admin.loop, &admin.accept_w);
  ev_async_start (admin.loop, &admin.stop_w);
  admin_job_init ();

  /* The thread inherits this mask: it must never take nbdkit's signals. */
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  err = pthread_create (&admin.thread, NULL, admin_thread, NULL);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (err != 0) {
    errno = err;
    nbdkit_error ("admin: pthread_create: %m");
    ev_loop_destroy (admin.loop);
    admin.loop = NULL;
    return -1;
  }
  admin.running = true;
  return 0;
}

void
admin_stop (void)
{
  struct stat st;

  if (admin.running) {
    ev_async_send (admin.loop, &admin.stop_w);
    pthread_join (admin.thread, NULL);
    admin.running = false;
  }
  if (admin.loop != NULL) {
    ev_loop_destroy (admin.loop);
    admin.loop = NULL;
  }
  if (admin.fd >= 0) {
    close (admin.fd);
    admin.fd = -1;
    if (lstat (admin.path, &st) == 0
        && st.st_dev == admin.dev && st.st_ino == admin.ino)
      unlink (admin.path);
    else
      nbdkit_debug ("admin: %s was replaced, not removing it", admin.path);
  }
  free (admin.path);
  admin.path = NULL;
}

json_t *
admin_stats_json (void)
{
  json_t *r;

  unsigned left = fdlimit_free ();

  r = json_pack ("{s:I,s:I,s:I,s:I,s:I,s:b,s:I,s:I,s:I,s:I,s:I,s:I}",
                 "connections", (json_int_t) admin.nconns,
                 "connection_limit", (json_int_t) admin_conn_limit (),
                 "descriptor_limit", (json_int_t) fdlimit_soft (),
                 "descriptors_free",
                 (json_int_t) (left == UINT_MAX ? -1 : (json_int_t) left),
                 "accept_errors", (json_int_t) admin.stats.accept_errors,
                 "accept_paused", admin.burst.failures > 0,
                 "accepted", (json_int_t) admin.stats.accepted,
                 "refused", (json_int_t) admin.stats.refused,
                 "refused_descriptors", (json_int_t) admin.stats.refused_fds,
                 "requests", (json_int_t) admin.stats.requests,
                 "errors", (json_int_t) admin.stats.errors,
                 "closed_slow", (json_int_t) admin.stats.closed_slow);
  if (r != NULL && admin_job_stats (r) == -1) {
    json_decref (r);
    r = NULL;
  }
  return r;
}
