#!/usr/bin/env bash
# nbdsnap test: several snapshots, each keeps its own instant.  Three
# snapshots are taken with overwrites between them, some of the same
# chunks more than once (an older snapshot then finds its chunk in a newer
# one), and a full overwrite at the end; each snapshot then reads, with
# nbdcopy, exactly as the copy of the image taken at its instant.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 + 4096 + 7 ))   # 33 chunks of 64K, the last short
head -c "$size" /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"

# check NAME: the snapshot NAME reads as $tmpdir/at-NAME.img.
check ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img"
  if [ "$(sha "$tmpdir/got.img")" != "$(sha "$tmpdir/at-$1.img")" ]; then
    cmp "$tmpdir/got.img" "$tmpdir/at-$1.img" || :
    fail "snapshot $1 is not its instant ($2)"
  fi
}

cp "$img" "$tmpdir/at-s1.img"
ctl create s1
timeout 60 qemu-io -f raw -c 'write -P 0x01 100000 200000' \
               -c 'write -P 0x02 1M 64k' "$uri" >/dev/null

cp "$img" "$tmpdir/at-s2.img"
ctl create s2
# Chunks written before s2 and again, chunks first written now, the tail.
timeout 60 qemu-io -f raw -c 'write -P 0x03 150000 300000' \
               -c 'write -P 0x04 1500000 10' "$uri" >/dev/null
nbdsh -u "$uri" -c "h.pwrite(b'\\x05' * 5000, $size - 5000)"

cp "$img" "$tmpdir/at-s3.img"
ctl create s3
timeout 60 qemu-io -f raw -c 'write -P 0x06 0 400000' \
               -c 'write -P 0x07 1M 1' "$uri" >/dev/null

for s in s1 s2 s3; do check $s "after partial overwrites"; done

head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"
cmp "$img" "$tmpdir/new.img" || fail "the origin lacks the new bytes"
for s in s1 s2 s3; do check $s "after a full overwrite"; done

# The three instants really differ (else the checks prove little).
[ "$(sha "$tmpdir/at-s1.img")" != "$(sha "$tmpdir/at-s2.img")" ]
[ "$(sha "$tmpdir/at-s2.img")" != "$(sha "$tmpdir/at-s3.img")" ]
