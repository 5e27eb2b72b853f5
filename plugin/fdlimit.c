/* nbdsnap plugin: raising and reading RLIMIT_NOFILE.  See fdlimit.h.
 *
 * Only the soft limit is raised, and only up to the hard limit: an
 * unprivileged process may do that, and a lower hard limit set by the
 * administrator (ulimit -Hn, systemd's LimitNOFILE=) is respected.  nbdkit
 * and libev wait with poll and epoll, never select, so descriptors above
 * FD_SETSIZE are fine.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <sys/resource.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "fdlimit.h"

static unsigned
clamp (rlim_t n)
{
  return n == RLIM_INFINITY || n > UINT_MAX ? UINT_MAX : (unsigned) n;
}

void
fdlimit_raise (void)
{
  struct rlimit rl;
  rlim_t old;

  if (getrlimit (RLIMIT_NOFILE, &rl) == -1) {
    nbdkit_debug ("getrlimit (RLIMIT_NOFILE): %m");
    return;
  }
  if (rl.rlim_cur == rl.rlim_max) {
    nbdkit_debug ("RLIMIT_NOFILE: soft limit %u is the hard limit already",
                  clamp (rl.rlim_cur));
    return;
  }
  old = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit (RLIMIT_NOFILE, &rl) == -1) {
    nbdkit_debug ("setrlimit (RLIMIT_NOFILE, %u): %m: keeping %u",
                  clamp (rl.rlim_max), clamp (old));
    return;
  }
  nbdkit_debug ("RLIMIT_NOFILE: soft limit raised from %u to %u (the hard "
                "limit)", clamp (old), clamp (rl.rlim_cur));
}

unsigned
fdlimit_soft (void)
{
  struct rlimit rl;

  if (getrlimit (RLIMIT_NOFILE, &rl) == -1)
    return 1024;
  return clamp (rl.rlim_cur);
}

unsigned
fdlimit_free (void)
{
  unsigned limit = fdlimit_soft (), open = 0;
  struct dirent *d;
  DIR *dir = opendir ("/proc/self/fd");

  if (dir == NULL)
    return errno == EMFILE || errno == ENFILE ? 0 : UINT_MAX;
  while ((d = readdir (dir)) != NULL)
    if (d->d_name[0] != '.')
      open++;
  closedir (dir);
  open = open > 0 ? open - 1 : 0; /* the directory's own descriptor */
  return open >= limit ? 0 : limit - open;
}
