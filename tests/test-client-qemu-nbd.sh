#!/usr/bin/env bash
# nbdsnap test: qemu-nbd re-exports a snapshot.  qemu-nbd -r reads the
# snapshot as its NBD client (QEMU 7.2 takes the source both as an NBD
# URI and with --image-opts driver=nbd,server.type=unix,...) and serves
# it on a second socket; the origin is then overwritten:
# * nbdcopy through either re-export has the sha256 of a copy of the
#   image saved when the snapshot was taken;
# * without -r, qemu-nbd refuses to start (exit 1, "Permission denied"):
#   QEMU honours the snapshot's read-only flag;
# * writes, zeroes and trims through the re-export fail (qemu-io cannot
#   open it for writing; libnbd with strict checks off gets an error for
#   each: QEMU 7.2 answers EINVAL, "Export is read-only", not EPERM),
#   and the snapshot, read directly and through qemu-nbd, still
#   has its instant's bytes, the origin its own.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-nbd --version
requires qemu-io --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
size=$(( 4 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
snapuri="nbd+unix:///s1?socket=$sock"
cp "$img" "$tmpdir/at-s1.img"
ctl create s1

# start_qemu_nbd N ARGS...: qemu-nbd ARGS serving on $tmpdir/qN.sock
# (URI $qemu_uri), killed at exit.  -t (persistent): without it qemu-nbd
# exits when its first client disconnects.
start_qemu_nbd ()
{
  local n=$1 i
  shift
  qsock="$tmpdir/q$n.sock"
  qemu_uri="nbd+unix:///?socket=$qsock"
  qemu-nbd -t -k "$qsock" "$@" 2>"$tmpdir/qemu-nbd-$n.log" &
  cleanup_fn quiet_kill $!
  for (( i = 0; i < 100; i++ )); do
    [ -S "$qsock" ] && return 0
    if ! kill -0 $! 2>/dev/null; then
      cat "$tmpdir/qemu-nbd-$n.log" >&2
      fail "qemu-nbd $* exited during start-up"
    fi
    sleep 0.1
  done
  fail "qemu-nbd $* did not start within 10 seconds"
}

# Without -r: QEMU opens its source read/write, which the snapshot export
# refuses.
status=0
timeout 30 qemu-nbd -f raw -k "$tmpdir/rw.sock" "$snapuri" \
  2>"$tmpdir/rw.log" || status=$?
cat "$tmpdir/rw.log"
[ "$status" -eq 1 ] || fail "qemu-nbd without -r exited $status, not 1"
grep -q "Permission denied" "$tmpdir/rw.log" ||
  fail "qemu-nbd without -r: not refused as read-only"

start_qemu_nbd 1 -r -f raw "$snapuri"
uri1=$qemu_uri
start_qemu_nbd 2 -r --image-opts \
  "driver=nbd,server.type=unix,server.path=$sock,export=s1"
uri2=$qemu_uri

# Overwrite the origin entirely, then read through both re-exports.
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"
for u in "$uri1" "$uri2"; do
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "$u" "$tmpdir/got.img"
  [ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
    fail "nbdcopy through qemu-nbd ($u): not the instant's bytes"
done

# Writes through the re-export.
status=0
timeout 30 qemu-io -f raw -c 'write -P 0x55 0 4096' "$uri1" \
  > "$tmpdir/qemu-io.log" 2>&1 || status=$?
cat "$tmpdir/qemu-io.log"
[ "$status" -ne 0 ] || fail "qemu-io wrote through qemu-nbd -r"
"$PYTHON" - "$uri1" "$uri2" <<'PY'
import nbd, sys
for uri in sys.argv[1:]:
    h = nbd.NBD()
    # Send the commands although the server says it is read-only.
    h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)
    h.connect_uri(uri)
    assert h.is_read_only(), "%s: not advertised read-only" % uri
    for what, call in [("write", lambda: h.pwrite(b"\x55" * 65536, 0)),
                       ("zero", lambda: h.zero(65536, 65536)),
                       ("trim", lambda: h.trim(65536, 131072))]:
        try:
            call()
        except nbd.Error as e:
            print("%s: %s refused: %s" % (uri, what, e))
        else:
            raise AssertionError("%s: %s through qemu-nbd -r succeeded"
                                 % (uri, what))
    h.shutdown()
PY

for u in "$snapuri" "$uri1" "$uri2"; do
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "$u" "$tmpdir/got.img"
  [ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
    fail "after the refused writes, $u is not the instant's bytes"
done
cmp "$img" "$tmpdir/new.img" ||
  fail "the origin changed by writes through the re-export"
