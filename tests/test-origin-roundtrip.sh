#!/usr/bin/env bash
# nbdsnap test: the origin export returns the image's bytes.
# A sparse image of odd size, with random data at the start, in the middle
# and at the very end, is read whole with nbdcopy and with qemu-img
# convert; both copies must be byte-identical to the file, and the export
# size must be the file's size.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires nbdinfo --version
requires qemu-img --version

img="$tmpdir/disk.img"
size=$(( 16 * 1024 * 1024 + 513 ))
truncate -s "$size" "$img"
head -c 1M /dev/urandom | dd of="$img" conv=notrunc status=none
head -c 300K /dev/urandom | dd of="$img" bs=1K seek=5000 conv=notrunc \
  status=none
printf 'the last 23 bytes here!' |
  dd of="$img" bs=1 seek=$(( size - 23 )) conv=notrunc status=none
[ "$(stat -c %s "$img")" -eq "$size" ] || fail "test image has the wrong size"

start_nbdkit "$img"

got_size="$(nbdinfo --size "$uri")"
[ "$got_size" -eq "$size" ] || fail "export size $got_size, expected $size"

nbdcopy "$uri" "$tmpdir/nbdcopy.img"
cmp "$img" "$tmpdir/nbdcopy.img" || fail "nbdcopy read different bytes"

# QEMU rounds an export's size up to a multiple of 512 and reads the
# padding as zeros: compare the image's bytes, then check the padding.
qemu-img convert -f raw -O raw "$uri" "$tmpdir/qemu.img"
cmp -n "$size" "$img" "$tmpdir/qemu.img" ||
  fail "qemu-img convert read different bytes"
qsize="$(stat -c %s "$tmpdir/qemu.img")"
[ "$qsize" -eq $(( (size + 511) / 512 * 512 )) ] ||
  fail "qemu-img convert wrote $qsize bytes"
cmp -n $(( qsize - size )) -i "$size:0" "$tmpdir/qemu.img" /dev/zero ||
  fail "qemu-img convert's padding is not zeros"

# The image itself was not changed by being read.
[ "$(tail -c 23 "$img")" = 'the last 23 bytes here!' ] || fail "image changed"
