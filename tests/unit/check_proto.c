/* nbdsnap: Check suite for the admin protocol (src/proto.c).
 *
 * One TCase per behaviour: every command parses, flags (delete's and
 * rollback's in any order, each once), whitespace, and each way a request
 * line can be refused (empty, unknown command, arity, bad name, bad,
 * repeated or conflicting flag, oversized, NUL, invalid UTF-8, control
 * characters);
 * then the error table and the responses and progress lines, both built
 * and parsed back.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "nbdsnap/admin.h"
#include "nbdsnap/err.h"

static struct proto_request req;
static struct proto_parse_error perr;

/* Parse a C string (no NULs). */
static int
parse (const char *line)
{
  return proto_parse (line, strlen (line), &req, &perr);
}

/* Expect a refusal of this kind. */
#define ck_refused(line, k)                                             \
  do {                                                                  \
    ck_assert_int_eq (parse (line), -1);                                \
    ck_assert_msg (perr.kind == (k), "'%s': kind %s, message %s",       \
                   (line), proto_err_name (perr.kind), perr.message);   \
    ck_assert_int_gt (strlen (perr.message), 0);                        \
  } while (0)

START_TEST (test_commands)
{
  static const struct { const char *line; enum proto_cmd cmd; } t[] = {
    { "hello", PROTO_CMD_HELLO }, { "create a", PROTO_CMD_CREATE },
    { "delete a", PROTO_CMD_DELETE }, { "list", PROTO_CMD_LIST },
    { "info a", PROTO_CMD_INFO }, { "clients", PROTO_CMD_CLIENTS },
    { "hold a", PROTO_CMD_HOLD }, { "release a", PROTO_CMD_RELEASE },
    { "changes a", PROTO_CMD_CHANGES }, { "stats", PROTO_CMD_STATS },
    { "rollback a", PROTO_CMD_ROLLBACK }, { "holds", PROTO_CMD_HOLDS },
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; ++i) {
    ck_assert_msg (parse (t[i].line) == 0, "%s: %s", t[i].line,
                   perr.message);
    ck_assert_int_eq (req.cmd, t[i].cmd);
    ck_assert_int_eq (proto_cmd_from_name (proto_cmd_name (t[i].cmd)),
                      t[i].cmd);
  }
  ck_assert_int_eq (parse ("info nightly-2024.01_a"), 0);
  ck_assert_str_eq (req.name, "nightly-2024.01_a");
  ck_assert (!req.temporary);
  ck_assert_int_eq (req.mode, PROTO_DELETE_NOW);
  ck_assert (!req.force && !req.destroy_newer);
  ck_assert (!req.nowait && !req.progress);
  ck_assert_int_eq (proto_cmd_from_name ("nope"), -1);
  ck_assert_ptr_null (proto_cmd_name (PROTO_CMD__COUNT));
}
END_TEST

START_TEST (test_tags)
{
  ck_assert_int_eq (parse ("hold s1"), 0);
  ck_assert_str_eq (req.tag, "");
  ck_assert_int_eq (parse ("hold s1 tag=backup.1"), 0);
  ck_assert_int_eq (req.cmd, PROTO_CMD_HOLD);
  ck_assert_str_eq (req.name, "s1");
  ck_assert_str_eq (req.tag, "backup.1");
  ck_assert_int_eq (parse ("release s1\ttag=b"), 0);
  ck_assert_int_eq (req.cmd, PROTO_CMD_RELEASE);
  ck_assert_str_eq (req.tag, "b");
  ck_refused ("hold s1 tag=", PROTO_ERR_INVALID_NAME);
  ck_refused ("hold s1 tag=a*b", PROTO_ERR_INVALID_NAME);
  ck_refused ("hold s1 tag=-a", PROTO_ERR_INVALID_NAME);
  ck_refused ("hold s1 tag=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
              PROTO_ERR_INVALID_NAME);          /* 65 characters */
  ck_refused ("hold s1 tag=a tag=b", PROTO_ERR_BAD_REQUEST);
  ck_refused ("hold s1 mytag", PROTO_ERR_BAD_REQUEST);
  ck_refused ("release s1 force", PROTO_ERR_BAD_REQUEST);
  ck_refused ("info s1 tag=a", PROTO_ERR_BAD_REQUEST);
  ck_assert_int_eq (parse ("holds"), 0);
  ck_assert_int_eq (req.cmd, PROTO_CMD_HOLDS);
  ck_assert_str_eq (req.name, "");
  ck_assert_int_eq (parse ("holds s2"), 0);
  ck_assert_str_eq (req.name, "s2");
  ck_refused ("holds s2 s3", PROTO_ERR_BAD_REQUEST);
  ck_refused ("holds s/2", PROTO_ERR_INVALID_NAME);
}
END_TEST

START_TEST (test_flags)
{
  ck_assert_int_eq (parse ("create t1 temporary"), 0);
  ck_assert (req.temporary);
  ck_assert_int_eq (parse ("delete t1 defer"), 0);
  ck_assert_int_eq (req.mode, PROTO_DELETE_DEFER);
  ck_assert_int_eq (parse ("delete t1 force"), 0);
  ck_assert_int_eq (req.mode, PROTO_DELETE_FORCE);
  ck_assert (!req.force);               /* rollback's field */

  ck_refused ("create t1 defer", PROTO_ERR_BAD_REQUEST);
  ck_refused ("create t1 --temporary", PROTO_ERR_BAD_REQUEST);
  ck_refused ("delete t1 temporary", PROTO_ERR_BAD_REQUEST);
  ck_refused ("delete t1 FORCE", PROTO_ERR_BAD_REQUEST);
  ck_refused ("delete t1 defer force", PROTO_ERR_BAD_REQUEST);
  ck_assert_ptr_nonnull (strstr (perr.message, "exclude"));
  ck_refused ("create t1 temporary temporary", PROTO_ERR_BAD_REQUEST);
  ck_refused ("hold t1 temporary", PROTO_ERR_BAD_REQUEST);
  ck_refused ("create t1 nowait", PROTO_ERR_BAD_REQUEST);
  ck_assert_int_eq (parse ("changes t1 progress"), 0);   /* a name */
  ck_refused ("changes t1 t2 progress", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 t2 offset=1 limit=2 x", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 offset=-1", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 offset=", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 offset=99999999999999999999", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 limit=0", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 limit=262145", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 offset=1 offset=2", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes t1 t/2", PROTO_ERR_INVALID_NAME);
  ck_assert_int_eq (parse ("changes t1"), 0);
  ck_assert_str_eq (req.to, "");
  ck_assert_int_eq (req.limit, NBDSNAP_CHANGES_PAGE);
  ck_assert_int_eq (parse ("changes t1 t2 limit=5 offset=65536"), 0);
  ck_assert_str_eq (req.to, "t2");
  ck_assert_int_eq (req.offset, 65536);
  ck_assert_int_eq (req.limit, 5);
  ck_assert_int_eq (parse ("changes t1 offset=18446744073709551615"), 0);
  ck_assert (req.offset == UINT64_MAX);
}
END_TEST

/* delete's and rollback's flags: any order, each once. */
START_TEST (test_job_flags)
{
  ck_assert_int_eq (parse ("delete t1 nowait"), 0);
  ck_assert (req.nowait && !req.progress);
  ck_assert_int_eq (req.mode, PROTO_DELETE_NOW);
  ck_assert_int_eq (parse ("delete t1 progress force nowait"), 0);
  ck_assert (req.nowait && req.progress);
  ck_assert_int_eq (req.mode, PROTO_DELETE_FORCE);
  ck_assert_int_eq (parse ("delete t1 progress\tdefer"), 0);
  ck_assert (!req.nowait && req.progress);
  ck_assert_int_eq (req.mode, PROTO_DELETE_DEFER);

  ck_assert_int_eq (parse ("rollback t1"), 0);
  ck_assert_int_eq (req.cmd, PROTO_CMD_ROLLBACK);
  ck_assert_str_eq (req.name, "t1");
  ck_assert (!req.force && !req.destroy_newer && !req.nowait
             && !req.progress);
  ck_assert_int_eq (req.mode, PROTO_DELETE_NOW);
  ck_assert_int_eq (parse ("rollback t1 force destroy-newer nowait "
                           "progress"), 0);
  ck_assert (req.force && req.destroy_newer && req.nowait && req.progress);
  ck_assert_int_eq (req.mode, PROTO_DELETE_NOW);   /* delete's field */
  ck_assert_int_eq (parse ("rollback t1 progress destroy-newer"), 0);
  ck_assert (!req.force && req.destroy_newer && !req.nowait
             && req.progress);

  /* Repeated, unknown, or another command's flag. */
  ck_refused ("delete t1 nowait nowait", PROTO_ERR_BAD_REQUEST);
  ck_assert_ptr_nonnull (strstr (perr.message, "twice"));
  ck_refused ("delete t1 force force", PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback t1 force nowait force", PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback t1 defer", PROTO_ERR_BAD_REQUEST);
  ck_assert_ptr_nonnull (strstr (perr.message, "unknown flag 'defer'"));
  ck_assert_ptr_nonnull (strstr (perr.message, "destroy-newer"));
  ck_refused ("delete t1 destroy-newer", PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback t1 temporary", PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback t1 destroy_newer", PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback t1 Force", PROTO_ERR_BAD_REQUEST);
  /* More words than flags: always one unknown or repeated, found even
   * past the words the parser keeps. */
  ck_refused ("rollback t1 force destroy-newer nowait progress force",
              PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback t1 force destroy-newer nowait progress x y z",
              PROTO_ERR_BAD_REQUEST);
  ck_refused ("delete t1 force nowait progress defer", PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback", PROTO_ERR_BAD_REQUEST);
  ck_refused ("rollback -x force", PROTO_ERR_INVALID_NAME);
}
END_TEST

START_TEST (test_whitespace)
{
  ck_assert_int_eq (parse ("  create \t t1\t\ttemporary  "), 0);
  ck_assert_str_eq (req.name, "t1");
  ck_assert (req.temporary);
  ck_assert_int_eq (parse ("list\r"), 0);
  ck_assert_int_eq (req.cmd, PROTO_CMD_LIST);
  /* Only one "\r" is dropped, and only at the end. */
  ck_refused ("list\r\r", PROTO_ERR_BAD_REQUEST);
  ck_refused ("li\rst", PROTO_ERR_BAD_REQUEST);
}
END_TEST

START_TEST (test_empty)
{
  ck_refused ("", PROTO_ERR_BAD_REQUEST);
  ck_refused ("   \t ", PROTO_ERR_BAD_REQUEST);
  ck_refused ("\r", PROTO_ERR_BAD_REQUEST);
  ck_assert_int_eq (proto_parse ("", 0, &req, &perr), -1);
}
END_TEST

START_TEST (test_unknown)
{
  char buf[200];

  ck_refused ("frobnicate", PROTO_ERR_UNKNOWN_COMMAND);
  ck_refused ("CREATE t1", PROTO_ERR_UNKNOWN_COMMAND);
  ck_refused ("lis", PROTO_ERR_UNKNOWN_COMMAND);
  ck_refused ("lists", PROTO_ERR_UNKNOWN_COMMAND);
  ck_refused ("h\xc3\xa9llo", PROTO_ERR_UNKNOWN_COMMAND);
  /* A long word is quoted back cut, and never mid-sequence. */
  memset (buf, 'x', 31);
  strcpy (buf + 31, "\xc3\xa9yyyyyyyyyyyyyyyyyyyyyyyyyyyyy");
  ck_refused (buf, PROTO_ERR_UNKNOWN_COMMAND);
  ck_assert (proto_utf8_valid (perr.message, strlen (perr.message)));
  ck_assert_ptr_null (strstr (perr.message, "yyy"));
}
END_TEST

START_TEST (test_arity)
{
  ck_refused ("create", PROTO_ERR_BAD_REQUEST);
  ck_refused ("delete  ", PROTO_ERR_BAD_REQUEST);
  ck_refused ("info", PROTO_ERR_BAD_REQUEST);
  ck_refused ("hold", PROTO_ERR_BAD_REQUEST);
  ck_refused ("release", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes", PROTO_ERR_BAD_REQUEST);
  ck_refused ("info a b", PROTO_ERR_BAD_REQUEST);
  ck_refused ("changes a b c d e f", PROTO_ERR_BAD_REQUEST);
  ck_refused ("hello 1", PROTO_ERR_BAD_REQUEST);
  ck_refused ("list all", PROTO_ERR_BAD_REQUEST);
  ck_refused ("stats x", PROTO_ERR_BAD_REQUEST);
  ck_refused ("clients x", PROTO_ERR_BAD_REQUEST);
}
END_TEST

START_TEST (test_names)
{
  char line[200];

  ck_refused ("create -x", PROTO_ERR_INVALID_NAME);
  ck_refused ("create .hidden", PROTO_ERR_INVALID_NAME);
  ck_refused ("create _x", PROTO_ERR_INVALID_NAME);
  ck_refused ("create a/b", PROTO_ERR_INVALID_NAME);
  ck_refused ("info ../etc", PROTO_ERR_INVALID_NAME);
  ck_refused ("create a:b", PROTO_ERR_INVALID_NAME);
  ck_refused ("delete caf\xc3\xa9", PROTO_ERR_INVALID_NAME);
  ck_refused ("hold a*", PROTO_ERR_INVALID_NAME);

  /* 64 characters is the longest name; 65 is refused. */
  strcpy (line, "create ");
  memset (line + 7, 'a', 64);
  line[7 + 64] = '\0';
  ck_assert_int_eq (parse (line), 0);
  ck_assert_int_eq (strlen (req.name), 64);
  strcat (line, "b");
  ck_refused (line, PROTO_ERR_INVALID_NAME);
  /* The name is checked before the flag. */
  ck_refused ("create -x nonsense", PROTO_ERR_INVALID_NAME);
}
END_TEST

START_TEST (test_oversized)
{
  size_t max = NBDSNAP_ADMIN_LINE_MAX;
  char *line = malloc (max + 2);

  ck_assert_ptr_nonnull (line);
  memset (line, ' ', max + 1);
  memcpy (line, "list", 4);
  /* max - 1 bytes (the most a line can hold besides "\n") is fine. */
  ck_assert_int_eq (proto_parse (line, max - 1, &req, &perr), 0);
  ck_assert_int_eq (proto_parse (line, max, &req, &perr), -1);
  ck_assert_int_eq (perr.kind, PROTO_ERR_LINE_TOO_LONG);
  ck_assert_int_eq (proto_parse (line, max + 1, &req, &perr), -1);
  ck_assert_int_eq (perr.kind, PROTO_ERR_LINE_TOO_LONG);
  /* ... unless the last byte is a "\r" that gets dropped. */
  line[max - 1] = '\r';
  ck_assert_int_eq (proto_parse (line, max, &req, &perr), 0);
  free (line);
}
END_TEST

START_TEST (test_nul)
{
  ck_assert_int_eq (proto_parse ("list\0", 5, &req, &perr), -1);
  ck_assert_int_eq (perr.kind, PROTO_ERR_BAD_REQUEST);
  ck_assert_int_eq (proto_parse ("info a\0b", 8, &req, &perr), -1);
  ck_assert_int_eq (perr.kind, PROTO_ERR_BAD_REQUEST);
  ck_assert_int_eq (proto_parse ("\0", 1, &req, &perr), -1);
  ck_assert_int_eq (perr.kind, PROTO_ERR_BAD_REQUEST);
  /* The length given is what counts, not a terminating NUL. */
  ck_assert_int_eq (proto_parse ("listXYZ", 4, &req, &perr), 0);
}
END_TEST

START_TEST (test_utf8)
{
  static const char *const bad[] = {
    "list \xff", "list \xc0\x80", "list \xe0\x80\x80", "list \xed\xa0\x80",
    "list \xf4\x90\x80\x80", "list \xe2\x82", "list \x80",
    "list \xf8\x88\x80\x80\x80", "info \xc3",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    ck_refused (bad[i], PROTO_ERR_BAD_REQUEST);
    ck_assert (!proto_utf8_valid (bad[i], strlen (bad[i])));
  }
  ck_assert (proto_utf8_valid ("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
  ck_assert (proto_utf8_valid ("\xf4\x8f\xbf\xbf", 4));
}
END_TEST

START_TEST (test_control)
{
  ck_refused ("list\x01", PROTO_ERR_BAD_REQUEST);
  ck_refused ("info a\x7f", PROTO_ERR_BAD_REQUEST);
  ck_refused ("list\nlist", PROTO_ERR_BAD_REQUEST);
  ck_refused ("\x1b[2Jlist", PROTO_ERR_BAD_REQUEST);
}
END_TEST

START_TEST (test_error_table)
{
  for (int k = PROTO_ERR_NONE + 1; k < PROTO_ERR__COUNT; ++k) {
    const char *name = proto_err_name (k);
    ck_assert_ptr_nonnull (name);
    ck_assert_int_eq (proto_err_from_name (name), k);
    ck_assert_int_ne (proto_err_errno (k), 0);
    ck_assert_ptr_nonnull (proto_errno_name (proto_err_errno (k)));
    ck_assert_int_ne (proto_err_exit_status (k), NBDSNAPCTL_EXIT_OK);
  }
  ck_assert_int_eq (proto_err_from_name ("nope"), -1);
  ck_assert_str_eq (proto_err_name (PROTO_ERR__COUNT + 5), "internal");
  ck_assert_int_eq (proto_err_exit_status (PROTO_ERR_BUSY),
                    NBDSNAPCTL_EXIT_BUSY);
  ck_assert_int_eq (proto_err_exit_status (PROTO_ERR_NOT_FOUND),
                    NBDSNAPCTL_EXIT_NOT_FOUND);
  ck_assert_int_eq (proto_err_exit_status (PROTO_ERR_INVALID_NAME),
                    NBDSNAPCTL_EXIT_INVALID_NAME);
  ck_assert_int_eq (proto_err_exit_status (PROTO_ERR_EXISTS),
                    NBDSNAPCTL_EXIT_EXISTS);
  ck_assert_int_eq (proto_err_exit_status (PROTO_ERR_PERMISSION),
                    NBDSNAPCTL_EXIT_PERMISSION);
  ck_assert_int_eq (proto_err_from_errno (EBUSY), PROTO_ERR_BUSY);
  ck_assert_int_eq (proto_err_from_errno (ENOENT), PROTO_ERR_NOT_FOUND);
  ck_assert_int_eq (proto_err_from_errno (EEXIST), PROTO_ERR_EXISTS);
  ck_assert_int_eq (proto_err_from_errno (EROFS), PROTO_ERR_READONLY);
  ck_assert_int_eq (proto_err_from_errno (ENOSPC), PROTO_ERR_NO_SPACE);
  ck_assert_int_eq (proto_err_from_errno (EIO), PROTO_ERR_IO);
  ck_assert_int_eq (proto_err_from_errno (ENOMEM), PROTO_ERR_INTERNAL);
  ck_assert_str_eq (proto_errno_name (EBUSY), "EBUSY");
  ck_assert_ptr_null (proto_errno_name (-7));
}
END_TEST

/* The value of a string field, or NULL. */
static const char *
field (json_t *o, const char *key)
{
  return json_string_value (json_object_get (o, key));
}

START_TEST (test_responses)
{
  json_t *r;
  char *s;
  size_t len;

  r = proto_ok ();
  s = proto_format (r, &len);
  ck_assert_str_eq (s, "{\"ok\":true}\n");
  ck_assert_int_eq (len, strlen (s));
  free (s);
  json_decref (r);

  r = proto_error (PROTO_ERR_BUSY, 0, "snapshot %s has %d clients", "a", 2);
  ck_assert (json_is_false (json_object_get (r, "ok")));
  ck_assert_str_eq (field (r, "error"), "busy");
  ck_assert_str_eq (field (r, "errno"), "EBUSY");
  ck_assert_str_eq (field (r, "message"), "snapshot a has 2 clients");
  json_decref (r);

  r = proto_error_errno (ENOSPC, "store full");
  ck_assert_str_eq (field (r, "error"), "no-space");
  ck_assert_str_eq (field (r, "errno"), "ENOSPC");
  json_decref (r);

  /* An errno without a name is sent as a number. */
  r = proto_error (PROTO_ERR_IO, 9999, "x");
  ck_assert_str_eq (field (r, "errno"), "9999");
  json_decref (r);

  /* Messages with bad UTF-8 and newlines still make one valid line. */
  r = proto_error (PROTO_ERR_IO, EIO, "path /a\xff\xfe/b\nline2");
  ck_assert_ptr_nonnull (r);
  ck_assert_str_eq (field (r, "message"), "path /a?" "?/b\nline2");
  s = proto_format (r, &len);
  ck_assert_ptr_nonnull (s);
  ck_assert_ptr_eq (strchr (s, '\n'), s + len - 1);
  free (s);
  json_decref (r);

  r = proto_hello ("1.2.3", 42);
  ck_assert_int_eq (json_integer_value (json_object_get (r, "protocol")),
                    NBDSNAP_ADMIN_PROTOCOL);
  ck_assert_str_eq (field (r, "version"), "1.2.3");
  ck_assert_int_eq (json_integer_value (json_object_get (r, "conn")), 42);
  ck_assert_int_eq (json_array_size (json_object_get (r, "commands")),
                    PROTO_CMD__COUNT);
  ck_assert_str_eq (json_string_value
                    (json_array_get (json_object_get (r, "commands"),
                                     PROTO_CMD_ROLLBACK)), "rollback");
  json_decref (r);

  /* A job cancelled by the server stopping. */
  ck_assert_int_eq (proto_err_from_errno (ECANCELED),
                    PROTO_ERR_SHUTTING_DOWN);
}
END_TEST

START_TEST (test_parse_response)
{
  enum proto_err kind;
  json_t *r;
  const char *ok = "{\"ok\":true,\"name\":\"a\"}";
  const char *busy = "{\"ok\":false,\"error\":\"busy\",\"errno\":\"EBUSY\","
    "\"message\":\"m\"}";
  const char *odd = "{\"ok\":false,\"error\":\"from-the-future\"}";

  r = proto_parse_response (ok, strlen (ok), &kind);
  ck_assert_ptr_nonnull (r);
  ck_assert_int_eq (kind, PROTO_ERR_NONE);
  json_decref (r);
  r = proto_parse_response (busy, strlen (busy), &kind);
  ck_assert_int_eq (kind, PROTO_ERR_BUSY);
  json_decref (r);
  r = proto_parse_response (odd, strlen (odd), &kind);
  ck_assert_int_eq (kind, PROTO_ERR_INTERNAL);
  json_decref (r);

  ck_assert_ptr_null (proto_parse_response ("garbage", 7, &kind));
  ck_assert_ptr_null (proto_parse_response ("[true]", 6, &kind));
  ck_assert_ptr_null (proto_parse_response ("{\"ok\":1}", 8, &kind));
  ck_assert_ptr_null (proto_parse_response ("{}", 2, &kind));
  ck_assert_ptr_null (proto_parse_response ("{\"ok\":true,\"ok\":true}", 21,
                                            &kind));
}
END_TEST

START_TEST (test_progress)
{
  json_t *r, *back;
  enum proto_err kind;
  char *s;
  size_t len;

  r = proto_progress (PROTO_CMD_DELETE, "b", 512, 1536);
  s = proto_format (r, &len);
  ck_assert_str_eq (s, "{\"progress\":\"delete\",\"name\":\"b\",\"done\":512,"
                    "\"total\":1536}\n");
  /* The client tells it from a response. */
  ck_assert_ptr_null (proto_parse_response (s, len - 1, &kind));
  back = proto_parse_progress (s, len - 1);
  ck_assert_ptr_nonnull (back);
  ck_assert_int_eq (json_integer_value (json_object_get (back, "done")), 512);
  json_decref (back);
  free (s);
  json_decref (r);

  r = proto_progress (PROTO_CMD_ROLLBACK, "a", 0, 0);
  s = proto_format (r, &len);
  back = proto_parse_progress (s, len - 1);
  ck_assert_ptr_nonnull (back);
  ck_assert_str_eq (field (back, "progress"), "rollback");
  json_decref (back);
  free (s);
  json_decref (r);

  /* Not progress lines. */
  static const char *const bad[] = {
    "{\"ok\":true}", "garbage", "[1]",
    "{\"progress\":\"list\",\"name\":\"a\",\"done\":1,\"total\":2}",
    "{\"progress\":\"delete\",\"name\":\"a\",\"done\":-1,\"total\":2}",
    "{\"progress\":\"delete\",\"name\":\"a\",\"done\":1}",
    "{\"progress\":\"delete\",\"name\":\"a\",\"done\":1,\"total\":2,"
    "\"ok\":true}",
    "{\"progress\":\"delete\",\"name\":1,\"done\":1,\"total\":2}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i)
    ck_assert_msg (proto_parse_progress (bad[i], strlen (bad[i])) == NULL,
                   "%s", bad[i]);
}
END_TEST

static Suite *
proto_suite (void)
{
  Suite *s = suite_create ("proto");
  struct { const char *name; const TTest *test; } t[] = {
    { "commands", test_commands }, { "flags", test_flags },
    { "tags", test_tags },
    { "job_flags", test_job_flags },
    { "whitespace", test_whitespace }, { "empty", test_empty },
    { "unknown", test_unknown }, { "arity", test_arity },
    { "names", test_names }, { "oversized", test_oversized },
    { "nul", test_nul }, { "utf8", test_utf8 }, { "control", test_control },
    { "error_table", test_error_table }, { "responses", test_responses },
    { "parse_response", test_parse_response },
    { "progress", test_progress },
  };

  for (size_t i = 0; i < sizeof t / sizeof t[0]; ++i) {
    TCase *tc = tcase_create (t[i].name);
    tcase_add_test (tc, t[i].test);
    suite_add_tcase (s, tc);
  }
  return s;
}

/* The engine's name check also reports why; the parser's message is what
 * these tests look at. */
static void
quiet (const char *fmt, va_list args)
{
}

int
main (void)
{
  SRunner *sr = srunner_create (proto_suite ());
  int failed;

  nbdsnap_set_log_handlers (quiet, NULL);
  srunner_run_all (sr, CK_ENV);
  failed = srunner_ntests_failed (sr);
  srunner_free (sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
