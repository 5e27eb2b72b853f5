/* nbdsnap: Check suite for the snapshot catalog (src/catalog.c) over a
 * real engine on a temporary directory, without nbdkit.
 *
 * One TCase per behaviour:
 *   busy        a client or a hold makes delete NOW busy (EBUSY, the
 *               message names the counts); gone, the delete works
 *   hold        holds per owner: release of another owner's is not-held,
 *               the owner closing drops its holds, the limit (EAGAIN)
 *   defer       DEFER while a client reads: listed as deleting, deferred,
 *               1 client; the name taken (EEXIST, "being deleted"); new
 *               opens refused (ENOENT); the client reads on; the reaper
 *               deletes it once the client closes; the name is free
 *   force       FORCE while a request is inside the handle: the delete
 *               waits for it, then enter fails with ESHUTDOWN and the
 *               description says revoked; FORCE also finds a deferred one
 *   temporary   a temporary snapshot goes when its owner closes: at once
 *               if unused, after its last client otherwise
 *   grace       delete NOW waits for a client that closes 200 ms later;
 *               nobody closes: busy after about 1 s
 *   pin         while a changes job runs on its snapshot, list answers,
 *               delete NOW and FORCE are busy, DEFER is done by the
 *               reaper once the job ends
 *   rollback_busy   refused (EBUSY, names the count) with an origin
 *               client; with force the origin handle is revoked
 *               (ESHUTDOWN) and the rollback succeeds
 *   rollback_open   while a rollback runs, origin opens fail with EBUSY,
 *               a second rollback is busy, list shows rollback progress
 *   rollback_destroy  destroy_newer deletes the unused newer snapshots
 *               and keeps the held one
 *   list_during_delete  list and info answer while a delete runs (the
 *               accepted callback blocks: the catalog lock is free), and
 *               while a delete moves many chunks it is seen as deleting
 *               with progress
 */
#include <config.h>

#include <pthread.h>

#include "unit-helpers.h"

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"
#include "engine-fixture.h"
#include "catalog.h"

/* The last refusal or error of this thread says text. */
#define assert_said(text)                                               \
  ck_assert_msg (strstr (nbdsnap_last_error (), (text)) != NULL, "%s",  \
                 nbdsnap_last_error ())

#define CHUNK (64 * KiB)
#define SIZE ((uint64_t) 16 * CHUNK)

static struct catalog *cat;

static void
setup (void)
{
  fixture_setup ("check_catalog");
  cat = NULL;
}

static void
teardown (void)
{
  catalog_free (cat);
  cat = NULL;
  fixture_teardown ();
}

/* An engine on a SIZE image and a catalog over it. */
static void
cstart (void)
{
  start (SIZE, 1, NBDSNAP_DURABILITY_PROCESS, CHUNK);
  cat = catalog_new (e, false);
  ck_assert_ptr_nonnull (cat);
  ck_assert_int_eq (catalog_start (cat), 0);
}

static void
ccreate (const char *name)
{
  ck_assert_msg (catalog_create (cat, 1, name, false, NULL) == CATALOG_OK,
                 "create %s: %s", name, nbdsnap_last_error ());
}

static struct catalog_conn *
copen (const char *name)
{
  struct catalog_conn *c = catalog_conn_open (cat, name, false, "test");
  ck_assert_msg (c != NULL, "open %s: %s", name, nbdsnap_last_error ());
  return c;
}

/* One entry of the list by name (ck fails if absent); count via *n. */
static bool
find_snap (const char *name, struct catalog_snap *out, ssize_t *count)
{
  struct catalog_snap *list;
  ssize_t n = catalog_list (cat, &list), i;
  bool found = false;

  ck_assert_int_ge (n, 0);
  for (i = 0; i < n; ++i)
    if (strcmp (list[i].info.name, name) == 0) {
      *out = list[i];
      found = true;
    }
  free (list);
  if (count)
    *count = n;
  return found;
}

static enum catalog_err
cdelete (const char *name, enum catalog_delete_mode mode,
         struct catalog_delete_result *res)
{
  struct catalog_delete_result dummy;
  return catalog_delete (cat, 1, name, mode, NULL, NULL, res ? res : &dummy);
}

START_TEST (test_busy)
{
  struct catalog_conn *c;
  unsigned holds;

  cstart ();
  ccreate ("s1");
  c = copen ("s1");
  quiet_errors = 1;
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_BUSY);
  ck_assert_int_eq (errno, EBUSY);
  assert_said ("1 client(s)");
  catalog_conn_close (cat, c);
  ck_assert_int_eq (catalog_hold (cat, 5, "s1", &holds), CATALOG_OK);
  ck_assert_int_eq (holds, 1);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_BUSY);
  assert_said ("1 hold(s)");
  ck_assert_int_eq (catalog_release (cat, 5, "s1", &holds), CATALOG_OK);
  ck_assert_int_eq (holds, 0);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL), CATALOG_OK);
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "s1"));
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_NOT_FOUND);
  ck_assert_int_eq (errno, ENOENT);
}
END_TEST

START_TEST (test_hold)
{
  struct catalog_snap s;
  unsigned holds, i;

  cstart ();
  ccreate ("s1");
  ccreate ("s2");
  ck_assert_int_eq (catalog_hold (cat, 5, "s1", &holds), CATALOG_OK);
  ck_assert_int_eq (catalog_hold (cat, 5, "s1", &holds), CATALOG_OK);
  ck_assert_int_eq (catalog_hold (cat, 6, "s1", &holds), CATALOG_OK);
  ck_assert_int_eq (holds, 3);
  quiet_errors = 1;
  ck_assert_int_eq (catalog_hold (cat, 5, "nope", &holds),
                    CATALOG_ERR_NOT_FOUND);
  ck_assert_int_eq (catalog_release (cat, 7, "s1", &holds),
                    CATALOG_ERR_NOT_HELD);
  ck_assert_int_eq (errno, ENOENT);
  ck_assert_int_eq (catalog_release (cat, 5, "s2", &holds),
                    CATALOG_ERR_NOT_HELD);
  ck_assert_int_eq (catalog_release (cat, 5, "nope", &holds),
                    CATALOG_ERR_NOT_FOUND);
  catalog_owner_closed (cat, 5);
  ck_assert (find_snap ("s1", &s, NULL));
  ck_assert_int_eq (s.holds, 1);
  ck_assert_int_eq (catalog_release (cat, 5, "s1", &holds),
                    CATALOG_ERR_NOT_HELD);
  ck_assert_int_eq (catalog_release (cat, 6, "s1", &holds), CATALOG_OK);
  ck_assert_int_eq (holds, 0);
  /* The limit per owner. */
  for (i = 0; i < CATALOG_OWNED_MAX; ++i)
    ck_assert_int_eq (catalog_hold (cat, 8, "s2", &holds), CATALOG_OK);
  ck_assert_int_eq (catalog_hold (cat, 8, "s2", &holds), CATALOG_ERR_LIMIT);
  ck_assert_int_eq (errno, EAGAIN);
  ck_assert_int_eq (catalog_create (cat, 8, "t", true, NULL),
                    CATALOG_ERR_LIMIT);
  catalog_owner_closed (cat, 8);
  ck_assert_int_eq (cdelete ("s2", CATALOG_DELETE_NOW, NULL), CATALOG_OK);
}
END_TEST

START_TEST (test_defer)
{
  struct catalog_conn *c;
  struct catalog_delete_result res;
  struct catalog_snap s;
  unsigned char *want, *got = malloc (SIZE);
  ssize_t n;

  cstart ();
  ccreate ("s1");
  want = dup_model ();
  wpat (2, SIZE, 0);
  c = copen ("s1");
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_DEFER, &res), CATALOG_OK);
  ck_assert (res.deferred);
  ck_assert (find_snap ("s1", &s, &n));
  ck_assert_int_eq (n, 1);
  ck_assert_int_eq (s.state, CATALOG_STATE_DELETING);
  ck_assert (s.deferred);
  ck_assert_int_eq (s.clients, 1);
  ck_assert_int_eq (catalog_info (cat, "s1", &s), CATALOG_OK);
  ck_assert_str_eq (catalog_state_name (s.state), "deleting");
  quiet_errors = 1;
  ck_assert_int_eq (catalog_create (cat, 1, "s1", false, NULL),
                    CATALOG_ERR_EXISTS);
  ck_assert_int_eq (errno, EEXIST);
  assert_said ("being deleted (deferred), still used by 1 client(s)");
  ck_assert_ptr_null (catalog_conn_open (cat, "s1", true, "test"));
  ck_assert_int_eq (errno, ENOENT);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_NOT_FOUND);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_DEFER, NULL),
                    CATALOG_ERR_NOT_FOUND);
  quiet_errors = 0;
  /* The client reads on, the instant of s1. */
  ck_assert_int_eq (catalog_enter (c), 0);
  ck_assert_int_eq (nbdsnap_snap_pread (e, catalog_conn_snap (c), got, SIZE,
                                        0), 0);
  catalog_leave (c);
  ck_assert_int_eq (first_diff (got, want, SIZE), -1);
  catalog_wait_idle (cat);
  ck_assert (find_snap ("s1", &s, NULL));       /* still there */
  catalog_conn_close (cat, c);
  catalog_wait_idle (cat);
  ck_assert (!find_snap ("s1", &s, &n));
  ck_assert_int_eq (n, 0);
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "s1"));
  ccreate ("s1");
  free (want);
  free (got);
}
END_TEST

/* A request that stays inside its handle for a while. */
struct inside {
  struct catalog_conn *c;
  int entered;                  /* atomic */
  double left;
};

static void *
slow_request (void *v)
{
  struct inside *in = v;
  unsigned char buf[4096];

  ck_assert_int_eq (catalog_enter (in->c), 0);
  __atomic_store_n (&in->entered, 1, __ATOMIC_RELEASE);
  usleep (300 * 1000);
  ck_assert_int_eq (nbdsnap_snap_pread (e, catalog_conn_snap (in->c), buf,
                                        sizeof buf, 0), 0);
  in->left = now_s ();
  catalog_leave (in->c);
  return NULL;
}

START_TEST (test_force)
{
  struct inside in = { 0 };
  struct catalog_delete_result res;
  struct catalog_conn *c2;
  struct catalog_snap s;
  pthread_t th;
  double done;
  unsigned holds;

  cstart ();
  ccreate ("s1");
  in.c = copen ("s1");
  ck_assert_int_eq (catalog_hold (cat, 5, "s1", &holds), CATALOG_OK);
  pthread_create (&th, NULL, slow_request, &in);
  while (!__atomic_load_n (&in.entered, __ATOMIC_ACQUIRE))
    usleep (1000);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_FORCE, &res), CATALOG_OK);
  done = now_s ();
  pthread_join (th, NULL);
  ck_assert_msg (in.left > 0 && in.left <= done,
                 "the delete returned before the request inside left");
  ck_assert_int_eq (res.revoked, 1);
  ck_assert (!find_snap ("s1", &s, NULL));
  quiet_errors = 1;
  ck_assert_int_eq (catalog_enter (in.c), -1);
  ck_assert_int_eq (errno, ESHUTDOWN);
  ck_assert_msg (strstr (catalog_conn_description (in.c), "revoked"), "%s",
                 catalog_conn_description (in.c));
  ck_assert_int_eq (catalog_release (cat, 5, "s1", &holds),
                    CATALOG_ERR_NOT_FOUND);
  quiet_errors = 0;
  {
    struct catalog_client *cl;
    ssize_t n = catalog_clients (cat, &cl);
    ck_assert_int_eq (n, 1);
    ck_assert (cl[0].revoked);
    free (cl);
  }
  catalog_conn_close (cat, in.c);
  ccreate ("s1");               /* the name is free */

  /* FORCE finds a deferred delete. */
  c2 = copen ("s1");
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_DEFER, &res), CATALOG_OK);
  ck_assert (res.deferred);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_FORCE, &res), CATALOG_OK);
  ck_assert_int_eq (res.revoked, 1);
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "s1"));
  quiet_errors = 1;
  ck_assert_int_eq (catalog_enter (c2), -1);
  ck_assert_int_eq (errno, ESHUTDOWN);
  catalog_conn_close (cat, c2);
}
END_TEST

START_TEST (test_temporary)
{
  struct catalog_conn *c;
  struct catalog_snap s;

  cstart ();
  ck_assert_int_eq (catalog_create (cat, 9, "t1", true, &s), CATALOG_OK);
  ck_assert (s.info.temporary);
  ck_assert_int_eq (s.state, CATALOG_STATE_LIVE);
  ck_assert_int_eq (catalog_create (cat, 9, "t2", true, NULL), CATALOG_OK);
  ccreate ("keep");
  c = copen ("t2");
  catalog_owner_closed (cat, 9);
  catalog_wait_idle (cat);
  ck_assert (!find_snap ("t1", &s, NULL));
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "t1"));
  ck_assert (find_snap ("t2", &s, NULL));
  ck_assert_int_eq (s.state, CATALOG_STATE_DELETING);
  ck_assert (s.deferred);
  catalog_conn_close (cat, c);
  catalog_wait_idle (cat);
  ck_assert (!find_snap ("t2", &s, NULL));
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "t2"));
  ck_assert (find_snap ("keep", &s, NULL));
}
END_TEST

struct late_close {
  struct catalog_conn *c;
  int ms;
};

static void *
close_later (void *v)
{
  struct late_close *lc = v;

  usleep (lc->ms * 1000);
  catalog_conn_close (cat, lc->c);
  return NULL;
}

START_TEST (test_grace)
{
  struct late_close lc;
  pthread_t th;
  struct catalog_conn *c;
  double t0, dt;

  cstart ();
  ccreate ("s1");
  lc.c = copen ("s1");
  lc.ms = 200;
  pthread_create (&th, NULL, close_later, &lc);
  t0 = now_s ();
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL), CATALOG_OK);
  dt = now_s () - t0;
  pthread_join (th, NULL);
  ck_assert_msg (dt >= 0.15 && dt < 0.9, "delete took %.3f s", dt);

  ccreate ("s2");
  c = copen ("s2");
  quiet_errors = 1;
  t0 = now_s ();
  ck_assert_int_eq (cdelete ("s2", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_BUSY);
  dt = now_s () - t0;
  ck_assert_msg (dt >= 0.9 && dt < 3, "busy after %.3f s", dt);
  catalog_conn_close (cat, c);
}
END_TEST

/* A changes job that stays in its callback until told to go on.  The
 * callback runs under engine locks, so it must not call the catalog (nor
 * does ops.c's): the main thread does. */
struct changes_job {
  int inside, go;               /* atomic */
  enum catalog_err r;
};

static int
changes_cb (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  struct changes_job *j = opaque;

  __atomic_store_n (&j->inside, 1, __ATOMIC_RELEASE);
  while (!__atomic_load_n (&j->go, __ATOMIC_ACQUIRE))
    usleep (1000);
  return 0;
}

static void *
changes_thread (void *v)
{
  struct changes_job *j = v;

  uint64_t off = 0;

  j->r = catalog_changes (cat, "s1", NULL, &off, 1000,
                          changes_cb, j);
  return NULL;
}

START_TEST (test_pin)
{
  struct changes_job j = { 0 };
  struct catalog_delete_result res;
  uint64_t off = 0;
  struct catalog_snap s;
  pthread_t th;

  cstart ();
  ccreate ("s1");
  wpat (3, CHUNK, 0);
  pthread_create (&th, NULL, changes_thread, &j);
  while (!__atomic_load_n (&j.inside, __ATOMIC_ACQUIRE))
    usleep (1000);
  ck_assert (find_snap ("s1", &s, NULL));       /* list answers */
  ck_assert_int_eq (s.state, CATALOG_STATE_LIVE);
  quiet_errors = 1;
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_BUSY);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_FORCE, NULL),
                    CATALOG_ERR_BUSY);
  quiet_errors = 0;
  /* DEFER: deleted by the reaper once the job unpins it. */
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_DEFER, &res), CATALOG_OK);
  ck_assert (res.deferred);
  catalog_wait_idle (cat);
  ck_assert (find_snap ("s1", &s, NULL));
  ck_assert_int_eq (s.state, CATALOG_STATE_DELETING);
  __atomic_store_n (&j.go, 1, __ATOMIC_RELEASE);
  pthread_join (th, NULL);
  ck_assert_int_eq (j.r, CATALOG_OK);
  catalog_wait_idle (cat);
  ck_assert (!find_snap ("s1", &s, NULL));
  ck_assert_ptr_null (nbdsnap_snap_lookup (e, "s1"));
  quiet_errors = 1;
  ck_assert_int_eq (catalog_changes (cat, "s1", NULL, &off,
                                     1000, changes_cb, &j),
                    CATALOG_ERR_NOT_FOUND);
}
END_TEST

START_TEST (test_rollback_busy)
{
  struct catalog_rollback_result res;
  struct catalog_conn *oc;
  unsigned char *want, *got;

  cstart ();
  ccreate ("s1");
  want = dup_model ();
  wpat (4, SIZE / 2, 0);
  oc = copen ("");
  quiet_errors = 1;
  ck_assert_int_eq (catalog_rollback (cat, 1, "s1", false, false, NULL, NULL,
                                      &res), CATALOG_ERR_BUSY);
  ck_assert_int_eq (errno, EBUSY);
  assert_said ("1 NBD client(s)");
  ck_assert_int_eq (catalog_enter (oc), 0);      /* not revoked */
  catalog_leave (oc);
  ck_assert_int_eq (catalog_rollback (cat, 1, "nope", true, false, NULL,
                                      NULL, &res), CATALOG_ERR_NOT_FOUND);
  quiet_errors = 0;
  {
    enum catalog_err r = catalog_rollback (cat, 1, "s1", true, false, NULL,
                                           NULL, &res);
    char msg[sizeof nbdsnap_last_error ()];

    snprintf (msg, sizeof msg, "%s", nbdsnap_last_error ());
    /* Revoked before the engine call, whatever it answers. */
    quiet_errors = 1;
    ck_assert_int_eq (catalog_enter (oc), -1);
    ck_assert_int_eq (errno, ESHUTDOWN);
    quiet_errors = 0;
    ck_assert_msg (r == CATALOG_OK, "rollback --force: %s", msg);
  }
  ck_assert_int_eq (res.revoked, 1);
  ck_assert_uint_eq (res.rolled_back_bytes, SIZE / 2);
  catalog_rollback_result_free (&res);
  catalog_conn_close (cat, oc);
  got = slurp (img, SIZE);      /* the origin reads as s1 again */
  ck_assert_int_eq (first_diff (got, want, SIZE), -1);
  free (got);
  free (want);
}
END_TEST

/* The accepted callback of rollback_open: runs while the rollback is
 * marked running, before the engine call. */
static void
rollback_accepted (struct nbdsnap_progress *p)
{
  struct catalog_rollback_result res;
  struct catalog_snap s;

  quiet_errors = 1;
  ck_assert_ptr_null (catalog_conn_open (cat, "", false, "test"));
  ck_assert_int_eq (errno, EBUSY);
  assert_said ("rollback");
  ck_assert_int_eq (catalog_rollback (cat, 2, "s1", false, false, NULL, NULL,
                                      &res), CATALOG_ERR_BUSY);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_BUSY);
  ck_assert_int_eq (catalog_create (cat, 1, "s9", false, NULL),
                    CATALOG_ERR_BUSY);
  quiet_errors = 0;
  ck_assert (find_snap ("s1", &s, NULL));
  ck_assert (s.rollback);
  /* Snapshot handles are not affected. */
  catalog_conn_close (cat, copen ("s1"));
}

START_TEST (test_rollback_open)
{
  struct catalog_rollback_result res;
  struct nbdsnap_progress p = { 0 };
  struct catalog_conn *oc;
  enum catalog_err r;

  cstart ();
  ccreate ("s1");
  wpat (5, CHUNK, 0);
  r = catalog_rollback (cat, 1, "s1", false, false, &p, rollback_accepted,
                        &res);
  /* After the rollback, whatever it answered, the origin opens again. */
  oc = copen ("");
  catalog_conn_close (cat, oc);
  ck_assert_msg (r == CATALOG_OK, "rollback: %s", nbdsnap_last_error ());
  catalog_rollback_result_free (&res);
}
END_TEST

START_TEST (test_rollback_destroy)
{
  struct catalog_rollback_result res;
  struct catalog_snap s;
  unsigned holds;
  enum catalog_err r;

  cstart ();
  ccreate ("s1");
  wpat (6, CHUNK, 0);
  ccreate ("s2");
  ccreate ("s3");
  ck_assert_int_eq (catalog_hold (cat, 5, "s2", &holds), CATALOG_OK);
  r = catalog_rollback (cat, 1, "s1", false, true, NULL, NULL, &res);
  ck_assert_msg (r == CATALOG_OK, "rollback: %s", nbdsnap_last_error ());
  ck_assert_uint_eq (res.ndestroyed, 1);
  ck_assert_str_eq (res.destroyed[0], "s3");
  ck_assert_uint_eq (res.nkept, 1);
  ck_assert_str_eq (res.kept[0], "s2");
  catalog_rollback_result_free (&res);
  ck_assert (find_snap ("s1", &s, NULL));
  ck_assert (find_snap ("s2", &s, NULL));
  ck_assert (!find_snap ("s3", &s, NULL));
}
END_TEST

/* list_during_delete, part 1: the accepted callback holds the delete
 * between its marking and its engine call. */
static void
delete_accepted (struct nbdsnap_progress *p)
{
  struct catalog_snap s;

  ck_assert (find_snap ("s1", &s, NULL));
  ck_assert_int_eq (s.state, CATALOG_STATE_DELETING);
  ck_assert (s.moving);
  ck_assert (!s.deferred);
  ck_assert_int_eq (catalog_info (cat, "s1", &s), CATALOG_OK);
  quiet_errors = 1;
  ck_assert_ptr_null (catalog_conn_open (cat, "s1", true, "test"));
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_FORCE, NULL),
                    CATALOG_ERR_NOT_FOUND);
  ck_assert_int_eq (catalog_create (cat, 1, "s1", false, NULL),
                    CATALOG_ERR_EXISTS);
  quiet_errors = 0;
}

struct bg_delete {
  const char *name;
  struct nbdsnap_progress p;
  enum catalog_err r;
  int done;                     /* atomic */
};

static void *
bg_delete (void *v)
{
  struct bg_delete *d = v;
  struct catalog_delete_result res;

  d->r = catalog_delete (cat, 1, d->name, CATALOG_DELETE_NOW, &d->p, NULL,
                         &res);
  __atomic_store_n (&d->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

#define BIG ((uint64_t) 64 * MiB)

START_TEST (test_list_during_delete)
{
  struct catalog_delete_result res;
  struct bg_delete d = { .name = "b" };
  struct nbdsnap_progress p = { 0 };
  struct catalog_snap s;
  pthread_t th;
  bool seen = false;
  double worst = 0, t0;
  unsigned polls = 0;

  cstart ();
  ccreate ("s1");
  ck_assert_int_eq (catalog_delete (cat, 1, "s1", CATALOG_DELETE_NOW, &p,
                                    delete_accepted, &res), CATALOG_OK);

  /* Part 2: a delete that moves BIG bytes into the older snapshot (a
   * writes after b exist only in b, and a reads them through b). */
  catalog_free (cat);
  cat = NULL;
  eclose ();
  tpath (img, sizeof img, "big.img");
  tpath (sdpath, sizeof sdpath, "big-state");
  make_image (img, BIG, 7);
  eopen ();
  cat = catalog_new (e, false);
  ck_assert_ptr_nonnull (cat);
  ck_assert_int_eq (catalog_start (cat), 0);
  ccreate ("a");
  ccreate ("b");
  {
    unsigned char *buf = malloc (4 * MiB);
    for (uint64_t off = 0; off < BIG; off += 4 * MiB) {
      pattern_fill (buf, 4 * MiB, 8, off);
      ck_assert_int_eq (nbdsnap_engine_pwrite (e, buf, 4 * MiB, off, false),
                        0);
    }
    free (buf);
  }
  pthread_create (&th, NULL, bg_delete, &d);
  while (!__atomic_load_n (&d.done, __ATOMIC_ACQUIRE)) {
    t0 = now_s ();
    if (find_snap ("b", &s, NULL) && s.state == CATALOG_STATE_DELETING
        && s.moving && s.progress_total > 0)
      seen = true;
    if (now_s () - t0 > worst)
      worst = now_s () - t0;
    polls++;
    usleep (2000);
  }
  pthread_join (th, NULL);
  ck_assert_msg (d.r == CATALOG_OK, "delete b: %s", nbdsnap_last_error ());
  fprintf (stderr, "list_during_delete: %u lists, worst %.3f s\n", polls,
           worst);
  ck_assert_msg (seen, "b was never listed deleting with progress "
                 "(%u lists, worst %.3f s)", polls, worst);
  ck_assert (!find_snap ("b", &s, NULL));
}
END_TEST

/* What this suite does not use of engine-fixture.h. */
static void __attribute__ ((unused))
fixture_unused (void)
{
  (void) ereopen;
  (void) check_origin_;
  (void) info_of;
  (void) mksnap;
  (void) snapfile;
}

/* Reopen the engine and a new catalog over it (a restart). */
static void
crestart (void)
{
  catalog_free (cat);
  cat = NULL;
  ereopen ();
  cat = catalog_new (e, false);
  ck_assert_ptr_nonnull (cat);
  ck_assert_int_eq (catalog_start (cat), 0);
}

static void
named_hold (const char *name, const char *tag)
{
  unsigned named;
  ck_assert_msg (catalog_hold_named (cat, name, tag, NULL, &named, NULL)
                 == CATALOG_OK, "hold %s %s: %s", name, tag,
                 nbdsnap_last_error ());
}

/* Holds of name (all if NULL), as "tag:name " words ("-:name" for a
 * connection hold) into buf. */
static const char *
holds_text (const char *name, char *buf, size_t len)
{
  struct catalog_hold *h;
  size_t n, i, off = 0;

  ck_assert_int_eq (catalog_holds (cat, name, &h, &n), CATALOG_OK);
  buf[0] = '\0';
  for (i = 0; i < n; ++i)
    off += snprintf (buf + off, len - off, "%s:%s ", h[i].tag[0] ? h[i].tag : "-",
                   h[i].name);
  free (h);
  return buf;
}

START_TEST (test_named_busy)
{
  struct catalog_snap s;
  struct catalog_hold *hl;
  unsigned named, holds;
  size_t nh;
  char buf[256];

  cstart ();
  ccreate ("s1");
  ccreate ("s2");
  named_hold ("s1", "backup");
  quiet_errors = 1;
  /* Busy in every mode, with a message that names the tag. */
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_BUSY);
  assert_said ("tag backup");
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_DEFER, NULL),
                    CATALOG_ERR_BUSY);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_FORCE, NULL),
                    CATALOG_ERR_BUSY);
  ck_assert_int_eq (errno, EBUSY);
  ck_assert (find_snap ("s1", &s, NULL));
  ck_assert_int_eq (s.state, CATALOG_STATE_LIVE);
  ck_assert_int_eq (s.named_holds, 1);
  /* The same tag twice; another tag; a missing or creating snapshot; a
   * bad tag. */
  ck_assert_int_eq (catalog_hold_named (cat, "s1", "backup", NULL, &named,
                                        NULL), CATALOG_ERR_EXISTS);
  ck_assert_int_eq (errno, EEXIST);
  named_hold ("s1", "keep");
  named_hold ("s2", "backup");
  ck_assert_int_eq (catalog_hold_named (cat, "nope", "t", NULL, &named,
                                        NULL), CATALOG_ERR_NOT_FOUND);
  ck_assert_int_eq (catalog_hold_named (cat, "s1", "a b", NULL, &named,
                                        NULL), CATALOG_ERR_SYSTEM);
  ck_assert_int_eq (errno, EINVAL);
  /* A connection hold lists too. */
  ck_assert_int_eq (catalog_hold (cat, 9, "s2", &holds), CATALOG_OK);
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf),
                    "backup:s1 keep:s1 backup:s2 -:s2 ");
  ck_assert_str_eq (holds_text ("s2", buf, sizeof buf), "backup:s2 -:s2 ");
  ck_assert_int_eq (catalog_holds (cat, "nope", &hl, &nh),
                    CATALOG_ERR_NOT_FOUND);
  /* Release: unknown tag, unknown snapshot, then for real. */
  ck_assert_int_eq (catalog_release_named (cat, "s1", "nope", &named, NULL),
                    CATALOG_ERR_NOT_HELD);
  ck_assert_int_eq (catalog_release_named (cat, "nope", "keep", &named,
                                           NULL), CATALOG_ERR_NOT_FOUND);
  ck_assert_int_eq (catalog_release_named (cat, "s1", "backup", &named,
                                           NULL), CATALOG_OK);
  ck_assert_int_eq (named, 1);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_FORCE, NULL),
                    CATALOG_ERR_BUSY);
  ck_assert_int_eq (catalog_release_named (cat, "s1", "keep", &named, NULL),
                    CATALOG_OK);
  ck_assert_int_eq (named, 0);
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL), CATALOG_OK);
  catalog_owner_closed (cat, 9);
}
END_TEST

START_TEST (test_named_rollback)
{
  struct catalog_rollback_result res;

  cstart ();
  ccreate ("s1");
  ccreate ("s2");
  ccreate ("s3");
  named_hold ("s2", "keep");
  ck_assert_int_eq (catalog_rollback (cat, 1, "s1", false, true, NULL, NULL,
                                      &res), CATALOG_OK);
  ck_assert_int_eq (res.ndestroyed, 1);
  ck_assert_str_eq (res.destroyed[0], "s3");
  ck_assert_int_eq (res.nkept, 1);
  ck_assert_str_eq (res.kept[0], "s2");
  catalog_rollback_result_free (&res);
}
END_TEST

START_TEST (test_named_persist)
{
  struct catalog_snap s;
  unsigned named;
  char buf[256];

  cstart ();
  ccreate ("s1");
  ccreate ("s2");
  ccreate ("s3");
  named_hold ("s1", "a");
  named_hold ("s2", "b");
  named_hold ("s3", "c");
  crestart ();
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "a:s1 b:s2 c:s3 ");
  ck_assert (find_snap ("s2", &s, NULL));
  ck_assert_int_eq (s.named_holds, 1);
  quiet_errors = 1;
  ck_assert_int_eq (cdelete ("s2", CATALOG_DELETE_NOW, NULL),
                    CATALOG_ERR_BUSY);
  ck_assert_int_eq (catalog_release_named (cat, "s2", "b", &named, NULL),
                    CATALOG_OK);
  crestart ();
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "a:s1 c:s3 ");
  /* A snapshot gone behind the catalog's back (deleted by the engine):
   * its hold is dropped at the next start, with a message. */
  catalog_free (cat);
  cat = NULL;
  ck_assert_int_eq (nbdsnap_snap_delete (e, nbdsnap_snap_lookup (e, "s3")),
                    0);
  crestart ();
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "a:s1 ");
  crestart ();
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "a:s1 ");
}
END_TEST

/* Write text as the holds file, restart. */
static void
holds_file (const char *text)
{
  ck_assert_int_eq (nbdsnap_engine_write_state (e, "holds", text), 0);
  crestart ();
}

START_TEST (test_named_damaged)
{
  char buf[256], *saved;
  size_t len;

  cstart ();
  ccreate ("s1");
  ccreate ("s2");
  named_hold ("s1", "a");
  named_hold ("s2", "b");
  quiet_errors = 1;
  /* A bad checksum: the holds that still read are kept (holding errs on
   * the safe side), the file is saved, and rewritten clean. */
  holds_file ("nbdsnap-holds 1\n"
              "hold a s1 2024-01-01T00:00:00Z\n"
              "hold b s2 2024-01-01T00:00:00Z\n"
              "checksum 0000000000000000\n");
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "a:s1 b:s2 ");
  saved = nbdsnap_engine_read_state (e, "holds.damaged", &len);
  ck_assert_ptr_nonnull (saved);
  ck_assert (strstr (saved, "checksum 0000000000000000") != NULL);
  free (saved);
  crestart ();                  /* rewritten: no message, the same holds */
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "a:s1 b:s2 ");
  /* Garbage lines and a cut file: the good lines are kept. */
  holds_file ("nbdsnap-holds 1\n"
              "hold a s1 2024-01-01T00:00:00Z\n"
              "\x01\x02 garbage\n"
              "hold b s");
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "a:s1 ");
  /* Nothing readable: the server starts, with no holds. */
  holds_file ("\xff\xfe\n");
  ck_assert_str_eq (holds_text (NULL, buf, sizeof buf), "");
  /* Deletes work then. */
  ck_assert_int_eq (cdelete ("s1", CATALOG_DELETE_NOW, NULL), CATALOG_OK);
}
END_TEST

START_TEST (test_totals)
{
  struct catalog_totals t;
  struct catalog_conn *c;

  cstart ();
  c = copen ("");
  ck_assert_int_eq (catalog_conn_done (c, CATALOG_REQ_WRITE, 4096, 0), 0);
  ck_assert_int_eq (catalog_conn_done (c, CATALOG_REQ_ZERO, 512, 0), 0);
  errno = EIO;
  ck_assert_int_eq (catalog_conn_done (c, CATALOG_REQ_READ, 512, -1), -1);
  ck_assert_int_eq (errno, EIO);
  catalog_totals (cat, &t);
  ck_assert_int_eq (t.origin_bytes_written, 4096);
  catalog_conn_close (cat, c);
  catalog_totals (cat, &t);     /* kept after the close */
  ck_assert_int_eq (t.origin_bytes_written, 4096);
  ck_assert_int_eq (t.origin_writes, 1);
  ck_assert_int_eq (t.origin_zeros, 1);
  ck_assert_int_eq (t.origin_zero_bytes, 512);
  ck_assert_int_eq (t.origin_reads, 0);
  ck_assert_int_eq (t.failed, 1);
  ck_assert_int_eq (t.errors[EIO], 1);
}
END_TEST

static Suite *
catalog_suite (void)
{
  Suite *s = suite_create ("catalog");
  const struct helpers_tcase tcs[] = {
    { "busy", test_busy, 1 },
    { "hold", test_hold, 1 },
    { "defer", test_defer, 1 },
    { "force", test_force, 1 },
    { "temporary", test_temporary, 1 },
    { "grace", test_grace, 1 },
    { "pin", test_pin, 1 },
    { "rollback_busy", test_rollback_busy, 1 },
    { "rollback_open", test_rollback_open, 1 },
    { "rollback_destroy", test_rollback_destroy, 1 },
    { "list_during_delete", test_list_during_delete, 1 },
    { "named_busy", test_named_busy, 1 },
    { "named_rollback", test_named_rollback, 1 },
    { "named_persist", test_named_persist, 1 },
    { "named_damaged", test_named_damaged, 1 },
    { "totals", test_totals, 1 },
  };

  helpers_add_tcases (s, tcs, sizeof tcs / sizeof tcs[0], setup, teardown,
                      60);
  return s;
}

int
main (void)
{
  return helpers_run_suite (catalog_suite (), "check_catalog");
}
