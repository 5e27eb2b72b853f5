/* nbdsnapctl: commands that keep the admin connection open.
 *
 * Notes on the design:
 *
 * - Holds and temporary snapshots live exactly as long as the admin
 *   connection that made them (the server releases or deletes them when
 *   it closes, also when nbdsnapctl is killed).  So "run", "hold" and
 *   "create --temporary" keep the connection open, either while a command
 *   runs (fork/exec, the command's exit status is ours, 128+N if it was
 *   killed by signal N) or, without a command, until SIGINT, SIGTERM,
 *   SIGHUP or end of standard input.
 *
 * - Then they undo explicitly ("release NAME" / "delete NAME defer") and
 *   wait for the answer before exiting: closing alone would do, but only
 *   eventually, and a script that runs the next nbdsnapctl command at once
 *   must find the hold gone.
 *
 * - Signals are taken with signalfd, one poll loop watches the signals,
 *   the admin socket (the server going away) and standard input.  A signal
 *   sent to nbdsnapctl alone with kill(1) is passed on to the command; one
 *   from the terminal (Ctrl-C) reached the command's process group already.
 */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nbdsnapctl.h"

/* Percent-encode a path for a URI query value. */
static char *
uri_encode (const char *s)
{
  static const char hex[] = "0123456789ABCDEF";
  char *out = malloc (strlen (s) * 3 + 1), *o = out;

  if (out == NULL)
    return NULL;
  for (; *s; ++s) {
    unsigned char ch = *s;
    if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')
        || (ch >= '0' && ch <= '9') || strchr ("-._~/", ch))
      *o++ = ch;
    else {
      *o++ = '%';
      *o++ = hex[ch >> 4];
      *o++ = hex[ch & 15];
    }
  }
  *o = '\0';
  return out;
}

char *
ctl_export_uri (const struct ctl_session *s, int *status)
{
  char *uri = NULL, *path;
  int r;

  *status = 0;
  if (s->uri_base != NULL) {
    /* scheme://authority[/][?query]  ->  scheme://authority/NAME[?query] */
    const char *p = strstr (s->uri_base, "://"), *end, *rest;

    if (p == NULL || p == s->uri_base) {
      *status = ctl_usage ("--uri-base: not a URI: %s", s->uri_base);
      return NULL;
    }
    end = p + 3 + strcspn (p + 3, "/?#");
    rest = end;
    if (*rest == '/') {
      if (strcspn (rest, "?#") != 1) {
        *status = ctl_usage ("--uri-base %s: must not name an export "
                             "(leave the path empty)", s->uri_base);
        return NULL;
      }
      rest++;
    }
    r = asprintf (&uri, "%.*s/%s%s", (int) (end - s->uri_base), s->uri_base,
                  s->name, rest);
  }
  else if (s->nbd_socket != NULL) {
    path = uri_encode (s->nbd_socket);
    r = path ? asprintf (&uri, "nbd+unix:///%s?socket=%s", s->name, path)
      : -1;
    free (path);
  }
  else
    return NULL;
  if (r == -1) {
    ctl_msg ("asprintf: %m");
    *status = NBDSNAPCTL_EXIT_ERROR;
    return NULL;
  }
  return uri;
}

/* In the child: the environment, the signal mask back, exec. */
static void __attribute__ ((noreturn))
child (struct ctl *c, const struct ctl_session *s, const sigset_t *old)
{
  int err;

  sigprocmask (SIG_SETMASK, old, NULL);
  if (setenv ("NBDSNAP_EXPORT", s->name, 1) == -1
      || setenv ("NBDSNAP_SOCKET", c->socket, 1) == -1
      || (s->uri ? setenv ("NBDSNAP_URI", s->uri, 1)
          : unsetenv ("NBDSNAP_URI")) == -1) {
    ctl_msg ("setenv: %m");
    _exit (126);
  }
  execvp (s->argv[0], s->argv);
  err = errno;
  ctl_msg ("%s: %m", s->argv[0]);
  _exit (err == ENOENT ? 127 : 126);
}

/* The server sent a line or closed while we were waiting.  Progress
 * lines (a session asks for none, but the client copes with them
 * anywhere) are skipped: a final line follows them. */
static void
admin_lost (struct ctl *c, const struct ctl_session *s)
{
  const char *why = "the server closed the admin connection";
  json_t *r = NULL;
  enum proto_err kind;
  bool got;

  while ((got = ctl_read_line (c) == 0)
         && (r = proto_parse_progress (c->line, strlen (c->line))) != NULL)
    json_decref (r);
  if (got && (r = proto_parse_response (c->line, strlen (c->line), &kind)))
    why = json_string_value (json_object_get (r, "message"));
  ctl_msg ("%s: %s", s->name, why ? why : "admin connection lost");
  json_decref (r);
  close (c->fd);
  c->fd = -1;
}

int
ctl_session_run (struct ctl *c, const struct ctl_session *s)
{
  sigset_t mask, old;
  struct signalfd_siginfo si;
  int sfd, status = NBDSNAPCTL_EXIT_OK, wstatus;
  pid_t pid = -1;
  bool done = false;
  char scratch[4096];
  json_t *r;

  sigemptyset (&mask);
  sigaddset (&mask, SIGINT);
  sigaddset (&mask, SIGTERM);
  sigaddset (&mask, SIGHUP);
  sigaddset (&mask, SIGQUIT);
  sigaddset (&mask, SIGCHLD);
  sigprocmask (SIG_BLOCK, &mask, &old);
  sfd = signalfd (-1, &mask, SFD_CLOEXEC);
  if (sfd == -1) {
    ctl_msg ("signalfd: %m");
    status = NBDSNAPCTL_EXIT_ERROR;
    goto out;
  }

  fflush (stdout);
  fflush (stderr);
  if (s->argv != NULL) {
    pid = fork ();
    if (pid == 0)
      child (c, s, &old);
    if (pid == -1) {
      ctl_msg ("fork: %m");
      status = NBDSNAPCTL_EXIT_ERROR;
      goto out;
    }
  }
  else if (isatty (STDIN_FILENO))
    ctl_msg ("holding %s until Ctrl-C or end of input (Ctrl-D)", s->name);

  while (!done) {
    struct pollfd pfd[3] = {
      { .fd = sfd, .events = POLLIN },
      { .fd = c->fd, .events = POLLIN },              /* -1 once lost */
      { .fd = s->argv ? -1 : STDIN_FILENO, .events = POLLIN },
    };

    if (poll (pfd, 3, -1) == -1) {
      if (errno == EINTR)
        continue;
      ctl_msg ("poll: %m");
      status = NBDSNAPCTL_EXIT_ERROR;
      break;
    }
    if (pfd[0].revents && read (sfd, &si, sizeof si) == sizeof si) {
      if (si.ssi_signo == SIGCHLD) {
        if (pid > 0 && waitpid (pid, &wstatus, WNOHANG) == pid) {
          done = true;
          status = WIFEXITED (wstatus) ? WEXITSTATUS (wstatus)
            : 128 + WTERMSIG (wstatus);
        }
      }
      else if (pid > 0) {
        if (si.ssi_code == SI_USER || si.ssi_code == SI_QUEUE)
          kill (pid, si.ssi_signo);
      }
      else
        done = true;            /* a hold ends with a signal: success */
    }
    if (pfd[1].revents) {
      admin_lost (c, s);
      if (pid <= 0) {
        status = NBDSNAPCTL_EXIT_UNREACHABLE;
        done = true;
      }
    }
    if (pfd[2].revents) {
      ssize_t n = read (STDIN_FILENO, scratch, sizeof scratch);
      if (n == 0 || (n == -1 && errno != EINTR && errno != EAGAIN))
        done = true;
    }
  }

  if (c->fd >= 0) {
    c->quiet = true;
    if (ctl_call (c, s->undo, &r) == 0)
      json_decref (r);
  }
 out:
  if (sfd >= 0)
    close (sfd);
  sigprocmask (SIG_SETMASK, &old, NULL);
  return status;
}

/* The first of the server's "nbd" URIs (hello), or NULL. */
static char *
hello_nbd_uri (struct ctl *c, int *status)
{
  json_t *resp, *uri;
  bool quiet = c->quiet;
  char *r = NULL;

  c->quiet = true;              /* --json: no hello line on stdout */
  *status = ctl_call (c, "hello", &resp);
  c->quiet = quiet;
  if (*status != 0) {
    ctl_msg ("hello: cannot ask the server where it serves NBD");
    return NULL;
  }
  uri = json_array_get (json_object_get (resp, "nbd"), 0);
  if (json_is_string (uri))
    r = strdup (json_string_value (uri));
  json_decref (resp);
  return r;
}

char *
ctl_nbd_uri (struct ctl *c, const struct ctl_session *s,
             const char *export, int *status)
{
  struct ctl_session t = { .name = export };
  char *base = NULL, *uri;

  *status = 0;
  if (s != NULL) {
    t.uri_base = s->uri_base;
    t.nbd_socket = s->nbd_socket;
  }
  if (t.uri_base == NULL && t.nbd_socket == NULL)
    t.nbd_socket = getenv ("NBDSNAP_NBD_SOCKET");
  if (t.uri_base == NULL && t.nbd_socket == NULL) {
    t.uri_base = base = hello_nbd_uri (c, status);
    if (*status != 0)
      return NULL;
    if (base == NULL) {
      ctl_msg ("the server does not say where it serves NBD (it found no "
               "listening socket): pass --nbd-socket PATH or --uri-base "
               "URI");
      *status = NBDSNAPCTL_EXIT_USAGE;
      return NULL;
    }
  }
  uri = ctl_export_uri (&t, status);
  free (base);
  return uri;
}
