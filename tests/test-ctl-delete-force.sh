#!/usr/bin/env bash
# nbdsnap test: delete --force of a snapshot with an NBD client connected.
# It succeeds (exit 0, "revoked": 1); the client's handle shows as revoked
# in "clients"; the client's next read fails with ESHUTDOWN, never wrong
# data, and so does the one after; new connections are refused; the server
# goes on serving the origin (writes and reads); a new snapshot of the same
# name reads its own instant while the revoked handle, still open, keeps
# failing with ESHUTDOWN; the old snapshot's files are gone once the
# client disconnected.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires nbdinfo --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

snapfiles () { ls "$tmpdir/state" | grep '^snap-' || :; }

img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 + 333 ))
head -c "$size" /dev/urandom > "$img"
want=$(sha "$img")

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"

start_client "nbd+unix:///s1?socket=$sock"

ask sha
[ "$reply" = "sha $want" ] || fail "before the delete the client read $reply"
id=$(ctl --json info s1 | "$PYTHON" -c '
import json, sys
print("%06d" % json.load(sys.stdin)["snapshot"]["id"])')
oldfiles () { ls "$tmpdir/state" | grep "^snap-$id\." || :; }
[ -n "$(oldfiles)" ]

ctl --json delete --force s1 > "$tmpdir/out.json"
"$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] is True and r["revoked"] == 1, r
' "$tmpdir/out.json"

ctl --json clients | "$PYTHON" -c '
import json, sys
cs = [c for c in json.load(sys.stdin)["clients"] if c["export"] == "s1"]
assert len(cs) == 1 and cs[0]["revoked"] is True, cs
'
ask sha
[ "$reply" = "err ESHUTDOWN" ] ||
  fail "a read on the revoked handle gave: $reply (expected ESHUTDOWN)"
ask sha
[ "$reply" = "err ESHUTDOWN" ] || fail "the second read gave: $reply"

ctl --json list | grep -q '"snapshots":\[\]' || fail "s1 is still listed"
if nbdinfo "nbd+unix:///s1?socket=$sock" > "$tmpdir/info" 2>&1; then
  fail "a new connection to s1 was accepted"
fi

# The server goes on: origin writes and reads, a new snapshot of the
# same name, while the revoked handle is still open: that handle must
# not read the new snapshot.
timeout 60 qemu-io -f raw -c 'write -P 0x5e 1000 70000' "$uri" >/dev/null
timeout 60 nbdcopy "$uri" "$tmpdir/origin.img"
cmp "$tmpdir/origin.img" "$img" || fail "the origin reads wrong"
cp "$img" "$tmpdir/at-s1b.img"
ctl create s1
timeout 60 qemu-io -f raw -c 'write -P 0x5f 0 1M' "$uri" >/dev/null
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1b.img")" ] ||
  fail "the new snapshot s1 is not its instant"
ask sha
[ "$reply" = "err ESHUTDOWN" ] ||
  fail "the revoked handle, with a new s1 there, gave: $reply"

ask close
[ "$reply" = closed ]
wait "$client_pid" || :
for (( i = 0; i < 100; i++ )); do
  [ -n "$(oldfiles)" ] || break
  sleep 0.1
done
[ -z "$(oldfiles)" ] ||
  { ls -l "$tmpdir/state"; fail "the files are left after the client left"; }
ctl delete s1
[ -z "$(snapfiles)" ] || { ls -l "$tmpdir/state"; fail "files are left"; }
