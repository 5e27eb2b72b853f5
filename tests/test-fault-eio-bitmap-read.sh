#!/usr/bin/env bash
# nbdsnap test: EIO when a snapshot's bitmap is read (issue 7).  The state
# directory lives on tests/faultfs, the image does not.  Snapshots s1 and
# s2 (s1 older; each has chunks of its own, and s1 finds some of its
# chunks in s2), then faultfs fails every read of s1's bitmap,
# snap-ID.bitmap, with EIO:
#   serving  while nbdkit runs: faultfs also drops the kernel's cached
#            pages of the file, mapped ones included (drop_caches cannot
#            evict mapped pages), so a bitmap that is mmap'd faults them
#            in again and gets EIO -- SIGBUS if nothing catches it;
#   start    while nbdkit is stopped, then nbdkit is started (FUSE drops
#            a file's cached pages at every open: the bitmap is read
#            through faultfs, no drop_caches needed).
# Either way nbdkit stays up; every read of s1 returns its instant or EIO
# (never other bytes), and if one was EIO s1 is listed as invalid or not
# at all; at start, s1 is invalid (every read EIO) or refused, with the
# bitmap's name in nbdkit's log; s2 and the origin serve their bytes, and
# an origin write succeeds and leaves s2 its instant.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

start_faultfs "$tmpdir/fsrc" "$tmpdir/mnt"

img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 ))
state_dir="$tmpdir/mnt/state"
args=("$img" statedir="$state_dir" admin="$tmpdir/admin.sock" chunk-size=64K)

state ()
{
  ctl --json info "$1" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}

alive ()
{
  kill -0 "$(cat "$tmpdir/nbdkit.pid")" 2>/dev/null ||
    fail "$when: nbdkit died ($1): see its log (SIGBUS is status 135)"
}

# check_instant NAME WHAT: NAME (an export) reads exactly at-NAME.img.
check_instant ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img" ||
    { alive "reading $1 $2"; fail "$when: reading $1 failed ($2)"; }
  cmp "$tmpdir/got.img" "$tmpdir/at-$1.img" ||
    fail "$when: $1 is not its instant ($2)"
}

# check_s1 instant_or_eio|eio WHAT: every read of s1 returns its instant
# or EIO, or EIO (reads_...); sets $s1_eio to how many reads were EIO.
check_s1 ()
{
  "reads_$1" --also 1000:100 "nbd+unix:///s1?socket=$sock" \
    "$tmpdir/at-s1.img" "$when: s1 $2" ||
    { alive "reading s1 $2"; fail "$when: s1 $2: see above"; }
  s1_eio=$nreads_eio
}

for when in serving start; do
  echo "=== $when"
  fault_ctl clear
  rm -rf "$state_dir"
  head -c "$size" /dev/urandom > "$img"
  start_nbdkit "${args[@]}"
  cp "$img" "$tmpdir/at-s1.img"
  ctl create s1
  timeout 60 qemu-io -f raw -c 'write -P 0x11 0 512k' "$uri" >/dev/null
  cp "$img" "$tmpdir/at-s2.img"
  ctl create s2
  # Chunks 4-7 are s1's own, 8-11 s1 finds in s2.
  timeout 60 qemu-io -f raw -c 'write -P 0x22 256k 512k' "$uri" >/dev/null
  bitmap="$(cd "$tmpdir/fsrc/state" && ls snap-*.bitmap | sort | head -n 1)"
  check_instant s1 "before the fault"
  check_instant s2 "before the fault"

  if [ "$when" = serving ]; then
    fault_ctl fail read "$bitmap" EIO
    fault_ctl invalidate "$bitmap"
    check_s1 instant_or_eio "with its bitmap unreadable"
  else
    stop_nbdkit
    fault_ctl fail read "$bitmap" EIO
    start_nbdkit "${args[@]}" ||
      fail "$when: nbdkit did not start with $bitmap unreadable"
    if ctl --json info s1 >/dev/null 2>&1; then
      [ "$(state s1)" = invalid ] ||
        fail "$when: s1 is $(state s1), not invalid, with $bitmap unreadable"
      check_s1 eio "with its bitmap unreadable"
    else
      grep -q "$bitmap" "$nbdkit_log" ||
        fail "$when: s1 is refused without a word about $bitmap in the log"
      ! timeout 60 nbdinfo "nbd+unix:///s1?socket=$sock" >/dev/null 2>&1 ||
        fail "$when: s1 is not listed but can be opened"
      s1_eio=refused
    fi
  fi
  alive "after reading s1"
  echo "$when: faultfs failed $(fault_count) reads of $bitmap"
  if [ "$s1_eio" != 0 ] && [ "$s1_eio" != refused ] &&
       ctl --json info s1 >/dev/null 2>&1; then
    [ "$(state s1)" = invalid ] ||
      fail "$when: s1 failed reads with EIO but it is $(state s1)"
  fi

  check_instant s2 "with s1's bitmap unreadable"
  cp "$img" "$tmpdir/at-.img"
  check_instant "" "with s1's bitmap unreadable"
  timeout 60 qemu-io -f raw -c 'write -P 0x33 0 1M' "$uri" > "$tmpdir/out" ||
    { cat "$tmpdir/out"; alive "writing"; fail "$when: an origin write failed"; }
  check_instant s2 "after an origin write, s1's bitmap unreadable"
  if [ "$s1_eio" != refused ]; then
    check_s1 instant_or_eio "after an origin write"
  fi
  alive "at the end"
  stop_nbdkit
done
