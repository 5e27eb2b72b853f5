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
source "$abs_top_srcdir/tests/tls.sh"
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

tls_snapshot_checks "$(tls_uri alice good "")" "$(tls_uri alice good s1)"

refused "nbdcopy with a wrong key" "gnutls_handshake" \
  timeout 60 nbdcopy "$(tls_uri alice wrong s1)" "$tmpdir/x.img"
refused "nbdcopy as an unknown user" "gnutls_handshake" \
  timeout 60 nbdcopy "$(tls_uri bob bob s1)" "$tmpdir/x.img"
refused "qemu-img with a wrong key" "TLS handshake failed" \
  qemu_convert wrong s1 "$tmpdir/x.img"
# The three handshakes failed in the server, not in the clients; it
# serves on.
tls_still_serving "$(tls_uri alice good "")" "$(tls_uri alice good s1)" 3
