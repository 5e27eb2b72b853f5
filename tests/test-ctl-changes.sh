#!/usr/bin/env bash
# nbdsnap test: "nbdsnapctl --json changes NAME" lists the chunks of the
# origin written since NAME was taken, exactly: merged, in order, within
# the image, changed_bytes their sum.  The writes (qemu-io, nbdsh, with
# unaligned ends) hit data chunks, chunks that were holes at snapshot time
# (an incremental backup must copy those too), the short last chunk, and
# chunks written before and after a second, newer snapshot: changes of the
# older snapshot is the union (also once the newer one is deleted),
# changes of the newer one only what came after it.  Applying the changed
# extents of the new origin to a copy of the snapshot gives the origin
# (what an incremental backup relies on).
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-io --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
C=65536
size=$(( 32 * C + 5000 ))

# Random data in chunks 0-15 and the last one, holes in 16-31.
truncate -s "$size" "$img"
"$PYTHON" - "$img" "$size" <<'PY'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
C = 65536
with open(path, "r+b") as f:
    f.write(os.urandom(16 * C))
    f.seek(32 * C)
    f.write(os.urandom(size - 32 * C))
PY
cp --sparse=always "$img" "$tmpdir/at-s1.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K

# check NAME OFFSET:LENGTH...: changes NAME lists exactly these extents.
check ()
{
  local name=$1
  shift
  ctl --json changes "$name" > "$tmpdir/changes.json"
  "$PYTHON" - "$tmpdir/changes.json" "$size" "$C" "$@" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
size, C = int(sys.argv[2]), int(sys.argv[3])
want = [[int(x) for x in a.split(":")] for a in sys.argv[4:]]
got = [[e["offset"], e["length"]] for e in r["extents"]]
assert r["ok"] is True, r
assert r["size"] == size and r["chunk_size"] == C, r
assert got == want, "changes %s: got %r, expected %r" % (r["name"], got, want)
assert r["changed_bytes"] == sum(l for o, l in want), r
PY
}

ctl create s1
check s1                                  # nothing yet

timeout 60 qemu-io -f raw \
  -c "write -P 1 100 10" \
  -c "write -P 2 $(( 5 * C - 1 )) 2" \
  -c "write -P 3 $(( 10 * C )) $(( 3 * C ))" \
  -c "write -P 4 $(( 20 * C + 12345 )) 100" \
  "$uri" >/dev/null
nbdsh -u "$uri" -c "h.pwrite(b'\\x05' * 7, $size - 7)"
# Chunk 0; 4-5; 10-12; 20 (a hole at snapshot time); 32 (short, last).
s1_first=("0:$C" "$(( 4 * C )):$(( 2 * C ))" "$(( 10 * C )):$(( 3 * C ))"
          "$(( 20 * C )):$C" "$(( 32 * C )):$(( size - 32 * C ))")
check s1 "${s1_first[@]}"

ctl create s2
check s2
# Again chunk 0 (already in s1's changes); chunk 13, next to 10-12; chunk
# 25, a hole; 31, a hole next to the last chunk (changed since s1, not s2).
timeout 60 qemu-io -f raw \
  -c "write -P 6 0 1" \
  -c "write -P 7 $(( 13 * C + 7 )) 9" \
  -c "write -P 8 $(( 25 * C )) $C" \
  -c "write -P 9 $(( 31 * C + 100 )) 1" \
  "$uri" >/dev/null
check s2 "0:$C" "$(( 13 * C )):$C" "$(( 25 * C )):$C" "$(( 31 * C )):$C"
s1_all=("0:$C" "$(( 4 * C )):$(( 2 * C ))" "$(( 10 * C )):$(( 4 * C ))"
        "$(( 20 * C )):$C" "$(( 25 * C )):$C"
        "$(( 31 * C )):$(( size - 31 * C ))")
check s1 "${s1_all[@]}"
# Deleting the newer snapshot keeps what it knew in s1's changes (chunks
# that were holes included: nothing was copied for them).
ctl delete s2
check s1 "${s1_all[@]}"

# An incremental backup: the snapshot's copy + the changed extents of the
# origin = the origin.
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/backup.img"
ctl --json changes s1 > "$tmpdir/changes.json"
nbdsh -u "$uri" -c "
import json
r = json.load(open('$tmpdir/changes.json'))
with open('$tmpdir/backup.img', 'r+b') as f:
    for e in r['extents']:
        f.seek(e['offset'])
        f.write(h.pread(e['length'], e['offset']))
"
cmp "$tmpdir/backup.img" "$img" ||
  fail "snapshot + changes is not the origin: changes missed a write"

# changes A B: between two snapshots, each extent marked zero or data by
# what B reads there.  Trimmed chunks 4-5 read as zeros in s4 (zero), chunk
# 30 was written (data), chunk 16 written then trimmed (zero); chunk 2,
# written after s4, is in `changes s3' but not in `changes s3 s4'.
ctl create s3
nbdsh -u "$uri" -c "
h.trim($(( 2 * C )), $(( 4 * C )))
h.pwrite(b'\\x0a' * $C, $(( 30 * C )))
h.pwrite(b'\\x0b' * 10, $(( 16 * C )))
h.trim($C, $(( 16 * C )))
h.flush()"
ctl create s4
nbdsh -u "$uri" -c "h.pwrite(b'\\x0c' * 10, $(( 2 * C ))); h.flush()"
# checkz A [B] OFFSET:LENGTH:ZERO...
checkz ()
{
  local a=$1 b=$2
  shift 2
  ctl --json changes "$a" $b > "$tmpdir/changes.json"
  "$PYTHON" - "$tmpdir/changes.json" "$@" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
want = [[int(x) for x in a.split(":")] for a in sys.argv[2:]]
got = [[e["offset"], e["length"], int(e["zero"])] for e in r["extents"]]
assert got == want, "changes %s %s: got %r, expected %r" % (
    r["name"], r["to"], got, want)
assert r["changed_bytes"] == sum(w[1] for w in want), r
assert r["zero_bytes"] == sum(w[1] for w in want if w[2]), r
PY
}
checkz s3 s4 "$(( 4 * C )):$(( 2 * C )):1" "$(( 16 * C )):$C:1" \
       "$(( 30 * C )):$C:0"
checkz s3 "" "$(( 2 * C )):$C:0" "$(( 4 * C )):$(( 2 * C )):1" \
       "$(( 16 * C )):$C:1" "$(( 30 * C )):$C:0"
checkz s3 s3
# s4 -> s3 goes backwards: a usage error (exit 2), nothing printed.
set +e
ctl changes s4 s3 > "$tmpdir/out" 2> "$tmpdir/err"
st=$?
set -e
[ "$st" = 2 ] || fail "changes s4 s3 exited $st, want 2"
grep -q "not newer" "$tmpdir/err" || fail "changes s4 s3: $(cat "$tmpdir/err")"
[ ! -s "$tmpdir/out" ] || fail "changes s4 s3 printed: $(cat "$tmpdir/out")"
set +e
ctl changes s3 nope 2> "$tmpdir/err"
st=$?
set -e
[ "$st" = 5 ] || fail "changes s3 nope exited $st, want 5"
# The table: one line per extent, and the sum.
ctl changes s3 s4 > "$tmpdir/out"
grep -qE "^ +$(( 4 * C )) +$(( 2 * C ))  zero$" "$tmpdir/out" &&
  grep -qE "^ +$(( 30 * C )) +$C  data$" "$tmpdir/out" &&
  grep -q "^3 extents, " "$tmpdir/out" ||
  fail "changes s3 s4 table: $(cat "$tmpdir/out")"
