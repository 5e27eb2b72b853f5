#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl finds the admin socket without -s.
#  - -i NAME: $NBDSNAP_RUNTIME_DIR/NAME/admin.sock (default /run/nbdsnap,
#    the systemd units' layout); a missing instance: exit 3 naming the
#    path and the unit.
#  - --image IMAGE: the state directory named by the image's
#    user.nbdsnap.state-id attribute (a statedir= elsewhere), else
#    IMAGE.nbdsnap (the default); none: exit 3 naming both paths tried.
#  - $NBDSNAP_SOCKET; options beat it; -s/-i/--image together: exit 2;
#    none of them: exit 2 saying what to pass.
#  - The command run by "run" gets the socket found in $NBDSNAP_SOCKET.
source "${abs_top_builddir:?}/tests/functions.sh"

unset NBDSNAP_SOCKET
c () { timeout 60 "$nbdsnapctl" "$@"; }
expect ()
{
  local want=$1 status=0
  shift
  "$@" > "$tmpdir/out" 2> "$tmpdir/err" < /dev/null || status=$?
  [ "$status" -eq "$want" ] ||
    { cat "$tmpdir/out" "$tmpdir/err"; fail "$*: exit $status, not $want"; }
}

# --image with the default state directory, IMAGE.nbdsnap.
img="$tmpdir/disk.img"
truncate -s 1M "$img"
start_nbdkit "$img"
until_ok 10 test -S "$img.nbdsnap/admin.sock"
c --image "$img" create s1 > /dev/null || fail "--image, default statedir"
c list --image "$img" -H -o name | grep -qx s1 || fail "--image after list"
stop_nbdkit

# --image with statedir= elsewhere: found through the image's mark.
img2="$tmpdir/disk2.img"
truncate -s 1M "$img2"
start_nbdkit "$img2" statedir="$tmpdir/elsewhere"
until_ok 10 test -S "$tmpdir/elsewhere/admin.sock"
if [ -n "$("$PYTHON" -c 'import os,sys; print(os.getxattr(sys.argv[1], "user.nbdsnap.state-id").decode())' "$img2" 2>/dev/null)" ]; then
  c --image "$img2" create m1 > /dev/null || fail "--image through the mark"
  c -s "$tmpdir/elsewhere/admin.sock" list -H -o name | grep -qx m1 ||
    fail "--image created m1 somewhere else"
else
  echo "$0: no user xattrs on $tmpdir: the mark is not checked" >&2
fi

# -i NAME under $NBDSNAP_RUNTIME_DIR.
export NBDSNAP_RUNTIME_DIR="$tmpdir/run"
mkdir -p "$tmpdir/run/web"
ln -s "$tmpdir/elsewhere/admin.sock" "$tmpdir/run/web/admin.sock"
c -i web create i1 > /dev/null || fail "-i web"
c list --instance web -H -o name | grep -qx i1 || fail "--instance after list"
c list --instance=web -H > /dev/null || fail "--instance=web"

# run's command gets the socket found.
c -i web run --snapshot t1 -- sh -c 'echo "$NBDSNAP_SOCKET"' > "$tmpdir/out"
[ "$(cat "$tmpdir/out")" = "$tmpdir/run/web/admin.sock" ] ||
  fail "run -i: NBDSNAP_SOCKET=$(cat "$tmpdir/out")"

# $NBDSNAP_SOCKET, and options beating it.
NBDSNAP_SOCKET="$tmpdir/elsewhere/admin.sock" c list -H -o name |
  grep -qx i1 || fail "\$NBDSNAP_SOCKET"
NBDSNAP_SOCKET=/nowhere c -i web list > /dev/null ||
  fail "-i does not beat \$NBDSNAP_SOCKET"

# Failures say what was tried.
expect 3 c -i nosuch list
grep -q "$tmpdir/run/nosuch/admin.sock" "$tmpdir/err" || fail "-i: no path"
grep -q 'nbdsnap@nosuch' "$tmpdir/err" || fail "-i: no unit named"
expect 2 c -i ../x list
expect 3 c --image "$img" list              # its server is stopped
grep -q "$img.nbdsnap/admin.sock" "$tmpdir/err" || fail "--image: no path"
expect 3 c --image "$tmpdir/nosuch.img" list
expect 2 c -s "$tmpdir/x" -i web list
grep -q 'exclude each other' "$tmpdir/err" || fail "-s with -i"
expect 2 c list
grep -q -- '-i INSTANCE' "$tmpdir/err" && grep -q -- '--image' "$tmpdir/err" &&
  grep -q NBDSNAP_SOCKET "$tmpdir/err" || fail "no socket: $(cat "$tmpdir/err")"
