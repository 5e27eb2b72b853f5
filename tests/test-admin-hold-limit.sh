#!/usr/bin/env bash
# nbdsnap test: one admin connection may own at most 1024 holds and
# temporary snapshots: the 1025th hold and a temporary create past the
# limit get a "limit" error (EAGAIN) and change nothing; the connection
# stays usable, and when it closes every one of its holds is released
# (plain delete then succeeds).
source "${abs_top_builddir:?}/tests/functions.sh"


img="$tmpdir/disk.img"
truncate -s 4M "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1

timeout 60 "$PYTHON" - "$tmpdir/admin.sock" <<'PY'
import json, socket, sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sys.argv[1])
f = s.makefile("rb")

def ask(line, n=1):
    s.sendall(line * n)
    return [json.loads(f.readline()) for _ in range(n)]

held = ask(b"hold s1\n", 1024)
assert all(r["ok"] for r in held), held[-1]
assert held[-1]["holds"] == 1024, held[-1]
over = ask(b"hold s1\n")[0]
assert over["ok"] is False and over["error"] == "limit" \
    and over["errno"] == "EAGAIN", over
temp = ask(b"create t1 temporary\n")[0]
assert temp["ok"] is False and temp["error"] == "limit", temp
info = ask(b"info s1\n")[0]
assert info["snapshot"]["holds"] == 1024, info
listing = ask(b"list\n")[0]
assert [x["name"] for x in listing["snapshots"]] == ["s1"], listing
rel = ask(b"release s1\n")[0]
assert rel["ok"] and rel["holds"] == 1023, rel
f.close()
s.close()
PY

# The connection is gone: its 1023 holds go with it.
for (( i = 0; i < 100; i++ )); do
  holds=$(ctl --json info s1 | sed -n 's/.*"holds":\([0-9]*\).*/\1/p')
  [ "$holds" = 0 ] && break
  sleep 0.1
done
[ "$holds" = 0 ] || fail "holds not released after the connection closed: $holds"
ctl delete s1
ctl --json list | grep -q '"snapshots":\[\]' || fail "s1 not deleted"
