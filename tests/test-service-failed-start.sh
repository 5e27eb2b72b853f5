#!/usr/bin/env bash
# nbdsnap test: a start that fails removes what it created.
# (a) The NBD socket is in use (another server listens on it): nbdkit
#     fails after the plugin bound its admin socket and made a new state
#     directory; the admin socket, the state directory and the image's
#     mark are gone, and the first server still answers.
# (b) The same with the default admin socket inside a new default state
#     directory (IMAGE.nbdsnap): nothing is left.
# (c) An existing state directory with a snapshot: a failed start leaves
#     it exactly as it was, and the next start serves the snapshot.
# (d) An empty state directory made beforehand (systemd's
#     StateDirectory=): it stays, and stays empty.
# (e) A good start in the background (no -f, the parent exits) and with
#     --run (the parent runs the command): the parent's exit removes
#     nothing; the server answers on its admin socket.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdsh --version

# The image's mark (its user.nbdsnap.state-id attribute), "" if none.
mark () { "$PYTHON" -c '
import os, sys
try: print(os.getxattr(sys.argv[1], "user.nbdsnap.state-id").decode())
except OSError: pass' "$1"; }

# In an --enable-sanitizers build nbdkit runs with libasan (and
# p11-kit) preloaded, and --run passes that on: python3 hangs at start-up
# with it, so the commands run without it.
norun="env -u LD_PRELOAD"

img="$tmpdir/disk.img"
truncate -s 1M "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s0 >/dev/null

# in_use ARGS...: a second nbdkit on the first one's NBD socket fails.
in_use ()
{
  local status=0
  run_nbdkit -f -U "$sock" "$plugin" "$@" > "$tmpdir/out" 2>&1 ||
    status=$?
  cat "$tmpdir/out"
  [ "$status" -ne 0 ] || fail "nbdkit started on a socket in use"
  grep -q -i "in use" "$tmpdir/out" ||
    fail "the message does not say the socket is in use"
}

# ---- (a) ----
img2="$tmpdir/disk2.img"
truncate -s 1M "$img2"
in_use "$img2" statedir="$tmpdir/state2" admin="$tmpdir/admin2.sock"
[ ! -e "$tmpdir/admin2.sock" ] || fail "(a): admin2.sock was left behind"
[ ! -e "$tmpdir/state2" ] || fail "(a): the new state directory was left"
[ -z "$(mark "$img2")" ] || fail "(a): the image keeps a mark"
ctl info s0 >/dev/null || fail "(a): the first server does not answer"

# ---- (b) ----
in_use "$img2"
[ ! -e "$img2.nbdsnap" ] || fail "(b): $img2.nbdsnap was left: $(ls -A "$img2.nbdsnap")"
[ -z "$(mark "$img2")" ] || fail "(b): the image keeps a mark"

# ---- (c) ----
img3="$tmpdir/disk3.img"
head -c 1M /dev/urandom > "$img3"
cp "$img3" "$tmpdir/at-s1.img"
run_nbdkit -U - "$plugin" "$img3" statedir="$tmpdir/state3" \
  admin="$tmpdir/admin3.sock" \
  --run "$nbdsnapctl -s $tmpdir/admin3.sock create s1 && $norun $PYTHON -m nbd -u \"\$uri\" -c 'h.pwrite(b\"x\" * 65536, 0)'"
before="$(cd "$tmpdir/state3" && ls -l --time-style=+%s.%N && cat header snap-* | sha256sum)"
mark_before="$(mark "$img3")"
[ -n "$mark_before" ] || fail "(c): no mark to compare"
in_use "$img3" statedir="$tmpdir/state3" admin="$tmpdir/admin3.sock"
after="$(cd "$tmpdir/state3" && ls -l --time-style=+%s.%N && cat header snap-* | sha256sum)"
[ "$before" = "$after" ] || fail "(c): the state directory changed"
[ "$(mark "$img3")" = "$mark_before" ] || fail "(c): the mark changed"
[ ! -e "$tmpdir/admin3.sock" ] || fail "(c): admin3.sock was left behind"
run_nbdkit -U - "$plugin" "$img3" statedir="$tmpdir/state3" \
  admin="$tmpdir/admin3.sock" \
  --run "$norun nbdcopy \"nbd+unix:///s1?socket=\$unixsocket\" $tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "(c): s1 is not its instant after the failed start"

# ---- (d) ----
mkdir -m 0700 "$tmpdir/state4"
in_use "$img2" statedir="$tmpdir/state4" admin="$tmpdir/state4/admin.sock"
[ -d "$tmpdir/state4" ] || fail "(d): the existing directory was removed"
[ -z "$(ls -A "$tmpdir/state4")" ] ||
  fail "(d): left in the directory: $(ls -A "$tmpdir/state4")"
[ -z "$(mark "$img2")" ] || fail "(d): the image keeps a mark"

# ---- (e) ----
img5="$tmpdir/disk5.img"
truncate -s 1M "$img5"
pid5="$tmpdir/nbdkit5.pid"
run_nbdkit -U "$tmpdir/nbd5.sock" -P "$pid5" "$plugin" "$img5" \
  statedir="$tmpdir/state5" admin="$tmpdir/admin5.sock"
cleanup_fn quiet_kill "$(cat "$pid5")"
[ -S "$tmpdir/admin5.sock" ] ||
  fail "(e): the parent's exit removed the background server's admin socket"
[ -f "$tmpdir/state5/header" ] ||
  fail "(e): the parent's exit removed the state directory"
timeout 60 "$nbdsnapctl" -s "$tmpdir/admin5.sock" create e1
kill "$(cat "$pid5")"
until_ok 30 test ! -e "$tmpdir/admin5.sock" ||
  fail "(e): the admin socket stayed after the server stopped"
[ -f "$tmpdir/state5/header" ] || fail "(e): the state directory went"
run_nbdkit -U - "$plugin" "$img5" statedir="$tmpdir/state5" \
  admin="$tmpdir/admin5.sock" \
  --run "$nbdsnapctl -s $tmpdir/admin5.sock info e1 >/dev/null"
[ -f "$tmpdir/state5/header" ] ||
  fail "(e): the --run parent's exit removed the state directory"
