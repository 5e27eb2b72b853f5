/* nbdsnapctl: the client side of the admin connection.
 *
 * Notes on the design:
 *
 * - Every request is first run through the server's own parser
 *   (src/proto.c), so a bad name or flag fails here, with the same message
 *   and exit status, without a server.
 *
 * - Responses are read line by line into a growing buffer, bounded by
 *   NBDSNAP_ADMIN_RESPONSE_MAX; bytes after the line stay buffered (the
 *   server may send an unsolicited error line before closing).
 *
 * - Progress lines (protocol 2: objects with "progress" and no "ok") may
 *   come before any final line; ctl_call passes them on (--json: printed
 *   as they come; a terminal: drawn on stderr) and reads on.  Only a
 *   request with the "progress" flag gets them, but any line that is one
 *   is taken as one.
 *
 * - Finding the socket: -s PATH; else -i NAME, the systemd unit
 *   nbdsnap@NAME's $NBDSNAP_RUNTIME_DIR/NAME/admin.sock (default
 *   /run/nbdsnap); else --image IMAGE, the state directory the image's
 *   xattr user.nbdsnap.state-id names ("ID /abs/statedir", see
 *   src/statedir.c) then IMAGE.nbdsnap, the server's default, each
 *   + /admin.sock; else $NBDSNAP_SOCKET.  Options beat the environment.
 *   Connecting is refused with EACCES or EPERM for another user's 0600
 *   socket: exit 8, as for the server's "permission" line.
 *
 * - Messages: one line on stderr each; the last one and its errno (if
 *   its format had %m) are kept, so that with --json a failure found
 *   here (usage, bad name, no server) is also one error object on
 *   stdout, in the protocol's shape.  Its kinds are the protocol's
 *   (proto.c) plus "usage", "unreachable" and "error" for the failures
 *   only a client has.
 *
 * - The socket is close-on-exec: a command run by "run" must not keep the
 *   admin connection, and with it the temporary snapshot, alive after
 *   nbdsnapctl itself is gone.
 */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "nbdsnapctl.h"

/* The last message and its errno (0: its format had no %m). */
static char last_msg[1024];
static int last_errno;

/* Print "nbdsnapctl: MESSAGE SUFFIX\n" on one line whatever the message
 * holds: control characters (a newline in a bad name, an escape sequence
 * from an argument) become '?'. */
static void
msg_line (const char *suffix, const char *fmt, va_list args)
{
  char *msg, *p;
  int saved = errno;

  if (vasprintf (&msg, fmt, args) == -1) {
    errno = saved;
    fputs ("nbdsnapctl: (out of memory)\n", stderr);
    return;
  }
  for (p = msg; *p; ++p)
    if ((unsigned char) *p < 0x20 || *p == 0x7f)
      *p = '?';
  fprintf (stderr, "nbdsnapctl: %s%s\n", msg, suffix);
  snprintf (last_msg, sizeof last_msg, "%s", msg);
  last_errno = strstr (fmt, "%m") ? saved : 0;
  free (msg);
  errno = saved;
}

void
ctl_msg (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  msg_line ("", fmt, args);
  va_end (args);
}

int
ctl_usage (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  msg_line (" (see nbdsnapctl --help)", fmt, args);
  va_end (args);
  return NBDSNAPCTL_EXIT_USAGE;
}

/* Is path a socket?  (errno set if not.) */
static bool
is_socket (const char *path)
{
  struct stat st;

  if (stat (path, &st) == -1)
    return false;
  if (!S_ISSOCK (st.st_mode)) {
    errno = ENOTSOCK;
    return false;
  }
  return true;
}

static int
set_socket (struct ctl *c, char *path, const char *from)
{
  free (c->socket_buf);
  c->socket = c->socket_buf = path;
  c->socket_from = from;
  return 0;
}

/* --image IMAGE: the state directory its mark names, else IMAGE.nbdsnap. */
static int
socket_of_image (struct ctl *c)
{
  char mark[PATH_MAX + 64], *dir, *a = NULL, *b = NULL;
  ssize_t n = getxattr (c->image, "user.nbdsnap.state-id", mark,
                        sizeof mark - 1);
  int err_a = 0;

  if (n == -1 && errno == ENOENT) {
    ctl_msg ("--image %s: %m", c->image);
    return NBDSNAPCTL_EXIT_UNREACHABLE;
  }
  mark[n > 0 ? n : 0] = '\0';
  dir = strchr (mark, ' ');
  if (dir != NULL && dir[1] == '/') {
    if (asprintf (&a, "%s/admin.sock", dir + 1) == -1)
      goto oom;
    if (is_socket (a))
      return set_socket (c, a, "the state directory in --image's mark");
    err_a = errno;
  }
  if (asprintf (&b, "%s.nbdsnap/admin.sock", c->image) == -1)
    goto oom;
  if (is_socket (b)) {
    free (a);
    return set_socket (c, b, "--image's default state directory");
  }
  errno = err_a ? err_a : errno;
  if (a != NULL)
    ctl_msg ("--image %s: no admin socket at %s (its state directory, "
             "from its %s attribute: %s) nor at %s (the default): is the "
             "server running?", c->image, a, "user.nbdsnap.state-id",
             strerror (err_a), b);
  else
    ctl_msg ("--image %s: no admin socket at %s (the default state "
             "directory; the image has no user.nbdsnap.state-id mark): "
             "%m; is the server running?", c->image, b);
  free (a);
  free (b);
  return NBDSNAPCTL_EXIT_UNREACHABLE;
 oom:
  ctl_msg ("asprintf: %m");
  free (a);
  return NBDSNAPCTL_EXIT_ERROR;
}

int
ctl_find_socket (struct ctl *c)
{
  const char *env = getenv ("NBDSNAP_SOCKET");
  const char *run = getenv ("NBDSNAP_RUNTIME_DIR");
  char *path;

  if (c->socket != NULL)
    return 0;
  if (c->instance != NULL) {
    if (*c->instance == '\0' || strchr (c->instance, '/')
        || strcmp (c->instance, ".") == 0 || strcmp (c->instance, "..") == 0)
      return ctl_usage ("-i: not an instance name: '%.80s'", c->instance);
    if (asprintf (&path, "%s/%s/admin.sock", run && *run ? run
                  : "/run/nbdsnap", c->instance) == -1) {
      ctl_msg ("asprintf: %m");
      return NBDSNAPCTL_EXIT_ERROR;
    }
    return set_socket (c, path, "instance");
  }
  if (c->image != NULL)
    return socket_of_image (c);
  if (env != NULL && *env != '\0') {
    c->socket = env;
    c->socket_from = "$NBDSNAP_SOCKET";
    return 0;
  }
  return ctl_usage ("no admin socket: pass -s SOCKET, -i INSTANCE (a "
                    "systemd unit nbdsnap@INSTANCE), --image IMAGE, or set "
                    "NBDSNAP_SOCKET");
}

int
ctl_connect (struct ctl *c)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int status;

  if ((status = ctl_find_socket (c)) != 0)
    return status;
  if (strlen (c->socket) >= sizeof addr.sun_path) {
    ctl_msg ("admin socket path too long (at most %zu bytes): %s",
             sizeof addr.sun_path - 1, c->socket);
    return NBDSNAPCTL_EXIT_UNREACHABLE;
  }
  strcpy (addr.sun_path, c->socket);
  c->fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd == -1) {
    ctl_msg ("socket: %m");
    return NBDSNAPCTL_EXIT_UNREACHABLE;
  }
  if (connect (c->fd, (struct sockaddr *) &addr, sizeof addr) == -1) {
    int err = errno;

    close (c->fd);
    c->fd = -1;
    errno = err;
    if (err == EACCES || err == EPERM) {
      ctl_msg ("cannot connect to admin socket %s: %m (only the user "
               "running the server, and root, may use it)", c->socket);
      return NBDSNAPCTL_EXIT_PERMISSION;
    }
    if (c->socket_from != NULL && strcmp (c->socket_from, "instance") == 0)
      ctl_msg ("cannot connect to admin socket %s of instance %s: %m "
               "(is nbdsnap@%s running? systemctl status nbdsnap@%s)",
               c->socket, c->instance, c->instance, c->instance);
    else
      ctl_msg ("cannot connect to admin socket %s%s%s%s: %m", c->socket,
               c->socket_from ? " (from " : "",
               c->socket_from ? c->socket_from : "",
               c->socket_from ? ")" : "");
    return NBDSNAPCTL_EXIT_UNREACHABLE;
  }
  return 0;
}

/* Kinds for failures the server did not answer, by exit status. */
static const char *
local_kind (int status, int *errnum)
{
  switch (status) {
  case NBDSNAPCTL_EXIT_USAGE:        *errnum = EINVAL; return "usage";
  case NBDSNAPCTL_EXIT_UNREACHABLE:  *errnum = ECONNREFUSED;
                                     return "unreachable";
  case NBDSNAPCTL_EXIT_BUSY:         *errnum = EBUSY; return "busy";
  case NBDSNAPCTL_EXIT_NOT_FOUND:    *errnum = ENOENT; return "not-found";
  case NBDSNAPCTL_EXIT_INVALID_NAME: *errnum = EINVAL; return "invalid-name";
  case NBDSNAPCTL_EXIT_EXISTS:       *errnum = EEXIST; return "exists";
  case NBDSNAPCTL_EXIT_PERMISSION:   *errnum = EACCES; return "permission";
  default:                           *errnum = EIO; return "error";
  }
}

void
ctl_json_error (struct ctl *c, int status)
{
  const char *kind, *name;
  char num[16];
  int errnum;
  json_t *o;
  char *s;

  if (!c->json || c->json_done || status == 0)
    return;
  kind = local_kind (status, &errnum);
  if (last_errno != 0)
    errnum = last_errno;
  name = proto_errno_name (errnum);
  if (name == NULL) {
    snprintf (num, sizeof num, "%d", errnum);
    name = num;
  }
  o = json_pack ("{s:b, s:s, s:s, s:s}", "ok", 0, "error", kind,
                 "errno", name, "message",
                 last_msg[0] ? last_msg : "failed");
  s = o ? json_dumps (o, JSON_COMPACT) : NULL;
  if (s != NULL)
    puts (s);
  free (s);
  json_decref (o);
  c->json_done = true;
}

void
ctl_close (struct ctl *c)
{
  if (c->fd >= 0)
    close (c->fd);
  c->fd = -1;
  free (c->buf);
  free (c->line);
  free (c->socket_buf);
  c->socket_buf = NULL;
  c->socket = NULL;
  c->buf = c->line = NULL;
  c->buflen = c->bufcap = 0;
}

int
ctl_read_line (struct ctl *c)
{
  size_t scanned = 0;

  for (;;) {
    char *nl = c->buflen > scanned
      ? memchr (c->buf + scanned, '\n', c->buflen - scanned) : NULL;
    ssize_t n;

    if (nl != NULL) {
      size_t len = nl - c->buf;

      free (c->line);
      c->line = malloc (len + 1);
      if (c->line == NULL)
        return -1;
      memcpy (c->line, c->buf, len);
      c->line[len] = '\0';
      memmove (c->buf, nl + 1, c->buflen - len - 1);
      c->buflen -= len + 1;
      return 0;
    }
    scanned = c->buflen;
    if (c->buflen > NBDSNAP_ADMIN_RESPONSE_MAX) {
      errno = EMSGSIZE;
      return -1;
    }
    if (c->bufcap - c->buflen < 4096) {
      size_t cap = c->bufcap ? c->bufcap * 2 : 65536;
      char *p = realloc (c->buf, cap);

      if (p == NULL)
        return -1;
      c->buf = p;
      c->bufcap = cap;
    }
    n = recv (c->fd, c->buf + c->buflen, c->bufcap - c->buflen, 0);
    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1)
      return -1;
    if (n == 0) {
      errno = ECONNRESET;
      return -1;
    }
    c->buflen += n;
  }
}

static int
send_all (int fd, const char *s, size_t len)
{
  while (len > 0) {
    ssize_t n = send (fd, s, len, MSG_NOSIGNAL);

    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1)
      return -1;
    s += n;
    len -= n;
  }
  return 0;
}

int
ctl_call (struct ctl *c, const char *line, json_t **resp)
{
  struct proto_request req;
  struct proto_parse_error perr;
  enum proto_err kind;
  const char *msg;
  json_t *r;
  char *wire;
  int status;

  *resp = NULL;
  if (proto_parse (line, strlen (line), &req, &perr) == -1) {
    ctl_msg ("%s", perr.message);
    if (c->json && !c->quiet && !c->json_done) {
      /* The error line the server would have sent. */
      r = proto_error_parse (&perr);
      wire = r ? json_dumps (r, JSON_COMPACT) : NULL;
      if (wire != NULL) {
        puts (wire);
        c->json_done = true;
      }
      free (wire);
      json_decref (r);
    }
    return proto_err_exit_status (perr.kind);
  }
  if (c->fd == -1 && (status = ctl_connect (c)) != 0)
    return status;

  if (asprintf (&wire, "%s\n", line) == -1) {
    ctl_msg ("asprintf: %m");
    return NBDSNAPCTL_EXIT_ERROR;
  }
  /* Even if sending fails, the server may have said why before closing
   * (e.g. "permission"): read its line. */
  if (send_all (c->fd, wire, strlen (wire)) == -1 && errno != EPIPE) {
    ctl_msg ("%s: admin connection: %m", proto_cmd_name (req.cmd));
    free (wire);
    return NBDSNAPCTL_EXIT_UNREACHABLE;
  }
  free (wire);
  c->bar.start = ctl_now ();
  for (;;) {
    if (ctl_read_line (c) == -1) {
      ctl_progress_clear (c);
      if (errno == ECONNRESET || errno == EPIPE)
        ctl_msg ("%s: the server closed the admin connection",
                 proto_cmd_name (req.cmd));
      else
        ctl_msg ("%s: admin connection: %m", proto_cmd_name (req.cmd));
      return NBDSNAPCTL_EXIT_UNREACHABLE;
    }
    r = proto_parse_progress (c->line, strlen (c->line));
    if (r == NULL)
      break;
    if (c->json && !c->quiet) {
      puts (c->line);
      fflush (stdout);
    }
    else if (c->draw_progress && !c->quiet)
      ctl_progress_draw (c, r);
    json_decref (r);
  }
  ctl_progress_clear (c);

  r = proto_parse_response (c->line, strlen (c->line), &kind);
  if (r == NULL) {
    ctl_msg ("%s: malformed response from the server: %.60s",
             proto_cmd_name (req.cmd), c->line);
    return NBDSNAPCTL_EXIT_ERROR;
  }
  if (kind != PROTO_ERR_NONE) {
    msg = json_string_value (json_object_get (r, "message"));
    if (c->json && !c->quiet) {
      puts (c->line);
      c->json_done = true;
    }
    if (!c->quiet) {
      const char *cmd = proto_cmd_name (req.cmd);
      size_t n = strlen (cmd);

      /* Some server messages name the request already ("hold: ..."). */
      if (msg != NULL && strncmp (msg, cmd, n) == 0 && msg[n] == ':')
        ctl_msg ("%s", msg);
      else
        ctl_msg ("%s: %s", cmd, msg ? msg : "failed");
    }
    json_decref (r);
    return proto_err_exit_status (kind);
  }
  *resp = r;
  return 0;
}
