#!/usr/bin/env bash
# nbdsnap test: a deferred delete stays visible.  With an NBD client
# reading snapshot S, "delete --defer S" exits 0 ("deferred": true); then
# list and info show S as "deleting", "deferred", with its 1 client (the
# text list too), creating S again fails with exit 7 and a message saying
# S is being deleted, new connections to S are refused, and the connected
# client still reads S's instant.  Once the client disconnects, S goes
# (list no longer shows it, its files are removed) and "create S" works
# and reads its own instant.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

snapfiles () { ls "$tmpdir/state" | grep '^snap-' || :; }
s_uri="nbd+unix:///S?socket=$tmpdir/nbd.sock"

img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 + 333 ))
bigimg fill "$img" "$size" 1
cp "$img" "$tmpdir/model.img"
want=$(file_sha "$img")

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create S
bigimg ops "$uri" "$tmpdir/model.img" "w:0:1048576:2"

start_client "$s_uri"
ask sha
[ "$reply" = "sha $want" ] || fail "before the delete the client read $reply"

status=0
ctl --json delete --defer S > "$tmpdir/out.json" || status=$?
cat "$tmpdir/out.json"
[ "$status" -eq 0 ] || fail "delete --defer S: exit $status"
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
assert r["ok"] is True and r["name"] == "S" and r["deferred"] is True, r
'

# Still listed, as deleting, deferred, with its client.
ctl --json list > "$tmpdir/list.json"
cat "$tmpdir/list.json"
"$PYTHON" - "$tmpdir/list.json" <<'PY' || fail "list does not show S deleting"
import json, sys
ss = [s for s in json.load(open(sys.argv[1]))["snapshots"] if s["name"] == "S"]
assert len(ss) == 1, "S is not listed"
s = ss[0]
assert s["state"] == "deleting" and s["deferred"] is True, s
assert s["clients"] == 1, s
PY
status=0
ctl --json info S > "$tmpdir/info.json" || status=$?
cat "$tmpdir/info.json"
[ "$status" -eq 0 ] || fail "info S of a deferred delete: exit $status"
"$PYTHON" - "$tmpdir/info.json" <<'PY' || fail "info does not show S deleting"
import json, sys
s = json.load(open(sys.argv[1]))["snapshot"]
assert s["name"] == "S" and s["state"] == "deleting", s
assert s["deferred"] is True and s["clients"] == 1, s
PY
ctl list > "$tmpdir/list.txt"
cat "$tmpdir/list.txt"
grep -w S "$tmpdir/list.txt" | grep -q -w deleting ||
  fail "the text list does not show S as deleting"

# Its name is taken, and the message says why.
status=0
ctl create S 2> "$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 7 ] || fail "create S while S is being deleted: exit $status"
grep -q 'being deleted' "$tmpdir/err" ||
  fail "create S: the message does not say S is being deleted"

# No new clients; the connected one still reads S's instant.
if nbdinfo "$s_uri" > "$tmpdir/nbdinfo" 2>&1; then
  cat "$tmpdir/nbdinfo"
  fail "a new connection to S was accepted"
fi
ask sha
[ "$reply" = "sha $want" ] || fail "after the delete the client read $reply"
[ -n "$(snapfiles)" ] || fail "the files went while the client was reading"

# The client leaves: S goes.
ask close
[ "$reply" = closed ]
wait "$client_pid" || :
gone () { [ "$(snap_state S)" = gone ]; }
until_ok 10 gone || { ctl --json list; fail "S is still listed"; }
until_ok 10 test -z "$(snapfiles)" ||
  { ls -l "$tmpdir/state"; fail "S's files are left after it went"; }

cp "$tmpdir/model.img" "$tmpdir/at-S2.img"
ctl create S || fail "create S after S went: exit $?"
bigimg ops "$uri" "$tmpdir/model.img" "w:4096:100000:3"
[ "$(export_sha "$s_uri")" = "$(file_sha "$tmpdir/at-S2.img")" ] ||
  fail "the new S is not its instant"
[ "$(export_sha "$uri")" = "$(file_sha "$tmpdir/model.img")" ] ||
  fail "the origin reads wrong"
