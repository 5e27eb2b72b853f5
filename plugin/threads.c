/* nbdsnap plugin: the thread model chosen at run time.  See threads.h.
 *
 * Why the version is asked of the running executable: nbdkit 1.32 has no
 * call that tells a plugin its version, and the headers we were built
 * against may be older or newer than the nbdkit that loads us.  The
 * executable is run only when its name starts with "nbdkit" (nbdkit under
 * valgrind, or an unknown loader, is not asked: unknown counts as
 * affected), with --version, which loads no plugin; its answer is read
 * for at most VERSION_TIMEOUT_MS.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "threads.h"

/* -D nbdsnap.nbdkit_version=N: take N (major * 1000000 + minor * 1000 +
 * micro) as the running nbdkit's version (tests). */
NBDKIT_DLL_PUBLIC int nbdsnap_debug_nbdkit_version;

#define MKVERSION(maj, min, mic) ((maj) * 1000000u + (min) * 1000u + (mic))
/* The releases that abort: from the regression (1.32.4, daef505e) to the
 * fix (1.33.10, 9d82aa4f). */
#define FIRST_AFFECTED MKVERSION (1, 32, 4)
#define FIRST_FIXED MKVERSION (1, 33, 10)
#define VERSION_TIMEOUT_MS 5000

static int model = NBDKIT_THREAD_MODEL_PARALLEL;
static bool short_extents;
static char reason[256];

threads_version
threads_parse_version (const char *line)
{
  unsigned maj, min, mic;
  int n = 0;

  if (sscanf (line, "nbdkit %u.%u.%u%n", &maj, &min, &mic, &n) != 3
      || n == 0 || maj > 999 || min > 999 || mic > 999
      || (line[n] != '\0' && line[n] != '\n' && line[n] != ' '
          && line[n] != '-'))
    return 0;
  return MKVERSION (maj, min, mic);
}

bool
threads_version_affected (threads_version v)
{
  return v == 0 || (v >= FIRST_AFFECTED && v < FIRST_FIXED);
}

/* "1.32.5", or "unknown". */
static void
format_version (threads_version v, char *buf, size_t len)
{
  if (v == 0)
    snprintf (buf, len, "unknown");
  else
    snprintf (buf, len, "%u.%u.%u", v / 1000000, v / 1000 % 1000, v % 1000);
}

int
threads_decide (enum threads_choice choice, threads_version v)
{
  bool affected = threads_version_affected (v);
  char ver[32];

  format_version (v, ver, sizeof ver);
  switch (choice) {
  case THREADS_ON:
    model = NBDKIT_THREAD_MODEL_PARALLEL;
    short_extents = false;
    snprintf (reason, sizeof reason, "parallel=on%s (nbdkit %s)",
              affected ? ": a client that dies with requests in flight may "
              "abort this nbdkit" : "", ver);
    break;
  case THREADS_OFF:
    model = NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
    short_extents = affected;
    snprintf (reason, sizeof reason, "parallel=off (nbdkit %s)", ver);
    break;
  default:
    model = affected ? NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS
                     : NBDKIT_THREAD_MODEL_PARALLEL;
    short_extents = affected;
    if (affected)
      snprintf (reason, sizeof reason,
                "nbdkit %s %s when a client dies with requests in flight "
                "(fixed in 1.33.10): one request at a time per connection, "
                "one extent per block-status reply", ver,
                v == 0 ? "may abort" : "aborts");
    else
      snprintf (reason, sizeof reason,
                "nbdkit %s does not abort when a client dies", ver);
    break;
  }
  return model;
}

bool
threads_short_extents (void)
{
  return short_extents;
}

const char *
threads_model_name (void)
{
  return model == NBDKIT_THREAD_MODEL_PARALLEL ? "parallel"
                                               : "serialize_requests";
}

const char *
threads_reason (void)
{
  return reason;
}

/* Run exe --version; its first line, or "" on any failure. */
static void
ask_version (const char *exe, char *line, size_t len)
{
  int pfd[2];
  pid_t pid;
  size_t got = 0;
  int status;

  line[0] = '\0';
  if (pipe2 (pfd, O_CLOEXEC) == -1) {
    nbdkit_debug ("threads: pipe2: %m");
    return;
  }
  pid = fork ();
  if (pid == -1) {
    nbdkit_debug ("threads: fork: %m");
    close (pfd[0]);
    close (pfd[1]);
    return;
  }
  if (pid == 0) {
    int null = open ("/dev/null", O_RDWR);

    if (null >= 0) {
      dup2 (null, 0);
      dup2 (null, 2);
    }
    dup2 (pfd[1], 1);
    execl (exe, "nbdkit", "--version", (char *) NULL);
    _exit (127);
  }
  close (pfd[1]);
  while (got < len - 1) {
    struct pollfd p = { .fd = pfd[0], .events = POLLIN };
    ssize_t r;

    if (poll (&p, 1, VERSION_TIMEOUT_MS) <= 0) {
      nbdkit_debug ("threads: %s --version: no answer", exe);
      kill (pid, SIGKILL);
      got = 0;
      break;
    }
    r = read (pfd[0], line + got, len - 1 - got);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += r;
  }
  line[got] = '\0';
  close (pfd[0]);
  while (waitpid (pid, &status, 0) == -1 && errno == EINTR)
    ;
  line[strcspn (line, "\n")] = '\0';
}

threads_version
threads_running_version (void)
{
  static bool asked;
  static threads_version v;
  char exe[PATH_MAX], line[256];
  const char *base;
  ssize_t n;

  if (nbdsnap_debug_nbdkit_version > 0)
    return nbdsnap_debug_nbdkit_version;
  if (asked)
    return v;
  asked = true;
  n = readlink ("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    nbdkit_debug ("threads: readlink /proc/self/exe: %m");
    return 0;
  }
  exe[n] = '\0';
  base = strrchr (exe, '/');
  base = base ? base + 1 : exe;
  if (strncmp (base, "nbdkit", 6) != 0) {
    nbdkit_debug ("threads: %s is not nbdkit: its version is unknown", exe);
    return 0;
  }
  ask_version (exe, line, sizeof line);
  nbdkit_debug ("threads: %s --version: \"%s\"", exe, line);
  v = threads_parse_version (line);
  return v;
}
