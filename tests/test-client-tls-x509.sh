#!/usr/bin/env bash
# nbdsnap test: the snapshot export over TLS with X.509 certificates
# (nbdkit --tls=require --tls-certificates=DIR --tls-verify-peer).
# certtool makes a CA, a server certificate for localhost, a client
# certificate; and a rogue CA with a client certificate of its own.  The
# origin is overwritten over TLS after the snapshot was taken; then:
# * nbdcopy (libnbd, tls-certificates=DIR) and qemu-img convert (--object
#   tls-creds-x509) read the snapshot over TLS: the sha256 of a copy of
#   the image saved when the snapshot was taken;
# * refused by the server, each with a non-zero exit: nbdcopy and
#   qemu-img without TLS; nbdcopy and qemu-img with the rogue client
#   certificate (their ca-cert.pem holds both CAs, so that they accept
#   the server and their own certificate: the server refuses them);
#   nbdcopy with no client certificate (nbdkit logs these three failed
#   handshakes);
# * the server keeps serving: nbdcopy then reads the instant again and the
#   origin's new bytes, no refused client is left in `nbdsnapctl
#   clients', and nbdkit exits 0 at the end.
#
# Over a unix socket qemu has no host name to check the server's
# certificate against: it needs tls-hostname=localhost (QEMU >= 7.0).
# libnbd 1.14 does not check the server's certificate at all there (its
# tls-verify-peer applies to TCP): a client that trusts only the rogue CA
# still connects, so that refusal is not tested here.
source "${abs_top_builddir:?}/tests/functions.sh"
source "$abs_top_srcdir/tests/tls.sh"
requires certtool --version
requires nbdcopy --version
requires qemu-img --version
requires "$PYTHON" -c 'import nbd; assert nbd.NBD().supports_tls()'
requires sh -c "'$NBDKIT' --dump-config | grep -qx tls=yes"


img="$tmpdir/disk.img"
size=$(( 4 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"

# make_cert NAME CA TEMPLATE-LINES...: $tmpdir/pki/NAME-{key,cert}.pem
# signed by CA ("self" for a CA).
mkdir "$tmpdir/pki"
make_cert ()
{
  local name=$1 ca=$2 p="$tmpdir/pki"
  shift 2
  printf '%s\n' "$@" "expiration_days = 2" > "$p/$name.info"
  certtool --generate-privkey --outfile "$p/$name-key.pem" 2>/dev/null
  if [ "$ca" = self ]; then
    certtool --generate-self-signed --load-privkey "$p/$name-key.pem" \
      --template "$p/$name.info" --outfile "$p/$name-cert.pem" 2>/dev/null
  else
    certtool --generate-certificate --load-privkey "$p/$name-key.pem" \
      --load-ca-certificate "$p/$ca-cert.pem" \
      --load-ca-privkey "$p/$ca-key.pem" \
      --template "$p/$name.info" --outfile "$p/$name-cert.pem" 2>/dev/null
  fi
  [ -s "$p/$name-cert.pem" ] || fail "certtool made no $name certificate"
}
make_cert ca self "cn = nbdsnap test CA" ca cert_signing_key
make_cert server ca "organization = nbdsnap test" "cn = localhost" \
  "dns_name = localhost" tls_www_server encryption_key signing_key
make_cert client ca "organization = nbdsnap test" "cn = client" \
  tls_www_client encryption_key signing_key
make_cert rogue-ca self "cn = rogue CA" ca cert_signing_key
make_cert rogue rogue-ca "organization = rogue" "cn = client" \
  tls_www_client encryption_key signing_key

# certdir DIR CA-FILES CERT: $tmpdir/DIR with ca-cert.pem (the CA-FILES,
# concatenated) and CERT's client-{cert,key}.pem unless CERT is "-".
certdir ()
{
  local d="$tmpdir/$1" ca
  mkdir "$d"
  for ca in $2; do cat "$tmpdir/pki/$ca-cert.pem"; done > "$d/ca-cert.pem"
  if [ "$3" != - ]; then
    cp "$tmpdir/pki/$3-cert.pem" "$d/client-cert.pem"
    cp "$tmpdir/pki/$3-key.pem" "$d/client-key.pem"
  fi
}
mkdir "$tmpdir/server"
cp "$tmpdir/pki/ca-cert.pem" "$tmpdir/pki/server-cert.pem" \
   "$tmpdir/pki/server-key.pem" "$tmpdir/server/"
certdir good ca client
certdir rogue "ca rogue-ca" rogue
certdir nocert ca -
chmod 0600 "$tmpdir"/*/*key.pem

nbdkit_opts=(--tls=require --tls-certificates="$tmpdir/server"
             --tls-verify-peer)
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"

# tls_uri DIR EXPORT
tls_uri ()
{
  echo "nbds+unix:///$2?socket=$sock&tls-certificates=$tmpdir/$1"
}
# qemu_convert DIR EXPORT OUT [ARGS...]: qemu-img convert over TLS with
# the certificates of DIR.
qemu_convert ()
{
  local dir=$1 export=$2 out=$3
  shift 3
  timeout 60 qemu-img convert \
    --object "tls-creds-x509,id=tls0,endpoint=client,dir=$tmpdir/$dir" \
    --image-opts "driver=nbd,server.type=unix,server.path=$sock,export=$export,tls-creds=tls0,tls-hostname=localhost" \
    -O raw "$out" "$@"
}

tls_snapshot_checks "$(tls_uri good "")" "$(tls_uri good s1)"

refused "nbdcopy with the rogue certificate" "gnutls_record_" \
  timeout 60 nbdcopy "$(tls_uri rogue s1)" "$tmpdir/x.img"
# qemu-img says "...TLS channel" or "TLS handshake failed: Error in the
# push function", depending on whether the server's rejection of the
# certificate arrives before or after its next handshake write: both are
# refusals at the TLS layer.
refused "qemu-img with the rogue certificate" "TLS channel\|TLS handshake failed" \
  qemu_convert rogue s1 "$tmpdir/x.img"
refused "nbdcopy without a client certificate" "gnutls_record_" \
  timeout 60 nbdcopy "$(tls_uri nocert s1)" "$tmpdir/x.img"
# The handshakes failed in the server, not in the clients; it serves on.
tls_still_serving "$(tls_uri good "")" "$(tls_uri good s1)" 3
