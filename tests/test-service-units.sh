#!/usr/bin/env bash
# nbdsnap test: the systemd units (systemd/), where systemd is not PID 1.
# (a) systemd-analyze verify accepts every unit, with nothing to say.
# (b) Started as at boot (nbdsnap@NAME.service wanted by multi-user.target,
#     nbdkit getting nbdsnap@NAME.socket's socket: tests/unit-exec.py runs
#     the unit's own ExecStart with its environment file and passes the
#     socket unit's ListenStream as LISTEN_FDS): admin.sock is there
#     before any NBD client, a snapshot is taken through it, an NBD client
#     works through the activated socket, the snapshot reads its instant,
#     and SIGTERM stops it with status 0, removing admin.sock.
# (c) Socket activation alone (systemd-socket-activate: nbdkit starts on
#     the first NBD connection): no admin.sock before, the first client
#     is served, admin.sock is there after - the documented reason to
#     enable the service, not only the socket.
# (d) The rotation (nbdsnap-rotate@NAME.service's ExecStart, three
#     nights, ROTATE_KEEP=2): tonight's snapshot, a full then incremental
#     backups whose bytes are the snapshot's, the oldest deleted.
source "${abs_top_builddir:?}/tests/functions.sh"
requires systemd-analyze --version
requires systemd-socket-activate --version
requires nbdcopy --version

units="$tmpdir/units"
mkdir "$units"
cp "$abs_top_builddir/systemd/nbdsnap@.service" \
   "$abs_top_builddir/systemd/nbdsnap-rotate@.service" \
   "$abs_top_srcdir/systemd/nbdsnap@.socket" \
   "$abs_top_srcdir/systemd/nbdsnap-rotate@.timer" "$units/"
installed_plugin="$(sed -n 's|^ExecStart=.* \([^ ]*/nbdkit-nbdsnap-plugin.so\) .*|\1|p' \
                    "$units/nbdsnap@.service")"
[ -n "$installed_plugin" ] || fail "no plugin path in nbdsnap@.service"
installed_rotate="$(sed -n 's|^ExecStart=\([^ ]*\) .*|\1|p' \
                    "$units/nbdsnap-rotate@.service")"

# ---- (a) ----
# The rotate script is verified where it was built, not where it will be
# installed.
sed -i "s|^ExecStart=$installed_rotate |ExecStart=$abs_top_builddir/systemd/nbdsnap-rotate |" \
  "$units/nbdsnap-rotate@.service"
for u in nbdsnap@vm1.service nbdsnap@vm1.socket nbdsnap-rotate@vm1.service \
         nbdsnap-rotate@vm1.timer; do
  status=0
  SYSTEMD_LOG_LEVEL=info systemd-analyze verify --man=no "$units/$u" \
    > "$tmpdir/verify" 2>&1 || status=$?
  cat "$tmpdir/verify"
  [ "$status" -eq 0 ] || fail "(a): systemd-analyze verify $u: status $status"
  [ ! -s "$tmpdir/verify" ] || fail "(a): systemd-analyze verify $u complains"
done

# The instance's environment file, and where /etc/nbdsnap, /run and
# /var/lib are for this test.
mkdir -p "$tmpdir/etc" "$tmpdir/run" "$tmpdir/lib"
img="$tmpdir/vm1.img"
head -c 4M /dev/urandom > "$img"
cat > "$tmpdir/etc/vm1.conf" <<CONF
IMAGE=$img
NBDSNAP_OPTS="durability=process chunk-size=64K"
BACKUP_DEST=$tmpdir/backup.img
ROTATE_KEEP=2
NBDSNAPCTL=$nbdsnapctl
CONF
unit_exec=("$PYTHON" "$abs_top_srcdir/tests/unit-exec.py"
           --map /etc/nbdsnap="$tmpdir/etc" --map /run="$tmpdir/run"
           --map /var/lib="$tmpdir/lib"
           --subst "$installed_plugin=$plugin")
rundir="$tmpdir/run/nbdsnap/vm1"
admin="$rundir/admin.sock"
nbd="$rundir/nbd.sock"
"${unit_exec[@]}" --print "$units/nbdsnap@.service" vm1 > "$tmpdir/argv"
cat "$tmpdir/argv"
grep -q -x -- "--foreground" "$tmpdir/argv" || fail "ExecStart has no --foreground"

# An --enable-sanitizers build's plugin needs libasan preloaded into
# nbdkit, as functions.sh does for start_nbdkit: the same for the unit's.
# (unit-exec.py passes it to nbdkit only: python3 hangs under it.)
preload=() env_opts=()
if [ -n "$LIBASAN" ]; then
  asan_opts="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  preload=(env LD_PRELOAD="$_preload" ASAN_OPTIONS="$asan_opts")
  env_opts=(--env LD_PRELOAD="$_preload" --env ASAN_OPTIONS="$asan_opts")
fi

# ---- (b) ----
"${unit_exec[@]}" "${env_opts[@]}" \
  --listen "$units/nbdsnap@.socket" "$units/nbdsnap@.service" vm1 \
  2> "$tmpdir/b.log" &
pid=$!
cleanup_fn quiet_kill "$pid"
until_ok 30 test -S "$admin" || { cat "$tmpdir/b.log"; fail "(b): no admin.sock"; }
[ -S "$nbd" ] || fail "(b): no nbd.sock"
timeout 60 "$nbdsnapctl" -s "$admin" create before-any-client
cp "$img" "$tmpdir/at-first.img"
timeout 60 "$PYTHON" -m nbd -u "nbd+unix:///?socket=$nbd" \
  -c 'h.pwrite(b"\xab" * 65536, 0); h.flush()'
timeout 60 nbdcopy "nbd+unix:///before-any-client?socket=$nbd" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-first.img")" ] ||
  fail "(b): the snapshot is not its instant"
[ "$(head -c 65536 "$img" | tr -d '\253' | wc -c)" -eq 0 ] ||
  fail "(b): the write through the activated socket did not land"
[ -f "$tmpdir/lib/nbdsnap/vm1/header" ] || fail "(b): no state in StateDirectory"

# ---- (d) ---- (with the server of (b))
rot=("${unit_exec[@]}" "$units/nbdsnap-rotate@.service" vm1)
nights=()
for night in 1 2 3; do
  "${rot[@]}" > "$tmpdir/rot$night.out" 2>&1 ||
    { cat "$tmpdir/rot$night.out"; fail "(d): night $night failed"; }
  cat "$tmpdir/rot$night.out"
  tonight="$(cat "$tmpdir/backup.img.nbdsnap-base")"
  nights+=("$tonight")
  timeout 60 nbdcopy "nbd+unix:///$tonight?socket=$nbd" "$tmpdir/snap.img"
  [ "$(sha "$tmpdir/backup.img")" = "$(sha "$tmpdir/snap.img")" ] ||
    fail "(d): night $night: the backup is not snapshot $tonight"
  timeout 60 "$PYTHON" -m nbd -u "nbd+unix:///?socket=$nbd" \
    -c "h.pwrite(bytes([$night]) * 131072, $night * 1048576)"
  sleep 1.1                     # tonight's name has the second in it
done
grep -q "(full)" "$tmpdir/rot1.out" || fail "(d): night 1 was not full"
grep -q "changes since ${nights[1]}" "$tmpdir/rot3.out" ||
  fail "(d): night 3 was not incremental from night 2"
left="$(timeout 60 "$nbdsnapctl" -s "$admin" list | awk 'NR > 1 && $1 ~ /^nightly-/ { print $1 }' | xargs)"
[ "$left" = "${nights[1]} ${nights[2]}" ] ||
  fail "(d): kept '$left', not the newest two (${nights[*]})"
timeout 60 "$nbdsnapctl" -s "$admin" info before-any-client >/dev/null ||
  fail "(d): the rotation deleted a snapshot that is not its own"

kill "$pid"
status=0
wait "$pid" || status=$?
cat "$tmpdir/b.log"
[ "$status" -eq 0 ] || fail "(b): nbdkit exited with $status on SIGTERM"
[ ! -e "$admin" ] || fail "(b): admin.sock stayed after the server stopped"

# ---- (c) ----
rm -f "$nbd"
argv=()
mapfile -t argv < <("${unit_exec[@]}" --print "$units/nbdsnap@.service" vm1)
systemd-socket-activate -l "$nbd" "${preload[@]}" "${argv[@]}" \
  2> "$tmpdir/c.log" &
pid=$!
cleanup_fn quiet_kill "$pid"
until_ok 30 test -S "$nbd" || fail "(c): systemd-socket-activate did not listen"
sleep 0.5
[ ! -e "$admin" ] ||
  fail "(c): admin.sock exists before the first client (update the docs)"
timeout 60 nbdcopy "nbd+unix:///?socket=$nbd" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$img")" ] ||
  fail "(c): the first client did not read the image"
until_ok 30 test -S "$admin" || fail "(c): no admin.sock after the first client"
timeout 60 "$nbdsnapctl" -s "$admin" info before-any-client >/dev/null
kill "$pid"
wait "$pid" || fail "(c): nbdkit exited with $? on SIGTERM"
cat "$tmpdir/c.log"
