#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl backup killed with SIGKILL in the middle of the
# copy, then run again with the same arguments, finishes correctly: for a
# full backup into a new file (the re-run finds DEST at the image's size
# and rewrites every range) and for an incremental one (the re-run applies
# the same changes again, over a DEST that holds part of them).  To make
# sure the kill lands mid-copy, nbdkit runs with the rate filter, whose
# rate file is set to 64 Mbit/s (8 MiB/s: a 32 MiB copy takes 4 s) for the
# killed run only; the test kills it once a --json progress object says
# 0 < done < total, and checks DEST is not yet the snapshot.  The server
# releases the killed backup's holds; the re-runs go at full speed.
#
# nbdkit runs with -t 1 (one thread per connection): nbdkit 1.32 itself
# aborts ("raw_send_socket: Assertion `sock >= 0' failed") when a client
# dies with several replies still to send on one connection (nbdcopy
# killed the same way does it too, with nbdkit's own file plugin); with
# one thread per connection it does not.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires test -f "$("$NBDKIT" --dump-config | sed -n 's/^filterdir=//p')/nbdkit-rate-filter.so"

C=65536
size=$(( 512 * C ))
img="$tmpdir/disk.img"
model="$tmpdir/model.img"
dest="$tmpdir/backup.img"
bigimg fill "$img" "$size" 1
truncate -s $(( 400 * C )) "$img"          # a hole at the end
truncate -s "$size" "$img"
cp --sparse=always "$img" "$model"
nbdkit_opts=(-t 1 --filter=rate)
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
  chunk-size=64K rate-file="$tmpdir/rate" burstiness=0.2

source "$abs_top_srcdir/tests/backup.sh"

# killed WANT ARGS...: run "backup ARGS" slowly, SIGKILL it mid-copy;
# DEST must not be WANT's bytes yet; then run it again: DEST is WANT.
killed ()
{
  local want=$1 pid status=0
  shift
  rate 64M
  "$nbdsnapctl" -s "$tmpdir/admin.sock" --json backup "$@" \
    > "$tmpdir/progress" 2> "$tmpdir/err" &
  pid=$!
  until_ok 20 mid_copy "$tmpdir/progress" ||
    fail "backup $*: no progress mid-copy: $(cat "$tmpdir/progress" \
          "$tmpdir/err")"
  kill -9 "$pid"
  wait "$pid" || status=$?
  [ "$status" -eq 137 ] || fail "backup $*: exit $status, not killed"
  tail -n 1 "$tmpdir/progress"
  [ "$(file_sha "$dest")" != "$want" ] ||
    fail "backup $*: DEST was complete when it was killed"
  rate 100G
  until_ok 10 test "$(holds "$1")" -eq 0 ||
    fail "the killed backup's hold on $1 was not released"
  ctl backup "$@" --verify || fail "backup $* again: exit $?"
  [ "$(file_sha "$dest")" = "$want" ] ||
    fail "backup $* again: DEST is not the snapshot"
}

ctl create s0
cp --sparse=always "$model" "$tmpdir/at-s0"
killed "$(file_sha "$tmpdir/at-s0")" s0 "$dest"

# 12 MiB of new data, some of it in the hole, zeroes and trims.
bigimg ops "$uri" "$model" "w:0:$(( 64 * C )):2" \
  "w:$(( 100 * C + 7 )):$(( 64 * C )):3" "w:$(( 380 * C )):$(( 64 * C )):4" \
  "z:$(( 200 * C )):$(( 16 * C ))" "t:$(( 240 * C )):$(( 8 * C ))" \
  "Z:$(( 300 * C + 9 )):$(( 4 * C ))" "w:$(( size - 999 )):999:5"
ctl create s1
cp --sparse=always "$model" "$tmpdir/at-s1"
killed "$(file_sha "$tmpdir/at-s1")" s1 "$dest" --since s0
[ "$(export_sha "nbd+unix:///s1?socket=$sock")" = \
  "$(file_sha "$tmpdir/at-s1")" ] || fail "s1 does not read as its instant"
