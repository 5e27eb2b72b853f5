/* nbdsnap: the error and debug shim shared by the engine, the plugin, the
 * CLI and the tests.
 *
 * The engine reports each error once, where its cause is known, with
 * nbdsnap_error ().  Where the message goes is decided by whoever links the
 * engine: the plugin installs nbdkit_verror / nbdkit_vdebug, the CLI and the
 * tests keep the default (stderr, prefixed with the program name).
 * "%m" is expanded by the default handler too, so errno must be preserved.
 */
#ifndef NBDSNAP_ERR_H
#define NBDSNAP_ERR_H

#include <stdarg.h>

typedef void (*nbdsnap_vlog_fn) (const char *fmt, va_list args);

/* Install handlers; NULL restores the default for that one. */
extern void nbdsnap_set_log_handlers (nbdsnap_vlog_fn error,
                                      nbdsnap_vlog_fn debug);

extern void nbdsnap_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void nbdsnap_debug (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
/* A refusal the caller answers to its client (busy, not found, exists):
 * recorded as the thread's last error (nbdsnap_last_error) like an error,
 * but logged as debug only: it is the client's mistake or bad timing, not
 * the server's trouble. */
extern void nbdsnap_refuse (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));

/* The last message nbdsnap_error () reported in the calling thread ("" if
 * none since nbdsnap_clear_error ()): for a caller that answers a client
 * and wants to give the cause, not only strerror (errno). */
extern const char *nbdsnap_last_error (void);
extern void nbdsnap_clear_error (void);

/* Set by the plugin from -D nbdsnap.engine=1 (the tests set it directly). */
extern int nbdsnap_debug_engine;

#endif /* NBDSNAP_ERR_H */
