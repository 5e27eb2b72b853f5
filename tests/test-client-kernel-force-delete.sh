#!/usr/bin/env bash
# nbdsnap test: delete --force of a snapshot that the Linux kernel's NBD
# client (nbd-client, /dev/nbd0 in a QEMU guest) is reading.  The guest
# reads s1 MiB by MiB with O_DIRECT (no page cache), round after round,
# and prints each MiB's sha256 or the read's error.  Once a whole round
# is printed, the host deletes s1 with --force (it revokes the one
# handle).  Every read that succeeded, before or after, has the bytes of
# the instant; reads fail with EIO in the guest from some point on and
# every later read fails too; the server sent ESHUTDOWN (the kernel logs
# the error number); a new attach of s1 is refused; the origin goes on
# serving the same kernel client.
source "${abs_top_builddir:?}/tests/functions.sh"
source "$abs_top_srcdir/tests/vm.sh"
vm_requires
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'

M=$(( 1024 * 1024 ))
img="$tmpdir/disk.img"
head -c $(( 12 * M )) /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
ctl create s1
cp "$img" "$tmpdir/at-s1.img"
# Overwrite part of the origin, so that s1 reads come from its store
# (copied chunks) and from the origin (the others).
nbdsh -u "$uri" -c '
import os
M = 1 << 20
h.pwrite(os.urandom(5 * M), 0)
for off in range(6 * M + 4096, 12 * M, 3 * 65536 + 512):
    h.pwrite(os.urandom(1000), off)
'
cp "$img" "$tmpdir/origin.img"
for (( i = 0; i < 12; i++ )); do
  dd if="$tmpdir/at-s1.img" bs=1M skip=$i count=1 status=none | sha256sum |
    cut -d' ' -f1
done > "$tmpdir/want"

cat > "$tmpdir/guest.sh" <<'EOF'
attach nbd0 s1
n=$(( $(cat /sys/block/nbd0/size) / 2048 ))
r=0 failed=0
while [ $r -lt 100 ]; do
  r=$((r + 1))
  i=0
  while [ $i -lt $n ]; do
    if dd if=/dev/nbd0 of=/tmp/blk bs=1M skip=$i count=1 iflag=direct \
         2>/tmp/err; then
      result blk "$r $i $(sha /tmp/blk)"
    else
      result blk "$r $i ERR $(tail -n 1 /tmp/err)"
      [ $failed -gt 0 ] || failed=$r
    fi
    i=$((i + 1))
  done
  result round $r
  # One whole round more after the first failure.
  [ $failed -eq 0 ] || [ $r -le $failed ] || break
done
if attach nbd1 s1; then result reattach accepted; else result reattach refused; fi
detach nbd0
attach nbd1 ""
result origin "$(sha /dev/nbd1)"
detach nbd1
EOF

vm_start "$tmpdir/guest.sh"
vm_wait_for 240 '^RESULT round 1'
ctl --json delete --force s1 > "$tmpdir/delete.json"
"$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] is True and r["revoked"] == 1, r
' "$tmpdir/delete.json"
vm_wait
[ "$vm_status" -eq 0 ] || fail "the guest script failed ($vm_status)"

vm_results blk > "$tmpdir/blk"
"$PYTHON" - "$tmpdir/blk" "$tmpdir/want" <<'PY'
import sys
want = open(sys.argv[2]).read().split()
reads = [line.split(None, 3) for line in open(sys.argv[1])]
first_err = None
ok = err = 0
for k, (r, i, what, *msg) in enumerate(reads):
    r, i = int(r), int(i)
    if what == "ERR":
        err += 1
        assert "Input/output error" in msg[0], "round %d MiB %d: %s" % (r, i, msg)
        assert r > 1, "a read failed before the delete: %s" % (reads[k],)
        if first_err is None:
            first_err = k
    else:
        ok += 1
        assert what == want[i], \
            "round %d MiB %d: WRONG BYTES (%s, want %s)" % (r, i, what, want[i])
        assert first_err is None, \
            "round %d MiB %d: a read succeeded after %s" % (r, i, reads[first_err])
assert all(int(r) == 1 for r, *_ in reads[:len(want)]), reads[:len(want)]
assert err >= len(want), "fewer than a round of failed reads: %d" % err
print("reads: %d with the instant's bytes, %d failed with EIO" % (ok, err))
PY
grep -q 'nbd0: Other side returned error (108)' "$vm_log" ||
  fail "the kernel did not log ESHUTDOWN (108) from the server"
[ "$(vm_result reattach)" = refused ] || fail "s1 could be attached again"
[ "$(vm_result origin)" = "$(sha "$tmpdir/origin.img")" ] ||
  fail "the origin read wrong after the delete"
ctl --json list | grep -q '"snapshots":\[\]' || fail "s1 is still listed"
