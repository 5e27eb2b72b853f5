#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl backup holds its snapshots for the whole copy.
# While "backup s1 DEST --since s0" runs (slowed down by nbdkit's rate
# filter, 64 Mbit/s, so that it is seen mid-copy: a --json progress
# object with 0 < done < total), s0 and s1 each have one hold, and a
# plain delete of either fails busy (exit 4; s0 has no NBD client, only
# the hold keeps it); the backup then completes (rate back to full
# speed) and equals s1.  Right after it exits the holds are gone (it
# released them before exiting): delete s0 succeeds at once, delete s1
# once the server has seen the backup's NBD connections close.  (nbdkit
# runs with -t 1: see test-backup-kill9.sh.)
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires test -f "$("$NBDKIT" --dump-config | sed -n 's/^filterdir=//p')/nbdkit-rate-filter.so"

C=65536
size=$(( 512 * C ))
img="$tmpdir/disk.img"
model="$tmpdir/model.img"
dest="$tmpdir/backup.img"
bigimg fill "$img" "$size" 1
cp "$img" "$model"
nbdkit_opts=(-t 1 --filter=rate)
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
  chunk-size=64K rate-file="$tmpdir/rate" burstiness=0.2

source "$abs_top_srcdir/tests/backup.sh"

ctl create s0
ctl backup s0 "$dest" > /dev/null
bigimg ops "$uri" "$model" "w:0:$(( 200 * C )):2" "z:$(( 300 * C )):$C"
ctl create s1
cp "$model" "$tmpdir/at-s1"

rate 64M
"$nbdsnapctl" -s "$tmpdir/admin.sock" --json backup s1 "$dest" --since s0 \
  > "$tmpdir/progress" 2> "$tmpdir/err" &
pid=$!
cleanup_fn quiet_kill "$pid"
until_ok 20 mid_copy "$tmpdir/progress" ||
  fail "no progress mid-copy: $(cat "$tmpdir/progress" "$tmpdir/err")"
[ "$(holds s0)" -eq 1 ] && [ "$(holds s1)" -eq 1 ] ||
  fail "the backup does not hold s0 and s1 ($(holds s0), $(holds s1))"
for cmd in "delete s0" "delete s1"; do
  status=0
  # shellcheck disable=SC2086
  ctl $cmd 2> "$tmpdir/err2" || status=$?
  cat "$tmpdir/err2"
  [ "$status" -eq 4 ] || fail "$cmd during the backup: exit $status, not 4"
done
kill -0 "$pid" || fail "the backup ended before the deletes were tried"
[ "$(snap_state s0)" = live ] && [ "$(snap_state s1)" = live ] ||
  fail "a snapshot under the backup changed state"

rate 100G
status=0
wait "$pid" || status=$?
cat "$tmpdir/err"
[ "$status" -eq 0 ] || fail "the backup failed: exit $status"
json_final "$tmpdir/progress" > /dev/null
[ "$(file_sha "$dest")" = "$(file_sha "$tmpdir/at-s1")" ] ||
  fail "the backup is not s1"
# Released before it exited: s0 (no NBD client) goes at once; s1 once
# the server has seen the backup's NBD connections close.
ctl delete s0 || fail "delete s0 right after the backup: exit $?"
until_ok 10 ctl delete s1 2>/dev/null || fail "s1 cannot be deleted"
