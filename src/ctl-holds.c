/* nbdsnapctl: named holds, zfs style (hold TAG NAME, release TAG NAME,
 * holds [NAME]).
 *
 * Notes on the design
 *
 * A named hold (protocol "hold NAME tag=TAG") is persistent: the server
 * records it in its state directory and keeps it across restarts until
 * "release NAME tag=TAG", so one short nbdsnapctl run makes it and
 * another ends it.  A connection hold ("hold NAME [-- CMD]", handled in
 * nbdsnapctl.c and ctl-session.c) lasts as long as that nbdsnapctl's
 * connection; "release NAME" alone can therefore only work inside
 * "nbdsnapctl shell", and outside it is a usage error that says so.
 *
 * Which form a command line is: ctl_holds_wants counts the words that
 * are not options before any "--": "hold" with two is named, with one it
 * is a connection hold; "release" and "holds" always come here.
 * -j/--json may also come after the command here (the global option
 * parser is nbdsnapctl.c's).
 */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnap/engine.h"
#include "nbdsnapctl.h"

/* The words of argv[1..] that are not options, up to "--"; *dashdash:
 * a "--" was seen. */
static int
words (int argc, char **argv, char **out, int max, bool *dashdash,
       const char **badopt, bool *json)
{
  int i, n = 0;

  *dashdash = false;
  *badopt = NULL;
  for (i = 1; i < argc; ++i) {
    if (strcmp (argv[i], "--") == 0) {
      *dashdash = true;
      break;
    }
    if (argv[i][0] == '-' && argv[i][1] != '\0') {
      if (strcmp (argv[i], "-j") == 0 || strcmp (argv[i], "--json") == 0) {
        if (json)
          *json = true;
      }
      else if (*badopt == NULL)
        *badopt = argv[i];
      continue;
    }
    if (n < max)
      out[n] = argv[i];
    n++;
  }
  return n;
}

bool
ctl_holds_wants (int argc, char **argv)
{
  char *w[2];
  bool dd;
  const char *bad;

  if (strcmp (argv[0], "holds") == 0 || strcmp (argv[0], "release") == 0)
    return true;
  return strcmp (argv[0], "hold") == 0
    && words (argc, argv, w, 2, &dd, &bad, NULL) >= 2;
}

/* A refusal made here, before the server is asked: the message on
 * stderr and, with --json, the error object on stdout. */
static int __attribute__ ((format (printf, 3, 4)))
refuse (struct ctl *c, enum proto_err kind, const char *fmt, ...)
{
  char msg[512];
  va_list args;
  json_t *r;
  char *s;
  size_t len;

  va_start (args, fmt);
  vsnprintf (msg, sizeof msg, fmt, args);
  va_end (args);
  if (kind == PROTO_ERR_BAD_REQUEST)
    ctl_usage ("%s", msg);
  else
    ctl_msg ("%s", msg);
  if (c->json && (r = proto_error (kind, 0, "%s", msg)) != NULL) {
    if ((s = proto_format (r, &len)) != NULL)
      fputs (s, stdout);
    free (s);
    json_decref (r);
    c->json_done = true;        /* main prints no second object */
  }
  return proto_err_exit_status (kind);
}

static int
check (struct ctl *c, const char *what, const char *word)
{
  if (!nbdsnap_name_ok (word))
    return refuse (c, PROTO_ERR_INVALID_NAME, "invalid %s '%.80s': "
                   NBDSNAP_NAME_RULE, what, word);
  return 0;
}

static const char *
str (json_t *o, const char *key)
{
  const char *s = json_string_value (json_object_get (o, key));
  return s ? s : "?";
}

/* The table of "holds" (ctl_table: -H, -o, -p): TAG NAME CREATED, and
 * CONN for a connection's hold (its TAG is "-"). */
static int
print_holds (struct ctl *c, json_t *resp)
{
  static const struct ctl_column cols[] = {
    { "TAG", "tag", CTL_COL_STR }, { "NAME", "name", CTL_COL_STR },
    { "CREATED", "created", CTL_COL_TIME }, { "CONN", "conn", CTL_COL_INT },
  };

  return ctl_table (c, cols, sizeof cols / sizeof cols[0],
                    json_object_get (resp, "holds"));
}

static int
call (struct ctl *c, const char *req, int (*print) (struct ctl *, json_t *))
{
  json_t *resp;
  int status = ctl_call (c, req, &resp);

  if (status != 0)
    return status;
  if (c->json)
    puts (c->line);
  else
    status = print (c, resp);
  json_decref (resp);
  return status;
}

static int
print_held (struct ctl *c, json_t *resp)
{
  printf ("holding %s with tag %s (persistent: 'nbdsnapctl release %s %s' "
          "ends it)\n", str (resp, "name"), str (resp, "tag"),
          str (resp, "tag"), str (resp, "name"));
  return 0;
}

static int
print_released (struct ctl *c, json_t *resp)
{
  printf ("released hold %s on %s (%" JSON_INTEGER_FORMAT " named hold(s) "
          "left)\n", str (resp, "tag"), str (resp, "name"),
          json_integer_value (json_object_get (resp, "named_holds")));
  return 0;
}

int
ctl_holds (struct ctl *c, int argc, char **argv)
{
  const char *cmd = argv[0], *bad;
  char *w[3], req[NBDSNAP_ADMIN_LINE_MAX];
  bool dd;
  int n = words (argc, argv, w, 3, &dd, &bad, &c->json), st;

  if (bad != NULL)
    return refuse (c, PROTO_ERR_BAD_REQUEST, "%s: unknown option %s", cmd,
                   bad);
  if (strcmp (cmd, "holds") == 0) {
    if (n > 1 || dd)
      return refuse (c, PROTO_ERR_BAD_REQUEST,
                     "holds: too many arguments (it takes [NAME])");
    if (n == 1 && (st = check (c, "snapshot name", w[0])) != 0)
      return st;
    snprintf (req, sizeof req, "holds%s%s", n ? " " : "", n ? w[0] : "");
    return call (c, req, print_holds);
  }
  if (strcmp (cmd, "release") == 0 && n == 1 && !dd)
    return refuse (c, PROTO_ERR_BAD_REQUEST,
                   "release %.64s: a connection hold (hold NAME [-- CMD], "
                   "run) ends with its nbdsnapctl, so there is none to "
                   "release here; a named hold is released with 'release "
                   "TAG NAME' ('nbdsnapctl holds %.64s' lists them); "
                   "'release NAME' works inside 'nbdsnapctl shell' only",
                   w[0], w[0]);
  if (n != 2 || dd)
    return refuse (c, PROTO_ERR_BAD_REQUEST, "%s: %s TAG NAME%s", cmd,
                   n < 2 ? "missing arguments: it takes"
                   : "too many arguments: it takes",
                   strcmp (cmd, "hold") == 0
                   ? " (persistent) or hold NAME [-- CMD] (while CMD runs)"
                   : "");
  if ((st = check (c, "tag", w[0])) != 0
      || (st = check (c, "snapshot name", w[1])) != 0)
    return st;
  snprintf (req, sizeof req, "%s %s tag=%s", cmd, w[1], w[0]);
  return call (c, req, strcmp (cmd, "hold") == 0 ? print_held
               : print_released);
}
