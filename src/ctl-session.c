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
 *   the admin socket (the server going away) and standard input.
 *
 * - The command runs in a process group of its own (pgid = its pid), so
 *   that everything it started can be signalled at once.  When standard
 *   input is the terminal and nbdsnapctl is in the foreground, the
 *   command's group gets the terminal (as a shell gives it to a job) and
 *   nbdsnapctl takes it back at the end: Ctrl-C then reaches the command
 *   directly, and an interactive command can read.  A signal sent to
 *   nbdsnapctl (kill(1), or from a terminal the command does not have)
 *   is passed on to the command's group.
 *
 * - The command must not outlive nbdsnapctl, however it ends, even by
 *   SIGKILL: its hold or temporary snapshot goes with the connection.
 *   The command gets PR_SET_PDEATHSIG (SIGTERM), and a watchdog process
 *   (a second child, in nbdsnapctl's group, ignoring the terminal's
 *   signals) waits on a pipe only nbdsnapctl holds: at end of file
 *   without the "done" byte it sends SIGTERM to the command's group, and
 *   SIGKILL 5 s later if the group is still there.  After a normal end
 *   nbdsnapctl writes the byte and the watchdog exits quietly (what the
 *   command left running in the background is left alone, as before).
 *
 * - The server stopping (the admin connection closing) while the command
 *   runs loses the hold: nbdsnapctl sends SIGTERM to the command's group
 *   (SIGKILL after 5 s), waits for it and exits with
 *   NBDSNAPCTL_EXIT_UNREACHABLE (3), whatever the command's status was.
 */
#include <config.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
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

/* How long the command's group has between SIGTERM and SIGKILL. */
#define KILL_GRACE_SECONDS 5

/* In the child: its own process group (with the terminal if
 * nbdsnapctl had it), death with nbdsnapctl, the environment, the
 * signal mask back, exec. */
static void __attribute__ ((noreturn))
child (struct ctl *c, const struct ctl_session *s, const sigset_t *old,
       pid_t parent, bool terminal)
{
  sigset_t ttou;
  int err;

  setpgid (0, 0);
  if (terminal) {
    /* From a background group: SIGTTOU must not stop us. */
    sigemptyset (&ttou);
    sigaddset (&ttou, SIGTTOU);
    sigprocmask (SIG_BLOCK, &ttou, NULL);
    tcsetpgrp (STDIN_FILENO, getpid ());
  }
  if (prctl (PR_SET_PDEATHSIG, SIGTERM) == -1 || getppid () != parent)
    _exit (126);                /* nbdsnapctl is gone already */
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

/* The watchdog: SIGTERM, then SIGKILL, to group pgid when fd reads end
 * of file without a byte (nbdsnapctl is gone).  Returns its pid, -1. */
static pid_t
watchdog (pid_t pgid, int *wfd, int admin_fd)
{
  int fds[2], null;
  pid_t pid;
  char b;
  ssize_t n;
  int i;

  if (pipe2 (fds, O_CLOEXEC) == -1)
    return -1;
  pid = fork ();
  if (pid == -1) {
    close (fds[0]);
    close (fds[1]);
    return -1;
  }
  if (pid > 0) {
    close (fds[0]);
    *wfd = fds[1];
    return pid;
  }
  /* The watchdog.  The signals from the terminal are for the others. */
  signal (SIGINT, SIG_IGN);
  signal (SIGTERM, SIG_IGN);
  signal (SIGHUP, SIG_IGN);
  signal (SIGQUIT, SIG_IGN);
  close (fds[1]);
  if (admin_fd >= 0)
    close (admin_fd);           /* the hold ends with nbdsnapctl */
  null = open ("/dev/null", O_RDWR);
  if (null >= 0) {              /* no reader's pipe held open by us */
    dup2 (null, STDIN_FILENO);
    dup2 (null, STDOUT_FILENO);
    dup2 (null, STDERR_FILENO);
    if (null > STDERR_FILENO)
      close (null);
  }
  do
    n = read (fds[0], &b, 1);
  while (n == -1 && errno == EINTR);
  if (n == 1)
    _exit (0);                  /* a normal end */
  if (kill (-pgid, SIGTERM) == -1)
    _exit (0);
  for (i = 0; i < KILL_GRACE_SECONDS * 10; ++i) {
    usleep (100000);
    if (kill (-pgid, 0) == -1)
      _exit (0);
  }
  kill (-pgid, SIGKILL);
  _exit (0);
}

int
ctl_session_run (struct ctl *c, const struct ctl_session *s)
{
  sigset_t mask, old, ttou;
  struct signalfd_siginfo si;
  int sfd, status = NBDSNAPCTL_EXIT_OK, wstatus, wfd = -1;
  pid_t pid = -1, wpid = -1;
  bool done = false, lost = false, terminal = false;
  double killed_at = 0;
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
    pid_t self = getpid ();

    terminal = isatty (STDIN_FILENO) && tcgetpgrp (STDIN_FILENO) == getpgrp ();
    pid = fork ();
    if (pid == 0)
      child (c, s, &old, self, terminal);
    if (pid == -1) {
      ctl_msg ("fork: %m");
      status = NBDSNAPCTL_EXIT_ERROR;
      goto out;
    }
    setpgid (pid, pid);         /* also here: no race with kill (-pid) */
    wpid = watchdog (pid, &wfd, c->fd);
    if (wpid == -1)
      ctl_msg ("warning: no watchdog for %s (%m): if nbdsnapctl is "
               "killed, what it started may stay", s->argv[0]);
    /* What the command wrote is its own: no error object after it. */
    c->json_done = true;
  }
  else if (isatty (STDIN_FILENO))
    ctl_msg ("holding %s until Ctrl-C or end of input (Ctrl-D)", s->name);

  while (!done) {
    struct pollfd pfd[3] = {
      { .fd = sfd, .events = POLLIN },
      { .fd = c->fd, .events = POLLIN },              /* -1 once lost */
      { .fd = s->argv ? -1 : STDIN_FILENO, .events = POLLIN },
    };
    int timeout = lost && killed_at > 0 ? 100 : -1;

    if (lost && killed_at > 0 && ctl_now () - killed_at > KILL_GRACE_SECONDS) {
      kill (-pid, SIGKILL);
      killed_at = 0;
    }
    if (poll (pfd, 3, timeout) == -1) {
      if (errno == EINTR)
        continue;
      ctl_msg ("poll: %m");
      status = NBDSNAPCTL_EXIT_ERROR;
      break;
    }
    if (pfd[0].revents && read (sfd, &si, sizeof si) == sizeof si) {
      if (si.ssi_signo == SIGCHLD) {
        if (wpid > 0 && waitpid (wpid, NULL, WNOHANG) == wpid)
          wpid = -1;            /* it should not end first: no harm */
        if (pid > 0 && waitpid (pid, &wstatus, WNOHANG) == pid) {
          done = true;
          status = lost ? NBDSNAPCTL_EXIT_UNREACHABLE
            : WIFEXITED (wstatus) ? WEXITSTATUS (wstatus)
            : 128 + WTERMSIG (wstatus);
        }
      }
      else if (pid > 0) {
        /* The terminal's own signals reached the command if it has the
         * terminal. */
        if (!terminal || si.ssi_code == SI_USER || si.ssi_code == SI_QUEUE)
          kill (-pid, si.ssi_signo);
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
      else {
        ctl_msg ("%s: the hold is lost: stopping %s", s->name,
                 s->argv[0]);
        lost = true;
        kill (-pid, SIGTERM);
        killed_at = ctl_now ();
        c->json_done = false;   /* this failure is ours to report */
      }
    }
    if (pfd[2].revents) {
      ssize_t n = read (STDIN_FILENO, scratch, sizeof scratch);
      if (n == 0 || (n == -1 && errno != EINTR && errno != EAGAIN))
        done = true;
    }
  }

  if (pid > 0 && !done)         /* we give up on it: it goes too */
    kill (-pid, SIGTERM);
  if (terminal) {
    sigemptyset (&ttou);
    sigaddset (&ttou, SIGTTOU);
    sigprocmask (SIG_BLOCK, &ttou, NULL);
    tcsetpgrp (STDIN_FILENO, getpgrp ());
  }
  if (wfd >= 0) {
    if (done && write (wfd, "d", 1) != 1)
      ctl_msg ("watchdog: %m");
    close (wfd);
  }
  if (wpid > 0)
    waitpid (wpid, NULL, 0);
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
