#!/usr/bin/env bash
# nbdsnap test: named, persistent holds (nbdsnapctl hold TAG NAME, holds,
# release TAG NAME).  A named hold survives a restart of nbdkit, and a
# kill -9 right after the hold answered; the held snapshot is busy (exit
# 4) for delete, --defer and --force; holds lists tag, snapshot and when
# (and connection holds as tag "-", "conn N"); the same tag twice is exit
# 7; bad tags exit 6; releasing an unknown tag exits 5; "release NAME"
# alone is a usage error (exit 2) naming "release TAG NAME"; once
# released, delete works and the snapshot's files are gone.  The bytes
# of the held snapshot are checked after each restart.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version

img="$tmpdir/disk.img"
size=$(( 1024 * 1024 + 4096 ))
head -c "$size" /dev/urandom > "$img"
want=$(sha "$img")
state="$tmpdir/state"

# expect STATUS CMD...: run ctl CMD..., its stderr in $tmpdir/err.
expect ()
{
  local want=$1 status=0
  shift
  ctl "$@" > "$tmpdir/out" 2> "$tmpdir/err" || status=$?
  cat "$tmpdir/out" "$tmpdir/err"
  [ "$status" -eq "$want" ] || fail "nbdsnapctl $*: exit $status, not $want"
}

start_nbdkit "$img" statedir="$state" admin="$tmpdir/admin.sock"
ctl create s1
ctl create s2
head -c $(( 64 * 1024 )) /dev/urandom > "$tmpdir/new"
timeout 60 nbdcopy "$tmpdir/new" "$uri"

expect 0 hold backup s1
grep -q "holding s1 with tag backup" "$tmpdir/out" || fail "hold output"
expect 0 --json hold keep s1
"$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] and r["name"] == "s1" and r["tag"] == "keep", r
assert r["named_holds"] == 2 and r["created"].endswith("Z"), r
' "$tmpdir/out"
expect 7 hold backup s1                     # the same tag twice
grep -qi "already has a hold with tag backup" "$tmpdir/err" || fail "exists msg"
expect 6 hold 'bad tag!' s1
expect 2 hold -x1 s1                        # an option, not a tag
expect 6 --json hold '.dot' s1
"$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] is False and r["error"] == "invalid-name", r
' "$tmpdir/out"
echo "hold s1 tag=a*b" | ctl shell > "$tmpdir/out" || :
grep -q '"invalid-name"' "$tmpdir/out" || fail "server: bad tag not refused"
expect 5 hold t1 nosuch                     # holding a missing snapshot
expect 2 release s1
grep -q "release TAG NAME" "$tmpdir/err" || fail "release NAME: no hint"
expect 5 release nosuchtag s1
grep -qi "no hold with tag nosuchtag" "$tmpdir/err" || fail "not-held msg"

# Busy for delete in every mode.
for mode in "" --defer --force; do
  expect 4 delete $mode s1
  grep -qi "named hold" "$tmpdir/err" || fail "delete $mode: message"
done
ctl --json info s1 | "$PYTHON" -c '
import json, sys
s = json.load(sys.stdin)["snapshot"]
assert s["state"] == "live" and s["named_holds"] == 2, s
'

# holds: the table and --json, a connection hold included.
ctl hold s2 -- sh -c "ctl_out=\$($nbdsnapctl -s $tmpdir/admin.sock holds); echo \"\$ctl_out\" > $tmpdir/table; $nbdsnapctl -s $tmpdir/admin.sock --json holds > $tmpdir/holds.json"
cat "$tmpdir/table"
head -1 "$tmpdir/table" | grep -q "^TAG  *NAME  *CREATED  *CONN$" || fail "heading"
grep -q "^backup  *s1  *20[0-9-]*T[0-9:]*Z  *-$" "$tmpdir/table" || fail "row"
grep -q "^-  *s2  .* [0-9][0-9]*$" "$tmpdir/table" || fail "connection hold row"
# -H -o: tab-separated, the columns asked for.
ctl -H -o tag,name holds s1 > "$tmpdir/raw"
[ "$(cat "$tmpdir/raw")" = "$(printf 'backup\ts1\nkeep\ts1')" ] ||
  fail "holds -H -o tag,name: $(cat "$tmpdir/raw")"
"$PYTHON" -c '
import json, sys
h = json.load(open(sys.argv[1]))["holds"]
named = [(x["tag"], x["name"]) for x in h if x["persistent"]]
assert named == [("backup", "s1"), ("keep", "s1")], h
conn = [x for x in h if not x["persistent"]]
assert len(conn) == 1 and conn[0]["name"] == "s2" and conn[0]["tag"] is None
assert conn[0]["conn"] > 0, h
' "$tmpdir/holds.json"
expect 0 holds s2
grep -q backup "$tmpdir/out" && fail "holds s2 lists s1's holds"
expect 5 holds nosuch

# A restart keeps them.
stop_nbdkit
grep -q "^hold backup s1 " "$state/holds" || fail "not in the holds file"
start_nbdkit "$img" statedir="$state" admin="$tmpdir/admin.sock"
expect 0 --json holds s1
"$PYTHON" -c '
import json, sys
h = json.load(open(sys.argv[1]))["holds"]
assert [x["tag"] for x in h] == ["backup", "keep"], h
' "$tmpdir/out"
expect 4 delete s1

# kill -9 right after a hold answered: it is on disk.
expect 0 hold crash s2
kill9_nbdkit
start_nbdkit "$img" statedir="$state" admin="$tmpdir/admin.sock"
expect 0 holds s2
grep -q "^crash  *s2 " "$tmpdir/out" || fail "the hold did not survive kill -9"
expect 4 delete --force s2
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/s1.img"
[ "$(sha "$tmpdir/s1.img")" = "$want" ] || fail "s1 does not read its instant"

# rollback --destroy-newer keeps a held snapshot.
ctl --json rollback --destroy-newer s1 > "$tmpdir/rb.json"
"$PYTHON" -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert r["ok"] and "s2" in r["kept"] and "s2" not in r["destroyed"], r
' "$tmpdir/rb.json"

# Release, then delete works.
expect 0 release backup s1
grep -q "released hold backup on s1 (1 named hold(s) left)" "$tmpdir/out" ||
  fail "release output"
expect 4 delete s1
expect 0 release keep s1
expect 0 release crash s2
expect 0 delete s1
expect 0 delete s2
expect 0 --json holds
"$PYTHON" -c '
import json, sys
assert json.load(open(sys.argv[1]))["holds"] == []
' "$tmpdir/out"
[ -z "$(ls "$state" | grep '^snap-')" ] || fail "snapshot files left"
stop_nbdkit
! grep -q "^hold " "$state/holds" || fail "released holds still in the file"
