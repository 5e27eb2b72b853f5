/* nbdsnap plugin: which thread model nbdkit runs us in, and why
 * (plugin/threads.c).
 *
 * nbdkit 1.32.4 to 1.33.9 abort (connections.c: "raw_send_socket:
 * Assertion 'sock >= 0' failed") when a client dies with requests in
 * flight: a worker whose send fails closes the socket, and another worker
 * of the same connection, or the rest of a block-status reply, then sends
 * on it.  nbdkit 1.33.10 fixed it (commit 9d82aa4f).  On those releases
 * the plugin asks for NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS (one request
 * at a time per connection; connections still run in parallel) and keeps
 * every block-status reply to one extent, so that a failed send is always
 * the reply's last.  See nbdkit-nbdsnap-plugin(1), "parallel=" and BUGS.
 *
 * Decided once, in .thread_model (after .config_complete, before any
 * connection), by the main thread; read-only afterwards: no lock.
 */
#ifndef NBDSNAP_PLUGIN_THREADS_H
#define NBDSNAP_PLUGIN_THREADS_H

#include <stdbool.h>

/* parallel=: what the user asked for. */
enum threads_choice {
  THREADS_AUTO = 0,             /* the safe model on affected nbdkit only */
  THREADS_ON,                   /* parallel, whatever the nbdkit */
  THREADS_OFF,                  /* serialized, whatever the nbdkit */
};

/* nbdkit's version as major * 1000000 + minor * 1000 + micro, 0 if
 * unknown. */
typedef unsigned threads_version;

/* Parse the first line of `nbdkit --version' ("nbdkit 1.32.5"); 0 if it
 * is not that. */
extern threads_version threads_parse_version (const char *line);

/* Whether that nbdkit has the abort (unknown counts as affected). */
extern bool threads_version_affected (threads_version v);

/* Decide: sets the model, the reason and whether extents are short.
 * Returns the NBDKIT_THREAD_MODEL_* to give nbdkit. */
extern int threads_decide (enum threads_choice choice, threads_version v);

/* The version of the nbdkit running this process: from the debug flag
 * -D nbdsnap.nbdkit_version=N (tests), else by running the process's
 * own executable with --version when it is nbdkit (once; the answer is
 * kept); 0 if unknown. */
extern threads_version threads_running_version (void);

/* After threads_decide: true when block-status replies carry one extent. */
extern bool threads_short_extents (void);

/* After threads_decide: "parallel" or "serialize_requests", and one
 * sentence saying why. */
extern const char *threads_model_name (void);
extern const char *threads_reason (void);

#endif /* NBDSNAP_PLUGIN_THREADS_H */
