/* nbdsnap plugin: the process's file descriptor limit (plugin/fdlimit.c).
 *
 * nbdkit serves every NBD connection with descriptors of its own (a
 * socket and, in the parallel thread model, a status pipe: 3 each), the
 * engine keeps two per snapshot (bitmap and store) and the admin loop one
 * per admin connection.  The distribution default soft limit of 1024 is
 * easy to exhaust, so .config_complete raises the soft limit to the hard
 * limit, once, before anything else is opened; after that the limit never
 * changes (nobody else in the process calls setrlimit), so readers need
 * no lock.
 */
#ifndef NBDSNAP_PLUGIN_FDLIMIT_H
#define NBDSNAP_PLUGIN_FDLIMIT_H

/* Raise RLIMIT_NOFILE's soft limit to its hard limit.  Logs what it did
 * with nbdkit_debug; a failure is logged and otherwise ignored (the
 * server works with the limit it has). */
extern void fdlimit_raise (void);

/* The soft RLIMIT_NOFILE now in force (capped at UINT_MAX; 1024 if it
 * cannot be read). */
extern unsigned fdlimit_soft (void);

#endif /* NBDSNAP_PLUGIN_FDLIMIT_H */
