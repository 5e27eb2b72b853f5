/* nbdsnap plugin: the process's file descriptor limit (plugin/fdlimit.c).
 *
 * nbdkit serves every NBD connection with descriptors of its own (a
 * socket and, in the parallel thread model, a status pipe: 3 each), the
 * engine keeps two per snapshot (bitmap and store) and the admin loop one
 * per admin connection.  The distribution default soft limit of 1024 is
 * easy to exhaust, so .config_complete raises the soft limit to the hard
 * limit, once, before anything else is opened.  Nobody else in the
 * process calls setrlimit, but an administrator may lower the limit of
 * the running server (prlimit --nofile): callers that need the limit in
 * force ask again (fdlimit_soft, fdlimit_free), nothing caches it.  No
 * lock: the kernel answers.
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

/* Descriptors that can still be opened: the soft limit in force less the
 * descriptors open now (counted in /proc/self/fd; the directory's own is
 * not counted).  UINT_MAX if it cannot be counted (no /proc, or no
 * descriptor left to count with: then 0). */
extern unsigned fdlimit_free (void);

#endif /* NBDSNAP_PLUGIN_FDLIMIT_H */
