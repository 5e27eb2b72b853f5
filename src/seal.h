/* nbdsnap: the seal, what the server knows of the image it left
 * (src/seal.c).
 *
 * Notes on the design
 *
 * A snapshot reads every chunk it did not copy from the image, so the
 * image must not change unless the server writes it.  The identity check
 * (statedir.h) knows which file the image is, not whether someone wrote
 * it while no server had it open (cp over it, qemu-img convert onto it,
 * dd conv=notrunc): the seal does.  STATEDIR/seal holds one record, in
 * one of two 512-byte slots (the newer valid one counts; a torn write
 * leaves the other), each a few "key value" lines and a checksum:
 *
 *   state clean|running     how the server left it
 *   seq N                   which slot is newer
 *   size N                  the image's size
 *   mtime N, ctime N        the image's, in ns (files)
 *   lease N                 running: until when (CLOCK_REALTIME ns) the
 *                           server may write the image
 *   boot ID                 /proc/sys/kernel/random/boot_id
 *   sectors W D             a block device's written and discarded
 *                           sectors (/sys/dev/block/M:N/stat), this boot
 *
 * Writing: a running record with a lease of SEAL_LEASE_NS, written by
 * the first origin write (seal_lease: the lease is short, renew it before
 * writing) and by the seal's own thread (seal_start), which renews it
 * every second once the server serves, so every write the server makes
 * falls inside a lease on disk.  Until then the record found at open
 * stays (a start that fails writes nothing, and leaves no new file).  The thread keeps the fdatasync of a renewal
 * off the write path and the admin loop.  At a clean close, after the image is synced, a clean
 * record of size, mtime and ctime, and the close waits until the coarse
 * clock has passed that ctime, so that any later write stamps a later
 * one.  In durability=power every record is fdatasync'ed before it
 * counts (a power cut must not leave a lease older than a write that
 * reached the disk); in durability=process it is not.
 *
 * Checking, at open (seal_check):
 *   - no seal (a new directory, or one from before the seal): nothing to
 *     compare; the image is taken as it is.  A damaged seal (no valid
 *     slot): not checked (logged).
 *   - clean, a regular file: size, mtime and ctime must be the recorded
 *     ones.  Any write moves mtime and ctime; touch -d puts mtime back but
 *     not ctime.  So does chmod or chown (a false alarm: adopt=1).
 *   - running (the server died), a regular file: the size must be the
 *     recorded one, and mtime and ctime no later than the lease: the
 *     server's own writes are inside it.  An outside write within the
 *     lease of the death (at most SEAL_LEASE_NS) passes unseen.
 *   - a block device: clean and this boot: the written and discarded
 *     sectors must be the recorded ones.  After a crash or a reboot the
 *     counters say nothing: not checked (logged).
 *
 * Locking: seal.lock is a leaf (nothing is taken under it); writers call
 * seal_lease before any engine lock.  It guards seq, failed, stop and
 * the record writes; the lease end is also read without it (atomic).
 */
#ifndef NBDSNAP_SEAL_H
#define NBDSNAP_SEAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "nbdsnap/engine.h"     /* enum nbdsnap_durability */

struct nbdsnap_origin;

#define SEAL_LEASE_NS (5 * 1000000000LL)
/* A writer renews the lease itself when less than 3/5 of it is left
 * (3 s): the thread renews it every second. */

struct seal {
  bool active;                  /* between seal_check and seal_close */
  int dirfd;                    /* the state directory's (not ours) */
  int fd;                       /* STATEDIR/seal, -1 until it exists */
  const struct nbdsnap_origin *origin;
  bool sync;                    /* durability=power */
  pthread_mutex_t lock;         /* serialises record writes */
  uint64_t seq;                 /* the last record written (lock) */
  int64_t lease;                /* ns; atomic */
  int64_t lease_ns;             /* its length: SEAL_LEASE_NS */
  bool failed;                  /* a record write failed: logged once */
  pthread_t thread;             /* renews the lease every second */
  bool started;                 /* the thread runs (main thread only) */
  bool stop;                    /* the thread must end (lock) */
  pthread_cond_t wake;          /* with lock: wakes the thread to stop */
};

enum seal_verdict {
  SEAL_NONE,                    /* no record: nothing to compare */
  SEAL_SAME,                    /* as the server left it */
  SEAL_UNCHECKED,               /* cannot be known (a block device after a
                                   crash or a reboot) */
  SEAL_CHANGED,                 /* changed behind the server's back */
};

/* Open (create) dirfd's seal and read its record; compare the image
 * with it.  why (len bytes) says what changed, or why it could not be
 * checked.  -1 (reported) on an error reading or creating the file. */
extern int seal_check (struct seal *seal, int dirfd,
                       const struct nbdsnap_origin *origin,
                       enum nbdsnap_durability durability, int64_t lease_ns,
                       enum seal_verdict *verdict, char *why, size_t len);

/* Write a running record (a new lease).  -1 (reported) on failure. */
extern int seal_running (struct seal *seal);

/* Before an origin write: renew the lease if less than 3/5 of it is
 * left.  If it cannot be renewed (logged once) the write goes on: a VM
 * must not fail because the state directory is full; after a crash the
 * next start may then refuse the image (a false alarm, never a lie). */
extern void seal_lease (struct seal *seal);

/* Start the thread that renews the lease every second (errors logged
 * once), in the process that serves (after nbdkit's fork).  -1
 * (reported) if it cannot start: writers then renew it themselves. */
extern int seal_start (struct seal *seal);

/* A clean close: stop the thread, sync the image, write a clean record,
 * wait for the coarse clock to pass the image's ctime; close. */
extern void seal_clean (struct seal *seal);

/* Stop the thread and close without writing (a failed start). */
extern void seal_close (struct seal *seal);

#endif /* NBDSNAP_SEAL_H */
