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
 * - The socket is close-on-exec: a command run by "run" must not keep the
 *   admin connection, and with it the temporary snapshot, alive after
 *   nbdsnapctl itself is gone.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "nbdsnapctl.h"

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

int
ctl_connect (struct ctl *c)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };

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
    ctl_msg ("cannot connect to admin socket %s: %m", c->socket);
    close (c->fd);
    c->fd = -1;
    return NBDSNAPCTL_EXIT_UNREACHABLE;
  }
  return 0;
}

void
ctl_close (struct ctl *c)
{
  if (c->fd >= 0)
    close (c->fd);
  c->fd = -1;
  free (c->buf);
  free (c->line);
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
    if (c->json && !c->quiet)
      puts (c->line);
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
