#!/usr/bin/env bash
# nbdsnap test: a snapshot survives nbdkit being killed (SIGKILL) in the
# middle of overwrites of the origin, with durability=power and with
# durability=process (both promise to survive the process dying).  A
# libnbd client keeps 8 writes of 256K in flight at random offsets; once
# some chunks were copied, nbdkit is killed with -9 while copy-on-write is
# still going on.  nbdkit is started again on the same state directory: the
# snapshot is listed and reads exactly as its instant, also after another
# full overwrite (a chunk whose copy was not recorded would now be copied
# again, from the new bytes).
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'



# Wait (at most 30 s) until process $1 is gone.
wait_gone ()
{
  local i
  for (( i = 0; i < 3000; i++ )); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.01
  done
  return 1
}

# chunks_copied of snapshot $1 (-1 if it cannot be asked).  Quick, with
# no python start-up, so that the kill follows the look closely.
copied ()
{
  local n
  n=$(ctl --json info "$1" 2>/dev/null |
        grep -o '"chunks_copied":[0-9]*' | cut -d: -f2) || :
  echo "${n:--1}"
}

check ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/got.img"
  if [ "$(sha "$tmpdir/got.img")" != "$(sha "$tmpdir/at-s1.img")" ]; then
    cmp "$tmpdir/got.img" "$tmpdir/at-s1.img" || :
    fail "durability=$mode: the snapshot is not its instant ($1)"
  fi
}

img="$tmpdir/disk.img"
size=$(( 16 * 1024 * 1024 ))
chunk=4096                 # small chunks: copy-on-write is slower
nchunks=$(( size / chunk ))

for mode in power process; do
  rm -rf "$tmpdir/state"
  head -c "$size" /dev/urandom > "$img"
  args=("$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
        chunk-size=$chunk durability=$mode)
  start_nbdkit "${args[@]}"
  cp "$img" "$tmpdir/at-s1.img"
  ctl create s1

  "$PYTHON" - "$uri" <<'PY' 2>"$tmpdir/writer.err" &
import nbd, os, random, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
bufs = [nbd.Buffer.from_bytearray(bytearray(os.urandom(256 * 1024)))
        for _ in range(4)]
while True:
    while h.aio_in_flight() < 8:
        h.aio_pwrite(random.choice(bufs),
                     random.randrange(0, size - 256 * 1024),
                     completion=lambda err: 1)
    h.poll(-1)
PY
  writer=$!
  cleanup_fn quiet_kill "$writer"

  # Kill once copy-on-write has started, not after it is over.
  for (( i = 0; i < 1000; i++ )); do
    n=$(copied s1)
    [ "$n" -ge 8 ] && break
    sleep 0.01
  done
  kill9_nbdkit
  echo "durability=$mode: killed after $n of $nchunks chunks were copied"
  [ "$n" -ge 8 ] || fail "durability=$mode: no copy-on-write seen"
  [ "$n" -lt "$nchunks" ] ||
    echo "$0: warning: every chunk was copied before the kill"

  # The writer was cut off in the middle.
  status=0
  wait_gone "$writer" || fail "the writer did not stop"
  wait "$writer" || status=$?
  [ "$status" -ne 0 ] || fail "durability=$mode: the writer did not fail"

  start_nbdkit "${args[@]}"
  ctl list
  [ "$(ctl --json info s1 | "$PYTHON" -c 'import json, sys
print(json.load(sys.stdin)["snapshot"]["state"])')" = live ] ||
    fail "durability=$mode: s1 is not live after the restart"
  check "after kill -9 and a restart"

  head -c "$size" /dev/urandom > "$tmpdir/new.img"
  timeout 60 nbdcopy "$tmpdir/new.img" "$uri"
  cmp "$img" "$tmpdir/new.img" || fail "the origin lacks the new bytes"
  check "after a full overwrite following the restart"
  stop_nbdkit
done
