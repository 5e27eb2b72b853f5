#!/usr/bin/env bash
# nbdsnap test (issue 18): an image rewritten in place while no server had
# it open never makes a snapshot lie.  For each way users rewrite a disk —
# cp over it, qemu-img convert onto it, dd conv=notrunc of one block, a
# write then truncate to the same size, a write then touch -d back to the
# old mtime — after a clean stop (SIGTERM) and after a crash (kill -9,
# the rewrite made once the server's lease has run out; it is shortened
# to 1 s here with -D nbdsnap.seal_lease_ms, 5 s otherwise): the start
# is refused (exit 1, a message saying what changed and the ways on), and
# a start with image-changed=invalidate serves the image with every
# snapshot invalid (every read fails with EIO; after another restart too,
# checked after cp).  adopt=1 keeps the snapshots (a chmod: the bytes are the
# same).  Then false alarms: RESTARTS (default 6) clean restarts and
# RESTARTS kill -9 right after heavy writes (a writer running) are all
# accepted, and the snapshot still reads its instant (the lease is 1 s
# here: a server whose own writes fell outside it would be refused).  A
# damaged seal: not checked, and the log says so.  A block-device
# origin (a loop device, root only): a write through the device while the
# server is stopped is refused; an unchanged restart is accepted; after a
# crash the device cannot be checked and the start says so.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires qemu-img --version

restarts=${RESTARTS:-6}
nbdkit_opts=(-D nbdsnap.seal_lease_ms=1000)
refused=0 invalidated=0

# fill FILE BYTE OFFSET LEN: write LEN bytes of BYTE at OFFSET.
fill ()
{
  head -c "$4" /dev/zero | tr '\0' "\\$(printf '%03o' "$2")" |
    dd of="$1" bs=4096 seek="$3" oflag=seek_bytes conv=notrunc status=none
}

# nbd_write URI BYTE OFFSET LEN: the same through NBD.
nbd_write ()
{
  "$PYTHON" -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(bytes([int(sys.argv[2])]) * int(sys.argv[4]), int(sys.argv[3]))
h.shutdown()' "$@"
}

# setup DIR: an image of 0x11, served; s1 taken; then some chunks of the
# origin overwritten (s1 copied them) and the instant kept in DIR/at-s1.
setup ()
{
  d=$1
  mkdir -p "$d"
  img="$d/disk.img"
  truncate -s 8M "$img"
  fill "$img" 17 0 $(( 8 << 20 ))
  cp "$img" "$d/at-s1"
  start_nbdkit "$img" statedir="$d/state" admin="$tmpdir/admin.sock"
  ctl create s1 >/dev/null
  nbd_write "$uri" 34 $(( 1 << 20 )) 65536
  nbd_write "$uri" 34 $(( 5 << 20 )) 4096
}

# rewrite KIND IMG: change the image as users do.
rewrite ()
{
  local img=$2 other="$tmpdir/other.img" mtime
  case $1 in
    cp)
      cp "$img" "$other"; fill "$other" 119 0 $(( 2 << 20 ))
      cp "$other" "$img" ;;
    qemu-img)
      cp "$img" "$other"; fill "$other" 119 $(( 3 << 20 )) 4096
      qemu-img convert -f raw -O raw "$other" "$img" ;;
    dd)
      fill "$img" 119 $(( 7 << 20 )) 512 ;;
    truncate)
      fill "$img" 119 $(( 6 << 20 )) 4096
      truncate -s 8M "$img" ;;
    touch)
      mtime=$(stat -c %y "$img")
      fill "$img" 119 $(( 2 << 20 )) 4096
      touch -d "$mtime" "$img"
      [ "$(stat -c %y "$img")" = "$mtime" ] || fail "touch -d did not work" ;;
  esac
}

# expect_refused DIR: the start fails, saying why and how to go on.
expect_refused ()
{
  local d=$1 st=0
  run_nbdkit -U - "$plugin" "$d/disk.img" statedir="$d/state" \
    admin="$tmpdir/admin.sock" --run true 2>"$tmpdir/err" || st=$?
  [ "$st" -eq 1 ] ||
    fail "$case: the start was not refused (exit $st): $(cat "$tmpdir/err")"
  grep -q 'was changed while no server had it open' "$tmpdir/err" &&
    grep -q 'image-changed=invalidate' "$tmpdir/err" &&
    grep -q 'adopt=1' "$tmpdir/err" ||
    fail "$case: unclear refusal: $(cat "$tmpdir/err")"
  echo "$case: refused: $(grep -o 'open: [^.]*' "$tmpdir/err" | head -n 1)"
  refused=$(( refused + 1 ))
}

# expect_invalid DIR PASSES: s1 is invalid and never reads other bytes,
# at the start with image-changed=invalidate (and a restart after it).
expect_invalid ()
{
  local d=$1 pass
  for pass in $2; do
    start_nbdkit "$d/disk.img" statedir="$d/state" \
      admin="$tmpdir/admin.sock" image-changed=invalidate
    [ "$(snap_state s1)" = invalid ] ||
      fail "$case ($pass): s1 is $(snap_state s1), not invalid"
    reads_eio "nbd+unix:///s1?socket=$sock" "$d/at-s1" "$case" ||
      fail "$case ($pass): s1 returned bytes that are not its instant's"
    [ "$nreads_eio" -eq "$nreads" ] ||
      fail "$case ($pass): only $nreads_eio of $nreads reads failed"
    stop_nbdkit
  done
  invalidated=$(( invalidated + 1 ))
}

for stop in term kill; do
  for kind in cp qemu-img dd truncate touch; do
    case="$kind after $stop"
    d="$tmpdir/$kind-$stop"
    setup "$d"
    if [ "$stop" = term ]; then
      stop_nbdkit
    else
      kill9_nbdkit
    fi
    [ "$stop" = term ] || sleep 1.2 # past the dead server's lease
    rewrite "$kind" "$d/disk.img"
    expect_refused "$d"
    if [ "$kind" = cp ]; then
      expect_invalid "$d" "start restart"
    else
      expect_invalid "$d" start
    fi
    rm -rf "$d"
  done
done
echo "refused $refused rewritten images; invalidated $invalidated"

# adopt=1 after a chmod: the snapshots are kept and read their instant.
case="chmod, adopt=1"
d="$tmpdir/chmod"
setup "$d"
stop_nbdkit
chmod 0640 "$d/disk.img"
expect_refused "$d"
start_nbdkit "$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock" \
  adopt=1
[ "$(export_sha "nbd+unix:///s1?socket=$sock")" = "$(sha "$d/at-s1")" ] ||
  fail "adopt=1: s1 does not read its instant"
stop_nbdkit
start_nbdkit "$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock"
stop_nbdkit
rm -rf "$d"

# False alarms.
d="$tmpdir/steady"
setup "$d"
stop_nbdkit
alarms=0
for (( i = 0; i < restarts; i++ )); do
  start_nbdkit "$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock" ||
    { alarms=$(( alarms + 1 )); continue; }
  nbd_write "$uri" $(( 40 + i )) $(( (i % 8) << 20 )) 8192
  stop_nbdkit
done
for (( i = 0; i < restarts; i++ )); do
  start_nbdkit "$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock" ||
    { alarms=$(( alarms + 1 )); continue; }
  "$PYTHON" -c '
import nbd, random, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
while True:
    h.pwrite(bytes([rng.randrange(256)]) * 65536,
             rng.randrange(0, (8 << 20) - 65536))' "$uri" "$i" 2>/dev/null &
  writer=$!
  sleep 0.$(( RANDOM % 9 + 1 ))
  kill9_nbdkit
  wait "$writer" 2>/dev/null || :
done
start_nbdkit "$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock" ||
  alarms=$(( alarms + 1 ))
[ "$(export_sha "nbd+unix:///s1?socket=$sock")" = "$(sha "$d/at-s1")" ] ||
  fail "after the restarts s1 does not read its instant"
stop_nbdkit
echo "false alarms: $alarms in $(( 2 * restarts + 1 )) restarts" \
     "($restarts clean, $restarts kill -9 under writes)"
[ "$alarms" -eq 0 ] || fail "$alarms unchanged images were refused"
# A damaged seal (both slots): the start is not checked, and says so.
head -c 1024 /dev/urandom | dd of="$d/state/seal" conv=notrunc status=none
start_nbdkit "$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock" ||
  fail "a damaged seal: the start was refused"
grep -q "not checked for writes made while no server had it open: the state directory's seal file is damaged" \
  "$nbdkit_log" || fail "a damaged seal: no word that the image is unchecked"
stop_nbdkit
rm -rf "$d"

# A block device: a loop device over a file.
if [ "$(id -u)" -ne 0 ] || ! command -v losetup >/dev/null; then
  echo "not root: the block-device case is not run here"
  exit 0
fi
backing="$tmpdir/backing.img"
truncate -s 8M "$backing"
fill "$backing" 17 0 $(( 8 << 20 ))
cp "$backing" "$tmpdir/at-s1"
dev="$(losetup -f --show "$backing")" || fail "losetup failed"
cleanup_fn losetup -d "$dev"
bd () { start_nbdkit "$dev" statedir="$tmpdir/bdstate" \
          admin="$tmpdir/admin.sock" "$@"; }
bd
ctl create s1 >/dev/null
nbd_write "$uri" 34 $(( 1 << 20 )) 65536
stop_nbdkit
bd || fail "loop device: an unchanged restart was refused"
stop_nbdkit
fill "$dev" 119 $(( 3 << 20 )) 4096
sync
case="loop device, dd through the device"
st=0
run_nbdkit -U - "$plugin" "$dev" statedir="$tmpdir/bdstate" \
  admin="$tmpdir/admin.sock" --run true 2>"$tmpdir/err" || st=$?
[ "$st" -eq 1 ] && grep -q 'sectors were written' "$tmpdir/err" ||
  fail "$case: not refused (exit $st): $(cat "$tmpdir/err")"
echo "$case: refused: $(grep -o 'open: [^.]*' "$tmpdir/err" | head -n 1)"
bd image-changed=invalidate
[ "$(snap_state s1)" = invalid ] || fail "$case: s1 is not invalid"
reads_eio "nbd+unix:///s1?socket=$sock" "$tmpdir/at-s1" "$case" ||
  fail "$case: s1 returned bytes that are not its instant's"
ctl delete s1 >/dev/null
ctl create s2 >/dev/null
kill9_nbdkit
bd || fail "loop device: the start after a crash was refused"
grep -q 'not checked for writes made while no server had it open' \
  "$nbdkit_log" || fail "loop device after a crash: no word that it is unchecked"
stop_nbdkit
