#!/usr/bin/env bash
# nbdsnap test: trim and zero read back as zeros, touch nothing else, and
# show as holes in nbdinfo --map (trim, and zero that may punch holes).
# A fast zero either zeros or fails with ENOTSUP, changing nothing.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

img="$tmpdir/disk.img"
M=$(( 1024 * 1024 ))
head -c $(( 8 * M )) /dev/zero | tr '\0' '\377' > "$img"

start_nbdkit "$img"

nbdsh -u "$uri" -c '
M = 1 << 20
h.trim(M, 1 * M)                                # [1M, 2M)
h.zero(M, 3 * M)                                # [3M, 4M), may punch
h.zero(M, 5 * M, nbd.CMD_FLAG_NO_HOLE)          # [5M, 6M), no hole
h.zero(100, 7 * M + 1000, nbd.CMD_FLAG_NO_HOLE) # unaligned
for off, n in ((1 * M, M), (3 * M, M), (5 * M, M), (7 * M + 1000, 100)):
    assert h.pread(n, off) == bytes(n), "not zeros at %d" % off
for off, n in ((0, M), (2 * M, M), (4 * M, M), (7 * M, 1000),
               (7 * M + 1100, M - 1100)):
    assert h.pread(n, off) == b"\xff" * n, "changed at %d" % off

# Fast zero: done at once, or refused with ENOTSUP and nothing changed.
assert h.can_fast_zero()
try:
    h.zero(M // 2, 6 * M, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(M // 2, 6 * M) == bytes(M // 2)
except nbd.Error as e:
    assert e.errno in ("ENOTSUP", "EOPNOTSUPP"), e  # the same on Linux
    assert h.pread(M // 2, 6 * M) == b"\xff" * (M // 2)
'

# The file itself, read directly.
"$PYTHON" - "$img" <<'PY'
import sys
M = 1 << 20
data = open(sys.argv[1], "rb").read()
assert len(data) == 8 * M
for off, n in ((M, M), (3 * M, M), (5 * M, M), (7 * M + 1000, 100)):
    assert data[off:off + n] == bytes(n), "file not zero at %d" % off
for off, n in ((0, M), (2 * M, M), (4 * M, M)):
    assert data[off:off + n] == b"\xff" * n, "file changed at %d" % off
PY

# Holes where trim and zero (may trim) were done, data around them.
nbdinfo --map "$uri" > "$tmpdir/map"
cat "$tmpdir/map"
"$PYTHON" - "$tmpdir/map" <<'PY'
import sys
M = 1 << 20
ext = []
for line in open(sys.argv[1]):
    off, length, typ = (int(x) for x in line.split()[:3])
    ext.append((off, length, typ))
def type_at(o):
    for off, length, typ in ext:
        if off <= o < off + length:
            return typ
    raise AssertionError("no extent at %d" % o)
assert sum(l for _, l, _ in ext) == 8 * M
for o in (M, 2 * M - 1, 3 * M, 4 * M - 1):
    assert type_at(o) == 3, "not a hole at %d: type %d" % (o, type_at(o))
for o in (0, M - 1, 2 * M, 4 * M, 8 * M - 1):
    assert type_at(o) == 0, "not data at %d: type %d" % (o, type_at(o))
PY
