#!/usr/bin/env bash
# nbdsnap test: random bytes on the admin socket change nothing.  100000
# bytes of /dev/urandom (once without any "\n") are sent on each of
# several admin connections, one after the other and a few at once,
# while an NBD client keeps reading the snapshot; every answer the server
# gives is a JSON line.  Afterwards nbdkit is alive, the admin socket
# answers hello, no snapshot was created or deleted, the origin (sha256)
# and the snapshot are intact, and nbdkit stops cleanly.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version


img="$tmpdir/disk.img"
head -c $(( 2 * 1024 * 1024 )) /dev/urandom > "$img"
want=$(sha "$img")

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1

for i in 1 2 3 4 5 6; do
  head -c 100000 /dev/urandom > "$tmpdir/garbage.$i"
done
# No "\n" at all: line-too-long.
head -c 100000 /dev/urandom | tr -d '\n' > "$tmpdir/garbage.3"
# Lines that start like requests, with garbage after.
for c in create delete hold release info changes; do
  { printf '%s ' "$c"; head -c 3000 /dev/urandom | tr -d '\n'; echo;
  } >> "$tmpdir/garbage.6"
done

# send FILE: send it, shut down the sending side, read every answer;
# each must be one JSON object.
send ()
{
  timeout 60 "$PYTHON" - "$tmpdir/admin.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
try:
    s.sendall(open(sys.argv[2], "rb").read())
    s.shutdown(socket.SHUT_WR)
except (BrokenPipeError, ConnectionResetError):
    pass                                # closed on us: fine
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
assert lines[-1] == b"", "a partial answer: %r" % lines[-1][:80]
for line in lines[:-1]:
    r = json.loads(line.decode("utf-8"))
    assert r["ok"] is False or "protocol" in r or "snapshots" in r or \
        "clients" in r or "admin" in r, r
print("%s: %d answers" % (sys.argv[2].rsplit("/", 1)[1], len(lines) - 1))
PY
}

# A reader of the snapshot, all along.
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/during.img" &
reader=$!

for i in 1 2 3; do send "$tmpdir/garbage.$i"; done
pids=()
for i in 4 5 6; do send "$tmpdir/garbage.$i" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "a garbage sender failed"; done
wait "$reader" || fail "the snapshot reader failed"

kill -0 "$(cat "$tmpdir/nbdkit.pid")" || fail "nbdkit died"
ctl hello | grep -q '^server: *nbdsnap' || fail "hello is not answered"
ctl --json list | "$PYTHON" -c '
import json, sys
names = [s["name"] for s in json.load(sys.stdin)["snapshots"]]
assert names == ["s1"], names
'
[ "$(sha "$img")" = "$want" ] || fail "the origin changed"
[ "$(sha "$tmpdir/during.img")" = "$want" ] || fail "the reader read wrong"
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/after.img"
[ "$(sha "$tmpdir/after.img")" = "$want" ] || fail "the snapshot changed"
stop_nbdkit
