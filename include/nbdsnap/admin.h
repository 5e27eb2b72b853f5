/* nbdsnap: the admin protocol (src/proto.c), spoken on the control socket
 * between the plugin's admin loop (plugin/admin.c) and nbdsnapctl.
 *
 * Wire format (protocol version NBDSNAP_ADMIN_PROTOCOL):
 *
 *   Transport   A unix stream socket, mode 0600.  Only the uid running
 *               nbdkit and root may connect (checked with SO_PEERCRED);
 *               anyone else gets one "permission" error line and is closed.
 *
 *   Requests    One per line, terminated by "\n" (a "\r" before it is
 *               dropped; a last line without "\n" before the client shuts
 *               down its side is served too).  At most NBDSNAP_ADMIN_LINE_MAX
 *               bytes including the "\n": a longer line gets a
 *               "line-too-long" error and the connection is closed.  UTF-8,
 *               no NUL and no control characters except tab.  Words are
 *               separated by spaces or tabs; the first word is the command
 *               (lower case), then the snapshot name, then keyword flags:
 *
 *                 hello
 *                 create NAME [temporary]
 *                 delete NAME [defer|force] [nowait] [progress]
 *                 rollback NAME [force] [destroy-newer] [nowait] [progress]
 *                 list
 *                 info NAME
 *                 clients
 *                 hold NAME [tag=TAG]
 *                 release NAME [tag=TAG]
 *                 holds [NAME]
 *                 changes NAME [NAME2] [offset=N] [limit=N]
 *                 stats
 *
 *               Flags after the name may come in any order, each at
 *               most once; an unknown or repeated flag, or "defer" with
 *               "force", is refused with "bad-request".  changes takes a
 *               second snapshot name (right after the first) and two
 *               value words, "offset=N" and "limit=N" (decimal, no sign).
 *               hold and release take one value word "tag=TAG" (TAG
 *               follows the snapshot name rule; a bad one is refused
 *               with "invalid-name"): a named hold, persistent (below);
 *               without it, a hold of the connection.
 *
 *   Responses   Exactly one final line per request, in request order
 *               (requests may be pipelined), each one compact JSON object:
 *
 *                 {"ok":true, ...fields of the command...}
 *                 {"ok":false,"error":KIND,"errno":"EBUSY","message":"..."}
 *
 *               A delete or rollback with "progress" may be preceded by
 *               progress lines, objects without "ok" (never sent to a
 *               request without the flag):
 *
 *                 {"progress":CMD,"name":N,"done":BYTES,"total":BYTES}
 *
 *               CMD is "delete" or "rollback"; "total" is 0 until the job
 *               knows it.  At most one every 0.25 s, only when done or
 *               total changed since the last one (a job that finishes
 *               quickly sends none), never once the final line is sent.
 *
 *               "nowait": the final line comes as soon as the job is
 *               accepted (checks passed, its state persisted):
 *               {"ok":true,"name":N,"accepted":true}; the job goes on in
 *               the server, shown by list/info, its result only logged.
 *               A job that fails before it is accepted (not-found,
 *               busy...) answers with that error, as without nowait.
 *               Without nowait the final line comes when the job has
 *               finished; if the connection closes first, the job still
 *               runs to its end (its answer is dropped) and the
 *               connection's holds and temporary snapshots are released
 *               only then.  create, delete, rollback and changes run off
 *               the admin loop: while they run, other connections are
 *               answered at once; their own connection's later requests
 *               wait (request order).  At most 64 jobs run at once; more
 *               are refused with "limit".
 *
 *               KIND is one of the strings of enum proto_err below; "errno"
 *               is the symbolic errno name (a decimal string if the server
 *               has none).  The server also sends one unsolicited error line
 *               just before it closes a connection on its own ("permission",
 *               "limit", "line-too-long", "shutting-down").  When the
 *               server stops, running jobs are cancelled and waited for;
 *               one that succeeded still sends its final line before
 *               "shutting-down", one that failed sends only
 *               "shutting-down".
 *
 * Success fields (SNAP is a snapshot object, see below):
 *
 *   hello    "protocol": N, "server": "nbdsnap", "version": "X.Y.Z",
 *            "commands": [names], "conn": admin connection id,
 *            "nbd": [URIs] where nbdkit listens for NBD clients, found at
 *            start-up from its listening sockets ("nbd+unix:///?socket=
 *            /abs/path", "nbd://HOST:PORT"; empty if none was found):
 *            nbdsnapctl's backup, send and receive use the first unless
 *            told otherwise
 *   create   "snapshot": SNAP
 *   delete   "name", "deferred": true if storage is freed only when the last
 *            client disconnects, "revoked": handles revoked by force,
 *            "moved_bytes"; with nowait: "accepted": true instead
 *   rollback "name", "rolled_back_bytes", "revoked" (origin handles),
 *            "destroyed": [names], "kept": [names]; with nowait:
 *            "accepted": true instead
 *   list     "snapshots": [SNAP, ...] oldest first
 *   info     "snapshot": SNAP
 *   clients  "clients": [{"id", "export", "peer", "started", "bytes_read",
 *            "bytes_written", "revoked"}, ...]
 *   hold     "name", "holds": connection holds on it after the request
 *            (all connections), "named_holds": its named holds; with a
 *            tag also "tag", "created" (RFC 3339 UTC).  A named hold is
 *            recorded durably in the state directory (file "holds")
 *            before the answer and survives restarts; the snapshot must
 *            be live (else "not-found"); the same tag twice on one
 *            snapshot is "exists".  A job (off the admin loop: the
 *            record is synced to disk).  A snapshot with a named hold
 *            is "busy" for delete in every mode (defer and force too),
 *            and rollback destroy-newer keeps it ("kept").
 *   release  "name", "holds", "named_holds"; with a tag: the named hold
 *            goes, durably ("not-held" if the snapshot has no hold with
 *            that tag; a job too).  Without a tag: one of this
 *            connection's holds.
 *   holds    "holds": [{"name", "tag", "created", "persistent": true},
 *            ... named holds, then connection holds as {"name", "tag":
 *            null, "conn": admin connection id, "created",
 *            "persistent": false}], of NAME only if given ("not-found"
 *            if it does not exist), in snapshot order
 *   changes  one page of the extents that differ between NAME's instant
 *            and NAME2's (without NAME2: the origin now): the union of
 *            the copied bits of NAME and of every snapshot newer than it
 *            and older than NAME2.  NAME2 must be newer than NAME
 *            ("bad-request", EINVAL, otherwise; NAME2 = NAME: nothing
 *            changed).  Fields: "name", "to" (NAME2 or null), "size"
 *            (image bytes), "chunk_size", "offset" (where this page
 *            starts: the request's offset rounded down to a chunk),
 *            "next" (the offset to ask for next, null after the last
 *            page), "changed_bytes" (this page's), "zero_bytes" (this
 *            page's), "extents": [{"offset", "length", "zero"}, ...]
 *            merged, in order, at most limit of them (default
 *            NBDSNAP_CHANGES_PAGE, at most NBDSNAP_CHANGES_PAGE_MAX),
 *            covering every changed chunk in [offset, next).  "zero":
 *            NAME2's (or the origin's) content there reads as zeros
 *            (a hole, trimmed or zeroed): a copier may punch or zero
 *            instead of reading; false means "may hold data".  An
 *            extent is never split between pages: a page ends before
 *            the extent that would not fit, and "next" is its offset.
 *            Both snapshots are pinned only while a page is computed:
 *            a client that pages through a long list holds them
 *            (hold) on its connection.
 *   stats    server-wide gauges and counters: "snapshots", "clients"
 *            (now), "chunks_copied", "cow_count", "store_bytes",
 *            "sync_ns" (over the live snapshots), "bytes_read",
 *            "bytes_written" (since start, every client, connected or
 *            gone: totals' origin + snapshots), "chunk_size"; "totals":
 *            counters since start that never go down:
 *              {"origin": {"bytes_read", "bytes_written" (write
 *               requests' payload), "zero_bytes", "trim_bytes", "reads",
 *               "writes", "zeros", "trims", "flushes"},
 *               "snapshots": {"bytes_read", "reads"} (every snapshot
 *               export),
 *               "cow_chunks", "cow_bytes" (copies made before origin
 *               writes), "syncs" (store and bitmap syncs run),
 *               "sync_shared" (group-commit followers: callers whose
 *               sync another one ran), "invalidations" (snapshots that
 *               turned invalid), "requests_failed", "errors": {"EIO": N,
 *               ...} (data requests that failed, by errno name; only
 *               those seen)}
 *            plus "admin":
 *            {"connections", "connection_limit", "accepted", "refused",
 *            "requests", "errors", "closed_slow", "accept_errors",
 *            "accept_paused", "jobs_running", "jobs_done"} added by the
 *            admin loop (jobs_done counts jobs whose worker has returned,
 *            detached ones included)
 *
 *   SNAP     {"name", "id", "created" (RFC 3339 UTC), "state" ("creating",
 *            "live", "deleting", "invalid"), "temporary", "clients",
 *            "holds", "named_holds", "chunks_candidate", "chunks_copied", "store_bytes",
 *            "max_store", ...}; readers must ignore fields they don't know.
 *            A deleting snapshot has "deferred" (true while it waits for
 *            its clients and holds to go) and, while its chunks move,
 *            "progress": {"done", "total"} in bytes.  The rollback target
 *            has "rollback": {"done", "total"} while a rollback runs.
 *            list shows every snapshot, deleting ones included (their
 *            names stay taken until they are gone).
 *
 * Ownership: connection holds (no tag) and temporary snapshots belong to
 * the admin connection that made them; when it closes, for any reason,
 * its holds are released and its temporary snapshots deleted (deferred if
 * clients still read them).  Named holds (a tag) belong to nobody: they
 * stay, across restarts, until a release with their tag.
 */
#ifndef NBDSNAP_ADMIN_H
#define NBDSNAP_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "nbdsnap/engine.h"

#define NBDSNAP_ADMIN_PROTOCOL 4
/* Longest request line, including its "\n". */
#define NBDSNAP_ADMIN_LINE_MAX 4096
/* Longest response line; a bigger one is replaced by a "too-large" error. */
#define NBDSNAP_ADMIN_RESPONSE_MAX (64u * 1024u * 1024u)
/* Extents in one changes page: by default, and at most (about 60 bytes
 * of JSON each: a full page stays far below NBDSNAP_ADMIN_RESPONSE_MAX). */
#define NBDSNAP_CHANGES_PAGE 16384
#define NBDSNAP_CHANGES_PAGE_MAX 262144

enum proto_cmd {
  PROTO_CMD_HELLO = 0,
  PROTO_CMD_CREATE,
  PROTO_CMD_DELETE,
  PROTO_CMD_LIST,
  PROTO_CMD_INFO,
  PROTO_CMD_CLIENTS,
  PROTO_CMD_HOLD,
  PROTO_CMD_RELEASE,
  PROTO_CMD_CHANGES,
  PROTO_CMD_STATS,
  PROTO_CMD_ROLLBACK,
  PROTO_CMD_HOLDS,
  PROTO_CMD__COUNT
};

enum proto_delete_mode {
  PROTO_DELETE_NOW = 0,         /* fail with busy if in use */
  PROTO_DELETE_DEFER,           /* hide now, free after the last client */
  PROTO_DELETE_FORCE,           /* revoke handles, drain, free */
};

/* Error kinds: wire string, default errno, nbdsnapctl exit status.
 * The table in src/proto.c is the one place they are defined. */
enum proto_err {
  PROTO_ERR_NONE = 0,
  PROTO_ERR_BAD_REQUEST,        /* "bad-request"    EINVAL     exit 2 */
  PROTO_ERR_UNKNOWN_COMMAND,    /* "unknown-command" ENOSYS    exit 2 */
  PROTO_ERR_LINE_TOO_LONG,      /* "line-too-long"  EMSGSIZE   exit 2 */
  PROTO_ERR_INVALID_NAME,       /* "invalid-name"   EINVAL     exit 6 */
  PROTO_ERR_NOT_FOUND,          /* "not-found"      ENOENT     exit 5 */
  PROTO_ERR_NOT_HELD,           /* "not-held"       ENOENT     exit 5 */
  PROTO_ERR_EXISTS,             /* "exists"         EEXIST     exit 7 */
  PROTO_ERR_BUSY,               /* "busy"           EBUSY      exit 4 */
  PROTO_ERR_READONLY,           /* "readonly"       EROFS      exit 1 */
  PROTO_ERR_NO_SPACE,           /* "no-space"       ENOSPC     exit 1 */
  PROTO_ERR_IO,                 /* "io"             EIO        exit 1 */
  PROTO_ERR_PERMISSION,         /* "permission"     EACCES     exit 8 */
  PROTO_ERR_LIMIT,              /* "limit"          EAGAIN     exit 1 */
  PROTO_ERR_TOO_LARGE,          /* "too-large"      E2BIG      exit 1 */
  PROTO_ERR_SHUTTING_DOWN,      /* "shutting-down"  ESHUTDOWN  exit 3 */
  PROTO_ERR_INTERNAL,           /* "internal"       (any)      exit 1 */
  PROTO_ERR__COUNT
};

/* What a valid snapshot name is, for messages (the rule itself is
 * nbdsnap_name_valid ()). */
#define NBDSNAP_NAME_RULE \
  "names are 1-64 characters from [A-Za-z0-9._-], starting with a " \
  "letter or digit"

/* nbdsnapctl exit statuses (documented in nbdsnapctl(1)). */
#define NBDSNAPCTL_EXIT_OK          0
#define NBDSNAPCTL_EXIT_ERROR       1
#define NBDSNAPCTL_EXIT_USAGE       2
#define NBDSNAPCTL_EXIT_UNREACHABLE 3
#define NBDSNAPCTL_EXIT_BUSY        4
#define NBDSNAPCTL_EXIT_NOT_FOUND   5
#define NBDSNAPCTL_EXIT_INVALID_NAME 6
#define NBDSNAPCTL_EXIT_EXISTS      7
#define NBDSNAPCTL_EXIT_PERMISSION  8

/* One parsed request. */
struct proto_request {
  enum proto_cmd cmd;
  char name[NBDSNAP_NAME_MAX + 1];  /* "" for commands without a name
                                       (and holds without one) */
  char tag[NBDSNAP_NAME_MAX + 1];   /* hold, release: tag=TAG, "" for a
                                       connection hold */
  bool temporary;                   /* create */
  enum proto_delete_mode mode;      /* delete */
  bool force;                       /* rollback */
  bool destroy_newer;               /* rollback */
  bool nowait;                      /* delete, rollback */
  bool progress;                    /* delete, rollback */
  char to[NBDSNAP_NAME_MAX + 1];    /* changes: NAME2, "" for now */
  uint64_t offset;                  /* changes: offset=N, else 0 */
  uint64_t limit;                   /* changes: limit=N (1 to
                                       NBDSNAP_CHANGES_PAGE_MAX), else
                                       NBDSNAP_CHANGES_PAGE */
};

/* Why a request line was refused: kind and a message for the client. */
struct proto_parse_error {
  enum proto_err kind;
  char message[160];
};

/* Parse one request line of len bytes (without its "\n"; it need not be
 * NUL-terminated and may contain NULs, which are refused).  Returns 0 and
 * fills req, or -1 and fills perr.  Reports nothing else, except what
 * nbdsnap_name_valid () reports for a bad name.
 */
extern int proto_parse (const char *line, size_t len,
                        struct proto_request *req,
                        struct proto_parse_error *perr);

/* The wire name of a command ("create"), and back (-1 if unknown). */
extern const char *proto_cmd_name (enum proto_cmd cmd);
extern int proto_cmd_from_name (const char *name);

/* The error table. */
extern const char *proto_err_name (enum proto_err kind);
extern int proto_err_from_name (const char *name);     /* -1 if unknown */
extern int proto_err_errno (enum proto_err kind);
extern int proto_err_exit_status (enum proto_err kind);
/* The kind an errno from the engine most likely means (EBUSY -> busy). */
extern enum proto_err proto_err_from_errno (int errnum);
/* "EBUSY"; NULL if the table doesn't know it. */
extern const char *proto_errno_name (int errnum);

/* Responses.  Each returns a new reference (NULL only if out of memory).
 * proto_error: errnum 0 means the kind's default errno.  The message is
 * made valid UTF-8 (bad bytes become '?') and cut to 1 KiB.
 * proto_error_errno: the kind is proto_err_from_errno (errnum).
 */
extern json_t *proto_ok (void);
extern json_t *proto_error (enum proto_err kind, int errnum,
                            const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
extern json_t *proto_error_errno (int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
extern json_t *proto_error_parse (const struct proto_parse_error *perr);
/* The hello response for this server version. */
extern json_t *proto_hello (const char *server_version, uint64_t conn);

/* A progress line of a delete or rollback job: the command's name, the
 * snapshot's, bytes done and total. */
extern json_t *proto_progress (enum proto_cmd cmd, const char *name,
                               uint64_t done, uint64_t total);

/* Serialise a response as one compact JSON line ending in "\n".  Returns a
 * malloc'd string and its length, or NULL (errno ENOMEM, or E2BIG if longer
 * than NBDSNAP_ADMIN_RESPONSE_MAX).
 */
extern char *proto_format (json_t *resp, size_t *len);

/* Client side: parse one response line (without "\n").  Returns the object
 * and sets *kind (PROTO_ERR_NONE if "ok" is true; PROTO_ERR_INTERNAL for an
 * unknown kind), or NULL if the line is not a response object.
 */
extern json_t *proto_parse_response (const char *line, size_t len,
                                     enum proto_err *kind);

/* Client side: parse one line (without "\n") that may be a progress line:
 * returns the object if it is one ("progress" "delete" or "rollback",
 * "name", "done" and "total" non-negative integers, no "ok"), else NULL
 * (then try proto_parse_response). */
extern json_t *proto_parse_progress (const char *line, size_t len);

/* Is [s, s+len) valid UTF-8 (no overlongs, surrogates, > U+10FFFF)? */
extern bool proto_utf8_valid (const char *s, size_t len);

#endif /* NBDSNAP_ADMIN_H */
