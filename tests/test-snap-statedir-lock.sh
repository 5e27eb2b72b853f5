#!/usr/bin/env bash
# nbdsnap test: one server per state directory, one state directory per
# image.  While a first nbdkit serves an image, a second one on the same
# image and state directory (its own NBD and admin sockets) refuses to
# start with "state directory in use", and the first one goes on serving,
# its snapshot intact.  A server on the same image with another state
# directory is refused, running or not.  Once the first one stopped, a
# new one starts on that state directory.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version


img="$tmpdir/disk.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img"
cp "$img" "$tmpdir/at-s1.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1

status=0
# --run: were it to start, it would exit 0 at once rather than serve.
run_nbdkit -U "$tmpdir/second.sock" "$plugin" "$img" \
           statedir="$tmpdir/state" admin="$tmpdir/admin2.sock" \
           --run true > "$tmpdir/second.log" 2>&1 || status=$?
cat "$tmpdir/second.log"
[ "$status" -ne 0 ] || fail "a second nbdkit started on the state directory"
[ "$status" -ne 124 ] || fail "the second nbdkit hung"
grep -q 'state directory in use' "$tmpdir/second.log" ||
  fail "the second nbdkit did not say 'state directory in use'"
[ ! -e "$tmpdir/admin2.sock" ] || fail "the second nbdkit left its socket"

# check_s1 WHEN: the first server still serves s1, byte-exact.
check_s1 ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/got.img"
  [ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
    fail "snapshot s1 changed ($1)"
  ctl list | grep -q '^s1 ' || fail "snapshot s1 is not listed ($1)"
}
check_s1 "after the second server was refused"
stop_nbdkit

# One image, one state directory: a server with another state directory
# (here the default, FILE.nbdsnap) is refused, whether or not the first
# one runs -- writes through it would not be copied for s1 -- and says
# which directory the image belongs to.
for running in yes no; do
  [ "$running" = no ] || start_nbdkit "$img" statedir="$tmpdir/state" \
                                      admin="$tmpdir/admin.sock"
  status=0
  run_nbdkit -U "$tmpdir/second.sock" "$plugin" "$img" --run true \
             > "$tmpdir/second.log" 2>&1 || status=$?
  cat "$tmpdir/second.log"
  [ "$status" -ne 0 ] ||
    fail "a server with a second state directory started (running=$running)"
  grep -q -e 'image in use' -e "belongs to state directory $tmpdir/state" \
       "$tmpdir/second.log" ||
    fail "the refusal does not say why (running=$running)"
  [ ! -e "$img.nbdsnap/header" ] ||
    fail "a second state directory was made for the image"
  [ "$running" = no ] || stop_nbdkit
done

# The default state directory (FILE.nbdsnap) is locked too, and the
# second server, refused, leaves the first one's default admin socket be.
img2="$tmpdir/disk2.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img2"
start_nbdkit "$img2"
adm="$img2.nbdsnap/admin.sock"
"$abs_top_builddir/src/nbdsnapctl" -s "$adm" create d1
status=0
run_nbdkit -U "$tmpdir/second.sock" "$plugin" "$img2" --run true \
           > "$tmpdir/second.log" 2>&1 || status=$?
cat "$tmpdir/second.log"
[ "$status" -ne 0 ] && grep -q -e 'state directory in use' -e 'image in use' \
                            "$tmpdir/second.log" ||
  fail "a second nbdkit started on the default state directory"
"$abs_top_builddir/src/nbdsnapctl" -s "$adm" list | grep -q '^d1 ' ||
  fail "the first server's admin socket no longer answers"
stop_nbdkit

# Free again once the first server stopped.
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
check_s1 "after a restart"
