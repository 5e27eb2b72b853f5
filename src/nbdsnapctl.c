/* nbdsnapctl: the command-line client of nbdsnap's admin socket.
 *
 * Notes on the design:
 *
 * - One command per invocation, one admin connection per command.  Each
 *   command builds one protocol request line (include/nbdsnap/admin.h)
 *   and prints the answer as a table or as the server's JSON (--json).
 *
 * - The socket comes from -s or $NBDSNAP_SOCKET, never from a guess: the
 *   default socket lives in the server's state directory, which only the
 *   server knows.
 *
 * - Exit statuses are the protocol's error kinds mapped by proto.c's table
 *   (NBDSNAPCTL_EXIT_*), so that "busy" or "not found" can be told apart
 *   by scripts; see EXIT STATUS in nbdsnapctl(1).
 *
 * - delete and rollback show their progress: with --json the server's
 *   progress lines are printed as they come, on a terminal (stderr, no
 *   --json) one line is drawn and redrawn.  Otherwise the request has no
 *   "progress" flag, so scripts see exactly what they saw before.
 *   --no-wait asks for "nowait" instead: the answer comes once the job is
 *   accepted.
 */
#include <config.h>

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdsnap/err.h"
#include "nbdsnapctl.h"

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: nbdsnapctl [-s SOCKET] [--json] COMMAND [ARGS...]\n"
"\n"
"Commands:\n"
"  create NAME                       take a snapshot\n"
"  create --temporary NAME [-- CMD...]\n"
"                                    a snapshot that lives while this runs\n"
"  delete NAME [--defer|--force] [--no-wait]\n"
"                                    delete a snapshot\n"
"  rollback NAME [--force] [--destroy-newer] [--no-wait]\n"
"                                    make the origin read as snapshot NAME\n"
"  list                              list snapshots\n"
"  info NAME                         show one snapshot\n"
"  clients                           list NBD client connections\n"
"  hold NAME [-- CMD...]             pin a snapshot while this runs\n"
"  hold TAG NAME                     pin a snapshot until released (kept\n"
"                                    across restarts)\n"
"  release TAG NAME                  drop the named hold TAG\n"
"  holds [NAME]                      list holds: tag, snapshot, when\n"
"  changes A [B]                     extents that differ between snapshot A\n"
"                                    and B (default: the origin now)\n"
"  backup SNAP DEST [--since OLD] [--connections N] [--verify]\n"
"                                    copy a snapshot (or what changed since\n"
"                                    OLD) into a file or block device\n"
"  send [--from A] B                 rbd diff v1 stream of B (or of what\n"
"                                    changed from A to B) on stdout\n"
"  receive                           apply a stream from stdin to the\n"
"                                    origin, then create its snapshot\n"
"                                    (backup, send, receive: NBD at\n"
"                                    --nbd-socket PATH, --uri-base URI,\n"
"                                    $NBDSNAP_NBD_SOCKET, else where the\n"
"                                    server says it listens)\n"
"  stats                             server counters\n"
"  hello                             protocol and server version\n"
"  shell                             protocol requests from stdin, one\n"
"                                    connection, JSON answers\n"
"  run --snapshot NAME [--nbd-socket PATH | --uri-base URI] -- CMD...\n"
"                                    run CMD on a temporary snapshot\n"
"\n"
"Without CMD, 'hold' and 'create --temporary' wait for Ctrl-C, SIGTERM\n"
"or end of standard input, then release.  Options of a command may come\n"
"before or after NAME.  delete and rollback show their progress on a\n"
"terminal (--json: as JSON lines); --no-wait returns once the server has\n"
"accepted the job.\n"
"\n"
"Options:\n"
"  -s, --socket SOCKET   admin socket (default: $NBDSNAP_SOCKET)\n"
"  -j, --json            print the server's JSON responses\n"
"  -h, --help            this help\n"
"  -V, --version         print the version\n"
"\n"
"Exit status: 0 ok, 1 error, 2 usage, 3 server unreachable, 4 busy,\n"
"5 not found, 6 invalid name, 7 already exists, 8 permission denied.\n"
"See nbdsnapctl(1).\n");
}

/* A name with a space would change the request's words: check it here. */
static int
check_name (const char *name)
{
  if (nbdsnap_name_valid (name) == -1) {
    ctl_msg ("invalid snapshot name '%.80s': " NBDSNAP_NAME_RULE, name);
    return NBDSNAPCTL_EXIT_INVALID_NAME;
  }
  return 0;
}

/* What a command accepts besides NAME. */
enum {
  ARG_TEMPORARY = 1,            /* -t, --temporary */
  ARG_DELETE = 2,               /* --defer, --force */
  ARG_SESSION = 4,              /* --nbd-socket, --uri-base, -- CMD... */
  ARG_RUN = 8,                  /* --snapshot NAME -- CMD... (no NAME) */
  ARG_ROLLBACK = 16,            /* --force, --destroy-newer */
  ARG_NOWAIT = 32,              /* --no-wait */
};

struct args {
  const char *name;
  bool temporary;
  enum proto_delete_mode mode;
  bool force;                   /* rollback --force */
  bool destroy_newer;
  bool nowait;
  struct ctl_session *s;
};

/* Options of argv[optind..argc), up to the first non-option (getopt may
 * take a "--" that ends them: callers that care stop argc before it). */
static int
parse_opts (int argc, char **argv, unsigned allowed, struct args *a)
{
  static const struct option longopts[] = {
    { "temporary", no_argument, NULL, 't' },
    { "defer", no_argument, NULL, 'D' },
    { "force", no_argument, NULL, 'F' },
    { "destroy-newer", no_argument, NULL, 'X' },
    { "no-wait", no_argument, NULL, 'W' },
    { "snapshot", required_argument, NULL, 'S' },
    { "nbd-socket", required_argument, NULL, 'N' },
    { "uri-base", required_argument, NULL, 'U' },
    { NULL },
  };
  const char *cmd = argv[0];
  int opt;

  opterr = 0;
  while ((opt = getopt_long (argc, argv, "+:t", longopts, NULL)) != -1) {
    unsigned need = opt == 't' ? ARG_TEMPORARY
      : opt == 'D' ? ARG_DELETE
      : opt == 'F' ? ARG_DELETE | ARG_ROLLBACK
      : opt == 'X' ? ARG_ROLLBACK
      : opt == 'W' ? ARG_NOWAIT
      : opt == 'S' ? ARG_RUN
      : opt == 'N' || opt == 'U' ? ARG_SESSION : 0;

    if (opt == ':')
      return ctl_usage ("%s: option %s needs an argument", cmd,
                        argv[optind - 1]);
    if ((need & allowed) == 0)
      return ctl_usage ("%s: unknown option %s", cmd, argv[optind - 1]);
    if ((opt == 'D' || opt == 'F') && (allowed & ARG_DELETE)
        && a->mode != PROTO_DELETE_NOW)
      return ctl_usage ("%s: --defer and --force exclude each other", cmd);
    switch (opt) {
    case 't': a->temporary = true; break;
    case 'D': a->mode = PROTO_DELETE_DEFER; break;
    case 'F':
      if (allowed & ARG_DELETE)
        a->mode = PROTO_DELETE_FORCE;
      else
        a->force = true;
      break;
    case 'X': a->destroy_newer = true; break;
    case 'W': a->nowait = true; break;
    case 'S': a->name = optarg; break;
    case 'N': a->s->nbd_socket = optarg; break;
    case 'U': a->s->uri_base = optarg; break;
    }
  }
  return 0;
}

/* Parse a command's arguments (argv[0] is the command): options, NAME,
 * options again, then "--" CMD... if the command takes one. */
static int
parse_args (int argc, char **argv, unsigned allowed, struct args *a)
{
  const char *cmd = argv[0];
  int status, end;

  optind = 0;                   /* glibc: start over, from argv[1] */
  if ((status = parse_opts (argc, argv, allowed, a)) != 0)
    return status;
  if (allowed & ARG_RUN) {      /* getopt took the "--" */
    if (a->name == NULL)
      return ctl_usage ("%s: --snapshot NAME is required", cmd);
    if (check_name (a->name) != 0)
      return NBDSNAPCTL_EXIT_INVALID_NAME;
  }
  else {
    if (optind >= argc)
      return ctl_usage ("%s: missing snapshot NAME", cmd);
    a->name = argv[optind++];
    if (check_name (a->name) != 0)
      return NBDSNAPCTL_EXIT_INVALID_NAME;
    /* Options after NAME, up to "--" (which getopt must not take). */
    for (end = optind; end < argc && strcmp (argv[end], "--") != 0; ++end)
      ;
    if (optind < end
        && (status = parse_opts (end, argv, allowed, a)) != 0)
      return status;
    if (optind < end)
      return ctl_usage ("%s: unexpected argument '%s'", cmd, argv[optind]);
    if (optind == argc)
      return 0;                 /* no command */
    if (!(allowed & ARG_SESSION))
      return ctl_usage ("%s: unexpected argument '%s'", cmd, argv[optind]);
    optind++;
  }
  if (optind >= argc)
    return ctl_usage ("%s: no command given after --", cmd);
  a->s->argv = &argv[optind];
  return 0;
}

/* Print the response: --json as received, else via print (or nothing). */
static void
show (struct ctl *c, json_t *resp, void (*print) (json_t *))
{
  if (c->json)
    puts (c->line);
  else if (print)
    print (resp);
}

static void
print_flat (json_t *resp)
{
  json_t *snap = json_object_get (resp, "snapshot");
  char state[96];

  if (snap != NULL && json_is_string (json_object_get (snap, "state")))
    json_object_set_new (snap, "state",
                         json_string (ctl_state_text (snap, state,
                                                      sizeof state)));
  ctl_print_flat (NULL, snap ? snap : resp);
}

static void
print_holds (json_t *resp)
{
  ctl_print_value (stdout, json_object_get (resp, "name"));
  printf (": ");
  ctl_print_value (stdout, json_object_get (resp, "holds"));
  printf (" holds\n");
}

/* A nowait job's answer. */
static bool
print_accepted (json_t *resp, const char *what)
{
  const char *name = json_string_value (json_object_get (resp, "name"));

  if (!json_is_true (json_object_get (resp, "accepted")))
    return false;
  printf ("%s %s: accepted, going on in the server (see 'nbdsnapctl "
          "list')\n", what, name ? name : "?");
  return true;
}

static void
print_deleted (json_t *resp)
{
  const char *name = json_string_value (json_object_get (resp, "name"));
  json_int_t revoked = json_integer_value (json_object_get (resp, "revoked"));
  json_t *moved = json_object_get (resp, "moved_bytes");
  char size[32];

  if (print_accepted (resp, "delete"))
    return;
  if (json_is_true (json_object_get (resp, "deferred")))
    printf ("snapshot %s is deleting (deferred): it is deleted when its "
            "last client disconnects and its last hold is released\n",
            name ? name : "?");
  else if (revoked > 0)
    printf ("deleted snapshot %s (revoked %" JSON_INTEGER_FORMAT
            " client handles)\n", name ? name : "?", revoked);
  else if (json_integer_value (moved) > 0)
    printf ("deleted snapshot %s (moved %s into the next older "
            "snapshot)\n", name ? name : "?",
            ctl_human_size (moved, size, sizeof size));
  else
    printf ("deleted snapshot %s\n", name ? name : "?");
}

static void
print_rolled_back (json_t *resp)
{
  const char *name = json_string_value (json_object_get (resp, "name"));
  json_int_t revoked = json_integer_value (json_object_get (resp, "revoked"));
  json_t *destroyed = json_object_get (resp, "destroyed");
  json_t *kept = json_object_get (resp, "kept");
  char size[32];

  if (print_accepted (resp, "rollback"))
    return;
  printf ("rolled back the origin to snapshot %s (%s written",
          name ? name : "?",
          ctl_human_size (json_object_get (resp, "rolled_back_bytes"), size,
                          sizeof size));
  if (revoked > 0)
    printf (", revoked %" JSON_INTEGER_FORMAT " origin client handles",
            revoked);
  printf (")\n");
  if (json_array_size (destroyed) > 0) {
    printf ("deleted newer snapshots: ");
    ctl_print_value (stdout, destroyed);
    printf ("\n");
  }
  if (json_array_size (kept) > 0) {
    printf ("kept newer snapshots (in use): ");
    ctl_print_value (stdout, kept);
    printf ("\n");
  }
}

/* A connection-owned create/hold, then the session that keeps it. */
static int
owned (struct ctl *c, const char *req, struct ctl_session *s, bool quiet)
{
  json_t *resp;
  int status;

  s->uri = ctl_export_uri (s, &status);
  if (status != 0)
    return status;
  status = ctl_call (c, req, &resp);
  if (status == 0) {
    if (c->json)
      puts (c->line);
    else if (!quiet)
      printf ("%s %s\n", strncmp (req, "hold", 4) == 0 ? "holding"
              : "created temporary snapshot", s->name);
    json_decref (resp);
    status = ctl_session_run (c, s);
  }
  free (s->uri);
  return status;
}

/* shell: requests from stdin over one connection, answers as JSON lines;
 * the way to use "release" (holds belong to their connection). */
static int
shell (struct ctl *c, int argc)
{
  struct proto_request req;
  struct proto_parse_error perr;
  char *line = NULL, *s;
  size_t cap = 0, len;
  ssize_t n;
  int status = NBDSNAPCTL_EXIT_OK, st;
  json_t *resp;

  if (argc > 1)
    return ctl_usage ("shell: takes no arguments");
  if ((st = ctl_connect (c)) != 0)
    return st;
  c->json = true;
  while ((n = getline (&line, &cap, stdin)) != -1) {
    if (n > 0 && line[n - 1] == '\n')
      line[--n] = '\0';
    if (proto_parse (line, n, &req, &perr) == -1) {
      resp = proto_error_parse (&perr);     /* answer it as the server would */
      s = resp ? proto_format (resp, &len) : NULL;
      if (s)
        fputs (s, stdout);
      free (s);
      json_decref (resp);
      status = proto_err_exit_status (perr.kind);
      continue;
    }
    st = ctl_call (c, line, &resp);
    if (st == 0) {
      puts (c->line);
      json_decref (resp);
    }
    else
      status = st;
    fflush (stdout);
    if (st == NBDSNAPCTL_EXIT_UNREACHABLE)
      break;
  }
  free (line);
  return status;
}

static int
run_command (struct ctl *c, int argc, char **argv)
{
  const char *cmd = argv[0];
  char req[NBDSNAP_ADMIN_LINE_MAX];
  struct ctl_session s = { .nbd_socket = getenv ("NBDSNAP_NBD_SOCKET") };
  struct args a = { .s = &s };
  void (*print) (json_t *) = NULL;
  json_t *resp;
  int status, k = proto_cmd_from_name (cmd);
  int n = NBDSNAP_ADMIN_LINE_MAX - 64;  /* longest name we pass on */

  if (strcmp (cmd, "shell") == 0)
    return shell (c, argc);
  if (ctl_holds_wants (argc, argv))
    return ctl_holds (c, argc, argv);
  if (k == PROTO_CMD_CHANGES)
    return ctl_changes (c, argc, argv);
  if (strcmp (cmd, "backup") == 0)
    return ctl_backup (c, argc, argv);
  if (strcmp (cmd, "send") == 0)
    return ctl_send (c, argc, argv);
  if (strcmp (cmd, "receive") == 0)
    return ctl_receive (c, argc, argv);
  if (strcmp (cmd, "run") == 0) {
    if ((status = parse_args (argc, argv, ARG_RUN | ARG_SESSION, &a)))
      return status;
    s.name = a.name;
    snprintf (s.undo, sizeof s.undo, "delete %.*s defer", n, a.name);
    snprintf (req, sizeof req, "create %.*s temporary", n, a.name);
    return owned (c, req, &s, true);
  }

  switch (k) {
  case PROTO_CMD_HELLO: case PROTO_CMD_LIST: case PROTO_CMD_CLIENTS:
  case PROTO_CMD_STATS:
    if (argc > 1)
      return ctl_usage ("%s: takes no arguments", cmd);
    snprintf (req, sizeof req, "%s", cmd);
    print = k == PROTO_CMD_LIST ? ctl_print_list
      : k == PROTO_CMD_CLIENTS ? ctl_print_clients : print_flat;
    break;
  case PROTO_CMD_INFO: case PROTO_CMD_RELEASE:
    if ((status = parse_args (argc, argv, 0, &a)))
      return status;
    snprintf (req, sizeof req, "%s %.*s", cmd, n, a.name);
    print = k == PROTO_CMD_INFO ? print_flat : print_holds;
    break;
  case PROTO_CMD_DELETE:
  case PROTO_CMD_ROLLBACK:
    if ((status = parse_args (argc, argv, ARG_NOWAIT
                              | (k == PROTO_CMD_DELETE ? ARG_DELETE
                                 : ARG_ROLLBACK), &a)))
      return status;
    /* Progress for a terminal or for --json; plain scripts get none. */
    c->draw_progress = !a.nowait && !c->json && isatty (STDERR_FILENO);
    snprintf (req, sizeof req, "%s %.*s%s%s%s%s", cmd, n, a.name,
              a.mode == PROTO_DELETE_DEFER ? " defer"
              : a.mode == PROTO_DELETE_FORCE || a.force ? " force" : "",
              a.destroy_newer ? " destroy-newer" : "",
              a.nowait ? " nowait" : "",
              !a.nowait && (c->json || c->draw_progress) ? " progress" : "");
    print = k == PROTO_CMD_DELETE ? print_deleted : print_rolled_back;
    break;
  case PROTO_CMD_CREATE:
  case PROTO_CMD_HOLD:
    if ((status = parse_args (argc, argv, ARG_SESSION
                              | (k == PROTO_CMD_CREATE ? ARG_TEMPORARY : 0),
                              &a)))
      return status;
    snprintf (req, sizeof req, "%s %.*s%s", cmd, n, a.name,
              a.temporary ? " temporary" : "");
    s.name = a.name;
    if (k == PROTO_CMD_HOLD || a.temporary) {
      snprintf (s.undo, sizeof s.undo, "%s %.*s%s",
                a.temporary ? "delete" : "release", n, a.name,
                a.temporary ? " defer" : "");
      return owned (c, req, &s, s.argv != NULL); /* stdout is CMD's */
    }
    if (s.argv != NULL)
      return ctl_usage ("create: a command needs --temporary (a snapshot "
                        "that outlives it needs no command)");
    break;
  default:
    return ctl_usage ("unknown command '%s'", cmd);
  }

  status = ctl_call (c, req, &resp);
  if (status == 0) {
    if (k == PROTO_CMD_CREATE && !c->json)
      printf ("created snapshot %s\n", a.name);
    else
      show (c, resp, print);
    json_decref (resp);
  }
  return status;
}

/* The engine's name check reports through the shim: keep it quiet, the
 * parser's message says the same once. */
static void
quiet_log (const char *fmt, va_list args)
{
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "socket", required_argument, NULL, 's' },
    { "json", no_argument, NULL, 'j' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL },
  };
  struct ctl c = { .socket = getenv ("NBDSNAP_SOCKET"), .fd = -1 };
  int opt, status;

  nbdsnap_set_log_handlers (quiet_log, quiet_log);
  opterr = 0;
  while ((opt = getopt_long (argc, argv, "+:s:jhV", longopts, NULL)) != -1) {
    switch (opt) {
    case 's': c.socket = optarg; break;
    case 'j': c.json = true; break;
    case 'h': usage (stdout); return NBDSNAPCTL_EXIT_OK;
    case 'V':
      printf ("nbdsnapctl %s (admin protocol %d)\n", PACKAGE_VERSION,
              NBDSNAP_ADMIN_PROTOCOL);
      return NBDSNAPCTL_EXIT_OK;
    case ':':
      return ctl_usage ("option %s needs an argument", argv[optind - 1]);
    default:
      return ctl_usage ("unknown option %s", argv[optind - 1]);
    }
  }
  if (optind >= argc)
    return ctl_usage ("no command given");
  if (c.socket == NULL || *c.socket == '\0')
    return ctl_usage ("no admin socket: pass -s SOCKET or set "
                      "NBDSNAP_SOCKET (the server's default is "
                      "STATEDIR/admin.sock)");

  status = run_command (&c, argc - optind, argv + optind);
  ctl_close (&c);
  if (fflush (stdout) == EOF && status == 0) {
    ctl_msg ("writing output: %m");
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  return status;
}
