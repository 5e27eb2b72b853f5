#!/usr/bin/env bash
# nbdsnap test: the block status of a snapshot of a sparse image shows
# holes exactly where the image had holes (whole chunks without data) at
# snapshot time, also after the origin was written everywhere, holes
# included.  nbdinfo --map is compared with the map worked out from the
# image's own SEEK_DATA/SEEK_HOLE at snapshot time; nbdcopy of the snapshot
# gives the bytes of that time and a sparse copy (the holes are skipped).
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdinfo --version
requires nbdcopy --version


img="$tmpdir/disk.img"
C=65536
size=$(( 64 * C + 1000 ))          # 65 chunks, the last one short

# Data in chunk 0, chunks 16-17, a 4K piece inside chunk 40, the short
# last chunk; holes elsewhere.
truncate -s "$size" "$img"
"$PYTHON" - "$img" "$size" <<'PY'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
C = 65536
with open(path, "r+b") as f:
    for off, n in [(0, C), (16 * C, 2 * C), (40 * C + 8192, 4096),
                   (64 * C, 1000)]:
        f.seek(off)
        f.write(os.urandom(n))
PY
cp --sparse=always "$img" "$tmpdir/at-s1.img"

# The chunks holding data, from the file system, now.
"$PYTHON" - "$img" "$C" > "$tmpdir/want-map" <<'PY'
import os, sys
path, C = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
data = set()
off = 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    e = os.lseek(fd, d, os.SEEK_HOLE)
    data.update(range(d // C, (e + C - 1) // C))
    off = e
n = (size + C - 1) // C
# Merge into extents: "offset length data|hole".
i = 0
while i < n:
    j = i
    while j < n and (j in data) == (i in data):
        j += 1
    print(i * C, min(j * C, size) - i * C, "data" if i in data else "hole")
    i = j
PY
cat "$tmpdir/want-map"
grep -q hole "$tmpdir/want-map" ||
  { echo "$0: the file system here keeps no holes"; exit 77; }

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
snapuri="nbd+unix:///s1?socket=$sock"
ctl create s1

# nbdinfo --map as "offset length data|hole", merged.
snap_map ()
{
  timeout 60 nbdinfo --map --json "$snapuri" |
    "$PYTHON" -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    kind = "hole" if e["type"] & 1 else "data"
    if e["type"] & 1:
        assert e["type"] & 2, "a hole that does not read as zeros: %r" % e
    if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == e["offset"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["offset"], e["length"], kind])
for o in out:
    print(*o)
'
}

snap_map > "$tmpdir/map-1"
diff -u "$tmpdir/want-map" "$tmpdir/map-1" ||
  fail "the snapshot's holes are not the image's holes"

# Fill the origin entirely, holes included.
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"
cmp "$img" "$tmpdir/new.img"

snap_map > "$tmpdir/map-2"
diff -u "$tmpdir/want-map" "$tmpdir/map-2" ||
  fail "the snapshot's holes changed when the origin was written"

timeout 60 nbdcopy "$snapuri" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "the snapshot's bytes are not the image's at snapshot time"
# 4 data chunks + the short one: far less than the 65 chunks.
used=$(( $(stat -c %b "$tmpdir/got.img") * $(stat -c %B "$tmpdir/got.img") ))
echo "nbdcopy of the snapshot allocated $used bytes"
[ "$used" -le $(( 8 * C )) ] || fail "nbdcopy did not skip the holes"
