#!/usr/bin/env bash
# nbdsnap test: a hold pins a snapshot only as long as its holder lives.
# "nbdsnapctl hold s1" kept running by a standard input that stays open (a
# fifo): plain delete fails with busy (exit 4, the message says busy, the
# snapshot stays listed with one hold); the holder is killed with -9; a
# plain delete then succeeds (within a short bounded wait) and removes the
# files.  The same with "hold NAME -- COMMAND": busy while COMMAND runs,
# COMMAND's exit status is hold's, and the hold is gone when it returns.
source "${abs_top_builddir:?}/tests/functions.sh"

holds () {
  ctl --json info "$1" | grep -o '"holds":[0-9]*' | cut -d: -f2
}

img="$tmpdir/disk.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1

mkfifo "$tmpdir/fifo"
# Not the function ctl: $! must be nbdsnapctl itself, not a subshell.
"$nbdsnapctl" -s "$tmpdir/admin.sock" hold s1 < "$tmpdir/fifo" \
  > "$tmpdir/hold.out" 2>&1 &
holder=$!
cleanup_fn quiet_kill "$holder"
exec {fifo_fd}> "$tmpdir/fifo"
until_ok 30 eval '[ "$(holds s1)" = 1 ]' || fail "the hold was not taken"

status=0
ctl delete s1 2> "$tmpdir/err" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 4 ] || fail "delete of a held snapshot: exit $status, not 4"
grep -q -i busy "$tmpdir/err" || fail "the message does not say busy"
ctl list | grep -q '^s1 ' || fail "s1 is not listed any more"

kill -9 "$holder"
wait "$holder" 2>/dev/null || :
deleted ()
{
  local status=0
  ctl delete s1 2>/dev/null || status=$?
  [ "$status" -eq 0 ] && return 0
  [ "$status" -eq 4 ] || fail "delete after the holder died: exit $status"
  return 1
}
until_ok 5 deleted || fail "s1 is still held 5 s after its holder died"
[ -z "$(ls "$tmpdir/state" | grep '^snap-')" ] ||
  { ls -l "$tmpdir/state"; fail "the files of s1 are left"; }

# hold NAME -- COMMAND: held while COMMAND runs; its status passes.
ctl create s2
status=0
ctl hold s2 -- sh -c '
  "$0" -s "$NBDSNAP_SOCKET" delete "$NBDSNAP_EXPORT"; echo "delete: $?"
  exit 9' "$nbdsnapctl" > "$tmpdir/cmd.out" 2>&1 || status=$?
cat "$tmpdir/cmd.out"
[ "$status" -eq 9 ] || fail "hold -- COMMAND: exit $status, not 9"
grep -q '^delete: 4$' "$tmpdir/cmd.out" ||
  fail "delete while COMMAND held the snapshot was not busy"
[ "$(holds s2)" = 0 ] || fail "the hold outlived COMMAND"
ctl delete s2
