#!/usr/bin/env bash
# nbdsnap test: delete --defer of a snapshot with an NBD client connected.
# It succeeds at once (exit 0, "deferred": true): the snapshot stays in
# nbdsnapctl list and info as "deleting", "deferred": true, with its
# client counted, is no longer offered by nbdinfo --list, and new
# connections to it are refused; the connected client still reads the
# snapshot's instant, also after more origin writes; creating a new s1
# meanwhile fails (exit 7) with a message saying s1 is being deleted.  Its
# files stay in the state directory while the client is connected and are
# removed after it disconnects (then it is no longer listed), and the name
# is free again; the origin is served throughout.
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
timeout 60 qemu-io -f raw -c 'write -P 0x21 0 1M' "$uri" >/dev/null

start_client "nbd+unix:///s1?socket=$sock"

ask sha
[ "$reply" = "sha $want" ] || fail "before the delete the client read $reply"

ctl --json delete --defer s1 > "$tmpdir/out.json"
"$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] is True and r["deferred"] is True, r
' "$tmpdir/out.json"

# Listed as deleting (deferred, one client), gone for everyone new.
ctl --json list > "$tmpdir/list.json"
"$PYTHON" -c '
import json, sys
snaps = json.load(open(sys.argv[1]))["snapshots"]
assert [s["name"] for s in snaps] == ["s1"], snaps
s = snaps[0]
assert s["state"] == "deleting" and s["deferred"] is True, s
assert s["clients"] == 1, s
' "$tmpdir/list.json" || { cat "$tmpdir/list.json"; fail "list after --defer"; }
ctl --json info s1 | grep -q '"state":"deleting"' ||
  fail "info of a deferred-deleted snapshot does not say deleting"
timeout 60 nbdinfo --list "$uri" > "$tmpdir/list"
! grep -q '^export="s1"' "$tmpdir/list" || fail "nbdinfo --list shows s1"
if nbdinfo "nbd+unix:///s1?socket=$sock" > "$tmpdir/info" 2>&1; then
  fail "a new connection to s1 was accepted"
fi
# Its name stays taken until then (the engine's names are unique), and
# the message says why rather than contradicting list and info.
status=0
ctl create s1 2> "$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 7 ] || fail "create s1 while s1 is being deleted: exit $status"
grep -q 'being deleted' "$tmpdir/err" ||
  fail "create s1: the message does not say s1 is being deleted"

# The connected client reads its snapshot, even as the origin changes.
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"
cmp "$img" "$tmpdir/new.img" || fail "the origin lacks the new bytes"
ask sha
[ "$reply" = "sha $want" ] || fail "after the delete the client read $reply"
[ -n "$(snapfiles)" ] || fail "the files went while the client was reading"

ask close
[ "$reply" = closed ]
wait "$client_pid" || :
for (( i = 0; i < 100; i++ )); do
  [ -n "$(snapfiles)" ] || break
  sleep 0.1
done
[ -z "$(snapfiles)" ] ||
  { ls -l "$tmpdir/state"; fail "the files are left after the client left"; }
ctl --json list | grep -q '"snapshots":\[\]' || fail "s1 is still listed"

# The name is free again.
cp "$img" "$tmpdir/at-s1b.img"
ctl create s1
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/got.img"
cmp "$tmpdir/got.img" "$tmpdir/at-s1b.img" || fail "the new s1 reads wrong"
ctl delete s1

# The origin is still served.
timeout 60 nbdcopy "$uri" "$tmpdir/origin.img"
cmp "$tmpdir/origin.img" "$tmpdir/new.img" || fail "the origin reads wrong"
