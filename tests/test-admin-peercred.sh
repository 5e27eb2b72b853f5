#!/usr/bin/env bash
# nbdsnap test: only nbdkit's own user (and root) may use the admin
# socket.  The socket is created mode 0600 (in a state directory of mode
# 0700).  To prove that SO_PEERCRED, not the file mode, refuses another
# user, the socket and its directory are then opened up to everyone, and
# uid/gid 65534 (nobody) connects: the connection is accepted by the
# kernel, and the server answers one "permission" error line (EACCES) and
# closes; nbdsnapctl as that user exits 8 and changes nothing.  The owner
# still gets answers, and the refusals are counted.  Needs root.
source "${abs_top_builddir:?}/tests/functions.sh"
requires test "$(id -u)" -eq 0
requires setpriv --version

ctl () { timeout 60 "$nbdsnapctl" -s "$tmpdir/state/admin.sock" "$@"; }
as_nobody () { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }

img="$tmpdir/disk.img"
truncate -s 1M "$img"

# The default admin socket, STATEDIR/admin.sock.
start_nbdkit "$img" statedir="$tmpdir/state"
adm="$tmpdir/state/admin.sock"
ctl create s1

[ -S "$adm" ] || fail "no admin socket"
mode=$(stat -c %a "$adm")
[ "$mode" = 600 ] || fail "the admin socket has mode $mode, not 600"
[ "$(stat -c %u "$adm")" -eq "$(id -u)" ] || fail "the socket's owner"
dmode=$(stat -c %a "$tmpdir/state")
[ "$dmode" = 700 ] || fail "the state directory has mode $dmode, not 700"

# Let anyone reach and connect to the socket.
chmod 0711 "$tmpdir" "$tmpdir/state"
chmod 0666 "$adm"
requires as_nobody test -x "$nbdsnapctl"
requires as_nobody test -x "$PYTHON"

# Raw: the kernel lets nobody connect; the server refuses it.
as_nobody timeout 30 "$PYTHON" -c '
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sys.argv[1])                 # the file mode does not stop us
try:
    s.sendall(b"create evil\nlist\n")
except (BrokenPipeError, ConnectionResetError):
    pass
buf = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
except ConnectionResetError:
    pass
lines = buf.split(b"\n")
assert len(lines) == 2 and lines[1] == b"", "expected one line: %r" % buf
r = json.loads(lines[0])
assert r["ok"] is False and r["error"] == "permission", r
assert r["errno"] == "EACCES", r
print("refused:", r["message"])
' "$adm"

# nbdsnapctl as nobody: exit 8, whatever the command.
for cmd in "hello" "list" "create evil" "delete s1" "hold s1"; do
  status=0
  as_nobody "$nbdsnapctl" -s "$adm" $cmd < /dev/null 2> "$tmpdir/err" ||
    status=$?
  cat "$tmpdir/err"
  [ "$status" -eq 8 ] || fail "nbdsnapctl $cmd as nobody: exit $status"
  grep -q -i 'permission\|not allowed\|denied' "$tmpdir/err" ||
    fail "nbdsnapctl $cmd as nobody: the message does not say why"
done

# Nothing changed; the owner is still served; refusals were counted.
ctl --json list | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
names = [s["name"] for s in r["snapshots"]]
assert names == ["s1"], names
assert r["snapshots"][0]["holds"] == 0, r
'
ctl --json stats | "$PYTHON" -c '
import json, sys
a = json.load(sys.stdin)["admin"]
assert a["refused"] >= 6, a
'
ctl delete s1
