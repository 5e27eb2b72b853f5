#!/usr/bin/env bash
# nbdsnap test: the server forked into the background (nbdkit without -f,
# as the README's tour starts it) runs its background work: a deferred
# delete is finished by the catalog's reaper once its last client goes, a
# delete that moves chunks and a rollback answer from their worker
# threads.  Threads do not survive nbdkit's fork: they must start after
# it (.after_fork), or the deferred delete waits forever.
set -euo pipefail
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

img="$tmpdir/disk.img"
bigimg fill "$img" $(( 4 * 1024 * 1024 )) 1
cp "$img" "$tmpdir/model.img"
sock="$tmpdir/nbd.sock"
uri="nbd+unix:///?socket=$sock"
pidfile="$tmpdir/nbdkit.pid"

# No -f: nbdkit forks, the parent exits once the child serves.
"${_nbdkit_cmd[@]}" -U "$sock" -P "$pidfile" "$plugin" "$img" \
  statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
  2> "$tmpdir/nbdkit.log"
cleanup_fn quiet_kill -9 "$(cat "$pidfile")"
[ -S "$sock" ] || fail "nbdkit did not start in the background"

a_sha=$(file_sha "$tmpdir/model.img")
ctl create A
bigimg ops "$uri" "$tmpdir/model.img" "w:0:2097152:2"
ctl create S
bigimg ops "$uri" "$tmpdir/model.img" "w:0:3145728:3"

start_client "nbd+unix:///S?socket=$sock"
ask sha
ctl delete --defer S
[ "$(snap_state S)" = deleting ] || fail "S is not listed as deleting"
quiet_kill "$client_pid"
for (( i = 0; i < 100; i++ )); do
  [ "$(snap_state S)" = gone ] && break
  sleep 0.1
done
[ "$(snap_state S)" = gone ] ||
  fail "the deferred delete of S did not finish after its client left"

# A's chunks that S held moved into A; a rollback to A from its job.
[ "$(export_sha "nbd+unix:///A?socket=$sock")" = "$a_sha" ] ||
  fail "A is not its instant after S went"
ctl rollback A
[ "$(export_sha "$uri")" = "$a_sha" ] || fail "the origin is not A after rollback"

kill "$(cat "$pidfile")"
for (( i = 0; i < 300; i++ )); do
  kill -0 "$(cat "$pidfile")" 2>/dev/null || break
  sleep 0.1
done
! kill -0 "$(cat "$pidfile")" 2>/dev/null ||
  fail "nbdkit did not exit on SIGTERM"
! grep -E 'ERROR: AddressSanitizer|runtime error:' "$tmpdir/nbdkit.log" ||
  fail "sanitizer report in the nbdkit log"
