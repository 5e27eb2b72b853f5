#!/usr/bin/env bash
# nbdsnap test: a state directory belongs to one image.  After a snapshot
# was taken, nbdkit refuses to start - with a message naming the problem
# and without touching the state directory - when the image was resized,
# when another image of the same size is given that state directory, and
# when the image file was replaced by a copy (another file), and when its
# bytes were put back in place while it was stopped (the seal).  Given its
# own image again, with adopt=1 (the bytes are the server's), it starts
# and the snapshot reads exactly its instant.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version

statesum () { (cd "$tmpdir/state" && ls -l --time-style=+%s.%N . &&
               cat snap-* header) | sha256sum; }

img="$tmpdir/disk.img"
size=$(( 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/at-s1.img"
args=(statedir="$tmpdir/state" admin="$tmpdir/admin.sock")

start_nbdkit "$img" "${args[@]}"
ctl create s1
stop_nbdkit
before=$(statesum)

# refused WHAT PATTERN IMAGE: nbdkit on IMAGE fails, saying PATTERN.
refused ()
{
  local status=0
  run_nbdkit -U - "$plugin" "$3" "${args[@]}" --run true \
             > "$tmpdir/out" 2>&1 || status=$?
  cat "$tmpdir/out"
  [ "$status" -ne 0 ] || fail "$1: nbdkit started"
  grep -q -i "$2" "$tmpdir/out" || fail "$1: the message does not say '$2'"
  [ "$(statesum)" = "$before" ] || fail "$1: the state directory changed"
}

truncate -s $(( size + 65536 )) "$img"
refused "image grown" "resized" "$img"
truncate -s $(( size - 4096 )) "$img"
refused "image shrunk" "resized" "$img"
truncate -s "$size" "$img"
cp "$tmpdir/at-s1.img" "$img"           # same file, its bytes back
# Rewritten in place while stopped: the seal refuses it (test-identity-
# rewritten.sh); adopt=1, below, says its bytes are the server's.
refused "the image rewritten in place" "was changed while no server" "$img"

cp "$img" "$tmpdir/other.img"
refused "another image" "another image" "$tmpdir/other.img"

mv "$img" "$tmpdir/moved.img"
cp "$tmpdir/moved.img" "$img"
refused "the image replaced by a copy" "another image" "$img"
mv "$tmpdir/moved.img" "$img"

start_nbdkit "$img" "${args[@]}" adopt=1
timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "s1 is not its instant"
