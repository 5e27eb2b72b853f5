/* nbdsnap: what plugin/admin.c, admin-conn.c and admin-job.c share.
 *
 * admin.c owns the listening socket, the loop and its thread; admin-conn.c
 * owns each accepted connection; admin-job.c owns the jobs (create,
 * delete, rollback, changes) and their worker threads.  Everything here
 * is touched by the admin thread only, except as noted in admin.c where
 * struct admin_state is defined (and admin_job_accepted, which any thread
 * may call).
 */
#ifndef NBDSNAP_PLUGIN_ADMIN_INTERNAL_H
#define NBDSNAP_PLUGIN_ADMIN_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <ev.h>

#include "admin.h"

/* Most admin connections at once, whatever the descriptor limit; the
 * limit in force, admin.conn_limit (admin_conn_limit (), asked again at
 * each accept), is a quarter of the soft RLIMIT_NOFILE when that is
 * lower.  More are refused with "limit". */
#define ADMIN_CONN_MAX 512
/* An admin connection is also refused ("limit") when fewer than this many
 * descriptors would be left after it: they are kept for NBD clients (3
 * each in nbdkit) and the engine, whatever the limit was lowered to while
 * the server runs.  -D nbdsnap.admin_fd_keep=N sets another, -1 none
 * (tests). */
#define ADMIN_FDS_KEEP 16
/* Descriptors the admin loop holds besides its connections: the listening
 * socket, libev's epoll descriptor, ev_async's eventfd (a pipe pair where
 * there is no eventfd), and one accepted socket being refused. */
#define ADMIN_FIXED_FDS 5
/* While more output than this is unread, no more requests are read from
 * that connection (pipelining pauses). */
#define ADMIN_OUT_SOFT (64u * 1024u)
/* A connection whose unread output makes no progress for this long is
 * closed. */
#define ADMIN_STALL_SECONDS 30.
/* Most jobs running at once, all connections together; more are refused
 * with "limit".  Each has a thread. */
#define ADMIN_JOB_MAX 64
/* How often a job's progress is looked at, for progress lines. */
#define ADMIN_PROGRESS_SECONDS 0.25

struct admin_job;                   /* admin-job.c */

struct admin_conn {
  struct admin_conn *prev, *next;   /* admin.conns */
  uint64_t id;                      /* never 0, never reused */
  int fd;
  uid_t uid;
  pid_t pid;
  ev_io read_w, write_w;
  ev_timer stall_w;                 /* runs while output is pending */
  size_t inlen;                     /* bytes in in[] */
  char *out;                        /* responses not yet sent */
  size_t outoff, outlen, outcap;    /* sent, queued, allocated */
  bool eof;                         /* peer shut down its side */
  bool closing;                     /* close once output is flushed */
  struct admin_job *job;            /* in flight and not detached: no more
                                       requests are read until it answers */
  char in[NBDSNAP_ADMIN_LINE_MAX];  /* a partial request line */
};

struct admin_stats {
  uint64_t accepted, refused, requests, errors, closed_slow;
  uint64_t refused_fds;             /* refused to keep ADMIN_FDS_KEEP */
  uint64_t accept_errors;           /* accept failures, all bursts */
};

/* A burst of accept failures (EMFILE and the like): from the first
 * failure until an accept works again.  Logged once, at its start. */
struct admin_accept_burst {
  uint64_t failures;                /* in this burst; 0: no burst */
  ev_tstamp since;                  /* ev_now at its first failure */
};

struct admin_state {
  int fd;                           /* listening socket, or -1 */
  char *path;
  dev_t dev;                        /* identity of the socket file */
  ino_t ino;
  const struct admin_ops *ops;
  struct ev_loop *loop;
  ev_io accept_w;                   /* stopped while accept is paused */
  ev_timer retry_w;                 /* resumes accept after EMFILE etc. */
  struct admin_accept_burst burst;
  unsigned conn_limit;              /* admin_conn_limit (), set by
                                       admin_bind */
  ev_async stop_w;
  pthread_t thread;
  bool running;
  bool stopping;                    /* on_stop began: no request is read,
                                       no job started any more */
  struct admin_conn *conns;
  unsigned nconns;
  uint64_t next_id;
  struct admin_stats stats;
};

extern struct admin_state admin;
extern int nbdsnap_debug_admin;

/* admin-conn.c */
extern int admin_conn_new (int fd, uid_t uid, pid_t pid);
/* Say "shutting-down" (best effort) and close. */
extern void admin_conn_shutdown (struct admin_conn *c);
/* The final answer of c's job (consumed; NULL: out of memory), c->job
 * already cleared: queue it and serve the lines waiting.  May close c. */
extern void admin_conn_answer (struct admin_conn *c, json_t *resp);
/* Queue a progress line (consumed) unless c's output is over its soft
 * limit.  Returns true if queued.  May close c (send failed). */
extern bool admin_conn_progress (struct admin_conn *c, json_t *line);

/* admin-job.c */
extern bool admin_job_is (const struct proto_request *r);
/* In admin_start, before the thread: the ev_async workers wake it with. */
extern void admin_job_init (void);
/* Start the job for request r of c (the op exists): 0 with c->job set, or
 * -1 with *resp the error to answer (NULL: out of memory). */
extern int admin_job_start (struct admin_conn *c,
                            const struct proto_request *r, json_t **resp);
/* c closes while c->job runs: the job calls conn_closed when it returns.
 * Clears c->job. */
extern void admin_job_conn_gone (struct admin_conn *c);
/* From on_stop: cancel every job, wait for all, finish them. */
extern void admin_job_stop_all (void);
/* Add jobs_running and jobs_done to obj; 0, or -1 if out of memory. */
extern int admin_job_stats (json_t *obj);

/* admin.c: the admin loop's own counters, for "stats". */
extern json_t *admin_stats_json (void);

#endif /* NBDSNAP_PLUGIN_ADMIN_INTERNAL_H */
