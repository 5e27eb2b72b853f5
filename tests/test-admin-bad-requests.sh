#!/usr/bin/env bash
# nbdsnap test: bad requests on the admin socket, sent raw (python's
# socket module, no nbdsnapctl in between), each get exactly one JSON
# error line of the right kind and errno, in order, on a connection that
# stays usable: invalid names ("../x", "-a", ".x", 65 characters,
# non-ASCII) -> invalid-name, unknown commands -> unknown-command, wrong
# arguments, NUL, control characters, bytes that are not UTF-8 ->
# bad-request,
# taken names -> exists, missing ones -> not-found.  A line of 4096 bytes
# with its "\n" is read; one of 4097 or 5000 bytes gets line-too-long and
# the connection is closed.  A last request without "\n" is answered after
# a shutdown of the sending side.  Afterwards the server still answers, no
# snapshot was made by mistake and the origin is intact.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version


img="$tmpdir/disk.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img"
want=$(sha "$img")

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1

timeout 60 "$PYTHON" - "$tmpdir/admin.sock" <<'PY'
import json, socket, sys

path = sys.argv[1]

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    return s

def read_lines(s, n):
    """Read n response lines; each must be one JSON object."""
    buf, out = b"", []
    while len(out) < n:
        while b"\n" not in buf:
            d = s.recv(65536)
            assert d, "EOF after %d of %d responses" % (len(out), n)
            buf += d
        line, buf = buf.split(b"\n", 1)
        out.append(json.loads(line.decode("utf-8")))
    assert buf == b"", "extra bytes: %r" % buf
    return out

def expect_eof(s):
    # Closed with our bytes unread, the server's end may reset.
    try:
        d = s.recv(65536)
    except ConnectionResetError:
        return
    assert d == b"", "expected the server to close, got %r" % d

# Pipelined on one connection: (request, error kind or None, errno).
cases = [
    (b"hello", None, None),
    (b"create ../x", "invalid-name", "EINVAL"),
    (b"create -a", "invalid-name", "EINVAL"),
    (b"create .x", "invalid-name", "EINVAL"),
    (b"create " + b"a" * 65, "invalid-name", "EINVAL"),
    (b"info x/y", "invalid-name", "EINVAL"),
    (b"delete \xff\xfe", "bad-request", "EINVAL"),    # not UTF-8
    (b"create \xc3\xa9t\xc3\xa9", "invalid-name", "EINVAL"),
    (b"frobnicate", "unknown-command", "ENOSYS"),
    (b"CREATE x", "unknown-command", "ENOSYS"),
    (b"\xff\xfe\xfd", "bad-request", "EINVAL"),
    (b"create", "bad-request", "EINVAL"),
    (b"create a b c", "bad-request", "EINVAL"),
    (b"delete s1 bogus", "bad-request", "EINVAL"),
    (b"list extra", "bad-request", "EINVAL"),
    (b"hel\x00lo", "bad-request", "EINVAL"),
    (b"create a\x01b", "bad-request", "EINVAL"),
    (b"create s1", "exists", "EEXIST"),
    (b"info nope", "not-found", "ENOENT"),
    (b"delete nope force", "not-found", "ENOENT"),
    (b"release s1", "not-held", "ENOENT"),
    (b"hello\r", None, None),           # "\r\n" is a line end too
    (b"info\ts1", None, None),          # tab separates words
    (b"  list  ", None, None),
    (b"a" * 4095, "unknown-command", "ENOSYS"),   # 4096 with its "\n"
    (b"hello", None, None),
]
s = connect()
s.sendall(b"".join(req + b"\n" for req, _, _ in cases))
for (req, kind, err), r in zip(cases, read_lines(s, len(cases))):
    what = req[:40]
    if kind is None:
        assert r["ok"] is True, (what, r)
        continue
    assert r["ok"] is False, (what, r)
    assert r["error"] == kind, (what, r)
    assert r["errno"] == err, (what, r)
    assert isinstance(r["message"], str) and r["message"], (what, r)
s.close()

# Too long: 4097 bytes with "\n", and 5000.  One error line, then EOF.
for n in (4096, 5000):
    s = connect()
    try:
        s.sendall(b"x" * n + b"\n" + b"hello\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    r, = read_lines(s, 1)
    assert r["ok"] is False and r["error"] == "line-too-long", r
    assert r["errno"] == "EMSGSIZE", r
    expect_eof(s)
    s.close()

# A last request without "\n", then shutdown(SHUT_WR).
s = connect()
s.sendall(b"hello\nlist")
s.shutdown(socket.SHUT_WR)
h, l = read_lines(s, 2)
assert h["ok"] and h["protocol"] == 4 and h["server"] == "nbdsnap", h
assert l["ok"] and [x["name"] for x in l["snapshots"]] == ["s1"], l
expect_eof(s)
PY

ctl hello
ctl --json list | "$PYTHON" -c '
import json, sys
names = [s["name"] for s in json.load(sys.stdin)["snapshots"]]
assert names == ["s1"], names
'
ctl --json stats | "$PYTHON" -c '
import json, sys
a = json.load(sys.stdin)["admin"]
assert a["errors"] >= 20, a
'
[ "$(sha "$img")" = "$want" ] || fail "the origin changed"
timeout 60 nbdcopy "$uri" "$tmpdir/origin.img"
[ "$(sha "$tmpdir/origin.img")" = "$want" ] || fail "the origin reads wrong"
