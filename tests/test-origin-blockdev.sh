#!/usr/bin/env bash
# nbdsnap test: a block device as the origin (a loop device).
# Without statedir= it is refused at start-up; with it, the export has the
# device's size (BLKGETSIZE64), reads return the device's bytes, writes
# reach the backing file after a flush, zero reads back as zeros, and the
# whole device is reported as data.  Skipped (77) where no loop device can
# be set up (no root, no /dev/loop-control, a container).
source "${abs_top_builddir:?}/tests/functions.sh"
requires losetup --version
requires nbdcopy --version
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

backing="$tmpdir/backing.img"
size=$(( 4 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$backing"
if ! dev="$(losetup -f --show "$backing" 2>/dev/null)" || [ -z "$dev" ]; then
  echo "$0: cannot set up a loop device: skipping this test"
  exit 77
fi
cleanup_fn losetup -d "$dev"
[ -b "$dev" ] || fail "$dev is not a block device"

# A block device needs an explicit state directory.
if run_nbdkit -f -U "$tmpdir/refused.sock" "$plugin" "$dev" \
     2> "$tmpdir/err"; then
  fail "started without statedir= on a block device"
fi
cat "$tmpdir/err"
grep -q "statedir=.*block device" "$tmpdir/err" ||
  fail "the message does not say statedir= is required"

start_nbdkit "$dev" statedir="$tmpdir/state"

[ "$(nbdinfo --size "$uri")" -eq "$size" ] || fail "wrong export size"
nbdcopy "$uri" "$tmpdir/copy.img"
cmp "$backing" "$tmpdir/copy.img" || fail "read different bytes"

nbdinfo --map "$uri" > "$tmpdir/map"
cat "$tmpdir/map"
[ "$(awk '{print $1, $2, $3}' "$tmpdir/map")" = "0 $size 0" ] ||
  fail "a block device is not reported as one data extent"

cp "$backing" "$tmpdir/want.img"
nbdsh -u "$uri" -c '
M = 1 << 20
h.pwrite(b"\x5a" * 65536, M + 512)
h.zero(M, 2 * M)
assert h.pread(M, 2 * M) == bytes(M)
assert h.pread(65536, M + 512) == b"\x5a" * 65536
h.flush()
'
"$PYTHON" - "$tmpdir/want.img" <<'PY'
import sys
M = 1 << 20
with open(sys.argv[1], "r+b") as f:
    f.seek(M + 512); f.write(b"\x5a" * 65536)
    f.seek(2 * M); f.write(bytes(M))
PY
cmp "$dev" "$tmpdir/want.img" || fail "the device does not hold the writes"
cmp "$backing" "$tmpdir/want.img" || fail "the backing file does not hold them"
