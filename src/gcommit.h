/* nbdsnap: group commit (src/gcommit.c).
 *
 * Notes on the design
 *
 * A writer that needs "everything I wrote so far is durable" calls
 * gcommit_sync () after its write.  It needs one sync that *starts* after
 * its write.  If no sync is running, it becomes the leader and runs one;
 * if one is running, it waits for it to end and then, unless another
 * caller has already started a newer one (which also covers it), leads the
 * next.  So N concurrent writers share about two syncs, not N.
 *
 * A failed sync fails every caller that it was meant to cover (the callers
 * whose target it was), and only those: the result of each of the last
 * GCOMMIT_HISTORY syncs is kept, so a caller that wakes late is not failed
 * by a newer sync that covered others.  One that wakes later still (after
 * more than GCOMMIT_HISTORY syncs) fails if any sync since its own failed.
 * Later callers try again.
 */
#ifndef NBDSNAP_GCOMMIT_H
#define NBDSNAP_GCOMMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef int (*gcommit_fn) (void *opaque);

#define GCOMMIT_HISTORY 64

struct gcommit {
  /* lock protects every field below; taken by gcommit_sync only, never
   * held across the sync itself. */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  uint64_t started;             /* sequence of the last sync started */
  uint64_t done;                /* sequence of the last sync finished */
  int result[GCOMMIT_HISTORY];  /* sync seq's errno (0 = it succeeded) is
                                   result[seq % GCOMMIT_HISTORY] while
                                   done - seq < GCOMMIT_HISTORY */
  uint64_t last_failed;         /* seq of the last sync that failed */
  int last_failed_errno;
  bool running;
  uint64_t syncs;               /* statistics: syncs run */
  uint64_t sync_ns;             /* statistics: time spent in them */
  /* Counters of the owner, outside the lock (atomics; NULL: none): one
   * more for every sync run, and for every caller whose sync another
   * caller ran (a follower).  Set once before the first gcommit_sync. */
  uint64_t *count_syncs;
  uint64_t *count_shared;
};

extern void gcommit_init (struct gcommit *g);
extern void gcommit_destroy (struct gcommit *g);
/* Returns 0, or -1 with errno from the failed sync. */
extern int gcommit_sync (struct gcommit *g, gcommit_fn fn, void *opaque);

#endif /* NBDSNAP_GCOMMIT_H */
