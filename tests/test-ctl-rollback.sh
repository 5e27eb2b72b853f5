#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl rollback.  The image has data in many chunks,
# a hole, zeroed and trimmed ranges and an unaligned tail; snapshot A;
# writes (aligned and not), zeroes (with and without holes) and trims;
# snapshot B; more of them, over the same chunks and others.  With no NBD
# client, "rollback A" exits 0 ("ok", name A, nothing revoked or
# destroyed, rolled_back_bytes about what `changes A' listed): the origin
# then reads exactly as A's instant, while A and B still read their own
# instants (the rollback went through the write path, B copied what it
# overwrote).  Writes after the rollback land and copy into B as usual;
# "rollback B", to the newer snapshot, works the same; after a restart of
# nbdkit, the origin, A and B all read right.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

C=65536
size=$(( 64 * C + 5000 ))
img="$tmpdir/disk.img"
model="$tmpdir/model.img"          # what the origin must read now
snap_uri () { echo "nbd+unix:///$1?socket=$sock"; }

# Pseudo-random data everywhere but chunks 40-47 (a hole).
bigimg fill "$img" "$size" 1
truncate -s $(( 40 * C )) "$img"
truncate -s "$size" "$img"
"$PYTHON" - "$img" "$size" <<'PY'
import os, random, sys
C = 65536
with open(sys.argv[1], "r+b") as f:
    f.seek(48 * C)
    f.write(random.Random(2).randbytes(int(sys.argv[2]) - 48 * C))
PY
cp --sparse=always "$img" "$model"

args=("$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
      chunk-size=64K)
start_nbdkit "${args[@]}"

# Zeroed and trimmed ranges at A's instant too.
bigimg ops "$uri" "$model" \
  "z:$(( 8 * C )):$(( 2 * C ))" "t:$(( 12 * C )):$C" \
  "Z:$(( 20 * C + 1000 )):$(( C / 2 ))"
cp "$model" "$tmpdir/at-A.img"
ctl create A

# Between A and B: chunk 0; across chunks 4-5; 10-12 (over the trimmed
# chunk); into the hole; zero 30-32 (holes allowed), an unaligned zero
# without holes, a trim of 36-37; the tail.
bigimg ops "$uri" "$model" \
  "w:0:$C:10" "w:$(( 5 * C - 1 )):2:11" "w:$(( 10 * C )):$(( 3 * C )):12" \
  "w:$(( 41 * C + 100 )):3000:13" "z:$(( 30 * C )):$(( 3 * C ))" \
  "Z:$(( 34 * C + 7 )):$C" "t:$(( 36 * C )):$(( 2 * C ))" \
  "w:$(( size - 100 )):100:14"
cp "$model" "$tmpdir/at-B.img"
ctl create B

# After B: chunk 0 again; the chunks zeroed at A's instant; a trim of
# data; a zero over data written since A; the hole again; the tail.
bigimg ops "$uri" "$model" \
  "w:0:$(( C / 2 )):20" "w:$(( 8 * C )):$C:21" "t:$(( 50 * C )):$(( 2 * C ))" \
  "z:$(( 4 * C )):$(( 2 * C ))" "w:$(( 44 * C )):$(( 2 * C )):22" \
  "Z:$(( 60 * C + 3 )):$(( 2 * C ))" "w:$(( size - 7 )):7:23"

# check WHEN ORIGIN: the origin reads as ORIGIN, A and B as their instants.
check ()
{
  local got
  got=$(export_sha "$uri")
  [ "$got" = "$(file_sha "$2")" ] ||
    fail "$1: the origin does not read as expected"
  got=$(export_sha "$(snap_uri A)")
  [ "$got" = "$(file_sha "$tmpdir/at-A.img")" ] ||
    fail "$1: snapshot A is not its instant"
  got=$(export_sha "$(snap_uri B)")
  [ "$got" = "$(file_sha "$tmpdir/at-B.img")" ] ||
    fail "$1: snapshot B is not its instant"
}
check "before the rollback" "$model"
[ "$(file_sha "$model")" != "$(file_sha "$tmpdir/at-A.img")" ]

changed=$(ctl --json changes A | "$PYTHON" -c '
import json, sys
print(json.load(sys.stdin)["changed_bytes"])')
[ "$changed" -gt 0 ]

status=0
ctl --json rollback A > "$tmpdir/out.json" 2> "$tmpdir/err" || status=$?
cat "$tmpdir/out.json" "$tmpdir/err"
[ "$status" -eq 0 ] || fail "rollback A: exit $status"
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
changed, C = int(sys.argv[1]), 65536
assert r["ok"] is True and r["name"] == "A", r
assert r["revoked"] == 0 and r["destroyed"] == [], r
assert 0 < r["rolled_back_bytes"] <= changed + C, \
    "rolled_back_bytes %d, changes A listed %d" % (r["rolled_back_bytes"],
                                                   changed)
' "$changed"

cp "$tmpdir/at-A.img" "$model"
check "after rollback A" "$model"
ctl --json info A | "$PYTHON" -c '
import json, sys
s = json.load(sys.stdin)["snapshot"]
assert s["state"] == "live" and "rollback" not in s, s
'
[ "$(snap_state B)" = live ] || fail "B is not live after the rollback"

# The origin takes writes again; A and B keep their instants.
bigimg ops "$uri" "$model" \
  "w:0:$(( 3 * C )):30" "w:$(( 45 * C )):$C:31" "z:$(( 14 * C )):$C" \
  "w:$(( size - 5000 )):5000:32"
check "after writes following rollback A" "$model"

# Back to the newer snapshot.
ctl rollback B > "$tmpdir/out" || fail "rollback B: exit $?"
cat "$tmpdir/out"
cp "$tmpdir/at-B.img" "$model"
check "after rollback B" "$model"
bigimg ops "$uri" "$model" "w:$(( 33 * C + 5 )):$(( 2 * C )):40"
check "after writes following rollback B" "$model"

stop_nbdkit
start_nbdkit "${args[@]}"
check "after a restart" "$model"
ctl --json list | "$PYTHON" -c '
import json, sys
ss = json.load(sys.stdin)["snapshots"]
assert [(s["name"], s["state"]) for s in ss] == [("A", "live"),
                                                  ("B", "live")], ss
'
