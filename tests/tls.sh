# nbdsnap: what the TLS tests (test-client-tls-*.sh) share; sourced after
# functions.sh, once nbdkit runs with --tls=require.  The caller defines
#   qemu_convert DIR EXPORT OUT [ARGS...]   qemu-img convert over TLS with
#                                           the credentials of DIR
# and sets img and size.
#
#   tls_snapshot_checks ORIGIN_URI S1_URI
#       take snapshot s1 (its instant saved as at-s1.img), overwrite the
#       origin over TLS with new.img, read s1 over TLS with nbdcopy and
#       with qemu_convert good: both its instant; nbdcopy and qemu-img
#       without TLS are refused
#   tls_still_serving ORIGIN_URI S1_URI HANDSHAKES
#       nbdkit logged exactly HANDSHAKES failed handshakes (the refusals
#       were the server's), is alive, serves s1's instant and the origin's
#       new bytes, and lists no client left behind
#   refused WHAT EXPECTED-MESSAGE CMD...
#       CMD must fail, and say EXPECTED-MESSAGE

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

tls_snapshot_checks ()
{
  local origin_uri=$1 s1_uri=$2

  cp "$img" "$tmpdir/at-s1.img"
  ctl create s1
  head -c "$size" /dev/urandom > "$tmpdir/new.img"
  timeout 60 nbdcopy "$tmpdir/new.img" "$origin_uri"
  cmp "$img" "$tmpdir/new.img" ||
    fail "the origin lacks the bytes written over TLS"

  timeout 60 nbdcopy "$s1_uri" "$tmpdir/s1-a.img"
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
}

tls_still_serving ()
{
  local origin_uri=$1 s1_uri=$2 want=$3 n

  n=$(grep -c 'error: gnutls_handshake' "$nbdkit_log" || :)
  [ "$n" -eq "$want" ] ||
    fail "nbdkit logged $n failed TLS handshakes, not $want"
  kill -0 "$(cat "$tmpdir/nbdkit.pid")" || fail "nbdkit died"
  rm -f "$tmpdir/s1-b.img"
  timeout 60 nbdcopy "$s1_uri" "$tmpdir/s1-b.img"
  [ "$(sha "$tmpdir/s1-b.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
    fail "after the refused clients: the snapshot is not its instant"
  timeout 60 nbdcopy "$origin_uri" "$tmpdir/origin.img"
  [ "$(sha "$tmpdir/origin.img")" = "$(sha "$tmpdir/new.img")" ] ||
    fail "after the refused clients: the origin is not its new bytes"
  ctl --json clients > "$tmpdir/clients.json"
  "$PYTHON" -c 'import json, sys
c = json.load(open(sys.argv[1]))["clients"]
assert c == [], "clients left behind: %r" % c' "$tmpdir/clients.json"
}
