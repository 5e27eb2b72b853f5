#!/usr/bin/env bash
# nbdsnap test: a backup regime with nbdsnapctl backup.  A mostly sparse
# image (data in a quarter of it, an unaligned tail); a full backup of s0
# into a new file, which must read as s0 and stay sparse (du); then three
# rounds, each: random writes (also into former holes), zeroes (with and
# without holes) and trims through NBD; a middle snapshot mR; more of
# them; snapshot sR; more of them again (after sR: the backup must not
# see them); delete mR (its chunks move into the older s(R-1): the
# changes must stay right); "backup sR DEST --since s(R-1)"; DEST must
# equal what sR's export returns and what the model file held at sR's
# instant; delete s(R-1) (rotation).  Round 2 runs with --verify and
# --connections 1, round 3 with --json (bytes_copied + bytes_zeroed is
# the changed bytes of `changes`).  Finally a full backup of s3 over the
# incremental DEST (a file of the right size: every range rewritten)
# and one into an empty file (extended) must give the same bytes.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

C=65536
size=$(( 512 * C + 5000 ))
img="$tmpdir/disk.img"
model="$tmpdir/model.img"          # what the origin reads now
dest="$tmpdir/backup.img"
snap_uri () { echo "nbd+unix:///$1?socket=$sock"; }

# Data in chunks 0-63 and 256-319 and in the tail, holes elsewhere.
truncate -s "$size" "$img"
"$PYTHON" - "$img" "$size" <<'PY'
import random, sys
C = 65536
size = int(sys.argv[2])
with open(sys.argv[1], "r+b") as f:
    for start, n in ((0, 64 * C), (256 * C, 64 * C), (size - 3000, 3000)):
        f.seek(start)
        f.write(random.Random(start).randbytes(n))
PY
cp --sparse=always "$img" "$model"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
  chunk-size=64K

# ops SEED COUNT: COUNT random w/z/Z/t ops over the whole image, some
# unaligned, some in the holes, through NBD and into the model.
ops ()
{
  local list
  list=$("$PYTHON" - "$1" "$2" "$size" <<'PY'
import random, sys
r = random.Random(int(sys.argv[1]))
n, size, C = int(sys.argv[2]), int(sys.argv[3]), 65536
out = []
for i in range(n):
    kind = r.choice("wwwwzZt")
    length = r.choice((C, 2 * C, r.randrange(1, 3 * C)))
    off = r.randrange(0, size - length)
    if r.random() < 0.5:
        off -= off % C
    out.append("%s:%d:%d" % (kind, off, length) +
               (":%d" % r.randrange(1 << 30) if kind == "w" else ""))
print(" ".join(out))
PY
)
  # shellcheck disable=SC2086
  bigimg ops "$uri" "$model" $list
}

# same WHEN SNAP INSTANT: DEST, SNAP's export and INSTANT hold one image.
same ()
{
  local want
  want=$(file_sha "$3")
  [ "$(export_sha "$(snap_uri "$2")")" = "$want" ] ||
    fail "$1: snapshot $2 does not read as its instant"
  [ "$(file_sha "$dest")" = "$want" ] ||
    fail "$1: the backup is not snapshot $2"
}

ctl create s0
cp --sparse=always "$model" "$tmpdir/at-s0"
ctl backup s0 "$dest" > "$tmpdir/out" || fail "full backup of s0: exit $?"
cat "$tmpdir/out"
grep -q "^backup s0 -> $dest: " "$tmpdir/out" ||
  fail "full backup: no summary line"
same "full backup" s0 "$tmpdir/at-s0"
# Sparse: 128 data chunks and the tail (8 MiB + 4 KiB); 1 MiB of slack.
used=$(du -k "$dest" | cut -f1)
[ "$used" -le $(( 8 * 1024 + 4 + 1024 )) ] ||
  fail "the backup of a mostly sparse image uses $used KiB"
[ "$(stat -c %a "$dest")" = 600 ] || fail "a new DEST is not mode 0600"

for r in 1 2 3; do
  prev=s$(( r - 1 ))
  ops $(( r * 10 + 1 )) 40
  ctl create "m$r"
  ops $(( r * 10 + 2 )) 20
  ctl create "s$r"
  cp --sparse=always "$model" "$tmpdir/at-s$r"
  ops $(( r * 10 + 3 )) 20            # after sR: not in the backup
  ctl delete "m$r"                    # the middle one: chunks move
  changed=$(ctl --json changes "$prev" "s$r" | "$PYTHON" -c '
import json, sys
print(json.load(sys.stdin)["changed_bytes"])')
  [ "$changed" -gt 0 ]

  opts=()
  case $r in
    2) opts=(--verify --connections 1) ;;
    3) opts=(--connections 16) ;;
  esac
  if [ "$r" -eq 3 ]; then
    ctl --json backup "s$r" "$dest" --since "$prev" "${opts[@]}" \
      > "$tmpdir/out" || fail "round $r: backup: exit $?"
    json_final "$tmpdir/out" | "$PYTHON" -c '
import json, sys
o = json.load(sys.stdin)
assert o["ok"] is True and o["name"] == "s3" and o["since"] == "s2", o
assert o["dest"] == sys.argv[2] and o["size"] == int(sys.argv[3]), o
assert o["bytes_copied"] + o["bytes_zeroed"] == int(sys.argv[1]), o
assert o["connections"] == 16 and o["verified"] is False, o
' "$changed" "$dest" "$size"
    grep -q '"progress":"backup","name":"s3"' "$tmpdir/out" ||
      fail "round 3: no progress objects"
  else
    ctl backup "s$r" "$dest" --since "$prev" "${opts[@]}" \
      > "$tmpdir/out" || fail "round $r: backup: exit $?"
    cat "$tmpdir/out"
  fi
  if [ "$r" -eq 2 ]; then
    grep -q "^verify: $dest equals snapshot s2 " "$tmpdir/out" ||
      fail "round 2: --verify said nothing"
  fi
  same "round $r" "s$r" "$tmpdir/at-s$r"
  ctl delete "$prev"                  # rotation; the hold is gone
done

# A full backup over the incremental one, and into an empty file.
ops 41 20
cp "$dest" "$tmpdir/before-full"
ctl backup s3 "$dest" --verify > "$tmpdir/out" ||
  fail "full backup over DEST: exit $?"
same "full backup over the incremental" s3 "$tmpdir/at-s3"
: > "$tmpdir/empty.img"
ctl backup s3 "$tmpdir/empty.img" --connections 3 ||
  fail "full backup into an empty file: exit $?"
[ "$(file_sha "$tmpdir/empty.img")" = "$(file_sha "$tmpdir/at-s3")" ] ||
  fail "the backup into an empty file is not s3"
ctl --json list | "$PYTHON" -c '
import json, sys
ss = json.load(sys.stdin)["snapshots"]
assert [(s["name"], s["holds"]) for s in ss] == [("s3", 0)], ss
'
