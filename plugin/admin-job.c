/* nbdsnap: admin jobs: create, delete, rollback and changes, run off the
 * admin loop.
 *
 * Notes on the design:
 *
 * - The admin loop never runs a long operation itself.  A request for one
 *   of these commands becomes a job: a worker thread of its own calls the
 *   operation (admin_ops, plugin/admin.h) and posts the result back.  Jobs
 *   of different connections run at once, at most ADMIN_JOB_MAX; more are
 *   refused with "limit".
 *
 * - Workers talk to the loop only through the posted list below and one
 *   ev_async (jobs.async_w): a worker marks its job (accepted, returned),
 *   links it on jobs.posted if it is not there yet, and calls
 *   ev_async_send, the only call any other thread makes into the loop
 *   (ev.pod).  The loop, in on_posted, takes the list and acts on each
 *   job: it answers the connection, joins the worker, frees the job.  A
 *   job is freed only after its worker was joined, so a worker may still
 *   use jobs.async_w after posting its last event.
 *
 * - A connection with a job in flight (conn->job) reads no more requests
 *   (admin-conn.c), so its responses stay in request order; its buffered
 *   lines wait.  The job answers it when the operation returns, or at
 *   once with {"ok":true,"name":N,"accepted":true} if the request has
 *   "nowait" and the operation calls admin_job_accepted: the job is then
 *   detached (job->conn NULL), the connection reads again, and the job's
 *   result is only logged.
 *
 * - A connection that closes while its (not detached) job runs is gone at
 *   once (descriptor closed, not counted), but admin_ops.conn_closed for
 *   it is called only when the job has returned: a temporary snapshot
 *   that the job creates must find its owner's closing after it.
 *
 * - Progress: delete and rollback get the job's struct nbdsnap_progress.
 *   With the "progress" flag, a repeating ev_timer (ADMIN_PROGRESS_SECONDS)
 *   reads done/total and sends a progress line when they changed, unless
 *   the connection's output is over its soft limit (a progress line is
 *   never worth blocking on).
 *
 * - Shutdown (admin_job_stop_all, from on_stop in admin.c): every job's
 *   cancel is set; the loop then waits for every worker (jobs.cond) and
 *   finishes each job as above, except that while the server stops a
 *   failed job's answer is dropped (its connection gets "shutting-down"
 *   only) and no new request is read.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "admin-internal.h"

struct admin_job {
  /* Set by the loop before the worker starts; then read-only. */
  uint64_t conn_id;
  struct proto_request req;
  pthread_t thread;

  /* done and total are written by the operation (atomics); cancel is set
   * by the loop (atomic). */
  struct nbdsnap_progress progress;

  /* Under jobs.lock. */
  struct admin_job *next;           /* jobs.all */
  struct admin_job *posted_next;    /* jobs.posted, if posted */
  bool posted;
  bool accepted;                    /* admin_job_accepted was called */
  bool returned;                    /* the operation returned: resp is set */
  json_t *resp;

  /* The admin thread only. */
  struct admin_conn *conn;          /* to answer; NULL once detached or
                                       once the connection closed */
  bool detached;                    /* answered "accepted" */
  bool owes_conn_closed;            /* its connection closed meanwhile */
  struct admin_job *batch_next;     /* run_posted's batch */
  bool seen_accepted, seen_returned; /* accepted, returned when the batch
                                        was taken */
  bool answered_accepted;           /* acted on accepted (once) */
  ev_timer progress_w;
  uint64_t sent_done, sent_total;   /* in the last progress line */
};

/* lock protects all, posted and the fields of each job marked "under
 * jobs.lock".  It is a leaf: nothing else is taken while it is held.
 * admin_job_accepted takes it from a worker, possibly under the locks of
 * the operation that calls it.  The list all is changed only by the admin
 * thread (with the lock), which may therefore read it without the lock.
 * The counters and async_w belong to the admin thread (async_w is also
 * passed to ev_async_send by workers). */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;              /* a job was posted (admin_job_stop_all
                                       waits for it) */
  struct admin_job *all;            /* every job not yet joined */
  struct admin_job *posted;         /* jobs with events for the loop */
  ev_async async_w;
  unsigned running;                 /* jobs not yet joined */
  uint64_t done;                    /* jobs joined */
} jobs = {
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .cond = PTHREAD_COND_INITIALIZER,
};

bool
admin_job_is (const struct proto_request *r)
{
  enum proto_cmd cmd = r->cmd;

  return cmd == PROTO_CMD_CREATE || cmd == PROTO_CMD_DELETE
    || cmd == PROTO_CMD_ROLLBACK || cmd == PROTO_CMD_CHANGES
    || ((cmd == PROTO_CMD_HOLD || cmd == PROTO_CMD_RELEASE)
        && r->tag[0] != '\0');        /* named: the file is synced */
}

/* Call with jobs.lock held; the caller then calls ev_async_send. */
static void
post_locked (struct admin_job *j)
{
  if (!j->posted) {
    j->posted = true;
    j->posted_next = jobs.posted;
    jobs.posted = j;
  }
  pthread_cond_broadcast (&jobs.cond);
}

void
admin_job_accepted (struct nbdsnap_progress *p)
{
  struct admin_job *j;
  bool found = false;

  if (p == NULL)
    return;
  pthread_mutex_lock (&jobs.lock);
  /* Only a job's own progress counts: anything else is ignored. */
  for (j = jobs.all; j != NULL; j = j->next)
    if (&j->progress == p && !j->returned) {
      if (!j->accepted) {
        j->accepted = true;
        post_locked (j);
        found = true;
      }
      break;
    }
  pthread_mutex_unlock (&jobs.lock);
  if (found)
    ev_async_send (admin.loop, &jobs.async_w);
}

static json_t *
run_op (struct admin_job *j)
{
  const struct admin_ops *ops = admin.ops;
  const struct proto_request *r = &j->req;

  switch (r->cmd) {
  case PROTO_CMD_CREATE:
    return ops->create (j->conn_id, r->name, r->temporary);
  case PROTO_CMD_DELETE:
    return ops->delete (j->conn_id, r->name, r->mode, &j->progress);
  case PROTO_CMD_ROLLBACK:
    return ops->rollback (j->conn_id, r->name, r->force, r->destroy_newer,
                          &j->progress);
  case PROTO_CMD_CHANGES:
    return ops->changes (j->conn_id, r->name, r->to, r->offset, r->limit);
  case PROTO_CMD_HOLD:
    return ops->hold_named (j->conn_id, r->name, r->tag);
  case PROTO_CMD_RELEASE:
    return ops->release_named (j->conn_id, r->name, r->tag);
  default:
    abort ();                   /* admin_job_start checked admin_job_is */
  }
}

/* The worker: signals are blocked (inherited from the admin thread). */
static void *
job_thread (void *arg)
{
  struct admin_job *j = arg;
  json_t *resp = run_op (j);

  pthread_mutex_lock (&jobs.lock);
  j->resp = resp;
  j->returned = true;
  post_locked (j);
  pthread_mutex_unlock (&jobs.lock);
  ev_async_send (admin.loop, &jobs.async_w);
  return NULL;
}

static void
on_progress (struct ev_loop *loop, ev_timer *w, int revents)
{
  struct admin_job *j = w->data;
  uint64_t done = __atomic_load_n (&j->progress.done, __ATOMIC_RELAXED);
  uint64_t total = __atomic_load_n (&j->progress.total, __ATOMIC_RELAXED);

  if (j->conn == NULL) {
    ev_timer_stop (loop, w);
    return;
  }
  if (done == j->sent_done && total == j->sent_total)
    return;
  if (admin_conn_progress (j->conn, proto_progress (j->req.cmd, j->req.name,
                                                    done, total)))
    j->sent_done = done, j->sent_total = total;
}

int
admin_job_start (struct admin_conn *c, const struct proto_request *r,
                 json_t **resp)
{
  struct admin_job *j;
  int err;

  *resp = NULL;
  if (jobs.running >= ADMIN_JOB_MAX) {
    *resp = proto_error (PROTO_ERR_LIMIT, 0, "%s: %u jobs are running, the "
                         "most at once; try again when one has finished",
                         proto_cmd_name (r->cmd), jobs.running);
    return -1;
  }
  j = calloc (1, sizeof *j);
  if (j == NULL) {
    *resp = proto_error (PROTO_ERR_INTERNAL, errno, "out of memory");
    return -1;
  }
  j->conn = c;
  j->conn_id = c->id;
  j->req = *r;
  ev_timer_init (&j->progress_w, on_progress, ADMIN_PROGRESS_SECONDS,
                 ADMIN_PROGRESS_SECONDS);
  j->progress_w.data = j;

  /* Listed before it starts, so that admin_job_accepted finds it. */
  pthread_mutex_lock (&jobs.lock);
  j->next = jobs.all;
  jobs.all = j;
  pthread_mutex_unlock (&jobs.lock);
  err = pthread_create (&j->thread, NULL, job_thread, j);
  if (err != 0) {
    pthread_mutex_lock (&jobs.lock);
    jobs.all = j->next;                 /* nothing was added since */
    pthread_mutex_unlock (&jobs.lock);
    free (j);
    errno = err;
    nbdkit_error ("admin: conn %" PRIu64 ": %s %s: pthread_create: %m",
                  c->id, proto_cmd_name (r->cmd), r->name);
    *resp = proto_error (PROTO_ERR_LIMIT, err, "%s: cannot start a job: %s",
                         proto_cmd_name (r->cmd), strerror (err));
    return -1;
  }
  jobs.running++;
  c->job = j;
  if (r->progress)
    ev_timer_start (admin.loop, &j->progress_w);
  return 0;
}

void
admin_job_conn_gone (struct admin_conn *c)
{
  struct admin_job *j = c->job;

  ev_timer_stop (admin.loop, &j->progress_w);
  j->conn = NULL;
  j->owes_conn_closed = true;
  c->job = NULL;
}

/* The operation accepted a nowait job: answer and let the connection go. */
static void
job_detach (struct admin_job *j)
{
  struct admin_conn *c = j->conn;
  json_t *resp = proto_ok ();

  if (resp != NULL
      && (json_object_set_new (resp, "name", json_string (j->req.name))
          || json_object_set_new (resp, "accepted", json_true ()))) {
    json_decref (resp);
    resp = NULL;
  }
  ev_timer_stop (admin.loop, &j->progress_w);
  j->conn = NULL;
  j->detached = true;
  c->job = NULL;
  if (nbdsnap_debug_admin)
    nbdkit_debug ("admin: conn %" PRIu64 ": %s %s accepted, goes on "
                  "detached", j->conn_id, proto_cmd_name (j->req.cmd),
                  j->req.name);
  admin_conn_answer (c, resp);          /* may close c */
}

/* A result nobody will read: log it (a failure as an error, unless the
 * server is stopping: then it was most likely cancelled, and the next
 * start finishes what it left). */
static void
job_log (const struct admin_job *j, json_t *resp, const char *why)
{
  const char *msg = json_string_value (json_object_get (resp, "message"));

  if (admin.stopping || (resp != NULL
                         && json_is_true (json_object_get (resp, "ok"))))
    nbdkit_debug ("admin: %s %s (conn %" PRIu64 ", %s): %s",
                  proto_cmd_name (j->req.cmd), j->req.name, j->conn_id, why,
                  msg ? msg : resp ? "done" : "out of memory");
  else
    nbdkit_error ("admin: %s %s (conn %" PRIu64 ", %s) failed: %s",
                  proto_cmd_name (j->req.cmd), j->req.name, j->conn_id, why,
                  msg ? msg : "out of memory");
}

/* The operation returned: join the worker, answer or log, free. */
static void
job_finish (struct admin_job *j)
{
  struct admin_job **pp;
  json_t *resp = j->resp;

  pthread_join (j->thread, NULL);
  pthread_mutex_lock (&jobs.lock);
  for (pp = &jobs.all; *pp != j; pp = &(*pp)->next)
    ;
  *pp = j->next;
  pthread_mutex_unlock (&jobs.lock);
  jobs.running--;
  jobs.done++;
  ev_timer_stop (admin.loop, &j->progress_w);

  if (j->conn != NULL) {
    struct admin_conn *c = j->conn;

    c->job = NULL;
    if (admin.stopping && !json_is_true (json_object_get (resp, "ok"))) {
      job_log (j, resp, "the server is stopping");
      json_decref (resp);
    }
    else
      admin_conn_answer (c, resp);      /* consumes resp; may close c */
  }
  else {
    job_log (j, resp, j->detached ? "no-wait" : "its connection closed");
    json_decref (resp);
  }
  if (j->owes_conn_closed && admin.ops && admin.ops->conn_closed) {
    if (nbdsnap_debug_admin)
      nbdkit_debug ("admin: conn %" PRIu64 ": its job has returned, "
                    "releasing what it owned", j->conn_id);
    admin.ops->conn_closed (j->conn_id);
  }
  free (j);
}

/* Act on every job posted since the last time.  The batch and what each
 * job had to say are taken in one go under the lock: a worker that posts
 * again meanwhile puts its job on the next batch (and never after it
 * returned, so a job finished here is on no list any more). */
static void
run_posted (void)
{
  struct admin_job *batch, *j;

  pthread_mutex_lock (&jobs.lock);
  batch = jobs.posted;
  jobs.posted = NULL;
  for (j = batch; j != NULL; j = j->posted_next) {
    j->posted = false;
    j->batch_next = j->posted_next;
    j->seen_accepted = j->accepted;
    j->seen_returned = j->returned;
  }
  pthread_mutex_unlock (&jobs.lock);

  while ((j = batch) != NULL) {
    batch = j->batch_next;
    if (j->seen_accepted && !j->answered_accepted) {
      j->answered_accepted = true;
      if (j->conn != NULL && j->req.nowait)
        job_detach (j);
    }
    if (j->seen_returned)
      job_finish (j);
  }
}

static void
on_posted (struct ev_loop *loop, ev_async *w, int revents)
{
  run_posted ();
}

void
admin_job_init (void)
{
  ev_async_init (&jobs.async_w, on_posted);
  ev_async_start (admin.loop, &jobs.async_w);
}

void
admin_job_stop_all (void)
{
  struct admin_job *j;

  if (jobs.running > 0)
    nbdkit_debug ("admin: stopping, cancelling %u jobs and waiting for "
                  "them", jobs.running);
  pthread_mutex_lock (&jobs.lock);
  for (j = jobs.all; j != NULL; j = j->next)
    __atomic_store_n (&j->progress.cancel, true, __ATOMIC_RELAXED);
  while (jobs.all != NULL) {
    while (jobs.posted == NULL)
      pthread_cond_wait (&jobs.cond, &jobs.lock);
    pthread_mutex_unlock (&jobs.lock);
    run_posted ();
    pthread_mutex_lock (&jobs.lock);
  }
  pthread_mutex_unlock (&jobs.lock);
  ev_async_stop (admin.loop, &jobs.async_w);
}

int
admin_job_stats (json_t *obj)
{
  return json_object_set_new (obj, "jobs_running",
                              json_integer (jobs.running))
    || json_object_set_new (obj, "jobs_done",
                            json_integer ((json_int_t) jobs.done));
}
