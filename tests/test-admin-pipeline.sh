#!/usr/bin/env bash
# nbdsnap test: pipelined admin requests on one connection are answered in
# request order, also when some of them are jobs run off the admin loop
# (create, delete with progress lines, changes) between quick ones (list,
# hello, info); and a request after a failed job is still served.
set -euo pipefail
source "${abs_top_builddir:?}/tests/functions.sh"

img="$tmpdir/disk.img"
head -c $(( 8 * 1024 * 1024 )) /dev/urandom > "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"

"$PYTHON" - "$tmpdir/admin.sock" <<'PY'
import json, socket, sys

reqs = ["create a", "list", "create b", "changes a", "delete b progress",
        "info b", "delete zz", "hello", "delete a progress", "list"]
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall("".join(r + "\n" for r in reqs).encode())   # all at once
s.shutdown(socket.SHUT_WR)
buf = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    buf += d
lines = [json.loads(l) for l in buf.decode().splitlines()]
final = [l for l in lines if "progress" not in l or "ok" in l]
assert len(final) == len(reqs), (len(final), reqs, lines)
for r, l in zip(reqs, final):
    print(r, "->", json.dumps(l)[:100])
names = lambda l: [x["name"] for x in l["snapshots"]]
ok = [l["ok"] for l in final]
assert ok == [True, True, True, True, True, False, False, True, True, True], ok
assert final[0]["snapshot"]["name"] == "a"
assert names(final[1]) == ["a"], final[1]
assert final[2]["snapshot"]["name"] == "b"
assert final[3]["name"] == "a" and "extents" in final[3]
assert final[4]["name"] == "b"
assert final[5]["error"] == "not-found", final[5]
assert final[6]["error"] == "not-found", final[6]
assert final[7]["server"] == "nbdsnap"
assert final[8]["name"] == "a"
assert names(final[9]) == [], final[9]
PY
