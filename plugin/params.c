/* nbdsnap plugin: parsing and checking the parameters (see params.h).
 *
 * Notes on the design:
 *
 * - Every parameter is checked at start-up and every error is one line that
 *   begins with the parameter's key ("chunk-size=3K: ..."), so the user
 *   knows what to fix.  Nothing has a silent default for a bad value, a key
 *   may be given only once, and nothing is created on disk here: the state
 *   directory and the admin socket are only checked for being creatable
 *   (the engine and the admin loop create them later).
 *
 * - Sizes are parsed here rather than with nbdkit_parse_size so that the
 *   message names the parameter: decimal digits and an optional suffix,
 *   b (bytes) or K M G T P E (powers of 1024), either case.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "params.h"

struct plugin_config nbdsnap_cfg;

/* -D nbdsnap.config=1: print the resolved configuration at start-up. */
NBDKIT_DLL_PUBLIC int nbdsnap_debug_config;

/* Which keys were given, to refuse a key given twice. */
static bool given_chunk_size, given_durability, given_max_store, given_adopt,
  given_parallel, given_image_changed;

int
config_parse_size (const char *key, const char *value, uint64_t *size)
{
  static const char suffixes[] = "bkmgtpe";
  const char *p = value;
  uint64_t n = 0;
  unsigned shift = 0;

  if (*p < '0' || *p > '9')
    goto bad;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (n > (UINT64_MAX - (*p - '0')) / 10)
      goto too_large;
    n = n * 10 + (*p - '0');
  }
  if (*p != '\0') {
    const char *s = strchr (suffixes, *p | 0x20);

    if (s == NULL || p[1] != '\0')
      goto bad;
    shift = 10 * (s - suffixes);
  }
  if (shift > 0 && n > (UINT64_MAX >> shift))
    goto too_large;
  if ((n << shift) > INT64_MAX)
    goto too_large;
  *size = n << shift;
  return 0;

bad:
  nbdkit_error ("%s=%s: not a size (a number with an optional suffix: "
                "b, K, M, G, T, P, E)",
                key, value);
  return -1;
too_large:
  nbdkit_error ("%s=%s: size too large", key, value);
  return -1;
}

static int
set_path (char **dst, const char *key, const char *value)
{
  if (*value == '\0') {
    nbdkit_error ("%s=: the path is empty", key);
    return -1;
  }
  *dst = strdup (value);
  if (*dst == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

static int
set_chunk_size (const char *value)
{
  uint64_t n;

  if (config_parse_size ("chunk-size", value, &n) == -1)
    return -1;
  if (n < NBDSNAP_CHUNK_MIN || n > NBDSNAP_CHUNK_MAX || (n & (n - 1)) != 0) {
    nbdkit_error ("chunk-size=%s: must be a power of two from 4K to 1M", value);
    return -1;
  }
  nbdsnap_cfg.chunk_size = n;
  return 0;
}

static int
set_durability (const char *value)
{
  if (strcmp (value, "power") == 0)
    nbdsnap_cfg.durability = NBDSNAP_DURABILITY_POWER;
  else if (strcmp (value, "process") == 0)
    nbdsnap_cfg.durability = NBDSNAP_DURABILITY_PROCESS;
  else {
    nbdkit_error ("durability=%s: must be 'power' or 'process'", value);
    return -1;
  }
  return 0;
}

static int
set_parallel (const char *value)
{
  if (strcmp (value, "auto") == 0)
    nbdsnap_cfg.parallel = THREADS_AUTO;
  else if (strcmp (value, "on") == 0)
    nbdsnap_cfg.parallel = THREADS_ON;
  else if (strcmp (value, "off") == 0)
    nbdsnap_cfg.parallel = THREADS_OFF;
  else {
    nbdkit_error ("parallel=%s: must be 'auto', 'on' or 'off'", value);
    return -1;
  }
  return 0;
}

static int
set_image_changed (const char *value)
{
  if (strcmp (value, "refuse") == 0)
    nbdsnap_cfg.invalidate_changed = false;
  else if (strcmp (value, "invalidate") == 0)
    nbdsnap_cfg.invalidate_changed = true;
  else {
    nbdkit_error ("image-changed=%s: must be 'refuse' or 'invalidate'",
                  value);
    return -1;
  }
  return 0;
}

/* adopt=: a boolean; only 1 does anything (see params.h). */
static int
set_adopt (const char *value)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1) {
    nbdkit_error ("adopt=%s: must be 1 (yes) or 0 (no)", value);
    return -1;
  }
  nbdsnap_cfg.adopt = r;
  return 0;
}

int
config_set (const char *key, const char *value)
{
  bool *given = NULL;
  char **path = NULL;

  if (strcmp (key, "file") == 0)
    path = &nbdsnap_cfg.file;
  else if (strcmp (key, "statedir") == 0)
    path = &nbdsnap_cfg.statedir;
  else if (strcmp (key, "admin") == 0)
    path = &nbdsnap_cfg.admin;
  else if (strcmp (key, "chunk-size") == 0)
    given = &given_chunk_size;
  else if (strcmp (key, "durability") == 0)
    given = &given_durability;
  else if (strcmp (key, "max-store") == 0)
    given = &given_max_store;
  else if (strcmp (key, "adopt") == 0)
    given = &given_adopt;
  else if (strcmp (key, "parallel") == 0)
    given = &given_parallel;
  else if (strcmp (key, "image-changed") == 0)
    given = &given_image_changed;
  else {
    nbdkit_error ("%s=%s: unknown parameter (see: nbdkit nbdsnap --help)", key,
                  value);
    return -1;
  }

  if ((path && *path) || (given && *given)) {
    nbdkit_error ("%s=%s: %s= was already given", key, value, key);
    return -1;
  }
  if (path)
    return set_path (path, key, value);

  *given = true;
  if (given == &given_chunk_size)
    return set_chunk_size (value);
  if (given == &given_durability)
    return set_durability (value);
  if (given == &given_adopt)
    return set_adopt (value);
  if (given == &given_parallel)
    return set_parallel (value);
  if (given == &given_image_changed)
    return set_image_changed (value);
  return config_parse_size ("max-store", value, &nbdsnap_cfg.max_store);
}

/* Replace *path by its absolute form (nbdkit may chdir when it forks). */
static int
make_absolute (char **path)
{
  char *abs = nbdkit_absolute_path (*path);

  if (abs == NULL)
    return -1; /* reported by nbdkit */
  free (*path);
  *path = abs;
  return 0;
}

int
config_check_file (void)
{
  if (nbdsnap_cfg.file == NULL) {
    nbdkit_error ("file=: missing: give the base image, "
                  "e.g. nbdkit nbdsnap disk.img");
    return -1;
  }
  if (make_absolute (&nbdsnap_cfg.file) == -1)
    return -1;
  /* Served read-only if we may not write it (root may write anything
   * but still not on a read-only filesystem). */
  if (access (nbdsnap_cfg.file, W_OK) == -1
      && (errno == EACCES || errno == EROFS || errno == EPERM))
    nbdsnap_cfg.file_readonly = true;
  return 0;
}

/* The directory that holds path ("/" for "/x"); malloc'd, NULL on error. */
static char *
parent_of (const char *path)
{
  char *dir = strdup (path);
  char *slash;
  size_t len;

  if (dir == NULL) {
    nbdkit_error ("strdup: %m");
    return NULL;
  }
  len = strlen (dir);
  while (len > 1 && dir[len - 1] == '/')
    dir[--len] = '\0';
  slash = strrchr (dir, '/');
  if (slash == dir)
    slash[1] = '\0';
  else if (slash)
    *slash = '\0';
  return dir;
}

/* 0 if path is an existing directory, else -1 with errno set. */
static int
is_directory (const char *path)
{
  struct stat st;

  if (stat (path, &st) == -1)
    return -1;
  if (!S_ISDIR (st.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return 0;
}

/* key=path may be created later: its parent must be a directory. */
static int
check_parent (const char *key, const char *path)
{
  char *dir = parent_of (path);
  int r = 0;

  if (dir == NULL)
    return -1;
  if (is_directory (dir) == -1) {
    nbdkit_error ("%s=%s: cannot be created in %s: %m", key, path, dir);
    r = -1;
  }
  free (dir);
  return r;
}

static int
resolve_statedir (bool is_blockdev)
{
  struct stat st;

  if (nbdsnap_cfg.statedir == NULL) {
    if (is_blockdev) {
      nbdkit_error ("statedir=: required when file= is a block device (%s)",
                    nbdsnap_cfg.file);
      return -1;
    }
    if (asprintf (&nbdsnap_cfg.statedir, "%s.nbdsnap", nbdsnap_cfg.file)
        == -1) {
      nbdsnap_cfg.statedir = NULL;
      nbdkit_error ("asprintf: %m");
      return -1;
    }
  } else if (make_absolute (&nbdsnap_cfg.statedir) == -1)
    return -1;

  if (stat (nbdsnap_cfg.statedir, &st) == 0) {
    if (!S_ISDIR (st.st_mode)) {
      nbdkit_error ("statedir=%s: exists and is not a directory",
                    nbdsnap_cfg.statedir);
      return -1;
    }
    return 0;
  }
  if (errno != ENOENT) {
    nbdkit_error ("statedir=%s: %m", nbdsnap_cfg.statedir);
    return -1;
  }
  return check_parent ("statedir", nbdsnap_cfg.statedir);
}

static int
resolve_admin (void)
{
  const size_t max = sizeof ((struct sockaddr_un *)0)->sun_path - 1;
  bool given = nbdsnap_cfg.admin != NULL;

  if (!given) {
    if (asprintf (&nbdsnap_cfg.admin, "%s/admin.sock", nbdsnap_cfg.statedir)
        == -1) {
      nbdsnap_cfg.admin = NULL;
      nbdkit_error ("asprintf: %m");
      return -1;
    }
  } else if (make_absolute (&nbdsnap_cfg.admin) == -1)
    return -1;

  if (strlen (nbdsnap_cfg.admin) > max) {
    nbdkit_error ("admin=%s: too long for a unix socket path (at most %zu "
                  "bytes)%s",
                  nbdsnap_cfg.admin, max,
                  given ? "" : ": give a shorter admin= or statedir=");
    return -1;
  }
  /* The default lives in the state directory, which may not exist yet. */
  return given ? check_parent ("admin", nbdsnap_cfg.admin) : 0;
}

int
config_finish (bool is_blockdev)
{
  if (resolve_statedir (is_blockdev) == -1 || resolve_admin () == -1)
    return -1;

  if (nbdsnap_debug_config)
    nbdkit_debug (
        "config: file=%s%s statedir=%s admin=%s chunk-size=%" PRIu32
        "%s durability=%s max-store=%" PRIu64 " adopt=%d parallel=%s "
        "image-changed=%s",
        nbdsnap_cfg.file, nbdsnap_cfg.file_readonly ? " (read-only)" : "",
        nbdsnap_cfg.statedir, nbdsnap_cfg.admin, nbdsnap_cfg.chunk_size,
        nbdsnap_cfg.chunk_size ? "" : " (the directory's)",
        nbdsnap_cfg.durability == NBDSNAP_DURABILITY_POWER ? "power"
                                                           : "process",
        nbdsnap_cfg.max_store, nbdsnap_cfg.adopt,
        nbdsnap_cfg.parallel == THREADS_ON    ? "on"
        : nbdsnap_cfg.parallel == THREADS_OFF ? "off"
                                              : "auto",
        nbdsnap_cfg.invalidate_changed ? "invalidate" : "refuse");
  return 0;
}

void
config_free (void)
{
  free (nbdsnap_cfg.file);
  free (nbdsnap_cfg.statedir);
  free (nbdsnap_cfg.admin);
  memset (&nbdsnap_cfg, 0, sizeof nbdsnap_cfg);
  given_chunk_size = given_durability = given_max_store = given_adopt =
    given_parallel = given_image_changed = false;
}
