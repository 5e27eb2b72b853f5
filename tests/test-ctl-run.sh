#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl run --snapshot NAME -- COMMAND.
#  - A backup: COMMAND overwrites part of the origin, then copies
#    $NBDSNAP_URI with nbdcopy: the copy is the image as it was when run
#    started (sha256); COMMAND finds NBDSNAP_EXPORT, NBDSNAP_SOCKET and sees
#    the snapshot listed as temporary; run exits 0; afterwards the snapshot
#    is gone, from the list and from the state directory.
#  - COMMAND's exit status passes through (42), 128+N if it was killed by
#    signal N, 127 if it cannot be found; the snapshot is gone each time.
#  - NBDSNAP_URI is built from $NBDSNAP_NBD_SOCKET too, and from
#    --uri-base.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version


# no_snapshots WHEN: nothing listed, nothing in the state directory.
no_snapshots ()
{
  ctl --json list | grep -q '"snapshots":\[\]' ||
    { ctl list; fail "a snapshot is left ($1)"; }
  [ -z "$(ls "$tmpdir/state" | grep '^snap-')" ] ||
    { ls -l "$tmpdir/state"; fail "snapshot files are left ($1)"; }
}

img="$tmpdir/disk.img"
size=$(( 3 * 1024 * 1024 + 17 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/at-start.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
export nbdsnapctl uri tmpdir

status=0
ctl run --snapshot backup1 --nbd-socket "$sock" -- sh -c '
  set -e
  [ "$NBDSNAP_EXPORT" = backup1 ]
  [ "$NBDSNAP_SOCKET" = "$tmpdir/admin.sock" ]
  "$nbdsnapctl" --json info backup1 | grep -q "\"temporary\":true"
  timeout 60 qemu-io -f raw -c "write -P 0x42 0 2M" "$uri" >/dev/null
  timeout 60 nbdcopy "$NBDSNAP_URI" "$tmpdir/backup.img"
  echo "uri: $NBDSNAP_URI"
' > "$tmpdir/out" 2>&1 || status=$?
cat "$tmpdir/out"
[ "$status" -eq 0 ] || fail "run of a backup: exit $status"
grep -q "^uri: nbd+unix:///backup1?socket=" "$tmpdir/out" ||
  fail "NBDSNAP_URI is not the snapshot's URI"
[ "$(sha "$tmpdir/backup.img")" = "$(sha "$tmpdir/at-start.img")" ] ||
  fail "the backup is not the image as it was when run started"
cmp -s "$img" "$tmpdir/at-start.img" &&
  fail "COMMAND's write to the origin did not happen"
no_snapshots "after a backup"

status=0
ctl run --snapshot b2 --nbd-socket "$sock" -- sh -c 'exit 42' || status=$?
[ "$status" -eq 42 ] || fail "run: exit $status, not COMMAND's 42"
no_snapshots "after exit 42"

status=0
ctl run --snapshot b3 -- sh -c 'kill -9 $$' || status=$?
[ "$status" -eq 137 ] || fail "run: exit $status for SIGKILL, not 137"
no_snapshots "after COMMAND was killed"

status=0
ctl run --snapshot b4 -- "$tmpdir/no-such-command" 2>/dev/null || status=$?
[ "$status" -eq 127 ] || fail "run: exit $status for a missing COMMAND"
no_snapshots "after a missing COMMAND"

# NBDSNAP_NBD_SOCKET instead of --nbd-socket; --uri-base.
cp "$img" "$tmpdir/at-start.img"
NBDSNAP_NBD_SOCKET="$sock" ctl run --snapshot b5 -- sh -c \
  'nbdcopy "$NBDSNAP_URI" "$tmpdir/backup5.img"'
cmp "$tmpdir/backup5.img" "$tmpdir/at-start.img" ||
  fail "the backup through \$NBDSNAP_NBD_SOCKET is wrong"
ctl run --snapshot b6 --uri-base "nbd+unix://?socket=$sock" -- sh -c \
  'echo "$NBDSNAP_URI"; nbdcopy "$NBDSNAP_URI" "$tmpdir/backup6.img"' \
  > "$tmpdir/out6"
grep -q "^nbd+unix:///b6?socket=$sock\$" "$tmpdir/out6" ||
  { cat "$tmpdir/out6"; fail "--uri-base: wrong NBDSNAP_URI"; }
cmp "$tmpdir/backup6.img" "$tmpdir/at-start.img" ||
  fail "the backup through --uri-base is wrong"
no_snapshots "at the end"
