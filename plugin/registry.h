/* nbdsnap plugin: the nbdkit glue of the snapshot catalog (src/catalog.h,
 * which owns the state: entries, NBD connections, admin ownership).
 *
 * plugin/registry.c: what needs nbdkit to answer (the peer of the current
 * connection, .list_exports).  plugin/ops.c: the admin operations (struct
 * admin_ops, plugin/admin.h) as JSON formatting over catalog calls.
 * Neither keeps state of its own beyond the catalog pointer that ops.c is
 * given once, before the admin loop starts.
 */
#ifndef NBDSNAP_PLUGIN_REGISTRY_H
#define NBDSNAP_PLUGIN_REGISTRY_H

#include <stddef.h>

#include "catalog.h"
#include "admin.h"

/* The current NBD connection's peer ("unix pid=N uid=N", "ADDR:PORT",
 * "[ADDR]:PORT"), for catalog_conn_open; "unknown" if nbdkit cannot say. */
extern void registry_peer_string (char *buf, size_t n);

struct nbdkit_exports;
/* .list_exports: "" with origin_description, then every live snapshot
 * (creating and deleting ones cannot be opened, so are not offered). */
extern int registry_list_exports (struct catalog *cat,
                                  struct nbdkit_exports *exports,
                                  const char *origin_description);

/* Where nbdkit listens for NBD clients, for hello's "nbd" (nbdsnapctl's
 * backup, send and receive connect there).  registry_note_cwd in
 * .get_ready (before nbdkit may chdir to "/"): a relative -U path is
 * relative to it.  registry_find_listeners in .after_fork (nbdkit binds
 * its sockets between the two), before the admin loop starts: it looks
 * at this process's listening sockets except admin_path and records
 * their URIs ("nbd+unix:///?socket=PATH" first, then "nbd://ADDR:PORT";
 * the wildcard address becomes loopback).  The list is written there
 * once and only read afterwards.  registry_nbd_uris: a new array. */
extern void registry_note_cwd (void);
extern void registry_find_listeners (const char *admin_path);
extern json_t *registry_nbd_uris (void);

/* The admin operations on cat (plugin/ops.c).  Call once, in .get_ready,
 * before admin_start; cat must outlive admin_stop. */
extern const struct admin_ops *registry_admin_ops (struct catalog *cat);

#endif /* NBDSNAP_PLUGIN_REGISTRY_H */
