#!/usr/bin/env bash
# nbdsnap test (issue 18): EIO on every write and sync of one snapshot's
# bitmap file, its header included, while the rest of the state directory
# (on tests/faultfs) works.  s0 is taken, then s1, the newest, which takes
# the copies; then s1's bitmap fails.  The invalid mark cannot go into its
# bitmap header, so it goes into its meta file: every origin write
# succeeds (the VM never sees an error because a snapshot's file broke),
# s1 is listed invalid and every read of it fails with EIO, s0 (its bitmap
# fine) keeps its instant; after a restart, clean (SIGTERM) or a crash
# (kill -9), s1 is still invalid and s0 still its instant.  On the code
# before the fix the origin writes touching s1's chunks failed with EIO.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

start_faultfs "$tmpdir/fsrc" "$tmpdir/mnt"
img="$tmpdir/disk.img"
state_dir="$tmpdir/mnt/state"
args=("$img" statedir="$state_dir" admin="$tmpdir/admin.sock" chunk-size=64K)

check_state ()
{
  [ "$(snap_state "$1")" = "$2" ] ||
    fail "$when: $1 is $(snap_state "$1"), not $2"
}

for stop in term kill; do
  when="stop by $stop"
  echo "=== $when"
  fault_ctl clear
  rm -rf "$state_dir"
  head -c $(( 2 << 20 )) /dev/urandom > "$img"
  start_nbdkit "${args[@]}"
  cp "$img" "$tmpdir/at-s0.img"
  ctl create s0 >/dev/null
  # s0 copies its first chunks.
  timeout 60 qemu-io -f raw -c 'write -P 0x11 0 128k' "$uri" >/dev/null
  cp "$img" "$tmpdir/at-s1.img"
  ctl create s1 >/dev/null
  fault_ctl fail write,fsync,fdatasync snap-000002.bitmap EIO always
  # 24 writes of 4K, each in its own 64K chunk, FUA on some: each needs a
  # copy for s1 and s0, and s1's bit cannot be written.
  failed=0
  for i in $(seq 4 27); do
    flags=; [ $(( i % 3 )) -eq 0 ] && flags=-f
    if ! timeout 60 qemu-io -f raw \
           -c "write $flags -P 0x22 $(( i * 65536 )) 4k" "$uri" \
           >"$tmpdir/qio" 2>&1 || grep -q 'error' "$tmpdir/qio"; then
      failed=$(( failed + 1 ))
    fi
  done
  injected=$(fault_count)
  echo "$when: $failed of 24 origin writes failed; faultfs injected" \
       "$injected errors"
  [ "$injected" -gt 0 ] || fail "$when: no error was injected"
  [ "$failed" -eq 0 ] || fail "$when: $failed origin writes failed"
  check_state s1 invalid
  check_state s0 live
  reads_eio "nbd+unix:///s1?socket=$sock" "$tmpdir/at-s1.img" "$when" ||
    fail "$when: s1 returned bytes that are not its instant's"
  [ "$nreads_eio" -eq "$nreads" ] ||
    fail "$when: $nreads_eio of $nreads reads of s1 failed"
  [ "$(export_sha "nbd+unix:///s0?socket=$sock")" = "$(sha "$tmpdir/at-s0.img")" ] ||
    fail "$when: s0 is not its instant"
  grep -q 'snapshot s1 is now invalid' "$nbdkit_log" ||
    fail "$when: no message that s1 is invalid"
  if [ "$stop" = term ]; then stop_nbdkit; else kill9_nbdkit; fi
  # Restarted with the fault still there (the header still says live).
  start_nbdkit "${args[@]}"
  check_state s1 invalid
  check_state s0 live
  reads_eio "nbd+unix:///s1?socket=$sock" "$tmpdir/at-s1.img" \
    "$when, restarted" || fail "$when, restarted: s1 read other bytes"
  [ "$(export_sha "nbd+unix:///s0?socket=$sock")" = "$(sha "$tmpdir/at-s0.img")" ] ||
    fail "$when, restarted: s0 is not its instant"
  stop_nbdkit
done
