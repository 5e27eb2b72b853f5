#!/usr/bin/env bash
# nbdsnap test: qemu-img as the client of a snapshot of a sparse image
# (data extents and holes, 64K chunks), after the origin was written both
# over data and into holes:
# * `qemu-img convert -O raw' of the snapshot has the sha256 of a copy of
#   the image saved when the snapshot was taken;
# * `qemu-img compare' of the snapshot against that copy exits 0, against
#   the changed origin exits 1 and names the first changed offset;
# * `qemu-img map --output=json' of the snapshot shows holes exactly at
#   the chunks that held no data at snapshot time (before and after the
#   origin writes), while the origin's map shows the new data in the
#   former holes: it is the image's own SEEK_DATA/SEEK_HOLE map now.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version


img="$tmpdir/disk.img"
C=65536
size=$(( 64 * C ))          # a multiple of 512: QEMU sees every byte

# Data in chunk 0, chunks 16-17, a 4K piece inside chunk 40 and chunk
# 63; holes elsewhere.
truncate -s "$size" "$img"
"$PYTHON" - "$img" <<'PY'
import os, sys
C = 65536
with open(sys.argv[1], "r+b") as f:
    for off, n in [(0, C), (16 * C, 2 * C), (40 * C + 8192, 4096),
                   (63 * C, C)]:
        f.seek(off)
        f.write(os.urandom(n))
PY
cp --sparse=always "$img" "$tmpdir/at-s1.img"

# file_map FILE GRAIN: the file's data and holes from SEEK_DATA /
# SEEK_HOLE, rounded out to GRAIN, as "offset length data|hole" lines.
file_map ()
{
  "$PYTHON" - "$1" "$2" <<'PY'
import os, sys
path, G = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
n = (size + G - 1) // G
data = set()
off = 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    e = os.lseek(fd, d, os.SEEK_HOLE)
    data.update(range(d // G, (e + G - 1) // G))
    off = e
i = 0
while i < n:
    j = i
    while j < n and (j in data) == (i in data):
        j += 1
    print(i * G, min(j * G, size) - i * G, "data" if i in data else "hole")
    i = j
PY
}

# qemu_map URI: `qemu-img map --output=json' as the same lines, merged.
# A hole must read as zeros ("zero": true).
qemu_map ()
{
  timeout 60 qemu-img map -f raw --output=json "$1" > "$tmpdir/map.json" ||
    fail "qemu-img map $1 failed"
  "$PYTHON" - "$tmpdir/map.json" <<'PY'
import json, sys
out = []
for e in json.load(open(sys.argv[1])):
    kind = "data" if e["data"] else "hole"
    if kind == "hole":
        assert e["zero"], "a hole that does not read as zeros: %r" % e
    if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], kind])
for o in out:
    print(*o)
PY
}

file_map "$img" "$C" > "$tmpdir/want-snap-map"
cat "$tmpdir/want-snap-map"
grep -q hole "$tmpdir/want-snap-map" ||
  { echo "$0: the file system here keeps no holes"; exit 77; }

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
snapuri="nbd+unix:///s1?socket=$sock"
ctl create s1

qemu_map "$snapuri" > "$tmpdir/snap-map-1"
diff -u "$tmpdir/want-snap-map" "$tmpdir/snap-map-1" ||
  fail "qemu-img map: the snapshot's holes are not the image's"

# Change the origin: into holes (chunk 5, chunks 30-31), over data
# (chunk 16, part of chunk 40).
timeout 60 qemu-io -f raw \
  -c "write -P 0x5a $(( 5 * C )) 4096" \
  -c "write -P 0x3c $(( 30 * C )) $(( 2 * C ))" \
  -c "write -P 0xa5 $(( 16 * C + 512 )) 1024" \
  -c "write -P 0x77 $(( 40 * C + 8192 )) 512" \
  "$uri" >/dev/null
cmp -s "$img" "$tmpdir/at-s1.img" && fail "the origin writes changed nothing"

# convert: the instant's bytes.
timeout 60 qemu-img convert -f raw -O raw "$snapuri" "$tmpdir/s1.img"
[ "$(sha "$tmpdir/s1.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "qemu-img convert: the snapshot's bytes are not its instant's"
timeout 60 qemu-img convert -f raw -O raw "$uri" "$tmpdir/origin.img"
[ "$(sha "$tmpdir/origin.img")" = "$(sha "$img")" ] ||
  fail "qemu-img convert: the origin's bytes are not the image's"

# compare: 0 = identical, 1 = different (2 = error).
status=0
timeout 60 qemu-img compare -f raw -F raw "$snapuri" "$tmpdir/at-s1.img" \
  > "$tmpdir/cmp-same" 2>&1 || status=$?
cat "$tmpdir/cmp-same"
[ "$status" -eq 0 ] ||
  fail "qemu-img compare snapshot / saved copy exited $status, not 0"
status=0
timeout 60 qemu-img compare -f raw -F raw "$snapuri" "$uri" \
  > "$tmpdir/cmp-diff" 2>&1 || status=$?
cat "$tmpdir/cmp-diff"
[ "$status" -eq 1 ] ||
  fail "qemu-img compare snapshot / changed origin exited $status, not 1"
grep -q "offset $(( 5 * C ))\b" "$tmpdir/cmp-diff" ||
  fail "qemu-img compare did not name offset $(( 5 * C )), the first change"

# map: the snapshot still has its holes, chunks 5 and 30-31 included; the
# origin now has data there.
qemu_map "$snapuri" > "$tmpdir/snap-map-2"
diff -u "$tmpdir/want-snap-map" "$tmpdir/snap-map-2" ||
  fail "qemu-img map: the snapshot's holes changed with the origin"
# The origin answers block status from the image file itself (its own
# granularity, not chunks).
file_map "$img" 512 > "$tmpdir/want-origin-map"
qemu_map "$uri" > "$tmpdir/origin-map"
diff -u "$tmpdir/want-origin-map" "$tmpdir/origin-map" ||
  fail "qemu-img map: the origin's map is not the image's"
"$PYTHON" - "$tmpdir/origin-map" "$C" <<'PY'
import sys
C = int(sys.argv[2])
data = [(int(o), int(o) + int(n)) for o, n, k in
        (l.split() for l in open(sys.argv[1])) if k == "data"]
for off in (5 * C, 30 * C, 31 * C):
    assert any(a <= off < b for a, b in data), \
        "the origin's map shows no data at %d after the write there" % off
PY
diff -q "$tmpdir/snap-map-2" "$tmpdir/origin-map" >/dev/null &&
  fail "the snapshot's and the origin's maps are the same"
:
