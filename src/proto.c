/* nbdsnap: the admin protocol: request parsing, response building, and the
 * table of error kinds (see include/nbdsnap/admin.h for the wire format).
 *
 * Notes on the design:
 *
 * - No nbdkit and no libev here: the plugin's admin loop, nbdsnapctl, the
 *   Check suite and the fuzzer all link this file.  It keeps no state and
 *   takes no locks, so the admin thread may call it freely.
 *
 * - The parser never trusts the line: it is given a length, not a C
 *   string, and refuses NULs, invalid UTF-8 and control characters before
 *   it splits words, so that nothing after it (names, messages, logs) can
 *   see a byte the protocol does not allow.  Names are checked with the
 *   engine's own nbdsnap_name_ok (), so the protocol and the engine can
 *   never disagree about what a name is.
 *
 * - The error table below is the single definition of each kind's wire
 *   string, default errno and nbdsnapctl exit status.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnap/admin.h"
#include "nbdsnap/engine.h"

/* Longest word quoted back in an error message. */
#define QUOTE_MAX 32
/* Longest error message sent in a response. */
#define MESSAGE_MAX 1024

/* Keyword flags.  A flag word sets one bit; commands[] says which bits a
 * command takes. */
enum {
  FLAG_TEMPORARY = 1,
  FLAG_DEFER = 2,
  FLAG_FORCE = 4,
  FLAG_DESTROY_NEWER = 8,
  FLAG_NOWAIT = 16,
  FLAG_PROGRESS = 32,
};
#define FLAG_COUNT 6

static const char *const flag_names[FLAG_COUNT] = {
  "temporary", "defer", "force", "destroy-newer", "nowait", "progress",
};

static const struct {
  const char *name;
  bool takes_name;
  unsigned flags;                   /* FLAG_* it accepts, each once */
} commands[PROTO_CMD__COUNT] = {
  [PROTO_CMD_HELLO]    = { "hello",    false, 0 },
  [PROTO_CMD_CREATE]   = { "create",   true,  FLAG_TEMPORARY },
  [PROTO_CMD_DELETE]   = { "delete",   true,  FLAG_DEFER | FLAG_FORCE
                                              | FLAG_NOWAIT | FLAG_PROGRESS },
  [PROTO_CMD_LIST]     = { "list",     false, 0 },
  [PROTO_CMD_INFO]     = { "info",     true,  0 },
  [PROTO_CMD_CLIENTS]  = { "clients",  false, 0 },
  [PROTO_CMD_HOLD]     = { "hold",     true,  0 },
  [PROTO_CMD_RELEASE]  = { "release",  true,  0 },
  [PROTO_CMD_CHANGES]  = { "changes",  true,  0 },
  [PROTO_CMD_STATS]    = { "stats",    false, 0 },
  [PROTO_CMD_ROLLBACK] = { "rollback", true,  FLAG_FORCE | FLAG_DESTROY_NEWER
                                              | FLAG_NOWAIT | FLAG_PROGRESS },
  [PROTO_CMD_HOLDS]    = { "holds",    false, 0 },     /* [NAME] */
};

static const struct {
  const char *name;
  int errnum;
  int exit_status;
} errors[PROTO_ERR__COUNT] = {
  [PROTO_ERR_NONE]            = { "none", 0, NBDSNAPCTL_EXIT_OK },
  [PROTO_ERR_BAD_REQUEST]     = { "bad-request", EINVAL,
                                  NBDSNAPCTL_EXIT_USAGE },
  [PROTO_ERR_UNKNOWN_COMMAND] = { "unknown-command", ENOSYS,
                                  NBDSNAPCTL_EXIT_USAGE },
  [PROTO_ERR_LINE_TOO_LONG]   = { "line-too-long", EMSGSIZE,
                                  NBDSNAPCTL_EXIT_USAGE },
  [PROTO_ERR_INVALID_NAME]    = { "invalid-name", EINVAL,
                                  NBDSNAPCTL_EXIT_INVALID_NAME },
  [PROTO_ERR_NOT_FOUND]       = { "not-found", ENOENT,
                                  NBDSNAPCTL_EXIT_NOT_FOUND },
  [PROTO_ERR_NOT_HELD]        = { "not-held", ENOENT,
                                  NBDSNAPCTL_EXIT_NOT_FOUND },
  [PROTO_ERR_EXISTS]          = { "exists", EEXIST, NBDSNAPCTL_EXIT_EXISTS },
  [PROTO_ERR_BUSY]            = { "busy", EBUSY, NBDSNAPCTL_EXIT_BUSY },
  [PROTO_ERR_READONLY]        = { "readonly", EROFS, NBDSNAPCTL_EXIT_ERROR },
  [PROTO_ERR_NO_SPACE]        = { "no-space", ENOSPC, NBDSNAPCTL_EXIT_ERROR },
  [PROTO_ERR_IO]              = { "io", EIO, NBDSNAPCTL_EXIT_ERROR },
  [PROTO_ERR_PERMISSION]      = { "permission", EACCES,
                                  NBDSNAPCTL_EXIT_PERMISSION },
  [PROTO_ERR_LIMIT]           = { "limit", EAGAIN, NBDSNAPCTL_EXIT_ERROR },
  [PROTO_ERR_TOO_LARGE]       = { "too-large", E2BIG, NBDSNAPCTL_EXIT_ERROR },
  [PROTO_ERR_SHUTTING_DOWN]   = { "shutting-down", ESHUTDOWN,
                                  NBDSNAPCTL_EXIT_UNREACHABLE },
  [PROTO_ERR_INTERNAL]        = { "internal", EIO, NBDSNAPCTL_EXIT_ERROR },
};

/* The errnos the engine and the plugin use, by name. */
#define E(x) { x, #x }
static const struct {
  int errnum;
  const char *name;
} errno_names[] = {
  E (EPERM), E (ENOENT), E (EINTR), E (EIO), E (ENXIO), E (E2BIG),
  E (EBADF), E (EAGAIN), E (ENOMEM), E (EACCES), E (EFAULT), E (EBUSY),
  E (EEXIST), E (ENODEV), E (EINVAL), E (ENFILE), E (EMFILE), E (EFBIG),
  E (ENOSPC), E (ESPIPE), E (EROFS), E (EPIPE), E (ERANGE), E (ENAMETOOLONG),
  E (ENOSYS), E (EOVERFLOW), E (EILSEQ), E (EBADMSG), E (EMSGSIZE),
  E (ENOTSUP), E (ECONNRESET), E (ESHUTDOWN), E (ETIMEDOUT), E (EDQUOT),
  E (ESTALE), E (ECANCELED),
};
#undef E

const char *
proto_cmd_name (enum proto_cmd cmd)
{
  if ((unsigned) cmd >= PROTO_CMD__COUNT)
    return NULL;
  return commands[cmd].name;
}

int
proto_cmd_from_name (const char *name)
{
  for (int i = 0; i < PROTO_CMD__COUNT; ++i)
    if (strcmp (commands[i].name, name) == 0)
      return i;
  return -1;
}

const char *
proto_err_name (enum proto_err kind)
{
  if ((unsigned) kind >= PROTO_ERR__COUNT)
    kind = PROTO_ERR_INTERNAL;
  return errors[kind].name;
}

int
proto_err_from_name (const char *name)
{
  for (int i = 0; i < PROTO_ERR__COUNT; ++i)
    if (strcmp (errors[i].name, name) == 0)
      return i;
  return -1;
}

int
proto_err_errno (enum proto_err kind)
{
  if ((unsigned) kind >= PROTO_ERR__COUNT)
    kind = PROTO_ERR_INTERNAL;
  return errors[kind].errnum;
}

int
proto_err_exit_status (enum proto_err kind)
{
  if ((unsigned) kind >= PROTO_ERR__COUNT)
    kind = PROTO_ERR_INTERNAL;
  return errors[kind].exit_status;
}

enum proto_err
proto_err_from_errno (int errnum)
{
  switch (errnum) {
  case 0:            return PROTO_ERR_NONE;
  case EINVAL:       return PROTO_ERR_BAD_REQUEST;
  case ENOSYS:       return PROTO_ERR_UNKNOWN_COMMAND;
  case ENOENT:       return PROTO_ERR_NOT_FOUND;
  case EEXIST:       return PROTO_ERR_EXISTS;
  case EBUSY:        return PROTO_ERR_BUSY;
  case EROFS:        return PROTO_ERR_READONLY;
  case ENOSPC:
  case EDQUOT:
  case EFBIG:        return PROTO_ERR_NO_SPACE;
  case EIO:          return PROTO_ERR_IO;
  case EACCES:
  case EPERM:        return PROTO_ERR_PERMISSION;
  case EAGAIN:
  case EMFILE:
  case ENFILE:       return PROTO_ERR_LIMIT;
  case E2BIG:
  case EMSGSIZE:     return PROTO_ERR_TOO_LARGE;
  case ESHUTDOWN:
  case ECANCELED:    return PROTO_ERR_SHUTTING_DOWN;  /* a job stopped by
                                                         admin_stop */
  default:           return PROTO_ERR_INTERNAL;
  }
}

const char *
proto_errno_name (int errnum)
{
  for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; ++i)
    if (errno_names[i].errnum == errnum)
      return errno_names[i].name;
  return NULL;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if invalid. */
static size_t
utf8_seq (const unsigned char *s, size_t len)
{
  uint32_t cp;
  size_t n;

  if (s[0] < 0x80)
    return 1;
  else if (s[0] >= 0xc2 && s[0] <= 0xdf)
    n = 2, cp = s[0] & 0x1f;
  else if (s[0] >= 0xe0 && s[0] <= 0xef)
    n = 3, cp = s[0] & 0x0f;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4)
    n = 4, cp = s[0] & 0x07;
  else
    return 0;                   /* continuation byte, 0xc0/0xc1, > 0xf4 */
  if (len < n)
    return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) /* overlong */
      || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
    return 0;
  return n;
}

bool
proto_utf8_valid (const char *s, size_t len)
{
  const unsigned char *p = (const unsigned char *) s;

  while (len > 0) {
    size_t n = utf8_seq (p, len);
    if (n == 0)
      return false;
    p += n;
    len -= n;
  }
  return true;
}

static int
parse_fail (struct proto_parse_error *perr, enum proto_err kind,
            const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static int
parse_fail (struct proto_parse_error *perr, enum proto_err kind,
            const char *fmt, ...)
{
  va_list args;

  perr->kind = kind;
  va_start (args, fmt);
  vsnprintf (perr->message, sizeof perr->message, fmt, args);
  va_end (args);
  return -1;
}

/* How many bytes of a word to quote back: at most QUOTE_MAX, never
 * cutting a UTF-8 sequence (the line was checked to be valid UTF-8). */
static int
quote_len (const char *w, size_t len)
{
  if (len <= QUOTE_MAX)
    return (int) len;
  len = QUOTE_MAX;
  while (len > 0 && ((unsigned char) w[len] & 0xc0) == 0x80)
    len--;
  return (int) len;
}

/* The most flags a command takes (rollback: force destroy-newer nowait
 * progress).  One flag word more than that is unknown or repeated, so the
 * parser keeps the command, the name, FLAGS_MAX flags and one more. */
#define FLAGS_MAX 4
#define WORDS_MAX (2 + FLAGS_MAX + 1)

/* "a, b or c": the flags in mask, for messages. */
static void
flag_list (char *buf, size_t len, unsigned mask)
{
  int n = 0, total = __builtin_popcount (mask);
  size_t o = 0;

  buf[0] = '\0';
  for (int i = 0; i < FLAG_COUNT && o < len; ++i) {
    if (!(mask & (1u << i)))
      continue;
    n++;
    o += snprintf (buf + o, len - o, "%s%s",
                   n == 1 ? "" : n == total ? " or " : ", ", flag_names[i]);
  }
}

/* A decimal value word "KEY=N" (no sign, no spaces): 1 and *v if it is
 * KEY's, 0 if the word is not KEY=..., -1 (after parse_fail) if N is
 * bad. */
static int
value_word (struct proto_parse_error *perr, const char *key,
            const char *w, size_t len, uint64_t *v)
{
  size_t k = strlen (key), i;
  uint64_t n = 0;

  if (len <= k || memcmp (w, key, k) != 0 || w[k] != '=')
    return 0;
  if (len == k + 1 || len - k - 1 > 20)
    goto bad;
  for (i = k + 1; i < len; ++i) {
    unsigned d = w[i] - '0';

    if (w[i] < '0' || w[i] > '9' || n > UINT64_MAX / 10
        || (n == UINT64_MAX / 10 && d > UINT64_MAX % 10))
      goto bad;
    n = n * 10 + d;
  }
  *v = n;
  return 1;
 bad:
  return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                     "changes: bad value in '%.*s' (a decimal number)",
                     quote_len (w, len), w);
}

/* changes NAME [NAME2] [offset=N] [limit=N]: words from the third on. */
static int
parse_changes (struct proto_request *req, struct proto_parse_error *perr,
               const char *word[], const size_t wlen[], size_t nwords)
{
  bool have_offset = false, have_limit = false;
  size_t i;
  int r;

  req->limit = NBDSNAP_CHANGES_PAGE;
  if (nwords > 5)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "changes: too many arguments (it takes NAME "
                       "[NAME2] [offset=N] [limit=N])");
  for (i = 2; i < nwords; ++i) {
    if ((r = value_word (perr, "offset", word[i], wlen[i],
                         &req->offset)) != 0) {
      if (r == -1)
        return -1;
      if (have_offset)
        return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                           "changes: offset given twice");
      have_offset = true;
    }
    else if ((r = value_word (perr, "limit", word[i], wlen[i],
                              &req->limit)) != 0) {
      if (r == -1)
        return -1;
      if (have_limit)
        return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                           "changes: limit given twice");
      if (req->limit < 1 || req->limit > NBDSNAP_CHANGES_PAGE_MAX)
        return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                           "changes: limit must be 1 to %d",
                           NBDSNAP_CHANGES_PAGE_MAX);
      have_limit = true;
    }
    else if (i == 2) {          /* NAME2 */
      if (wlen[i] > NBDSNAP_NAME_MAX)
        return parse_fail (perr, PROTO_ERR_INVALID_NAME,
                           "invalid snapshot name '%.*s...': longer than "
                           "%d characters", quote_len (word[i], wlen[i]),
                           word[i], NBDSNAP_NAME_MAX);
      memcpy (req->to, word[i], wlen[i]);
      req->to[wlen[i]] = '\0';
      if (!nbdsnap_name_ok (req->to))
        return parse_fail (perr, PROTO_ERR_INVALID_NAME,
                           "invalid snapshot name '%s': " NBDSNAP_NAME_RULE,
                           req->to);
    }
    else
      return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                         "changes: unexpected '%.*s' (it takes NAME "
                         "[NAME2] [offset=N] [limit=N])",
                         quote_len (word[i], wlen[i]), word[i]);
  }
  return 0;
}

/* Copy a name word into dst (NBDSNAP_NAME_MAX + 1 bytes) and check it
 * against the snapshot name rule; what says what it is ("snapshot name",
 * "tag"). */
static int
name_word (struct proto_parse_error *perr, const char *what,
           const char *w, size_t len, char *dst)
{
  if (len > NBDSNAP_NAME_MAX)
    return parse_fail (perr, PROTO_ERR_INVALID_NAME,
                       "invalid %s '%.*s...': longer than %d characters",
                       what, quote_len (w, len), w, NBDSNAP_NAME_MAX);
  memcpy (dst, w, len);
  dst[len] = '\0';
  if (!nbdsnap_name_ok (dst))
    return parse_fail (perr, PROTO_ERR_INVALID_NAME,
                       "invalid %s '%s': " NBDSNAP_NAME_RULE, what, dst);
  return 0;
}

/* hold|release NAME [tag=TAG]: words from the third on. */
static int
parse_tag (struct proto_request *req, struct proto_parse_error *perr,
           const char *cmd, const char *word[], const size_t wlen[],
           size_t nwords)
{
  if (nwords > 3)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "%s: too many arguments (it takes NAME [tag=TAG])",
                       cmd);
  if (nwords < 3)
    return 0;
  if (wlen[2] < 4 || memcmp (word[2], "tag=", 4) != 0)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "%s: unexpected '%.*s' (it takes NAME [tag=TAG])",
                       cmd, quote_len (word[2], wlen[2]), word[2]);
  return name_word (perr, "tag", word[2] + 4, wlen[2] - 4, req->tag);
}

int
proto_parse (const char *line, size_t len, struct proto_request *req,
             struct proto_parse_error *perr)
{
  const char *word[WORDS_MAX];
  size_t wlen[WORDS_MAX];
  size_t nwords = 0, i;
  unsigned seen = 0, allowed;
  char expected[80];
  int cmd;

  memset (req, 0, sizeof *req);
  memset (perr, 0, sizeof *perr);

  if (len > 0 && line[len - 1] == '\r')
    len--;
  if (len >= NBDSNAP_ADMIN_LINE_MAX)
    return parse_fail (perr, PROTO_ERR_LINE_TOO_LONG,
                       "request longer than %d bytes",
                       NBDSNAP_ADMIN_LINE_MAX - 1);
  if (memchr (line, '\0', len) != NULL)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "request contains a NUL byte");
  if (!proto_utf8_valid (line, len))
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "request is not valid UTF-8");
  for (i = 0; i < len; ++i) {
    unsigned char c = line[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                         "request contains control character 0x%02x", c);
  }

  /* Split into words; count them all, keep the first WORDS_MAX. */
  for (i = 0; i < len;) {
    size_t start;

    while (i < len && (line[i] == ' ' || line[i] == '\t'))
      i++;
    if (i == len)
      break;
    start = i;
    while (i < len && line[i] != ' ' && line[i] != '\t')
      i++;
    if (nwords < WORDS_MAX) {
      word[nwords] = &line[start];
      wlen[nwords] = i - start;
    }
    nwords++;
  }
  if (nwords == 0)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST, "empty request");

  for (cmd = 0; cmd < PROTO_CMD__COUNT; ++cmd)
    if (strlen (commands[cmd].name) == wlen[0]
        && memcmp (commands[cmd].name, word[0], wlen[0]) == 0)
      break;
  if (cmd == PROTO_CMD__COUNT)
    return parse_fail (perr, PROTO_ERR_UNKNOWN_COMMAND,
                       "unknown command '%.*s'",
                       quote_len (word[0], wlen[0]), word[0]);
  req->cmd = cmd;
  allowed = commands[cmd].flags;

  if (cmd == PROTO_CMD_HOLDS) {         /* an optional name */
    if (nwords > 2)
      return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                         "holds: too many arguments (it takes [NAME])");
    if (nwords == 2)
      return name_word (perr, "snapshot name", word[1], wlen[1], req->name);
    return 0;
  }
  if (!commands[cmd].takes_name) {
    if (nwords > 1)
      return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                         "%s: takes no arguments", commands[cmd].name);
    return 0;
  }

  if (nwords < 2)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "%s: missing snapshot name", commands[cmd].name);
  if (allowed == 0 && nwords > 2 && cmd != PROTO_CMD_CHANGES
      && cmd != PROTO_CMD_HOLD && cmd != PROTO_CMD_RELEASE)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "%s: too many arguments (it takes only a snapshot "
                       "name)", commands[cmd].name);

  /* The name: length first, so that it fits, then the engine's rule. */
  if (wlen[1] > NBDSNAP_NAME_MAX)
    return parse_fail (perr, PROTO_ERR_INVALID_NAME,
                       "invalid snapshot name '%.*s...': longer than %d "
                       "characters",
                       quote_len (word[1], wlen[1]), word[1],
                       NBDSNAP_NAME_MAX);
  memcpy (req->name, word[1], wlen[1]);
  req->name[wlen[1]] = '\0';
  if (!nbdsnap_name_ok (req->name))
    return parse_fail (perr, PROTO_ERR_INVALID_NAME,
                       "invalid snapshot name '%s': " NBDSNAP_NAME_RULE,
                       req->name);

  if (cmd == PROTO_CMD_CHANGES)
    return parse_changes (req, perr, word, wlen, nwords);
  if (cmd == PROTO_CMD_HOLD || cmd == PROTO_CMD_RELEASE)
    return parse_tag (req, perr, commands[cmd].name, word, wlen, nwords);

  /* Flags, in any order, each once.  More words than the command has
   * flags always include an unknown or a repeated one (see WORDS_MAX). */
  for (i = 2; i < nwords && i < WORDS_MAX; ++i) {
    unsigned bit = 0;

    for (int k = 0; k < FLAG_COUNT; ++k)
      if (strlen (flag_names[k]) == wlen[i]
          && memcmp (flag_names[k], word[i], wlen[i]) == 0)
        bit = 1u << k;
    if ((bit & allowed) == 0) {
      flag_list (expected, sizeof expected, allowed);
      return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                         "%s: unknown flag '%.*s' (it takes %s)",
                         commands[cmd].name,
                         quote_len (word[i], wlen[i]), word[i], expected);
    }
    if (seen & bit)
      return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                         "%s: flag '%.*s' given twice", commands[cmd].name,
                         (int) wlen[i], word[i]);
    seen |= bit;
  }
  if ((seen & (FLAG_DEFER | FLAG_FORCE)) == (FLAG_DEFER | FLAG_FORCE)
      && cmd == PROTO_CMD_DELETE)
    return parse_fail (perr, PROTO_ERR_BAD_REQUEST,
                       "delete: flags 'defer' and 'force' exclude each "
                       "other");

  req->temporary = seen & FLAG_TEMPORARY;
  req->mode = seen & FLAG_DEFER ? PROTO_DELETE_DEFER
    : seen & FLAG_FORCE && cmd == PROTO_CMD_DELETE ? PROTO_DELETE_FORCE
    : PROTO_DELETE_NOW;
  req->force = cmd == PROTO_CMD_ROLLBACK && (seen & FLAG_FORCE);
  req->destroy_newer = seen & FLAG_DESTROY_NEWER;
  req->nowait = seen & FLAG_NOWAIT;
  req->progress = seen & FLAG_PROGRESS;
  return 0;
}

json_t *
proto_ok (void)
{
  return json_pack ("{s:b}", "ok", 1);
}

/* Copy src into dst (size dstlen > 0) replacing bytes that are not valid
 * UTF-8 with '?', so that jansson accepts it. */
static void
utf8_sanitise (char *dst, size_t dstlen, const char *src)
{
  const unsigned char *p = (const unsigned char *) src;
  size_t len = strlen (src), o = 0;

  while (len > 0) {
    size_t n = utf8_seq (p, len);
    if (n == 0) {
      if (o + 1 >= dstlen)
        break;
      dst[o++] = '?';
      p++, len--;
      continue;
    }
    if (o + n >= dstlen)
      break;
    memcpy (&dst[o], p, n);
    o += n, p += n, len -= n;
  }
  dst[o] = '\0';
}

static json_t *
verror (enum proto_err kind, int errnum, const char *fmt, va_list args)
{
  char raw[MESSAGE_MAX], msg[MESSAGE_MAX], num[16];
  const char *ename;

  if ((unsigned) kind >= PROTO_ERR__COUNT || kind == PROTO_ERR_NONE)
    kind = PROTO_ERR_INTERNAL;
  if (errnum == 0)
    errnum = errors[kind].errnum;
  ename = proto_errno_name (errnum);
  if (ename == NULL) {
    snprintf (num, sizeof num, "%d", errnum);
    ename = num;
  }
  vsnprintf (raw, sizeof raw, fmt, args);
  utf8_sanitise (msg, sizeof msg, raw);
  return json_pack ("{s:b,s:s,s:s,s:s}", "ok", 0, "error",
                    errors[kind].name, "errno", ename, "message", msg);
}

json_t *
proto_error (enum proto_err kind, int errnum, const char *fmt, ...)
{
  va_list args;
  json_t *r;

  va_start (args, fmt);
  r = verror (kind, errnum, fmt, args);
  va_end (args);
  return r;
}

json_t *
proto_error_errno (int errnum, const char *fmt, ...)
{
  va_list args;
  json_t *r;

  va_start (args, fmt);
  r = verror (proto_err_from_errno (errnum), errnum, fmt, args);
  va_end (args);
  return r;
}

json_t *
proto_error_parse (const struct proto_parse_error *perr)
{
  return proto_error (perr->kind, 0, "%s", perr->message);
}

json_t *
proto_hello (const char *server_version, uint64_t conn)
{
  json_t *r, *cmds;

  cmds = json_array ();
  if (cmds == NULL)
    return NULL;
  for (int i = 0; i < PROTO_CMD__COUNT; ++i)
    json_array_append_new (cmds, json_string (commands[i].name));
  r = json_pack ("{s:b,s:i,s:s,s:s,s:o,s:I}", "ok", 1,
                 "protocol", NBDSNAP_ADMIN_PROTOCOL, "server", "nbdsnap",
                 "version", server_version, "commands", cmds,
                 "conn", (json_int_t) conn);
  return r;                     /* "o" stole cmds, even on failure */
}

json_t *
proto_progress (enum proto_cmd cmd, const char *name, uint64_t done,
                uint64_t total)
{
  return json_pack ("{s:s,s:s,s:I,s:I}", "progress", proto_cmd_name (cmd),
                    "name", name, "done", (json_int_t) done,
                    "total", (json_int_t) total);
}

char *
proto_format (json_t *resp, size_t *len)
{
  char *s, *t;
  size_t n;

  s = json_dumps (resp, JSON_COMPACT);
  if (s == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  n = strlen (s);
  if (n + 1 > NBDSNAP_ADMIN_RESPONSE_MAX) {
    free (s);
    errno = E2BIG;
    return NULL;
  }
  t = realloc (s, n + 2);
  if (t == NULL) {
    free (s);
    errno = ENOMEM;
    return NULL;
  }
  t[n] = '\n';
  t[n + 1] = '\0';
  *len = n + 1;
  return t;
}

json_t *
proto_parse_response (const char *line, size_t len, enum proto_err *kind)
{
  json_error_t jerr;
  json_t *r, *ok, *e;
  int k;

  r = json_loadb (line, len, JSON_REJECT_DUPLICATES, &jerr);
  if (r == NULL)
    return NULL;
  ok = json_object_get (r, "ok");
  if (!json_is_object (r) || !json_is_boolean (ok)) {
    json_decref (r);
    return NULL;
  }
  if (json_is_true (ok)) {
    *kind = PROTO_ERR_NONE;
    return r;
  }
  e = json_object_get (r, "error");
  k = json_is_string (e) ? proto_err_from_name (json_string_value (e)) : -1;
  *kind = k <= PROTO_ERR_NONE ? PROTO_ERR_INTERNAL : (enum proto_err) k;
  return r;
}

json_t *
proto_parse_progress (const char *line, size_t len)
{
  json_t *r;
  int cmd;

  r = json_loadb (line, len, JSON_REJECT_DUPLICATES, NULL);
  if (r == NULL)
    return NULL;
  if (!json_is_object (r) || json_object_get (r, "ok") != NULL
      || !json_is_string (json_object_get (r, "progress"))
      || !json_is_string (json_object_get (r, "name"))
      || !json_is_integer (json_object_get (r, "done"))
      || !json_is_integer (json_object_get (r, "total"))
      || json_integer_value (json_object_get (r, "done")) < 0
      || json_integer_value (json_object_get (r, "total")) < 0) {
    json_decref (r);
    return NULL;
  }
  cmd = proto_cmd_from_name (json_string_value (json_object_get (r,
                                                                 "progress")));
  if (cmd != PROTO_CMD_DELETE && cmd != PROTO_CMD_ROLLBACK) {
    json_decref (r);
    return NULL;
  }
  return r;
}
