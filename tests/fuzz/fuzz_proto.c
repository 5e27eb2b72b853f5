/* nbdsnap: libFuzzer target for the admin protocol (src/proto.c).
 *
 * Built and run by tests/test-fuzz-proto.sh with
 * clang -fsanitize=fuzzer,address.  The input is one request line as the
 * admin loop would hand it over (any bytes, any length).  Besides "no
 * crash, no leak", it checks what the rest of the server relies on:
 *
 *   - a parsed request names a known command and, if it has a name, a
 *     name the engine accepts; only delete and rollback carry nowait or
 *     progress, only rollback force or destroy-newer;
 *   - a refusal has a known kind and a non-empty, valid UTF-8 message;
 *   - every response built from it serialises to exactly one line that
 *     the client parses back to the same kind.
 *
 * The same bytes are also fed to the client's response and progress
 * parsers (which must never both accept a line) and used as an error
 * message, to exercise the UTF-8 sanitiser.
 */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnap/admin.h"
#include "nbdsnap/engine.h"
#include "nbdsnap/err.h"

static void
quiet (const char *fmt, va_list args)
{
}

/* Serialise, check it is one line, parse it back: the kind must survive. */
static void
round_trip (json_t *resp, enum proto_err want)
{
  enum proto_err kind;
  size_t len;
  char *s;
  json_t *back;

  if (resp == NULL)
    abort ();
  s = proto_format (resp, &len);
  if (s == NULL || len == 0 || s[len - 1] != '\n'
      || memchr (s, '\n', len - 1) != NULL)
    abort ();
  back = proto_parse_response (s, len - 1, &kind);
  if (back == NULL || kind != want)
    abort ();
  json_decref (back);
  free (s);
  json_decref (resp);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const char *line = (const char *) data;
  struct proto_request req;
  struct proto_parse_error perr;
  enum proto_err kind;
  json_t *r, *p;

  nbdsnap_set_log_handlers (quiet, quiet);

  if (proto_parse (line, size, &req, &perr) == 0) {
    if ((unsigned) req.cmd >= PROTO_CMD__COUNT)
      abort ();
    if (req.name[0] != '\0' && nbdsnap_name_valid (req.name) == -1)
      abort ();
    if (req.mode > PROTO_DELETE_FORCE
        || (req.mode != PROTO_DELETE_NOW && req.cmd != PROTO_CMD_DELETE))
      abort ();
    if ((req.nowait || req.progress) && req.cmd != PROTO_CMD_DELETE
        && req.cmd != PROTO_CMD_ROLLBACK)
      abort ();
    if ((req.force || req.destroy_newer) && req.cmd != PROTO_CMD_ROLLBACK)
      abort ();
    round_trip (proto_hello ("fuzz", 1), PROTO_ERR_NONE);
  }
  else {
    if (perr.kind <= PROTO_ERR_NONE || perr.kind >= PROTO_ERR__COUNT)
      abort ();
    if (perr.message[0] == '\0'
        || !proto_utf8_valid (perr.message, strlen (perr.message)))
      abort ();
    round_trip (proto_error_parse (&perr), perr.kind);
  }

  /* The raw bytes as a message (cut at a NUL, like any C string). */
  round_trip (proto_error (PROTO_ERR_IO, 0, "%.*s", (int) size, line),
              PROTO_ERR_IO);

  /* And as a server response the client must survive. */
  r = proto_parse_response (line, size, &kind);
  if (r != NULL && (kind < PROTO_ERR_NONE || kind >= PROTO_ERR__COUNT))
    abort ();
  p = proto_parse_progress (line, size);
  if (p != NULL && r != NULL)
    abort ();
  json_decref (r);
  json_decref (p);
  return 0;
}
