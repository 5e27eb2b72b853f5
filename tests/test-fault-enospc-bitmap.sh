#!/usr/bin/env bash
# nbdsnap test: an origin write on a full state filesystem that only has
# to set a copied bit (the chunk was a hole, or held zeros, when the
# snapshot was taken: nothing to copy) does not crash nbdkit.  The bitmap
# file is mmap'd and sparse; its page of copied bits is first touched by
# that write, and on a full filesystem the page cannot be allocated (a
# store of a shared mapping that cannot be backed raises SIGBUS).  State
# directory on a small tmpfs, image elsewhere: 1M of data, 1M of written
# zeros, 2M of hole.  A snapshot, then the tmpfs is filled, then one write
# into the hole and one into the zeros: both succeed, nbdkit is alive, the
# origin has the bytes, and the snapshot reads its instant - or, if it was
# made invalid, every read fails with EIO; the same after a restart.
# Then snapshots are created with 0 to 3 pages left on the filesystem
# (the candidate bits are set through the mapping too): each create
# succeeds and the snapshot reads its instant, or fails saying there is
# no space and leaves no file behind; nbdkit never dies.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-io --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'

mnt="$tmpdir/mnt"
small_fs 8m "$mnt"

img="$tmpdir/disk.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img"
head -c $(( 1024 * 1024 )) /dev/zero >> "$img"
truncate -s $(( 4 * 1024 * 1024 )) "$img"
args=("$img" statedir="$mnt/state" admin="$tmpdir/admin.sock" chunk-size=64K)

# check NAME WHEN: NAME reads its instant, or is invalid and every read
# fails with EIO.
check ()
{
  reads_instant_or_eio "nbd+unix:///$1?socket=$sock" "$tmpdir/at-$1.img" \
    "$1: $2" || fail "$1 ($2)"
  [ "$nreads_eio" -eq 0 ] || [ "$nreads_eio" -eq "$nreads" ] ||
    fail "$1: $2: partly readable"
}

start_nbdkit "${args[@]}"
cp "$img" "$tmpdir/at-s1.img"
ctl create s1
fill_fs "$mnt"
pid=$(cat "$tmpdir/nbdkit.pid")

for w in 'write -P 0x61 2M 64k' 'write -P 0x62 1M 64k'; do
  timeout 60 qemu-io -f raw -c "$w" "$uri" > "$tmpdir/out" 2>&1 || {
    cat "$tmpdir/out"
    kill -0 "$pid" 2>/dev/null || fail "nbdkit died on '$w'"
    fail "'$w' failed"
  }
done
cmp <(head -c 65536 /dev/zero | tr '\0' '\141') \
    <(tail -c +$(( 2 * 1024 * 1024 + 1 )) "$img" | head -c 65536) ||
  fail "the origin lacks the write into the hole"
cmp <(head -c 65536 /dev/zero | tr '\0' '\142') \
    <(tail -c +$(( 1024 * 1024 + 1 )) "$img" | head -c 65536) ||
  fail "the origin lacks the write into the zeros"
check s1 "on a full filesystem"

stop_nbdkit
start_nbdkit "${args[@]}"
check s1 "after a restart"
rm -f "$mnt/filler"
check s1 "after a restart, with room again"
ctl delete s1

# Create with 0 to 3 pages left.
pid=$(cat "$tmpdir/nbdkit.pid")
for pages in 0 1 2 3; do
  rm -f "$mnt/filler"
  fill_fs "$mnt"
  truncate -s -$(( pages * 4096 )) "$mnt/filler"
  cp "$img" "$tmpdir/at-c$pages.img"
  status=0
  ctl create "c$pages" > "$tmpdir/out" 2>&1 || status=$?
  cat "$tmpdir/out"
  kill -0 "$pid" 2>/dev/null ||
    fail "nbdkit died creating a snapshot with $pages pages free"
  if [ "$status" -eq 0 ]; then
    check "c$pages" "created with $pages pages free"
    ctl delete "c$pages"
  else
    grep -E -q -i 'space|ENOSPC' "$tmpdir/out" ||
      fail "create with $pages pages free failed, not saying why"
    [ -z "$(ls "$mnt/state" | grep '^snap-')" ] ||
      { ls -l "$mnt/state"; fail "a failed create left files"; }
  fi
done
