/* nbdsnap: one admin connection: buffering, dispatch, closing.
 *
 * Notes on the design:
 *
 * - Everything runs in the admin thread; a connection never blocks it.
 *   The socket is non-blocking; input goes into a fixed buffer of one
 *   request line (NBDSNAP_ADMIN_LINE_MAX): a line that does not fit is
 *   answered with "line-too-long" and the connection is closed once that
 *   answer is sent.
 *
 * - Output is bounded too.  Responses are queued and sent as the peer
 *   reads them; while more than ADMIN_OUT_SOFT bytes are unread the
 *   connection's requests are not read (the kernel's socket buffer then
 *   pushes back on the client), so a client that pipelines without
 *   reading holds at most one soft limit plus one response.  A response
 *   is at most NBDSNAP_ADMIN_RESPONSE_MAX, and a client that reads none of
 *   its pending output for ADMIN_STALL_SECONDS is closed.
 *
 * - Each connection has an id; admin_ops.conn_closed (id) runs exactly
 *   once for every connection that was accepted, whatever closes it (EOF,
 *   error, abuse, shutdown): holds and temporary snapshots die with it.
 *   If it closes while its job runs, the job calls it when it returns
 *   (admin-job.c).
 *
 * - create, delete, rollback, changes and named hold/release (a tag: the
 *   holds file is synced) are jobs (admin-job.c): they run
 *   on a worker thread, and until the job answers (admin_conn_answer) the
 *   connection reads and serves no more requests, so that answers keep
 *   request order.  Every other request is answered here, at once.
 *   Progress lines of a job go through the same output queue, and are
 *   dropped rather than queued past ADMIN_OUT_SOFT.
 *
 * - Callbacks only mark the connection; the watcher callback that was
 *   called closes it at the end, so nothing uses a freed connection.  A
 *   job's callbacks (admin_conn_answer, admin_conn_progress, called from
 *   admin-job.c's watchers) may close it too, as their last use of it.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "admin-internal.h"

static size_t
pending (const struct admin_conn *c)
{
  return c->outlen - c->outoff;
}

static void
conn_close (struct admin_conn *c)
{
  struct ev_loop *loop = admin.loop;

  ev_io_stop (loop, &c->read_w);
  ev_io_stop (loop, &c->write_w);
  ev_timer_stop (loop, &c->stall_w);
  close (c->fd);
  if (c->prev)
    c->prev->next = c->next;
  else
    admin.conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  admin.nconns--;
  if (nbdsnap_debug_admin)
    nbdkit_debug ("admin: conn %" PRIu64 " closed%s", c->id,
                  c->job ? " while its job runs" : "");
  if (c->job != NULL)
    admin_job_conn_gone (c);            /* conn_closed when it returns */
  else if (admin.ops && admin.ops->conn_closed)
    admin.ops->conn_closed (c->id);
  free (c->out);
  free (c);
}

/* Send what the peer will take now.  -1: the connection is broken. */
static int
conn_flush (struct admin_conn *c)
{
  struct ev_loop *loop = admin.loop;

  while (pending (c) > 0) {
    ssize_t n = send (c->fd, c->out + c->outoff, pending (c),
                      MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == -1) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        ev_io_start (loop, &c->write_w);
        if (!ev_is_active (&c->stall_w))
          ev_timer_again (loop, &c->stall_w);
        return 0;
      }
      if (nbdsnap_debug_admin)
        nbdkit_debug ("admin: conn %" PRIu64 ": send: %m", c->id);
      return -1;
    }
    c->outoff += n;
    ev_timer_again (loop, &c->stall_w);   /* progress: restart the clock */
  }
  c->outoff = c->outlen = 0;
  ev_io_stop (loop, &c->write_w);
  ev_timer_stop (loop, &c->stall_w);
  if (c->outcap > ADMIN_OUT_SOFT) {     /* don't keep a big buffer idle */
    free (c->out);
    c->out = NULL;
    c->outcap = 0;
  }
  return 0;
}

/* Queue one line of len bytes (malloc'd, consumed) and try to send it.
 * -1: the connection is broken. */
static int
conn_queue (struct admin_conn *c, char *s, size_t len)
{
  if (c->outoff > 0) {                  /* compact before growing */
    memmove (c->out, c->out + c->outoff, pending (c));
    c->outlen -= c->outoff;
    c->outoff = 0;
  }
  if (c->outlen + len > c->outcap) {
    size_t cap = c->outcap ? c->outcap : 4096;
    char *p;

    while (cap < c->outlen + len)
      cap *= 2;
    p = realloc (c->out, cap);
    if (p == NULL) {
      free (s);
      return -1;
    }
    c->out = p;
    c->outcap = cap;
  }
  memcpy (c->out + c->outlen, s, len);
  c->outlen += len;
  free (s);
  return conn_flush (c);
}

/* Queue one response (consuming the reference) and try to send it. */
static int
conn_respond (struct admin_conn *c, json_t *resp)
{
  char *s;
  size_t len;

  if (resp == NULL)
    resp = proto_error (PROTO_ERR_INTERNAL, ENOMEM, "out of memory");
  if (resp == NULL)
    return -1;
  if (!json_is_true (json_object_get (resp, "ok")))
    admin.stats.errors++;
  s = proto_format (resp, &len);
  if (s == NULL && errno == E2BIG) {
    json_decref (resp);
    resp = proto_error (PROTO_ERR_TOO_LARGE, 0, "response longer "
                              "than %u bytes", NBDSNAP_ADMIN_RESPONSE_MAX);
    s = resp ? proto_format (resp, &len) : NULL;
  }
  json_decref (resp);
  if (s == NULL)
    return -1;
  return conn_queue (c, s, len);
}

/* An op the registry did not provide. */
static json_t *
missing (enum proto_cmd cmd)
{
  return proto_error (PROTO_ERR_INTERNAL, ENOSYS, "this server does not "
                      "implement '%s'", proto_cmd_name (cmd));
}

#define CALL(op, ...) \
  (ops && ops->op ? ops->op (__VA_ARGS__) : missing (r->cmd))

/* Does the server implement this job's operation? */
static bool
job_op (const struct admin_ops *ops, enum proto_cmd cmd)
{
  return ops != NULL
    && ((cmd == PROTO_CMD_CREATE && ops->create)
        || (cmd == PROTO_CMD_DELETE && ops->delete)
        || (cmd == PROTO_CMD_ROLLBACK && ops->rollback)
        || (cmd == PROTO_CMD_CHANGES && ops->changes)
        || (cmd == PROTO_CMD_HOLD && ops->hold_named)
        || (cmd == PROTO_CMD_RELEASE && ops->release_named));
}

/* Answer a request that is not a job. */
static json_t *
dispatch (struct admin_conn *c, const struct proto_request *r)
{
  const struct admin_ops *ops = admin.ops;
  json_t *resp;

  switch (r->cmd) {
  case PROTO_CMD_HELLO:
    resp = proto_hello (PACKAGE_VERSION, c->id);
    if (resp != NULL)
      json_object_set_new (resp, "nbd", ops && ops->nbd_uris
                           ? ops->nbd_uris () : json_array ());
    return resp;
  case PROTO_CMD_LIST:    return CALL (list, c->id);
  case PROTO_CMD_INFO:    return CALL (info, c->id, r->name);
  case PROTO_CMD_CLIENTS: return CALL (clients, c->id);
  case PROTO_CMD_HOLD:    return CALL (hold, c->id, r->name);
  case PROTO_CMD_RELEASE: return CALL (release, c->id, r->name);
  case PROTO_CMD_HOLDS:   return CALL (holds, c->id, r->name);
  case PROTO_CMD_STATS:
    resp = ops && ops->stats ? ops->stats (c->id) : proto_ok ();
    if (json_is_true (json_object_get (resp, "ok")))
      json_object_set_new (resp, "admin", admin_stats_json ());
    return resp;
  default:
    return missing (r->cmd);
  }
}

/* Answer one request line of len bytes (no "\n"), or start its job. */
static int
conn_request (struct admin_conn *c, const char *line, size_t len)
{
  struct proto_request req;
  struct proto_parse_error perr;
  json_t *resp;

  admin.stats.requests++;
  if (proto_parse (line, len, &req, &perr) == -1) {
    if (nbdsnap_debug_admin)
      nbdkit_debug ("admin: conn %" PRIu64 ": refused: %s", c->id,
                    perr.message);
    return conn_respond (c, proto_error_parse (&perr));
  }
  if (nbdsnap_debug_admin)
    nbdkit_debug ("admin: conn %" PRIu64 ": %s %s%s%s%s%s%s%s%s%s", c->id,
                  proto_cmd_name (req.cmd), req.name,
                  req.tag[0] ? " tag=" : "", req.tag,
                  req.temporary ? " temporary" : "",
                  req.mode == PROTO_DELETE_DEFER ? " defer" : "",
                  req.mode == PROTO_DELETE_FORCE || req.force ? " force" : "",
                  req.destroy_newer ? " destroy-newer" : "",
                  req.nowait ? " nowait" : "",
                  req.progress ? " progress" : "");
  if (admin_job_is (&req) && job_op (admin.ops, req.cmd)) {
    if (admin_job_start (c, &req, &resp) == 0)
      return 0;                         /* it answers when it returns */
    return conn_respond (c, resp);
  }
  if (admin_job_is (&req))
    return conn_respond (c, missing (req.cmd));
  return conn_respond (c, dispatch (c, &req));
}

/* May c serve (and read) requests now? */
static bool
conn_serving (const struct admin_conn *c)
{
  return !c->closing && c->job == NULL && !admin.stopping
    && pending (c) <= ADMIN_OUT_SOFT;
}

/* Serve complete lines from in[] while output is below the soft limit and
 * no job is in flight; decide whether to keep reading. */
static int
conn_process (struct admin_conn *c)
{
  while (conn_serving (c)) {
    char *nl = memchr (c->in, '\n', c->inlen);
    size_t used;

    if (nl != NULL) {
      used = nl - c->in + 1;
      if (conn_request (c, c->in, used - 1) == -1)
        return -1;
    }
    else if (c->inlen == sizeof c->in) {
      nbdkit_error ("admin: conn %" PRIu64 " (pid %d): request line longer "
                    "than %d bytes, closing", c->id, (int) c->pid,
                    NBDSNAP_ADMIN_LINE_MAX - 1);
      c->closing = true;
      return conn_respond (c, proto_error (PROTO_ERR_LINE_TOO_LONG, 0,
                                           "request line longer than %d "
                                           "bytes",
                                           NBDSNAP_ADMIN_LINE_MAX - 1));
    }
    else if (c->eof && c->inlen > 0) {  /* last line, without "\n" */
      used = c->inlen;
      if (conn_request (c, c->in, used) == -1)
        return -1;
    }
    else
      break;
    memmove (c->in, c->in + used, c->inlen - used);
    c->inlen -= used;
  }
  if (!c->eof && conn_serving (c))
    ev_io_start (admin.loop, &c->read_w);
  else
    ev_io_stop (admin.loop, &c->read_w);
  return 0;
}

/* Nothing more to do on this connection? */
static bool
conn_done (const struct admin_conn *c)
{
  return c->job == NULL && pending (c) == 0
    && (c->closing || (c->eof && c->inlen == 0));
}

static void
on_read (struct ev_loop *loop, ev_io *w, int revents)
{
  struct admin_conn *c = w->data;
  ssize_t n;

  if (c->inlen == sizeof c->in) {       /* conn_process will decide */
    ev_io_stop (loop, w);
    return;
  }
  n = read (c->fd, c->in + c->inlen, sizeof c->in - c->inlen);
  if (n == -1) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
      return;
    if (nbdsnap_debug_admin)
      nbdkit_debug ("admin: conn %" PRIu64 ": read: %m", c->id);
    conn_close (c);
    return;
  }
  if (n == 0)
    c->eof = true;
  c->inlen += n;
  if (conn_process (c) == -1 || conn_done (c))
    conn_close (c);
}

static void
on_write (struct ev_loop *loop, ev_io *w, int revents)
{
  struct admin_conn *c = w->data;

  if (conn_flush (c) == -1) {
    conn_close (c);
    return;
  }
  /* Below the soft limit again: serve lines already buffered. */
  if (conn_process (c) == -1 || conn_done (c))
    conn_close (c);
}

static void
on_stall (struct ev_loop *loop, ev_timer *w, int revents)
{
  struct admin_conn *c = w->data;

  nbdkit_error ("admin: conn %" PRIu64 " (pid %d): %zu bytes of output "
                "unread for %g s, closing", c->id, (int) c->pid,
                pending (c), ADMIN_STALL_SECONDS);
  admin.stats.closed_slow++;
  conn_close (c);
}

int
admin_conn_new (int fd, uid_t uid, pid_t pid)
{
  struct admin_conn *c = calloc (1, sizeof *c);

  if (c == NULL) {
    nbdkit_error ("admin: calloc: %m");
    return -1;
  }
  c->id = ++admin.next_id;
  c->fd = fd;
  c->uid = uid;
  c->pid = pid;
  ev_io_init (&c->read_w, on_read, fd, EV_READ);
  ev_io_init (&c->write_w, on_write, fd, EV_WRITE);
  ev_init (&c->stall_w, on_stall);
  c->stall_w.repeat = ADMIN_STALL_SECONDS;
  c->read_w.data = c->write_w.data = c->stall_w.data = c;

  c->next = admin.conns;
  if (admin.conns)
    admin.conns->prev = c;
  admin.conns = c;
  admin.nconns++;
  ev_io_start (admin.loop, &c->read_w);
  if (nbdsnap_debug_admin)
    nbdkit_debug ("admin: conn %" PRIu64 " opened by uid %u pid %d",
                  c->id, (unsigned) uid, (int) pid);
  if (admin.ops && admin.ops->conn_opened)
    admin.ops->conn_opened (c->id, uid, pid);
  return 0;
}

void
admin_conn_shutdown (struct admin_conn *c)
{
  /* Complete lines only are queued, so this one starts a fresh line. */
  conn_respond (c, proto_error (PROTO_ERR_SHUTTING_DOWN, 0,
                                "the server is shutting down"));
  conn_close (c);
}

void
admin_conn_answer (struct admin_conn *c, json_t *resp)
{
  if (conn_respond (c, resp) == -1 || conn_process (c) == -1
      || conn_done (c))
    conn_close (c);
}

bool
admin_conn_progress (struct admin_conn *c, json_t *line)
{
  char *s;
  size_t len;

  if (line == NULL || pending (c) > ADMIN_OUT_SOFT) {
    json_decref (line);
    return false;
  }
  s = proto_format (line, &len);
  json_decref (line);
  if (s == NULL)
    return false;
  if (conn_queue (c, s, len) == -1) {
    conn_close (c);
    return false;
  }
  return true;
}
