#!/usr/bin/env bash
# nbdsnap test: writes through the origin export land in the image file.
# Writes from qemu-io (aligned and unaligned), nbdsh (across the last
# byte) and nbdcopy (the whole image) are replayed on a local copy; the
# image must then be byte-identical to that copy.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

img="$tmpdir/disk.img"
want="$tmpdir/expected.img"
size=$(( 8 * 1024 * 1024 + 100 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$want"

# pattern BYTE OFFSET LENGTH: write LENGTH bytes of BYTE into $want.
pattern ()
{
  "$PYTHON" - "$want" "$@" <<'PY'
import sys
path, byte, off, n = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), int(sys.argv[4])
with open(path, "r+b") as f:
    f.seek(off)
    f.write(bytes([byte]) * n)
PY
}

start_nbdkit "$img"

qemu-io -f raw -c 'write -P 0x55 1M 64k' -c 'write -P 0xaa 3000 5000' "$uri"
pattern 0x55 $(( 1024 * 1024 )) 65536
pattern 0xaa 3000 5000
cmp "$img" "$want" || fail "after qemu-io writes"

nbdsh -u "$uri" -c "h.pwrite(b'\\x42' * 7000, $size - 7000)"
pattern 0x42 $(( size - 7000 )) 7000
cmp "$img" "$want" || fail "after the nbdsh write at the end"

head -c "$size" /dev/urandom > "$tmpdir/new.img"
nbdcopy "$tmpdir/new.img" "$uri"
cmp "$img" "$tmpdir/new.img" || fail "after nbdcopy wrote the whole image"
[ "$(stat -c %s "$img")" -eq "$size" ] || fail "the image changed size"
