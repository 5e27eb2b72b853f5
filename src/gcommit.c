/* nbdsnap: group commit.  See gcommit.h for the design. */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <time.h>

#include "gcommit.h"

void
gcommit_init (struct gcommit *g)
{
  pthread_mutex_init (&g->lock, NULL);
  pthread_cond_init (&g->cond, NULL);
  g->started = g->done = 0;
  memset (g->result, 0, sizeof g->result);
  g->last_failed = 0;
  g->last_failed_errno = 0;
  g->running = false;
  g->syncs = g->sync_ns = 0;
  g->count_syncs = g->count_shared = NULL;
}

void
gcommit_destroy (struct gcommit *g)
{
  pthread_cond_destroy (&g->cond);
  pthread_mutex_destroy (&g->lock);
}

static uint64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
gcommit_sync (struct gcommit *g, gcommit_fn fn, void *opaque)
{
  uint64_t target, seq, t0, t1;
  bool led = false;
  int r, err = 0;

  pthread_mutex_lock (&g->lock);
  /* A sync that starts after this point covers our writes. */
  target = g->started + 1;
  while (g->done < target) {
    if (g->running) {
      pthread_cond_wait (&g->cond, &g->lock);
      continue;
    }
    g->running = true;
    seq = ++g->started;
    led = true;
    pthread_mutex_unlock (&g->lock);

    t0 = now_ns ();
    r = fn (opaque);
    err = errno;
    t1 = now_ns ();

    pthread_mutex_lock (&g->lock);
    g->running = false;
    g->done = seq;
    g->syncs++;
    g->sync_ns += t1 - t0;
    if (g->count_syncs)
      __atomic_fetch_add (g->count_syncs, 1, __ATOMIC_RELAXED);
    g->result[seq % GCOMMIT_HISTORY] = r == -1 ? (err ? err : EIO) : 0;
    if (r == -1) {
      g->last_failed = seq;
      g->last_failed_errno = err ? err : EIO;
    }
    pthread_cond_broadcast (&g->cond);
  }
  /* Our sync is the one numbered target: the first to start after we
   * took the lock.  If we slept through so many syncs that its result is
   * forgotten, fail only if some sync since then failed (a busy server
   * preempts waiters for that long; that is no reason to invalidate). */
  r = 0;
  if (g->done - target < GCOMMIT_HISTORY)
    err = g->result[target % GCOMMIT_HISTORY];
  else
    err = g->last_failed >= target ? g->last_failed_errno : 0;
  if (err != 0)
    r = -1;
  pthread_mutex_unlock (&g->lock);
  if (!led && g->count_shared)
    __atomic_fetch_add (g->count_shared, 1, __ATOMIC_RELAXED);
  if (r == -1)
    errno = err;
  return r;
}
