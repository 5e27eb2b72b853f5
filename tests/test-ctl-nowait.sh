#!/usr/bin/env bash
# nbdsnap test: --no-wait.  A delete that must move 512 MiB of B's copies
# into the older A: "delete --no-wait B" exits 0 as soon as the job is
# accepted ("accepted": true with --json, a message saying accepted
# without), before the move is over: list right after still shows B, as
# deleting.  B then goes (list, its files) while nobody waits, and A reads
# exactly its instant.  The same for "rollback --no-wait A": accepted,
# info A right after shows the rollback running, then the origin reads as
# A, and A and B as their instants.
source "${abs_top_builddir:?}/tests/functions.sh"
# The job is slowed (20 ms per 64 chunks: seconds in all) so that it is
# seen in the middle however fast the machine is: unslowed, a quiet
# machine moves it all before the first look.
nbdkit_opts=(-D nbdsnap.job_delay_ms=20)
requires "$PYTHON" -c 'import nbd'

big_dir
M=$(( 1024 * 1024 ))
size=$(( 512 * M ))
img="$bigdir/disk.img"
model="$bigdir/model.img"
snap_uri () { echo "nbd+unix:///$1?socket=$sock"; }

bigimg fill "$img" "$size" 1
cp "$img" "$model"
start_nbdkit "$img" statedir="$bigdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K

# setup ROUND: A and B, then the whole origin overwritten.
setup ()
{
  a_sha=$(file_sha "$model")
  ctl create A
  ctl create B
  b_id=$(snap_file_id B)
  bigimg overwrite "$uri" "$model" 0 "$size" "$(( 10 + $1 ))"
}

# B_goes WHEN: B was still deleting right after the answer; it goes.
B_goes ()
{
  local state
  state=$(snap_state B)
  [ "$state" = deleting ] ||
    fail "$1: right after the answer B is $state, not deleting"
  gone () { [ "$(snap_state B)" = gone ]; }
  until_ok 30 gone || { ctl --json list; fail "$1: B did not go"; }
  until_ok 10 eval '! snap_files_left "$bigdir/state" "$b_id"' ||
    { ls -l "$bigdir/state"; fail "$1: B's files are left"; }
  [ "$(export_sha "$(snap_uri A)")" = "$a_sha" ] ||
    fail "$1: A is not its instant"
}

# --json.
setup 1
status=0
ctl --json delete --no-wait B > "$tmpdir/out.json" || status=$?
cat "$tmpdir/out.json"
[ "$status" -eq 0 ] || fail "--json delete --no-wait B: exit $status"
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
assert r["ok"] is True and r["accepted"] is True and r["name"] == "B", r
'
B_goes "delete --no-wait with --json"
ctl delete A

# Text.
setup 2
status=0
ctl delete --no-wait B > "$tmpdir/out" || status=$?
cat "$tmpdir/out"
[ "$status" -eq 0 ] || fail "delete --no-wait B: exit $status"
grep -q -i accepted "$tmpdir/out" || fail "the message does not say accepted"
B_goes "delete --no-wait"

# Rollback: B again, then the origin overwritten once more.
cp "$model" "$tmpdir/at-B.img"
ctl create B
bigimg overwrite "$uri" "$model" 0 "$size" 20
status=0
ctl --json rollback --no-wait A > "$tmpdir/out.json" || status=$?
cat "$tmpdir/out.json"
[ "$status" -eq 0 ] || fail "--json rollback --no-wait A: exit $status"
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
assert r["ok"] is True and r["accepted"] is True and r["name"] == "A", r
'
rolling () {
  ctl --json info A | "$PYTHON" -c '
import json, sys
sys.exit(0 if "rollback" in json.load(sys.stdin)["snapshot"] else 1)'
}
rolling || fail "right after the answer, info A shows no rollback running"
until_ok 30 eval '! rolling' || fail "the rollback did not end"
[ "$(export_sha "$uri")" = "$a_sha" ] || fail "the origin is not A"
[ "$(export_sha "$(snap_uri A)")" = "$a_sha" ] ||
  fail "A is not its instant after the rollback"
[ "$(export_sha "$(snap_uri B)")" = "$(file_sha "$tmpdir/at-B.img")" ] ||
  fail "B is not its instant after the rollback"
