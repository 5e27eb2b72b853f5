#!/usr/bin/env bash
# nbdsnap test: unaligned reads of a snapshot that span chunks copied into
# its store, chunks still in the origin and chunks that were holes are
# pieced together right.  The image (64K chunks, a short last chunk) has
# pattern chunks, random chunks and a hole; after the snapshot, the origin
# is written in a few chunks (partly) and in the hole.  qemu-io 'read -P'
# checks spans of one pattern across copied and uncopied chunks; nbdsh
# preads of fixed and random unaligned spans are compared with the bytes of
# the image at snapshot time.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
C=65536
size=$(( 8 * C + 777 ))

# chunk 0 random, 1-3 0x5a, 4 a hole, 5 random, 6 0x66, 7 and the tail
# random.
"$PYTHON" - "$img" "$size" <<'PY'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
C = 65536
with open(path, "wb") as f:
    f.truncate(size)
    for i, fill in enumerate([None, 0x5a, 0x5a, 0x5a, "hole", None, 0x66,
                              None, None]):
        n = min(C, size - i * C)
        if fill == "hole":
            continue
        f.seek(i * C)
        f.write(os.urandom(n) if fill is None else bytes([fill]) * n)
PY
cp --sparse=always "$img" "$tmpdir/at-s1.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
snapuri="nbd+unix:///s1?socket=$sock"
ctl create s1

# Copy chunks 1, 3, 5, 6 and the last one; chunk 2 stays uncopied; write
# into the hole (chunk 4, not a candidate: never copied).
timeout 60 qemu-io -f raw \
  -c "write -P 0xee $(( C + 100 )) 1000" \
  -c "write -P 0xee $(( 3 * C + 10 )) 5" \
  -c "write -P 0xee $(( 4 * C + 100 )) 2000" \
  -c "write -P 0xee $(( 5 * C + 65000 )) 1000" \
  -c "write -P 0xee $(( size - 100 )) 100" \
  "$uri" >/dev/null

ctl --json info s1 | "$PYTHON" -c '
import json, sys
s = json.load(sys.stdin)["snapshot"]
assert s["chunks_candidate"] == 8, s    # 9 chunks, one of them a hole
assert s["chunks_copied"] == 5, s       # 1, 3, 5, 6, 8
'

# One pattern across copied (1), uncopied (2) and copied (3) chunks,
# unaligned at both ends; the hole; inside a copied chunk.
timeout 60 qemu-io -r -f raw \
  -c "read -P 0x5a $(( C + 7 )) $(( 4 * C - 9 - C - 7 ))" \
  -c "read -P 0x00 $(( 4 * C + 1 )) $(( C - 2 ))" \
  -c "read -P 0x66 $(( 6 * C + 3 )) $(( C - 4 ))" \
  "$snapuri" > "$tmpdir/qemu-io.out"
cat "$tmpdir/qemu-io.out"
if grep -q -i 'pattern verification failed\|error' "$tmpdir/qemu-io.out"; then
  fail "qemu-io read -P: the snapshot has wrong bytes"
fi
[ "$(grep -c '^read ' "$tmpdir/qemu-io.out")" -eq 3 ] ||
  fail "qemu-io did not do the three reads"

nbdsh -u "$snapuri" -c "
import random
want = open('$tmpdir/at-s1.img', 'rb').read()
size = $size
C = $C
assert h.get_size() == size == len(want)
spans = [
    (1, size - 2),                      # nearly all, odd ends
    (C - 1, C + 2),                     # random | copied | uncopied
    (C + 99, 3 * C),                    # copied, uncopied, copied, hole
    (4 * C - 3, C + 6),                 # into and out of the hole
    (5 * C + 64999, 1002),              # copied 5 | copied 6
    (size - 1000, 1000),                # the short, copied last chunk
    (size - 1, 1),
]
rnd = random.Random(1)
for _ in range(300):
    off = rnd.randrange(size)
    spans.append((off, rnd.randrange(1, min(3 * C, size - off) + 1)))
for off, n in spans:
    got = h.pread(n, off)
    if got != want[off:off + n]:
        bad = next(i for i in range(n) if got[i] != want[off + i])
        raise AssertionError('pread(%d, %d): first wrong byte at %d'
                             % (n, off, off + bad))
"
