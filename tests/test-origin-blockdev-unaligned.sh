#!/usr/bin/env bash
# nbdsnap test: zero and trim requests that are not aligned to the block
# device's logical block size.  The export advertises a minimum block
# size of 1, so a client may zero or trim any byte range.  With a loop
# device of 512-byte and one of 4096-byte logical sectors as the origin:
# a zero (may trim, NO_HOLE, FAST_ZERO) zeroes exactly its bytes, the
# unaligned edges included; a fast zero that cannot be fast fails with
# ENOTSUP and changes nothing; a trim changes nothing outside its aligned
# middle.  The device then holds the expected image, and a snapshot taken
# before still reads its instant.  Skipped (77) where no loop device can
# be set up.
source "${abs_top_builddir:?}/tests/functions.sh"
requires losetup --version
requires blockdev --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'

size=$(( 1024 * 1024 ))                 # 16 chunks of 64K

# The zeroes and trims, through libnbd.  Every request is checked
# against a model of the image kept in Python; the model is written to
# $WANT at the end.
script='
import os
SS = int(os.environ["SS"])
size = int(os.environ["SIZE"])
want = bytearray(open(os.environ["ORIG"], "rb").read())
assert len(want) == size == h.get_size()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
assert h.can_fast_zero()

def check(what):
    got = h.pread(size, 0)
    assert got == bytes(want), "%s: wrong bytes at %d" % (
        what, next(i for i in range(size) if got[i] != want[i]))

def zero(count, offset, flags=0):
    h.zero(count, offset, flags)
    want[offset:offset + count] = bytes(count)
    check("zero %d at %d flags %d" % (count, offset, flags))

def refused_fast_zero(count, offset, flags):
    try:
        h.zero(count, offset, flags | nbd.CMD_FLAG_FAST_ZERO)
    except nbd.Error as e:
        assert e.errno in ("ENOTSUP", "EOPNOTSUPP"), e
    else:
        raise AssertionError("fast zero %d at %d flags %d was accepted"
                             % (count, offset, flags))
    check("refused fast zero %d at %d" % (count, offset))

def trim(count, offset):
    h.trim(count, offset)
    # Advisory: the aligned middle may now read as zeros or as before;
    # the unaligned edges must be as before.
    lo = -(-offset // SS) * SS
    hi = (offset + count) // SS * SS
    got = h.pread(size, 0)
    for b in range(lo, hi, SS):
        assert got[b:b + SS] in (bytes(want[b:b + SS]), bytes(SS)), \
            "trim %d at %d: block at %d is neither old nor zeros" % (
                count, offset, b)
        want[b:b + SS] = got[b:b + SS]
    check("trim %d at %d" % (count, offset))
    print("%d-byte sectors: trim %d at %d: middle now %s" % (
        SS, count, offset,
        "empty" if lo >= hi else
        "zeros" if got[lo:hi] == bytes(hi - lo) else "as before"))

K = 65536
NO_HOLE = nbd.CMD_FLAG_NO_HOLE

# Zero, holes allowed: inside one block, across one block boundary,
# head + middle + tail, aligned start, aligned end, across a chunk, at
# the end of the device.
zero(100, 10)
zero(20, 2 * SS - 10)
zero(3 * SS + 7, 4 * SS + 300)
zero(SS + 1, 10 * SS)
zero(2 * SS - 1, 12 * SS + 1)
zero(3 * SS + 200, K - SS - 100)
zero(SS + 5, size - SS - 5)

# Zero without holes: the same shapes, elsewhere.
zero(99, 2 * K + 1, NO_HOLE)
zero(5 * SS + 3, 2 * K + 3 * SS - 1, NO_HOLE)
zero(2 * K + 2, 4 * K - K - 1, NO_HOLE)
zero(SS - 3, size - SS - 100, NO_HOLE)

# Fast zero: nothing aligned in it (only writes of zeros): refused.
refused_fast_zero(100, 6 * K + 10, 0)
refused_fast_zero(SS, 6 * K + SS // 2, 0)
# On a block device only a hole punched by the kernel is fast: with
# NO_HOLE a fast zero is refused, aligned middle or not.
refused_fast_zero(4 * SS + 10, 6 * K + SS - 5, NO_HOLE)
# With holes allowed and an aligned middle: done if the device can
# punch, refused with nothing changed if not.
try:
    h.zero(4 * SS + 10, 7 * K + SS - 5, nbd.CMD_FLAG_FAST_ZERO)
except nbd.Error as e:
    assert e.errno in ("ENOTSUP", "EOPNOTSUPP"), e
    check("refused fast zero with an aligned middle")
    print("%d-byte sectors: fast zero with an aligned middle refused" % SS)
else:
    want[7 * K + SS - 5:7 * K + 5 * SS + 5] = bytes(4 * SS + 10)
    check("fast zero with an aligned middle")
    print("%d-byte sectors: fast zero with an aligned middle done" % SS)

# Trim: inside one block (nothing to do), head + middle + tail.
trim(100, 8 * K + 10)
trim(5 * SS + 10, 9 * K + SS - 5)
trim(SS + 1, 9 * K - SS)

h.flush()
check("after flush")
open(os.environ["WANT"], "wb").write(want)
'

# run_case SECTOR_SIZE
run_case ()
{
  local ss=$1 backing="$tmpdir/backing-$1.img" dev

  head -c "$size" /dev/urandom > "$backing"
  cp "$backing" "$tmpdir/orig-$ss.img"
  if ! dev="$(losetup -f --show --sector-size "$ss" "$backing" \
                2>/dev/null)" || [ -z "$dev" ]; then
    echo "$0: cannot set up a loop device with $ss-byte sectors: skipping"
    exit 77
  fi
  cleanup_fn losetup -d "$dev"
  [ -b "$dev" ] || fail "$dev is not a block device"
  [ "$(blockdev --getss "$dev")" -eq "$ss" ] ||
    fail "$dev: logical block size is not $ss"

  start_nbdkit "$dev" statedir="$tmpdir/state-$ss" \
               admin="$tmpdir/admin.sock"
  ctl create s1

  SS=$ss SIZE=$size ORIG="$tmpdir/orig-$ss.img" WANT="$tmpdir/want-$ss.img" \
    nbdsh -u "$uri" -c "$script" ||
    fail "$ss-byte sectors: the requests above failed"

  cmp "$dev" "$tmpdir/want-$ss.img" ||
    fail "$ss-byte sectors: the device does not hold the expected bytes"
  cmp "$backing" "$tmpdir/want-$ss.img" ||
    fail "$ss-byte sectors: the backing file does not hold them"

  timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/s1-$ss.img"
  [ "$(sha "$tmpdir/s1-$ss.img")" = "$(sha "$tmpdir/orig-$ss.img")" ] ||
    fail "$ss-byte sectors: the snapshot lost its instant"

  stop_nbdkit
}

run_case 512
run_case 4096
