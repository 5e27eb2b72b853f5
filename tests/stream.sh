# nbdsnap: what the send/receive tests (test-stream-*.sh) share; sourced
# after functions.sh.  Two servers, each with its own image, state
# directory, NBD and admin sockets under $tmpdir/one and $tmpdir/two.
#
#   start_server N IMG       nbdkit on IMG as server N (one or two):
#                            sets sock_N, uri_N; chunk-size=64K
#   ctl1 ARGS..., ctl2 ARGS...
#                            nbdsnapctl on server one's / two's admin
#                            socket (send and receive find the NBD socket
#                            in hello)
#   snap_uri N NAME          the URI of snapshot NAME on server N
#   rbddiff ARGS...          tests/rbddiff.py: the stream decoder and
#                            encoder written from Ceph's documentation
#   snaps CTL                the snapshots of the server of CTL (ctl1 or
#                            ctl2), oldest first, on one line ("s0 s2")
#   expect_status WANT WHAT CMD...
#                            CMD (its output in $tmpdir/out, stderr in
#                            $tmpdir/err) must exit WANT

start_server ()
{
  local n=$1 img=$2 save=$tmpdir

  mkdir -p "$tmpdir/$n"
  # start_nbdkit puts its socket, pid file and log in $tmpdir.
  tmpdir="$tmpdir/$n"
  start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
    chunk-size=64K
  tmpdir=$save
  printf -v "sock_$n" %s "$sock"
  printf -v "uri_$n" %s "$uri"
}

ctl1 ()
{
  timeout 60 "$nbdsnapctl" -s "$tmpdir/one/admin.sock" "$@"
}

ctl2 ()
{
  timeout 60 "$nbdsnapctl" -s "$tmpdir/two/admin.sock" "$@"
}

snap_uri ()
{
  echo "nbd+unix:///$2?socket=$tmpdir/$1/nbd.sock"
}

rbddiff ()
{
  timeout 120 "$PYTHON" "$abs_top_srcdir/tests/rbddiff.py" "$@"
}

snaps ()
{
  "$1" --json list | "$PYTHON" -c '
import json, sys
print(" ".join(s["name"] for s in json.load(sys.stdin)["snapshots"]))'
}

expect_status ()
{
  local want=$1 what=$2 status=0
  shift 2
  "$@" > "$tmpdir/out" 2> "$tmpdir/err" || status=$?
  cat "$tmpdir/err" >&2
  [ "$status" -eq "$want" ] ||
    fail "$what: exit $status, expected $want"
}
