/* nbdsnap: what plugin/admin.c and plugin/admin-conn.c share.
 *
 * admin.c owns the listening socket, the loop and its thread; admin-conn.c
 * owns each accepted connection.  Everything here is touched by the admin
 * thread only, except as noted in admin.c where struct admin_state is
 * defined.
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
 * limit in force, admin.conn_limit (admin_conn_limit ()), is a quarter of
 * the soft RLIMIT_NOFILE when that is lower.  More are refused with
 * "limit". */
#define ADMIN_CONN_MAX 512
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
  char in[NBDSNAP_ADMIN_LINE_MAX];  /* a partial request line */
};

struct admin_stats {
  uint64_t accepted, refused, requests, errors, closed_slow;
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

/* admin.c: the admin loop's own counters, for "stats". */
extern json_t *admin_stats_json (void);

#endif /* NBDSNAP_PLUGIN_ADMIN_INTERNAL_H */
