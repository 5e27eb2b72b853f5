#!/usr/bin/env bash
# nbdsnap test: the snapshot export over TLS with a pre-shared key
# (nbdkit --tls=require --tls-psk=FILE, the key made by psktool).  The
# origin is overwritten over TLS after the snapshot was taken; then:
# * nbdcopy (libnbd) and qemu-img convert (--object tls-creds-psk) read
#   the snapshot over TLS: the sha256 of a copy of the image saved when
#   the snapshot was taken;
# * refused, each with a non-zero exit: nbdcopy and qemu-img without TLS,
#   nbdcopy and qemu-img with the right user name and a wrong key,
#   nbdcopy with a user name the server does not know (nbdkit logs the
#   three failed handshakes);
# * the server keeps serving: nbdcopy with the right key then reads the
#   instant again and the origin's new bytes, no refused client is left
#   in `nbdsnapctl clients', and nbdkit exits 0 at the end.
#
# libnbd 1.14 takes the PSK user name from the URI's user part
# (nbds+unix://alice@/...); it ignores a tls-username= parameter and
# then asks getlogin_r (), which fails without a terminal.  qemu reads
# DIR/keys.psk of its tls-creds-psk object.
source "${abs_top_builddir:?}/tests/functions.sh"
requires psktool --version
requires nbdcopy --version
requires qemu-img --version
requires "$PYTHON" -c 'import nbd; assert nbd.NBD().supports_tls()'
requires sh -c "'$NBDKIT' --dump-config | grep -qx tls=yes"


img="$tmpdir/disk.img"
size=$(( 4 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"

# The server's key for alice; a client file with another key for alice;
# one for bob, whom the server does not know.  Each in its own directory
# as keys.psk, where qemu looks for it.
mkdir "$tmpdir/good" "$tmpdir/wrong" "$tmpdir/bob"
psktool -u alice -p "$tmpdir/good/keys.psk" >/dev/null
psktool -u alice -p "$tmpdir/wrong/keys.psk" >/dev/null
psktool -u bob -p "$tmpdir/bob/keys.psk" >/dev/null
cmp -s "$tmpdir/good/keys.psk" "$tmpdir/wrong/keys.psk" &&
  fail "psktool made the same key twice"

nbdkit_opts=(--tls=require --tls-psk="$tmpdir/good/keys.psk")
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"

# tls_uri USER DIR EXPORT
tls_uri ()
{
  echo "nbds+unix://$1@/$3?socket=$sock&tls-psk-file=$tmpdir/$2/keys.psk"
}
# qemu_convert DIR EXPORT OUT [ARGS...]: qemu-img convert over TLS as alice
# with DIR/keys.psk.
qemu_convert ()
{
  local dir=$1 export=$2 out=$3
  shift 3
  timeout 60 qemu-img convert \
    --object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmpdir/$dir,username=alice" \
    --image-opts "driver=nbd,server.type=unix,server.path=$sock,export=$export,tls-creds=tls0" \
    -O raw "$out" "$@"
}
# refused WHAT EXPECTED-MESSAGE CMD...: CMD must fail and say why.
refused ()
{
  local what=$1 msg=$2 status=0
  shift 2
  "$@" > "$tmpdir/refused.log" 2>&1 || status=$?
  cat "$tmpdir/refused.log"
  [ "$status" -ne 0 ] || fail "$what: not refused"
  grep -q -- "$msg" "$tmpdir/refused.log" ||
    fail "$what: refused, but not with '$msg'"
}

cp "$img" "$tmpdir/at-s1.img"
ctl create s1
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$(tls_uri alice good "")"
cmp "$img" "$tmpdir/new.img" || fail "the origin lacks the bytes written over TLS"

timeout 60 nbdcopy "$(tls_uri alice good s1)" "$tmpdir/s1-a.img"
[ "$(sha "$tmpdir/s1-a.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "nbdcopy over TLS: the snapshot is not its instant"
qemu_convert good s1 "$tmpdir/s1-q.img"
[ "$(sha "$tmpdir/s1-q.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "qemu-img convert over TLS: the snapshot is not its instant"

refused "nbdcopy without TLS" "server requires TLS" \
  timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/x.img"
refused "qemu-img without TLS" "TLS negotiation required" \
  timeout 60 qemu-img convert -f raw "nbd+unix:///s1?socket=$sock" \
  -O raw "$tmpdir/x.img"
refused "nbdcopy with a wrong key" "gnutls_handshake" \
  timeout 60 nbdcopy "$(tls_uri alice wrong s1)" "$tmpdir/x.img"
refused "nbdcopy as an unknown user" "gnutls_handshake" \
  timeout 60 nbdcopy "$(tls_uri bob bob s1)" "$tmpdir/x.img"
refused "qemu-img with a wrong key" "TLS handshake failed" \
  qemu_convert wrong s1 "$tmpdir/x.img"
# The three handshakes failed in the server, not in the clients.
n=$(grep -c 'error: gnutls_handshake' "$nbdkit_log" || :)
[ "$n" -eq 3 ] || fail "nbdkit logged $n failed TLS handshakes, not 3"

# Still serving.
kill -0 "$(cat "$tmpdir/nbdkit.pid")" || fail "nbdkit died"
rm -f "$tmpdir/s1-b.img"
timeout 60 nbdcopy "$(tls_uri alice good s1)" "$tmpdir/s1-b.img"
[ "$(sha "$tmpdir/s1-b.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "after the refused clients: the snapshot is not its instant"
timeout 60 nbdcopy "$(tls_uri alice good "")" "$tmpdir/origin.img"
[ "$(sha "$tmpdir/origin.img")" = "$(sha "$tmpdir/new.img")" ] ||
  fail "after the refused clients: the origin is not its new bytes"
ctl --json clients > "$tmpdir/clients.json"
"$PYTHON" -c 'import json, sys
c = json.load(open(sys.argv[1]))["clients"]
assert c == [], "clients left behind: %r" % c' "$tmpdir/clients.json"
