/* nbdsnap: the error and debug shim (see include/nbdsnap/err.h).
 *
 * The default handlers write one line to stderr; errno is saved on entry and
 * restored on exit so that callers can report and then return -1 with errno
 * still meaning the cause.  "%m" is expanded by glibc's vfprintf.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>

#include "nbdsnap/err.h"

int nbdsnap_debug_engine;

static void
default_error (const char *fmt, va_list args)
{
  fprintf (stderr, "nbdsnap: error: ");
  vfprintf (stderr, fmt, args);
  fputc ('\n', stderr);
}

static void
default_debug (const char *fmt, va_list args)
{
  fprintf (stderr, "nbdsnap: debug: ");
  vfprintf (stderr, fmt, args);
  fputc ('\n', stderr);
}

static nbdsnap_vlog_fn error_fn = default_error;

/* Per thread: the last error message (see nbdsnap_last_error). */
static __thread char last_error[512];

const char *
nbdsnap_last_error (void)
{
  return last_error;
}

void
nbdsnap_clear_error (void)
{
  last_error[0] = '\0';
}
static nbdsnap_vlog_fn debug_fn = default_debug;

void
nbdsnap_set_log_handlers (nbdsnap_vlog_fn error, nbdsnap_vlog_fn debug)
{
  error_fn = error ? error : default_error;
  debug_fn = debug ? debug : default_debug;
}

void
nbdsnap_error (const char *fmt, ...)
{
  int saved = errno;
  va_list args;

  va_start (args, fmt);
  vsnprintf (last_error, sizeof last_error, fmt, args);   /* %m: errno */
  va_end (args);
  va_start (args, fmt);
  errno = saved;
  error_fn (fmt, args);
  va_end (args);
  errno = saved;
}

void
nbdsnap_debug (const char *fmt, ...)
{
  int saved = errno;
  va_list args;

  va_start (args, fmt);
  errno = saved;
  debug_fn (fmt, args);
  va_end (args);
  errno = saved;
}

void
nbdsnap_refuse (const char *fmt, ...)
{
  int saved = errno;
  va_list args;

  va_start (args, fmt);
  vsnprintf (last_error, sizeof last_error, fmt, args);
  va_end (args);
  va_start (args, fmt);
  errno = saved;
  debug_fn (fmt, args);
  va_end (args);
  errno = saved;
}
