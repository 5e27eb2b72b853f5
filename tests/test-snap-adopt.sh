#!/usr/bin/env bash
# nbdsnap test: an image restored or moved is refused in plain words with
# the way on, and adopt=1 takes it back; a resize is refused while
# snapshots exist, with the way to proceed, and works once they are gone.
# (a) The image replaced by a plain copy of itself (cp, then mv over it):
#     refused, the message says it lacks nbdsnap's mark, names the path
#     once and says adopt=1; the state directory is unchanged.
# (b) adopt=1: it starts, the snapshot reads its instant, and the next
#     start needs no adopt=1.
# (c) adopt=1 with an image of another size: refused, saying so.
# (d) The image grown while it has a snapshot: refused, saying grown, the
#     old size and the way (truncate -s OLD, delete the snapshots); put
#     back, delete the snapshot, grow: it starts, serving the new size,
#     and a new snapshot of the grown image reads its instant.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires nbdinfo --version

img="$tmpdir/disk.img"
state="$tmpdir/state"
size=$(( 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"
args=(statedir="$state" admin="$tmpdir/admin.sock")
statesum () { (cd "$state" && ls -l --time-style=+%s.%N . &&
               cat snap-* header) | sha256sum; }

start_nbdkit "$img" "${args[@]}"
ctl create s1
cp "$img" "$tmpdir/at-s1.img"
timeout 60 "$PYTHON" -m nbd -u "$uri" -c 'h.pwrite(b"\x5a" * 131072, 65536)'
stop_nbdkit
cp "$img" "$tmpdir/now.img"

# refused WHAT ARGS...: nbdkit fails; its messages in $tmpdir/out.
refused ()
{
  local what=$1 status=0
  shift
  run_nbdkit -U - "$plugin" "$@" --run true > "$tmpdir/out" 2>&1 ||
    status=$?
  cat "$tmpdir/out"
  [ "$status" -ne 0 ] || fail "$what: nbdkit started"
}
says () { grep -q -F -- "$2" "$tmpdir/out" || fail "$1: the message does not say '$2'"; }

# ---- (a) ----
cp "$img" "$tmpdir/restored.img"
mv "$tmpdir/restored.img" "$img"
before=$(statesum)
refused "(a)" "$img" "${args[@]}"
says "(a)" "lacks the mark"
says "(a)" "adopt=1"
says "(a)" "another statedir="
[ "$(grep -o -F "$img" "$tmpdir/out" | wc -l)" -eq 1 ] ||
  fail "(a): the image path is named more than once"
[ "$(statesum)" = "$before" ] || fail "(a): the state directory changed"

# ---- (b) ----
start_nbdkit "$img" "${args[@]}" adopt=1
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "(b): s1 is not its instant after adopt=1"
stop_nbdkit
start_nbdkit "$img" "${args[@]}"
timeout 60 nbdcopy "$uri" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/now.img")" ] ||
  fail "(b): the origin is not the image"
stop_nbdkit

# ---- (c) ----
truncate -s $(( 2 * size )) "$tmpdir/big.img"
before=$(statesum)
refused "(c)" "$tmpdir/big.img" "${args[@]}" adopt=1
says "(c)" "adopt=1"
says "(c)" "another size"
[ "$(statesum)" = "$before" ] || fail "(c): the state directory changed"

# ---- (d) ----
truncate -s $(( 2 * size )) "$img"
refused "(d)" "$img" "${args[@]}"
says "(d)" "grown from $size to $(( 2 * size )) bytes"
says "(d)" "truncate -s $size $img"
says "(d)" "delete every snapshot"
[ "$(statesum)" = "$before" ] || fail "(d): the state directory changed"
truncate -s "$size" "$img"
# The file changed (twice resized), its bytes did not: the seal refuses it
# unless adopt=1 says so, as the message said.
says "(d)" "with adopt=1 (the file changed, its bytes did not)"
refused "(d) size put back" "$img" "${args[@]}"
says "(d) size put back" "was changed while no server had it open"
start_nbdkit "$img" "${args[@]}" adopt=1
ctl delete s1
stop_nbdkit
truncate -s $(( 2 * size )) "$img"
start_nbdkit "$img" "${args[@]}"
[ "$(nbdinfo --size "$uri")" -eq $(( 2 * size )) ] ||
  fail "(d): the grown image is not served at its new size"
timeout 60 "$PYTHON" -m nbd -u "$uri" -c "h.pwrite(b'\x77' * 65536, $size)"
ctl create s2
cp "$img" "$tmpdir/at-s2.img"
timeout 60 "$PYTHON" -m nbd -u "$uri" -c "h.pwrite(b'\x78' * 65536, $size)"
timeout 60 nbdcopy "nbd+unix:///s2?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s2.img")" ] ||
  fail "(d): s2 of the grown image is not its instant"
