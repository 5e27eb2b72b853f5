#!/usr/bin/env bash
# nbdsnap test: rollback while the origin has an NBD client.  A plain
# "rollback A" fails with busy (exit 4, "busy" on stderr; --json: the
# error object) and changes nothing: the origin and the snapshots read as
# before.  "rollback --force A" revokes the client (exit 0, "revoked": 1):
# its next read fails with ESHUTDOWN, the origin reads as A, A and B keep
# their instants and new connections to the origin work.  Then, with the
# client gone, a hold on a newer snapshot C: "rollback --destroy-newer A"
# deletes B ("destroyed": ["B"]), keeps the busy C ("kept": ["C"]) and A;
# the origin reads as A and so does A, C its own instant.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

C=65536
size=$(( 32 * C + 333 ))
img="$tmpdir/disk.img"
model="$tmpdir/model.img"
snap_uri () { echo "nbd+unix:///$1?socket=$sock"; }
snapfiles () { ls "$tmpdir/state" | grep '^snap-' || :; }

# snap_is NAME FILE: snapshot NAME reads as FILE.
snap_is ()
{
  [ "$(export_sha "$(snap_uri "$1")")" = "$(file_sha "$2")" ]
}
origin_is ()
{
  [ "$(export_sha "$uri")" = "$(file_sha "$1")" ]
}

bigimg fill "$img" "$size" 1
cp "$img" "$model"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K

cp "$model" "$tmpdir/at-A.img"
ctl create A
bigimg ops "$uri" "$model" "w:0:$(( 4 * C )):10" "z:$(( 8 * C )):$C" \
  "w:$(( size - 333 )):333:11"
cp "$model" "$tmpdir/at-B.img"
ctl create B
bigimg ops "$uri" "$model" "w:$(( 2 * C )):$(( 4 * C )):20" \
  "t:$(( 16 * C )):$(( 2 * C ))" "w:$(( 20 * C + 1 )):100:21"
cp "$model" "$tmpdir/now.img"

start_client "$uri"
ask sha
[ "$reply" = "sha $(file_sha "$model")" ] ||
  fail "the origin's client read $reply before the rollback"

# Busy: refused, nothing changed.
status=0
ctl rollback A > "$tmpdir/out" 2> "$tmpdir/err" || status=$?
cat "$tmpdir/out" "$tmpdir/err"
[ "$status" -eq 4 ] || fail "rollback with a client on the origin: exit $status"
grep -q -i busy "$tmpdir/err" || fail "the message does not say busy"
status=0
ctl --json rollback A > "$tmpdir/out.json" 2>/dev/null || status=$?
[ "$status" -eq 4 ] || fail "rollback --json: exit $status, not 4"
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
assert r["ok"] is False and r["error"] == "busy" and r["errno"] == "EBUSY", r
'
origin_is "$tmpdir/now.img" || fail "a refused rollback changed the origin"
snap_is A "$tmpdir/at-A.img" || fail "a refused rollback changed A"
snap_is B "$tmpdir/at-B.img" || fail "a refused rollback changed B"
ask sha
[ "$reply" = "sha $(file_sha "$tmpdir/now.img")" ] ||
  fail "the client read $reply after the refused rollback"

# Forced: the client is revoked.
status=0
ctl --json rollback --force A > "$tmpdir/out.json" || status=$?
cat "$tmpdir/out.json"
[ "$status" -eq 0 ] || fail "rollback --force: exit $status"
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
assert r["ok"] is True and r["name"] == "A" and r["revoked"] == 1, r
assert r["destroyed"] == [], r
'
ask sha
[ "$reply" = "err ESHUTDOWN" ] ||
  fail "a read on the revoked origin handle gave: $reply (expected ESHUTDOWN)"
cp "$tmpdir/at-A.img" "$model"
origin_is "$model" || fail "after rollback --force the origin is not A"
snap_is A "$tmpdir/at-A.img" || fail "after rollback --force A is wrong"
snap_is B "$tmpdir/at-B.img" || fail "after rollback --force B is wrong"
ask sha
[ "$reply" = "err ESHUTDOWN" ] || fail "the second read gave: $reply"
ask close
[ "$reply" = closed ]
wait "$client_pid" || :

# New connections to the origin work; a newer snapshot C, held.
bigimg ops "$uri" "$model" "w:$(( 5 * C )):$(( 3 * C )):30"
cp "$model" "$tmpdir/at-C.img"
ctl create C
bigimg ops "$uri" "$model" "w:$(( 6 * C )):$(( 6 * C )):40"
mkfifo "$tmpdir/hold-in"
ctl hold C < "$tmpdir/hold-in" > "$tmpdir/hold.out" &
holder=$!
cleanup_fn quiet_kill "$holder"
exec 9> "$tmpdir/hold-in"
until_ok 10 grep -q holding "$tmpdir/hold.out" || fail "hold C did not start"
ids=$(ctl --json list | "$PYTHON" -c '
import json, sys
print(" ".join("%s:%06d" % (s["name"], s["id"])
               for s in json.load(sys.stdin)["snapshots"]))')
echo "ids: $ids"

status=0
ctl --json rollback --destroy-newer A > "$tmpdir/out.json" || status=$?
cat "$tmpdir/out.json"
[ "$status" -eq 0 ] || fail "rollback --destroy-newer: exit $status"
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
assert r["ok"] is True and r["name"] == "A" and r["revoked"] == 0, r
assert r["destroyed"] == ["B"] and r["kept"] == ["C"], r
'
ctl --json list | "$PYTHON" -c '
import json, sys
ss = json.load(sys.stdin)["snapshots"]
assert [(s["name"], s["state"]) for s in ss] == [("A", "live"),
                                                  ("C", "live")], ss
'
for id in $ids; do
  case $id in
    B:*) ! snapfiles | grep -q "^snap-${id#B:}\." ||
           { ls -l "$tmpdir/state"; fail "B's files are left"; } ;;
    *) snapfiles | grep -q "^snap-${id#?:}\." ||
         fail "the files of ${id%%:*} are gone" ;;
  esac
done
cp "$tmpdir/at-A.img" "$model"
origin_is "$model" || fail "after rollback --destroy-newer the origin is not A"
snap_is A "$tmpdir/at-A.img" || fail "after rollback --destroy-newer A is wrong"
snap_is C "$tmpdir/at-C.img" || fail "after rollback --destroy-newer C is wrong"

exec 9>&-
wait "$holder" || fail "hold C exited with status $?"
