#!/usr/bin/env bash
# nbdsnap test: temporary snapshots and deferred deletes do not outlive
# the server.  With a temporary snapshot t1 (its owner, "nbdsnapctl create
# --temporary", still running), a snapshot d1 deleted with --defer while an
# NBD client reads it, and a plain snapshot p1, nbdkit is stopped - once
# with SIGTERM (the reader disconnecting only then), once with SIGKILL -
# and started again on the same state
# directory: t1 and d1 are gone (not listed, not exported, no files), p1 is
# listed and byte-exact.  The owner of t1 notices that the server went away
# (exit 3).
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

listed () { ctl --json list | grep -q "\"name\":\"$1\""; }

img="$tmpdir/disk.img"
size=$(( 1024 * 1024 + 4096 ))
args=("$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock")

for how in term kill; do
  rm -rf "$tmpdir/state" "$tmpdir"/*.fifo "$tmpdir"/*.out
  head -c "$size" /dev/urandom > "$img"
  cp "$img" "$tmpdir/at-p1.img"
  start_nbdkit "${args[@]}"
  ctl create p1 >/dev/null
  ctl create d1 >/dev/null

  mkfifo "$tmpdir/t1.fifo"
  "$nbdsnapctl" -s "$tmpdir/admin.sock" create --temporary t1 \
    < "$tmpdir/t1.fifo" > "$tmpdir/t1.out" 2>&1 &
  owner=$!
  cleanup_fn quiet_kill "$owner"
  exec {fd}> "$tmpdir/t1.fifo"
  for (( i = 0; i < 300; i++ )); do listed t1 && break; sleep 0.05; done
  listed t1 || fail "t1 was not created"

  # A reader keeps d1 open across its deferred delete.
  mkfifo "$tmpdir/reader.fifo"
  "$PYTHON" -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pread(4096, 0)
print("connected", flush=True)
sys.stdin.read()
' "nbd+unix:///d1?socket=$sock" < "$tmpdir/reader.fifo" \
    > "$tmpdir/reader.out" 2>&1 {fd}>&- &
  reader=$!
  cleanup_fn quiet_kill "$reader"
  exec {rfd}> "$tmpdir/reader.fifo"
  for (( i = 0; i < 300; i++ )); do
    grep -q connected "$tmpdir/reader.out" && break
    sleep 0.05
  done
  grep -q connected "$tmpdir/reader.out" || fail "the reader did not connect"
  ctl --json delete --defer d1 | grep -q '"deferred":true' ||
    fail "d1 was not deferred"
  [ "$(ls "$tmpdir/state" | grep -c '\.store$')" -eq 3 ]

  # nbdkit waits for connected clients before it exits on SIGTERM: let
  # the reader go once nbdkit was told to stop.
  if [ "$how" = term ]; then
    kill "$(cat "$tmpdir/nbdkit.pid")"
    exec {rfd}>&-
    stop_nbdkit
  else
    kill9_nbdkit
    exec {rfd}>&-
  fi
  status=0
  for (( i = 0; i < 300; i++ )); do
    kill -0 "$owner" 2>/dev/null || break
    sleep 0.05
  done
  wait "$owner" || status=$?
  cat "$tmpdir/t1.out"
  [ "$status" -eq 3 ] || fail "$how: the owner of t1 exited $status, not 3"
  exec {fd}>&-
  wait "$reader" || :

  start_nbdkit "${args[@]}"
  ctl --json list | "$PYTHON" -c '
import json, sys
names = [s["name"] for s in json.load(sys.stdin)["snapshots"]]
assert names == ["p1"], "after a restart (%s): %r" % (sys.argv[1], names)
' "$how"
  timeout 60 nbdinfo --list "$uri" > "$tmpdir/list" ||
    fail "$how: nbdinfo --list failed"
  ! grep -q '^export="\(t1\|d1\)"' "$tmpdir/list" ||
    fail "$how: t1 or d1 is exported after the restart"
  [ "$(ls "$tmpdir/state" | grep -c '\.store$')" -eq 1 ] ||
    { ls -l "$tmpdir/state"; fail "$how: files of t1 or d1 are left"; }
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///p1?socket=$sock" "$tmpdir/got.img"
  [ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-p1.img")" ] ||
    fail "$how: p1 is not its instant"
  stop_nbdkit
done
