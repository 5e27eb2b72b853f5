/* nbdsnap plugin: the parameters given on the nbdkit command line
 * (plugin/params.c).
 *
 * Filled by .config, one key at a time, and completed by .config_complete:
 * after config_finish () every path is absolute (nbdkit changes directory
 * when it forks into the background) and every default is resolved, so
 * later code never has to ask "was it given?".  Written only before the
 * server starts, read-only afterwards: no lock.
 */
#ifndef NBDSNAP_PLUGIN_PARAMS_H
#define NBDSNAP_PLUGIN_PARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "nbdsnap/engine.h" /* enum nbdsnap_durability, chunk limits */
#include "threads.h"         /* enum threads_choice */

struct plugin_config {
  char *file;                         /* file=: the base image, absolute */
  char *statedir;                     /* statedir=, default FILE.nbdsnap */
  char *admin;                        /* admin=, default STATEDIR/admin.sock */
  uint32_t chunk_size;                /* chunk-size=, 0 = not given: the state
                                         directory's, or the default when new */
  enum nbdsnap_durability durability; /* durability=, default power */
  uint64_t max_store;                 /* max-store=, 0 = no limit */
  bool file_readonly; /* the image cannot be opened for writing */
  bool adopt;         /* adopt=1: an image refused as another disk is the
                         state directory's disk (src/statedir.h) */
  enum threads_choice parallel;       /* parallel=, default auto
                                         (plugin/threads.h) */
  bool invalidate_changed; /* image-changed=invalidate (default refuse):
                              src/seal.h */
};

extern struct plugin_config nbdsnap_cfg;

#define NBDSNAP_CONFIG_HELP                                                    \
  "[file=]DISK            The base image (regular file or block device).\n"    \
  "statedir=DIR           State directory (default DISK.nbdsnap).\n"           \
  "admin=SOCKET           Admin socket (default STATEDIR/admin.sock).\n"       \
  "chunk-size=SIZE        Copy-on-write chunk, power of 2, 4K-1M (64K).\n"     \
  "durability=power|process  Sync copied chunks before overwriting (power).\n" \
  "max-store=SIZE         Default per-snapshot store limit (0 = none).\n"   \
  "adopt=1                The image is the state directory's disk (after\n" \
  "                       a restore or move it refused; see the man page).\n" \
  "parallel=auto|on|off   Parallel requests per connection (auto: not on\n" \
  "                       an nbdkit that aborts when a client dies).\n" \
  "image-changed=refuse|invalidate  An image written while no server had\n" \
  "                       it open: refuse to start (the default), or make\n" \
  "                       every snapshot invalid."

/* .config: one key=value; -1 (reported) for an unknown key, a key given
 * twice or a malformed value. */
extern int config_set (const char *key, const char *value);

/* .config_complete, first half: file= given, made absolute, and whether
 * it can only be opened read-only. */
extern int config_check_file (void);

/* .config_complete, second half, once the image is open: resolve and
 * check statedir= and admin=.  Nothing is created. */
extern int config_finish (bool is_blockdev);

/* .unload */
extern void config_free (void);

/* Parse a size with an optional suffix (b, K, M, G, T, P, E: powers of
 * 1024); -1 (reported, naming key) if malformed or too large. */
extern int config_parse_size (const char *key, const char *value,
                              uint64_t *size);

#endif /* NBDSNAP_PLUGIN_PARAMS_H */
