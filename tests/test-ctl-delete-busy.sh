#!/usr/bin/env bash
# nbdsnap test: a plain delete of a snapshot with an NBD client connected
# fails with busy: nbdsnapctl exits 4 and says "busy" on stderr; --json
# prints the error object (busy, EBUSY).  The snapshot stays listed with
# its client, stays exported, and the connected client still reads its
# instant.  Once the client disconnects, the delete succeeds at once,
# also right after an nbdcopy of the snapshot ends.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 + 333 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/at-s1.img"
want=$(sha "$img")

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"

start_client "nbd+unix:///s1?socket=$sock"

status=0
ctl delete s1 2> "$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 4 ] || fail "delete of a busy snapshot: exit $status, not 4"
grep -q -i busy "$tmpdir/err" || fail "the message does not say busy"
[ "$(wc -l < "$tmpdir/err")" -eq 1 ] || fail "not a one-line message"

status=0
ctl --json delete s1 > "$tmpdir/out.json" 2>/dev/null || status=$?
[ "$status" -eq 4 ] || fail "delete --json: exit $status, not 4"
"$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] is False and r["error"] == "busy" and r["errno"] == "EBUSY", r
' "$tmpdir/out.json"

ctl --json info s1 | "$PYTHON" -c '
import json, sys
s = json.load(sys.stdin)["snapshot"]
assert s["state"] == "live" and s["clients"] == 1, s
'
ask sha
[ "$reply" = "sha $want" ] || fail "the connected client read $reply"
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$want" ] ||
  fail "a new client does not read the snapshot's instant"

ask close
[ "$reply" = closed ]
wait "$client_pid" || :

# A delete right after the client left waits for the server to notice
# (up to a second): no retry loop is needed.
ctl delete s1 || fail "delete after the client left: exit $?"
[ -z "$(ls "$tmpdir/state" | grep '^snap-')" ] ||
  { ls -l "$tmpdir/state"; fail "the snapshot's files are left"; }

# The same, the way a backup script does it: read, then delete at once.
for (( i = 0; i < 10; i++ )); do
  ctl create "r$i"
  timeout 60 nbdcopy "nbd+unix:///r$i?socket=$sock" "$tmpdir/r.img"
  ctl delete "r$i" || fail "delete right after nbdcopy (round $i): exit $?"
done
