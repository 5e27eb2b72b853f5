#!/usr/bin/env bash
# nbdsnap test (issue 17): no client can take the server down.  Clients
# die (SIGKILL, some SIGINT) with requests in flight, many rounds of each
# kind: nbdcopy --requests=64 reading a snapshot and the origin, qemu-img
# convert -m 16 -W, a libnbd client with 32 reads and 32 writes queued, a
# client that asks for block status over a fragmented range (65536
# extents) of the origin and of a snapshot and dies before reading the
# reply, and raw clients dying at each stage of the handshake
# (tests/die-client.py).  After every round the server must be up and
# another connected client (a reader of snapshot s1) must still be
# served the bytes of s1's instant; at the end, after a restart, s1 and
# s2 read their instants.  A server that dies is counted, restarted and
# the test goes on, so that the tally printed at the end says how many
# rounds of each kind killed it; any death fails the test.
#
# On Debian 12's nbdkit 1.32.5, the code before the fix died in most
# nbdcopy, qemu-img and queue rounds and in every block-status round.
#
# SEED replays the choices (printed first); CLIENT_DIE_ROUNDS (default 4)
# rounds of each kind; CLIENT_DIE_KINDS a space-separated subset of:
# nbdcopy-snap nbdcopy-origin qemu-img queue extents-origin extents-snap
# handshake.  PARAMS adds plugin parameters (e.g. PARAMS=parallel=on).
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires nbdcopy --version
requires qemu-img --version

seed=${SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
rounds=${CLIENT_DIE_ROUNDS:-4}
kinds=${CLIENT_DIE_KINDS:-nbdcopy-snap nbdcopy-origin qemu-img queue \
extents-origin extents-snap handshake}
echo "$0: SEED=$seed CLIENT_DIE_ROUNDS=$rounds CLIENT_DIE_KINDS='$kinds'"
RANDOM=$seed

big_dir
img="$bigdir/disk.img"
# 64 MiB of data, then 256 MiB fragmented: 4K of data, a 4K hole, ...
# (65536 extents: a block-status reply of 512K, more than a socket
# buffer holds, so that nbdkit is still sending it when the client dies)
"$PYTHON" - "$img" "$seed" <<'PY'
import os, random, sys
rng = random.Random(sys.argv[2])
with open(sys.argv[1], "wb") as f:
    for i in range(64):
        f.write(rng.randbytes(1 << 20))
    for i in range(256 << 20 >> 13):
        f.write(rng.randbytes(4096))
        f.seek(4096, os.SEEK_CUR)
    f.truncate(320 << 20)
PY
dest="$tmpdir/dest.raw"
truncate -s 320M "$dest"

args=("$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" ${PARAMS:-})
declare -A deaths=() done_rounds=() in_flight=()

snap_uri ()
{
  echo "nbd+unix:///$1?socket=$sock"
}

start_server ()
{
  start_nbdkit "${args[@]}"
  start_client "$(snap_uri s1)"
}

start_nbdkit "${args[@]}"
sha_s1="$(sha "$img")"
sha_s1_head="$(head -c 64M "$img" | sha256sum | cut -d' ' -f1)"
ctl create s1 >/dev/null
# Some chunks of s1 copied before the rounds begin.
"$PYTHON" - "$uri" <<'PY'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for off in range(0, 320 << 20, 5 << 20):
    h.pwrite(b"\x77" * 12345, off + 777)
h.shutdown()
PY
# s2: the origin now, before the queue rounds write to it.
sha_s2="$(export_sha "$uri")"
ctl create s2 >/dev/null
ctl list
start_client "$(snap_uri s1)"

# die_client ARGS: tests/die-client.py, which kills itself (bash's
# "Killed" notice goes to /dev/null with its own stderr).
die_client ()
{
  ( "$PYTHON" "$abs_top_srcdir/tests/die-client.py" "$@" ) 2>/dev/null || :
}

# kill_in_flight DELAY SIG CMD...: run CMD, send it SIG after DELAY
# seconds; counts in in_flight[KIND] the kills that found it still running.
kill_in_flight ()
{
  local delay=$1 sig=$2
  shift 2
  if ( "$@" >/dev/null 2>&1 & p=$!
       sleep "$delay"
       kill -"$sig" $p || exit 1
       wait $p
       exit 0 ) 2>/dev/null; then
    in_flight[$k]=$(( ${in_flight[$k]} + 1 ))
  fi
}

# run_kind KIND: one client of that kind, killed in flight.
run_kind ()
{
  local k=$1 delay pid sig=KILL
  delay="0.$(printf '%03d' $(( RANDOM % 300 )))"
  (( RANDOM % 4 == 0 )) && sig=INT
  case $k in
    nbdcopy-snap|nbdcopy-origin)
      local u="$uri"
      [ "$k" = nbdcopy-snap ] && u="$(snap_uri s$(( RANDOM % 2 + 1 )))"
      kill_in_flight "$delay" $sig nbdcopy --requests=64 --connections=1 \
        "$u" null:
      ;;
    qemu-img)
      kill_in_flight "$delay" $sig qemu-img convert -n -m 16 -W -f raw \
        -O raw "$(snap_uri s1)" "$dest"
      ;;
    queue)
      die_client queue "$uri" "$seed-$RANDOM"
      die_client queue "$(snap_uri s1)" "$seed-$RANDOM"
      ;;
    extents-origin)
      die_client extents "$uri"
      ;;
    extents-snap)
      die_client extents "$(snap_uri s$(( RANDOM % 2 + 1 )))"
      ;;
    handshake)
      local st
      for st in connect greeting option list; do
        die_client handshake "$sock" "$st"
      done
      ;;
    *) fail "unknown kind $k" ;;
  esac
}

# After a round: the server is up and serves the other client (the first
# 64 MiB of s1, where the copied chunks are; all of it at the end).
server_ok ()
{
  local pid
  pid="$(cat "$tmpdir/nbdkit.pid")"
  sleep 0.2                   # let nbdkit see the client gone
  kill -0 "$pid" 2>/dev/null || return 1
  ask "sha $(( 64 << 20 ))"
  [ "$reply" = "sha $sha_s1_head" ] ||
    fail "$1: the reader of s1 got '$reply', not sha $sha_s1_head"
}

for k in $kinds; do
  deaths[$k]=0 in_flight[$k]=0
  for (( r = 0; r < rounds; r++ )); do
    run_kind "$k"
    if ! server_ok "$k round $r"; then
      deaths[$k]=$(( ${deaths[$k]} + 1 ))
      echo "$0: $k round $r: nbdkit died:" >&2
      tail -n 5 "$nbdkit_log" >&2
      kill9_nbdkit
      quiet_kill "$client_pid"
      cp "$nbdkit_log" "$tmpdir/died-$k-$r.log"
      start_server
    fi
    done_rounds[$k]=$(( r + 1 ))
  done
done

# A clean restart: every snapshot still reads its instant.
ask close
stop_nbdkit
start_nbdkit "${args[@]}"
got="$(export_sha "$(snap_uri s1)")"
[ "$got" = "$sha_s1" ] || fail "s1 reads $got, not its instant $sha_s1"
got="$(export_sha "$(snap_uri s2)")"
[ "$got" = "$sha_s2" ] || fail "s2 reads $got, not its instant $sha_s2"
stop_nbdkit

total=0
printf '%-16s %6s %9s %6s\n' kind rounds in-flight deaths
for k in $kinds; do
  case $k in nbdcopy*|qemu-img) ;; *) in_flight[$k]=${done_rounds[$k]} ;; esac
  printf '%-16s %6s %9s %6s\n' "$k" "${done_rounds[$k]}" "${in_flight[$k]}" \
    "${deaths[$k]}"
  total=$(( total + ${deaths[$k]} ))
done
[ "$total" -eq 0 ] ||
  fail "nbdkit died $total times (replay with SEED=$seed)"
