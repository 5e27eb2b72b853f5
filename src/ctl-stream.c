/* nbdsnapctl send and receive: rbd diff v1 streams.
 *
 * The format is Ceph's "RBD Incremental Backup" stream, version 1, as
 * documented in Ceph's doc/dev/rbd-diff.rst
 * (https://docs.ceph.com/en/latest/dev/rbd-diff/) and checked against the
 * code that writes and reads it, src/tools/rbd/action/ExportDiff.cc and
 * Import.cc (rbd export-diff, rbd import-diff).  Integers are
 * little-endian; names are a le32 length and that many bytes, no NUL:
 *
 *   header  the 12 bytes "rbd diff v1\n"
 *   'f'     le32 LEN, LEN bytes      the snapshot the diff starts from
 *   't'     le32 LEN, LEN bytes      the snapshot it ends at
 *   's'     le64 SIZE                the image's size at the end
 *   'w'     le64 OFFSET, le64 LENGTH, LENGTH bytes of data
 *   'z'     le64 OFFSET, le64 LENGTH (reads as zeroes)
 *   'e'     the end
 *
 * Every record is a one-byte tag and its fields.  The metadata records
 * 'f', 't', 's' come first, in any order; then the data records; then
 * 'e'.  rbd export-diff writes 'f' only with --from-snap, 't' only when
 * it exports a snapshot (not the image's head), 's' always, then one
 * record per changed extent of an object (4 MiB by default) in offset
 * order, a 'w' whose data are all zeroes written as a 'z'.  rbd
 * import-diff reads names of at most 4096 bytes, refuses a stream whose
 * 'f' snapshot does not exist or whose 't' snapshot does, resizes the
 * image to 's', and creates 't' once every record is applied.  (Version
 * 2, "rbd diff v2\n", adds a le64 length after each tag but 'e'; we
 * neither write nor read it.)
 *
 * Notes on the design:
 *
 * - send is in ctl-send.c, receive in ctl-receive.c.  ctl-stream.h
 *   holds the format's constants and little-endian helpers, and
 *   declares what the two share, defined here: their options, the
 *   progress line, holds and their release, NBD connections and the
 *   wait for an aio request.
 */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>

#include "nbdsnapctl.h"
#include "ctl-stream.h"

int
stream_wait_cookie (struct nbd_handle *nbd, int64_t cookie)
{
  int r;

  while ((r = nbd_aio_command_completed (nbd, cookie)) == 0)
    if (nbd_poll (nbd, -1) == -1)
      return -1;
  return r == 1 ? 0 : -1;
}

const char *
stream_human (uint64_t n, char *buf, size_t len)
{
  json_t *v = json_integer ((json_int_t) n);

  ctl_human_size (v, buf, len);
  json_decref (v);
  return buf;
}

void
stream_progress_init (struct stream_progress *p, struct ctl *c,
                      const char *what, const char *name)
{
  memset (p, 0, sizeof *p);
  p->draw = !c->json && isatty (STDERR_FILENO);
  p->what = what;
  p->name = name;
  p->bar.bar.start = ctl_now ();
}

void
stream_progress_update (struct stream_progress *p, uint64_t done,
                        uint64_t total)
{
  json_t *o;
  double now;

  if (!p->draw)
    return;
  now = ctl_now ();
  if (now - p->last < 0.25)
    return;
  p->last = now;
  o = json_pack ("{s:s, s:s, s:I, s:I}", "progress", p->what, "name",
                 p->name, "done", (json_int_t) done,
                 "total", (json_int_t) total);
  if (o != NULL)
    ctl_progress_draw (&p->bar, o);
  json_decref (o);
}

static int
check_name (const char *cmd, const char *name)
{
  if (nbdsnap_name_valid (name) == -1) {
    ctl_msg ("%s: invalid snapshot name '%.80s': " NBDSNAP_NAME_RULE, cmd,
             name);
    return NBDSNAPCTL_EXIT_INVALID_NAME;
  }
  return 0;
}

int
stream_parse_args (int argc, char **argv, bool send, struct stream_args *a)
{
  static const struct option longopts[] = {
    { "from", required_argument, NULL, 'f' },
    { "nbd-socket", required_argument, NULL, 'N' },
    { "uri-base", required_argument, NULL, 'U' },
    { NULL },
  };
  const char *cmd = argv[0];
  int opt, status;

  a->s.nbd_socket = getenv ("NBDSNAP_NBD_SOCKET");
  optind = 0;                   /* glibc: start over, from argv[1] */
  opterr = 0;
  while ((opt = getopt_long (argc, argv, ":", longopts, NULL)) != -1) {
    switch (opt) {
    case 'f':
      if (!send)
        return ctl_usage ("%s: unknown option %s", cmd, ctl_bad_option (argv));
      a->from = optarg;
      break;
    case 'N': a->s.nbd_socket = optarg; break;
    case 'U': a->s.uri_base = optarg; break;
    case ':':
      return ctl_usage ("%s: option %s needs an argument", cmd,
                        argv[optind - 1]);
    default:
      return ctl_usage ("%s: unknown option %s", cmd, ctl_bad_option (argv));
    }
  }
  if (!send) {
    if (optind < argc)
      return ctl_usage ("%s: unexpected argument '%s' (the stream comes "
                        "from standard input)", cmd, argv[optind]);
    return 0;
  }
  if (optind >= argc)
    return ctl_usage ("%s: missing snapshot NAME", cmd);
  a->name = argv[optind++];
  if (optind < argc)
    return ctl_usage ("%s: unexpected argument '%s'", cmd, argv[optind]);
  if ((status = check_name (cmd, a->name)) != 0
      || (a->from && (status = check_name (cmd, a->from)) != 0))
    return status;
  if (a->from && strcmp (a->from, a->name) == 0)
    return ctl_usage ("%s: --from %s: the same snapshot as the one to send",
                      cmd, a->from);
  return 0;
}

int
stream_call_name (struct ctl *c, const char *verb, const char *name)
{
  char req[NBDSNAP_ADMIN_LINE_MAX];
  json_t *resp;
  int status;

  snprintf (req, sizeof req, "%s %s", verb, name);
  status = ctl_call (c, req, &resp);
  json_decref (resp);
  return status;
}

void
stream_release (struct ctl *c, const char *name)
{
  bool quiet = c->quiet;

  if (name == NULL || c->fd == -1)
    return;
  c->quiet = true;
  stream_call_name (c, "release", name);
  c->quiet = quiet;
}

int
stream_snap_index (json_t *snaps, const char *name)
{
  size_t i;
  json_t *s;

  json_array_foreach (snaps, i, s) {
    const char *n = json_string_value (json_object_get (s, "name"));
    if (n && strcmp (n, name) == 0)
      return i;
  }
  return -1;
}

struct nbd_handle *
stream_nbd_open (const char *cmd, const char *uri, bool meta, int *status)
{
  struct nbd_handle *nbd = nbd_create ();

  if (nbd == NULL) {
    ctl_msg ("%s: %s", cmd, nbd_get_error ());
    *status = NBDSNAPCTL_EXIT_ERROR;
    return NULL;
  }
  if ((meta && nbd_add_meta_context (nbd, LIBNBD_CONTEXT_BASE_ALLOCATION)
       == -1)
      || nbd_connect_uri (nbd, uri) == -1) {
    ctl_msg ("%s: NBD connection to %s: %s", cmd, uri, nbd_get_error ());
    nbd_close (nbd);
    *status = NBDSNAPCTL_EXIT_UNREACHABLE;
    return NULL;
  }
  return nbd;
}
