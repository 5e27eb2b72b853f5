#!/usr/bin/env bash
# nbdsnap test: copy-on-write by reflink.  On XFS with reflink=1 (a
# loop-mounted image; needs root, skipped otherwise), with the image and
# the state directory on it, a chunk's copy into the store in
# durability=power is a copy_file_range that the file system turns into
# shared blocks (the origin was flushed at the create, so the chunk is
# clean and the reflink costs no writeback); in durability=process chunks
# are copied by hand (a reflink of a dirty chunk would write it back
# first), so the store holds blocks of its own.  After
# 4 KiB first writes to 200 chunks the store's blocks are shared with
# the origin's, except the one 4 KiB block of each chunk that the write
# changed (the file system's own copy-on-write), where a copy would
# hold 16 blocks of each chunk of its own.  The snapshot still
# reads its instant exactly: after the writes, after kill -9 and a
# restart, and after deleting a newer snapshot that moves its chunks
# into it (another reflink); durability=power and process.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires mkfs.xfs -V
requires filefrag -V

if [ "$(id -u)" -ne 0 ]; then
  echo "$0: mounting an XFS image needs root: skipping this test"
  exit 77
fi
mnt="$tmpdir/mnt"
mkdir "$mnt"
truncate -s 1G "$tmpdir/xfs.img"
mkfs.xfs -q -m reflink=1 "$tmpdir/xfs.img" || fail "mkfs.xfs -m reflink=1 failed"
mount -o loop "$tmpdir/xfs.img" "$mnt" || fail "cannot loop-mount the XFS image"
cleanup_fn umount -l "$mnt"

C=65536
N=200

# blocks FILE: "SHARED UNSHARED" 4 KiB blocks of FILE's extents.
blocks ()
{
  sync -f "$1"
  filefrag -v "$1" | awk '
    $1 ~ /^[0-9]+:$/ { n = $6; sub(/:$/, "", n)
                       if ($0 ~ /shared/) s += n; else u += n }
    END { print s + 0, u + 0 }'
}

for mode in power process; do
  img="$mnt/disk-$mode.img"
  state="$mnt/state-$mode"
  bigimg fill "$img" $(( 32 * 1024 * 1024 )) 7
  cp "$img" "$tmpdir/at-a.img"
  start_nbdkit "$img" statedir="$state" admin="$tmpdir/admin.sock" chunk-size=64K \
               durability=$mode
  ctl create a >/dev/null
  # 4 KiB first writes to N chunks, 2 apart (offsets inside the chunks).
  nbdsh -u "$uri" -c "
for i in range($N):
    h.pwrite(b'%c' % (65 + i % 26) * 4096, i * 2 * $C + 8192)
h.flush()"
  store=$(ls "$state"/snap-*.store 2>/dev/null | head -n 1) ||
    fail "no store file in $state"
  read -r shared unshared < <(blocks "$store")
  echo "$mode: after $N first writes the store has $shared shared and" \
       "$unshared unshared 4 KiB blocks ($(( N * C / 4096 )) if copied)"
  if [ "$mode" = power ]; then
    [ "$shared" -ge $(( N * (C / 4096 - 1) )) ] && [ "$unshared" -le $(( 2 * N )) ] ||
      fail "$mode: the chunks were copied, not shared"
  else
    [ "$shared" -eq 0 ] && [ "$unshared" -ge $(( N * C / 4096 )) ] ||
      fail "$mode: the chunks were shared, not copied by hand"
  fi
  [ "$(export_sha "nbd+unix:///a?socket=$sock")" = "$(file_sha "$tmpdir/at-a.img")" ] ||
    fail "$mode: snapshot a does not read its instant"

  # kill -9, restart: the same.
  kill9_nbdkit
  start_nbdkit "$img" statedir="$state" admin="$tmpdir/admin.sock" chunk-size=64K \
               durability=$mode
  [ "$(export_sha "nbd+unix:///a?socket=$sock")" = "$(file_sha "$tmpdir/at-a.img")" ] ||
    fail "$mode: snapshot a after kill -9 does not read its instant"

  # A newer snapshot b takes new copies; deleting it moves them into a.
  ctl create b >/dev/null
  cp "$img" "$tmpdir/at-b.img"
  nbdsh -u "$uri" -c "
for i in range($N):
    h.pwrite(b'z' * 4096, i * 2 * $C + $C)
    h.pwrite(b'y' * 512, i * 2 * $C)
h.flush()"
  [ "$(export_sha "nbd+unix:///b?socket=$sock")" = "$(file_sha "$tmpdir/at-b.img")" ] ||
    fail "$mode: snapshot b does not read its instant"
  ctl delete b >/dev/null
  [ "$(export_sha "nbd+unix:///a?socket=$sock")" = "$(file_sha "$tmpdir/at-a.img")" ] ||
    fail "$mode: snapshot a after deleting b does not read its instant"
  stop_nbdkit
done
echo ok
