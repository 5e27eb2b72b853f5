/* nbdsnapctl: the command-line client of nbdsnap's admin socket.
 *
 * Notes on the design:
 *
 * - One command per invocation, one admin connection per command.  Each
 *   command builds one protocol request line (include/nbdsnap/admin.h)
 *   and prints the answer as a table or as the server's JSON (--json).
 *
 * - The socket comes from -s, -i INSTANCE (the systemd units' runtime
 *   directory), --image IMAGE (the state directory the image's mark
 *   names) or $NBDSNAP_SOCKET (ctl-client.c), never from a plain guess.
 *
 * - Global options (-s, -i, --image, -j, -H, -o, -p, -h, -V) may come
 *   before the command, after it and after its arguments (up to "--"):
 *   main takes the leading ones with getopt, global_opts_after the
 *   others out of the command's words before the command parses them;
 *   the words after a command's own option that takes an argument
 *   (command_args) are left to it.  A bad option is named in the
 *   message ("create: unknown option -bad", ctl_bad_option).
 *
 * - With --json every failure ends as one JSON object on stdout: the
 *   server's error line, or (ctl_json_error, from main) one built from
 *   the last message.
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
"Usage: nbdsnapctl [OPTIONS] COMMAND [ARGS...] [OPTIONS]\n"
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
"  stats [--prometheus]              server counters (Prometheus text\n"
"                                    format for node_exporter)\n"
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
"Options (before or after the command):\n"
"  -s, --socket SOCKET   admin socket\n"
"  -i, --instance NAME   the socket of systemd unit nbdsnap@NAME\n"
"                        (/run/nbdsnap/NAME/admin.sock)\n"
"      --image IMAGE     the socket of IMAGE's server (its state\n"
"                        directory); default: $NBDSNAP_SOCKET\n"
"  -j, --json            print the server's JSON responses; any failure\n"
"                        as one JSON error object\n"
"  -H, --no-headings     tables without headings, tab-separated\n"
"  -o, --output COLS     only these columns (list -o name,created)\n"
"  -p, --parsable        exact bytes, times as epoch seconds\n"
"  -h, --help            this help\n"
"  -V, --version         print the version\n"
"\n"
"Examples:\n"
"  nbdsnapctl -i vm1 create nightly\n"
"  nbdsnapctl list -i vm1 -H -p -o name,created,store\n"
"  nbdsnapctl --image /var/lib/images/vm1.img stats --prometheus\n"
"\n"
"Exit status: 0 ok, 1 error, 2 usage, 3 server unreachable (or lost\n"
"while CMD ran), 4 busy, 5 not found, 6 invalid name, 7 already exists,\n"
"8 permission denied.  See nbdsnapctl(1).\n");
}

/* A name with a space would change the request's words: check it here. */
int
ctl_check_name (const char *name)
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

/* The word getopt was at when it stopped on an error: an unknown letter
 * of a cluster "-xyz" leaves optind on the cluster (unless it is the
 * last letter), anything else moves it past the word. */
const char *
ctl_bad_option (char **argv)
{
  const char *w = argv[optind];

  if (optopt != 0 && optind > 0 && w != NULL && w[0] == '-'
      && w[1] != '-' && strchr (w + 1, optopt) != NULL)
    return w;
  return argv[optind > 0 ? optind - 1 : 0];
}

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
                        ctl_bad_option (argv));
    if ((need & allowed) == 0)
      return ctl_usage ("%s: unknown option %s", cmd,
                        ctl_bad_option (argv));
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
    if (ctl_check_name (a->name) != 0)
      return NBDSNAPCTL_EXIT_INVALID_NAME;
  }
  else {
    if (optind >= argc)
      return ctl_usage ("%s: missing snapshot NAME", cmd);
    a->name = argv[optind++];
    if (ctl_check_name (a->name) != 0)
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

typedef int (*print_fn) (struct ctl *c, json_t *resp);

/* Print the response: --json as received, else via print (or nothing). */
static int
show (struct ctl *c, json_t *resp, print_fn print)
{
  if (c->json)
    puts (c->line);
  else if (print)
    return print (c, resp);
  return 0;
}

static int
print_flat (struct ctl *c, json_t *resp)
{
  json_t *snap = json_object_get (resp, "snapshot");
  char state[96];

  if (snap != NULL && json_is_string (json_object_get (snap, "state")))
    json_object_set_new (snap, "state",
                         json_string (ctl_state_text (snap, state,
                                                      sizeof state)));
  return ctl_print_flat (c, NULL, snap ? snap : resp);
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

static int
print_deleted (struct ctl *c, json_t *resp)
{
  const char *name = json_string_value (json_object_get (resp, "name"));
  json_int_t revoked = json_integer_value (json_object_get (resp, "revoked"));
  json_t *moved = json_object_get (resp, "moved_bytes");
  char size[32];

  if (print_accepted (resp, "delete"))
    return 0;
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
  return 0;
}

static int
print_rolled_back (struct ctl *c, json_t *resp)
{
  const char *name = json_string_value (json_object_get (resp, "name"));
  json_int_t revoked = json_integer_value (json_object_get (resp, "revoked"));
  json_t *destroyed = json_object_get (resp, "destroyed");
  json_t *kept = json_object_get (resp, "kept");
  char size[32];

  if (print_accepted (resp, "rollback"))
    return 0;
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
  return 0;
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
  print_fn print = NULL;
  bool prometheus = false;
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
    if (k == PROTO_CMD_STATS && argc > 1
        && strcmp (argv[1], "--prometheus") == 0) {
      prometheus = true;
      argv++, argc--;
    }
    if (argc > 1 && argv[1][0] == '-' && argv[1][1] != '\0')
      return ctl_usage ("%s: unknown option %s", cmd, argv[1]);
    if (argc > 1)
      return ctl_usage ("%s: takes no arguments", cmd);
    snprintf (req, sizeof req, "%s", cmd);
    print = k == PROTO_CMD_LIST ? ctl_print_list
      : k == PROTO_CMD_CLIENTS ? ctl_print_clients
      : prometheus ? ctl_print_prometheus : print_flat;
    if (prometheus && c->json)
      return ctl_usage ("stats: --prometheus and --json exclude each "
                        "other");
    break;
  case PROTO_CMD_INFO:         /* release, holds: ctl-holds.c */
    if ((status = parse_args (argc, argv, 0, &a)))
      return status;
    snprintf (req, sizeof req, "%s %.*s", cmd, n, a.name);
    print = print_flat;
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
      status = show (c, resp, print);
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

/* The options every command takes, before or after it. */
static const struct option global_longopts[] = {
  { "socket", required_argument, NULL, 's' },
  { "instance", required_argument, NULL, 'i' },
  { "image", required_argument, NULL, 'I' },
  { "json", no_argument, NULL, 'j' },
  { "no-headings", no_argument, NULL, 'H' },
  { "output", required_argument, NULL, 'o' },
  { "parsable", no_argument, NULL, 'p' },
  { "help", no_argument, NULL, 'h' },
  { "version", no_argument, NULL, 'V' },
  { NULL },
};
#define GLOBAL_SHORTOPTS "s:i:jHo:phV"

/* Options of commands that take an argument: the word after them is
 * theirs, not a global option. */
static const char *const command_args[] = {
  "--snapshot", "--nbd-socket", "--uri-base", "--since", "--connections",
  "--from", NULL,
};

/* One global option.  Returns -1 to go on, else an exit status (-h and
 * -V: 0). */
static int
global_opt (struct ctl *c, int opt, const char *arg)
{
  switch (opt) {
  case 's': c->socket = arg; break;
  case 'i': c->instance = arg; break;
  case 'I': c->image = arg; break;
  case 'j': c->json = true; break;
  case 'H': c->no_headings = true; break;
  case 'o': c->columns = arg; break;
  case 'p': c->exact = true; break;
  case 'h': usage (stdout); return NBDSNAPCTL_EXIT_OK;
  case 'V':
    printf ("nbdsnapctl %s (admin protocol %d)\n", PACKAGE_VERSION,
            NBDSNAP_ADMIN_PROTOCOL);
    return NBDSNAPCTL_EXIT_OK;
  }
  return -1;
}

/* Global options among a command's words (argv[1..argc), up to "--"):
 * applied, and taken out of argv (*argc shrinks).  Returns -1 to go on,
 * else an exit status. */
static int
global_opts_after (struct ctl *c, int *argc, char **argv)
{
  int i, j, out = 1, r;

  for (i = 1; i < *argc; ++i) {
    const char *w = argv[i], *arg = NULL;
    int opt = 0;

    if (strcmp (w, "--") == 0) {
      while (i < *argc)
        argv[out++] = argv[i++];
      break;
    }
    for (j = 0; command_args[j]; ++j)
      if (strcmp (w, command_args[j]) == 0)
        break;
    if (command_args[j] != NULL) {      /* keep it and its argument */
      argv[out++] = argv[i];
      if (i + 1 < *argc)
        argv[out++] = argv[++i];
      continue;
    }
    if (w[0] == '-' && w[1] == '-' && w[2] != '\0') {
      size_t n = strcspn (w + 2, "=");

      for (j = 0; global_longopts[j].name; ++j)
        if (strlen (global_longopts[j].name) == n
            && strncmp (global_longopts[j].name, w + 2, n) == 0)
          break;
      if (global_longopts[j].name != NULL) {
        opt = global_longopts[j].val;
        if (global_longopts[j].has_arg) {
          if (w[2 + n] == '=')
            arg = w + 3 + n;
          else if (i + 1 < *argc)
            arg = argv[++i];
          else
            return ctl_usage ("option %s needs an argument", w);
        }
        else if (w[2 + n] == '=')
          return ctl_usage ("option --%.*s takes no argument", (int) n,
                            w + 2);
        if ((r = global_opt (c, opt, arg)) != -1)
          return r;
        continue;
      }
    }
    else if (w[0] == '-' && w[1] != '\0' && strchr ("sio", w[1])) {
      opt = w[1];
      if (w[2] != '\0')
        arg = w + 2;
      else if (i + 1 < *argc)
        arg = argv[++i];
      else
        return ctl_usage ("option %s needs an argument", w);
      if ((r = global_opt (c, opt, arg)) != -1)
        return r;
      continue;
    }
    else if (w[0] == '-' && w[1] != '\0' && w[1] != '-'
             && strspn (w + 1, "jHphV") == strlen (w + 1)) {
      for (j = 1; w[j]; ++j)
        if ((r = global_opt (c, w[j], NULL)) != -1)
          return r;
      continue;
    }
    argv[out++] = argv[i];
  }
  *argc = out;
  argv[out] = NULL;
  return -1;
}

int
main (int argc, char **argv)
{
  struct ctl c = { .fd = -1 };
  int opt, status, nargs;
  char **args = NULL;

  nbdsnap_set_log_handlers (quiet_log, quiet_log);
  /* --json's error objects need to know it before anything can fail. */
  for (opt = 1; opt < argc && strcmp (argv[opt], "--") != 0; ++opt)
    if (strcmp (argv[opt], "--json") == 0 || strcmp (argv[opt], "-j") == 0)
      c.json = true;
  opterr = 0;
  for (;;) {
    opt = getopt_long (argc, argv, "+:" GLOBAL_SHORTOPTS, global_longopts,
                       NULL);
    if (opt == -1)
      break;
    if (opt == ':') {
      status = ctl_usage ("option %s needs an argument",
                          ctl_bad_option (argv));
      goto out;
    }
    if (opt == '?') {
      status = ctl_usage ("unknown option %s", ctl_bad_option (argv));
      goto out;
    }
    if ((status = global_opt (&c, opt, optarg)) != -1)
      goto out;
  }
  if (optind >= argc) {
    status = ctl_usage ("no command given");
    goto out;
  }
  /* The command's words, without the global options among them. */
  nargs = argc - optind;
  args = calloc (nargs + 1, sizeof *args);
  if (args == NULL) {
    ctl_msg ("calloc: %m");
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }
  memcpy (args, argv + optind, nargs * sizeof *args);
  if ((status = global_opts_after (&c, &nargs, args)) != -1)
    goto out;
  if (c.socket != NULL && *c.socket == '\0') {
    status = ctl_usage ("-s: an empty path");
    goto out;
  }
  if ((c.socket != NULL) + (c.instance != NULL) + (c.image != NULL) > 1) {
    status = ctl_usage ("-s, -i and --image exclude each other");
    goto out;
  }
  if (c.socket != NULL)
    c.socket_from = "-s";

  status = run_command (&c, nargs, args);
 out:
  if (fflush (stdout) == EOF && status == 0) {
    ctl_msg ("writing output: %m");
    status = NBDSNAPCTL_EXIT_ERROR;
  }
  ctl_json_error (&c, status);
  ctl_close (&c);
  fflush (stdout);
  free (args);
  return status;
}
