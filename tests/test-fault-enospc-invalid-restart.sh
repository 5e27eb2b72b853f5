#!/usr/bin/env bash
# nbdsnap test: a snapshot made invalid by ENOSPC on the state directory's
# filesystem stays invalid across a restart.  The state directory is on a
# small tmpfs (the image is elsewhere); a snapshot is taken, one chunk is
# copied, then the tmpfs is filled to the last page, and the origin is
# overwritten: every write succeeds and the origin has the new bytes, the
# snapshot is listed as invalid and its reads fail with EIO.  nbdkit is
# stopped (SIGTERM), and in a second round killed (SIGKILL), and started
# again: the snapshot must still be invalid and its reads must still fail
# with EIO - never return the new bytes of the origin as if they were the
# snapshot's.  Once the filler is removed, a new snapshot works and reads
# its instant.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

mnt="$tmpdir/mnt"
small_fs 8m "$mnt"

img="$tmpdir/disk.img"
size=$(( 4 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"
args=("$img" statedir="$mnt/state" admin="$tmpdir/admin.sock" chunk-size=64K)

state () {
  ctl --json info "$1" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}

# check_invalid NAME WHEN: NAME is listed invalid and every read of it
# fails with EIO; a read that returns bytes fails the test, saying whose
# bytes they were.
check_invalid ()
{
  local st
  st=$(state "$1") || fail "$1: info failed ($2)"
  reads_eio --new "$img" "nbd+unix:///$1?socket=$sock" "$tmpdir/at-$1.img" \
    "$1: $2" || fail "$1: read check ($2)"
  [ "$st" = invalid ] || fail "$1 is '$st', not invalid ($2)"
}

# One round: snapshot NAME, fill, overwrite the origin, then end nbdkit
# with HOW (stop_nbdkit or kill9_nbdkit) and start it again.
round ()
{
  local name=$1 how=$2 pattern=$3
  cp "$img" "$tmpdir/at-$name.img"
  ctl create "$name"
  # One chunk copied while there is room (its store and bitmap pages
  # exist), the rest after the filesystem is full.
  timeout 60 qemu-io -f raw -c "write -P $pattern 3M 64k" "$uri" >/dev/null
  fill_fs "$mnt"
  timeout 60 qemu-io -f raw -c "write -P $pattern 0 1M" "$uri" \
    > "$tmpdir/out" 2>&1 ||
    { cat "$tmpdir/out"; fail "$name: an origin write failed on ENOSPC"; }
  cmp <(head -c $(( 1024 * 1024 )) "$img") \
      <(head -c $(( 1024 * 1024 )) /dev/zero |
          tr '\0' "\\$(printf %o "$pattern")") ||
    fail "$name: the origin lacks the writes"
  check_invalid "$name" "after ENOSPC"
  $how
  start_nbdkit "${args[@]}"
  check_invalid "$name" "after $how and a restart"
  rm -f "$mnt/filler"
}

start_nbdkit "${args[@]}"
round s1 stop_nbdkit 0x41
round s2 kill9_nbdkit 0x42
check_invalid s1 "after the second restart"

# With room again, a new snapshot works.
cp "$img" "$tmpdir/at-s3.img"
ctl create s3
timeout 60 qemu-io -f raw -c 'write -P 0x43 0 2M' "$uri" >/dev/null
[ "$(state s3)" = live ] || fail "s3 is not live"
timeout 60 nbdcopy "nbd+unix:///s3?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s3.img")" ] ||
  fail "s3 is not its instant"
