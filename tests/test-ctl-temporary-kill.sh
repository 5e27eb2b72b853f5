#!/usr/bin/env bash
# nbdsnap test: a temporary snapshot dies with the admin connection that
# made it, even when its owner is killed with SIGKILL.  Two owners,
# "nbdsnapctl create --temporary NAME" each kept running by a standard
# input that stays open (a fifo), are killed with -9:
#  - t1, unread: disappears from the list within a short bounded wait, its
#    files are removed;
#  - t2, read by a connected NBD client: is listed as deleting (deferred)
#    and disappears from nbdinfo --list at once, the client still reads its
#    instant, and its files are removed (and it leaves the list) once the
#    client disconnects.
# A plain snapshot, created alongside, is left alone.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

listed () { ctl --json list | grep -q "\"name\":\"$1\""; }
deleting () {
  ctl --json info "$1" | grep -q '"state":"deleting".*"deferred":true'
}
storefiles () { ls "$tmpdir/state" | grep -c '^snap-.*\.store$' || :; }

img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"
want=$(sha "$img")

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create keep

# owner NAME: "create --temporary NAME" in the background, its standard
# input a fifo whose writing end this shell keeps open; sets owner_pid
# once the snapshot exists.
owner ()
{
  local fd
  mkfifo "$tmpdir/$1.fifo"
  # Not the function ctl: $! must be nbdsnapctl itself, not a subshell.
  "$nbdsnapctl" -s "$tmpdir/admin.sock" create --temporary "$1" \
    < "$tmpdir/$1.fifo" > "$tmpdir/$1.out" 2>&1 &
  owner_pid=$!
  cleanup_fn quiet_kill "$owner_pid"
  exec {fd}> "$tmpdir/$1.fifo"    # returns once the owner opened it
  until_ok 30 listed "$1" || fail "temporary snapshot $1 was not created"
  ctl --json info "$1" | grep -q '"temporary":true' ||
    fail "$1 is not temporary"
}

# t1: nobody reads it.
owner t1
t1_pid=$owner_pid
[ "$(storefiles)" -eq 2 ]
kill -9 "$t1_pid"
wait "$t1_pid" 2>/dev/null || :
until_ok 5 eval '! listed t1' ||
  fail "t1 is still listed 5 s after its owner was killed"
until_ok 5 eval '[ "$(storefiles)" -eq 1 ]' ||
  { ls -l "$tmpdir/state"; fail "the files of t1 are left"; }

# t2: an NBD client reads it when its owner is killed.
owner t2
t2_pid=$owner_pid
cp "$img" "$tmpdir/at-t2.img"
start_client "nbd+unix:///t2?socket=$sock"

head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"

kill -9 "$t2_pid"
wait "$t2_pid" 2>/dev/null || :
until_ok 5 deleting t2 ||
  fail "t2 is not deleting 5 s after its owner was killed"
timeout 60 nbdinfo --list "$uri" > "$tmpdir/list" ||
  fail "nbdinfo --list failed"
! grep -q '^export="t2"' "$tmpdir/list" || fail "nbdinfo --list shows t2"
ask sha
[ "$reply" = "sha $want" ] || fail "the client of t2 read $reply"
[ "$(storefiles)" -eq 2 ] || fail "the files of t2 went while it was read"
ask close
[ "$reply" = closed ]
wait "$client_pid" || :
until_ok 5 eval '[ "$(storefiles)" -eq 1 ]' ||
  { ls -l "$tmpdir/state"; fail "the files of t2 are left"; }
until_ok 5 eval '! listed t2' || fail "t2 is still listed after its client left"

# The plain snapshot is still there, and exact.
listed keep || fail "snapshot keep was deleted"
timeout 60 nbdcopy "nbd+unix:///keep?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$want" ] || fail "snapshot keep changed"
