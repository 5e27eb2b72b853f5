#!/usr/bin/env bash
# nbdsnap test: stats' cumulative counters survive client disconnects.
# 4 MiB written through nbdsh (one client, then it disconnects) still
# count in "bytes_written" and in totals.origin after it is gone; a
# snapshot's reader counts in totals.snapshots; copy-on-write chunks and
# bytes count the copies a write made after a snapshot; a write to a
# revoked handle counts as an error (ESHUTDOWN); the counters never go
# down across more clients.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdsh --version

img="$tmpdir/disk.img"
truncate -s 16M "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"

MiB=$(( 1024 * 1024 ))
nbdsh -u "$uri" -c "
buf = b'\x5a' * $MiB
for i in range(4):
    h.pwrite(buf, i * $MiB)
h.flush()
h.zero(65536, 8 * $MiB)
h.trim(65536, 9 * $MiB)
"
ctl create s1
nbdsh -u "$uri" -c "h.pwrite(b'\x11' * 131072, 0)"
nbdsh -u "nbd+unix:///s1?socket=$sock" -c "
assert h.pread(131072, 0) == b'\x5a' * 131072
"
ctl --json stats > "$tmpdir/stats.json"
cat "$tmpdir/stats.json"
"$PYTHON" -c '
import json, sys
s = json.load(open(sys.argv[1]))
M = 1024 * 1024
t = s["totals"]
o = t["origin"]
assert s["clients"] == 0, s
assert o["bytes_written"] == 4 * M + 131072, o
assert o["writes"] == 5 and o["zeros"] == 1 and o["trims"] == 1, o
assert o["zero_bytes"] == 65536 and o["trim_bytes"] == 65536, o
assert o["flushes"] >= 1, o
assert s["bytes_written"] >= 4 * M, s
assert t["snapshots"]["bytes_read"] == 131072 and t["snapshots"]["reads"] == 1, t
assert s["bytes_read"] >= 131072, s
chunk = s["chunk_size"]
cow = (131072 + chunk - 1) // chunk
assert t["cow_chunks"] == cow and t["cow_bytes"] == cow * chunk, t
assert t["syncs"] >= 1, t
assert t["requests_failed"] == 0 and t["errors"] == {}, t
for k in ("sync_shared", "invalidations"):
    assert isinstance(t[k], int), k
' "$tmpdir/stats.json"

# A reader whose snapshot is deleted under it (--force) gets ESHUTDOWN:
# counted under errors.
start_client "nbd+unix:///s1?socket=$sock"
ctl delete --force s1
ask sha
case $reply in "err "*) ;; *) fail "read of a revoked handle: $reply" ;; esac
ask close
wait "$client_pid" || :
ctl --json stats > "$tmpdir/stats2.json"
"$PYTHON" -c '
import json, sys
a = json.load(open(sys.argv[1]))["totals"]
b = json.load(open(sys.argv[2]))["totals"]
assert b["requests_failed"] >= 1 and b["errors"].get("ESHUTDOWN", 0) >= 1, b
assert b["origin"] == a["origin"], (a, b)
assert b["snapshots"]["reads"] >= a["snapshots"]["reads"], (a, b)
' "$tmpdir/stats.json" "$tmpdir/stats2.json"
