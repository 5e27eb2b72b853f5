#!/usr/bin/env bash
# nbdsnap test: what "run" and "hold NAME -- CMD" start does not outlive
# them.
#  - nbdsnapctl run killed with SIGKILL: its command, and what the
#    command started (a grandchild in the same process group), are gone
#    within a second; the temporary snapshot is gone.
#  - The server killed (SIGKILL) while "hold NAME -- CMD" and "run" run:
#    CMD and its children are killed and nbdsnapctl exits 3 (the hold is
#    lost), with --json one error object on stdout.
source "${abs_top_builddir:?}/tests/functions.sh"

img="$tmpdir/disk.img"
truncate -s 1M "$img"
args=("$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock")
start_nbdkit "${args[@]}"

# alive PID: running (a zombie is dead: where PID 1 does not reap, the
# orphans stay zombies).
alive ()
{
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# gone PID...: every PID gone within a second.
gone ()
{
  local i p
  for (( i = 0; i < 20; i++ )); do
    for p in "$@"; do alive "$p" && break; p=; done
    [ -z "$p" ] && return 0
    sleep 0.05
  done
  ps -o pid,pgid,ppid,stat,args -p "$*" || :
  return 1
}

# start_cmd OUT ARGS...: nbdsnapctl ARGS in the background, with a CMD
# that records its pid and a grandchild's in OUT.pids, then waits.
cmd=(sh -c 'sleep 1000 & echo "$$ $!" > "$0"; wait' )
start_ctl ()
{
  local out=$1
  shift
  rm -f "$out.pids"
  "$nbdsnapctl" -s "$tmpdir/admin.sock" "$@" -- "${cmd[@]}" "$out.pids" \
    > "$out" 2> "$out.err" &
  ctlpid=$!
  until_ok 10 test -s "$out.pids"
  read -r child grandchild < "$out.pids"
}

# 1. nbdsnapctl run killed with SIGKILL.
start_ctl "$tmpdir/run1" run --snapshot t1
ctl list -H -o name | grep -qx t1 || fail "no temporary snapshot t1"
kill -9 "$ctlpid"
wait "$ctlpid" 2>/dev/null || :
gone "$child" "$grandchild" ||
  fail "run killed with SIGKILL: its command ($child) or its child" \
       "($grandchild) is still running"
until_ok 10 sh -c '! "$0" -s "$1" list -H -o name | grep -qx t1' \
  "$nbdsnapctl" "$tmpdir/admin.sock" ||
  fail "the temporary snapshot outlived run"

# The same for hold NAME -- CMD.
ctl create s1 > /dev/null
start_ctl "$tmpdir/hold1" hold s1
kill -9 "$ctlpid"
wait "$ctlpid" 2>/dev/null || :
gone "$child" "$grandchild" || fail "hold -- CMD killed: CMD left running"

# 2. The server goes away while CMD runs.
for what in "hold s1" "run --snapshot t2"; do
  start_ctl "$tmpdir/lost" --json $what
  kill9_nbdkit
  status=0
  for (( i = 0; i < 200; i++ )); do
    kill -0 "$ctlpid" 2>/dev/null || break
    sleep 0.05
  done
  wait "$ctlpid" || status=$?
  cat "$tmpdir/lost.err"
  [ "$status" -eq 3 ] || fail "$what: server gone: exit $status, not 3"
  gone "$child" "$grandchild" || fail "$what: server gone: CMD left running"
  grep -q 'hold is lost' "$tmpdir/lost.err" || fail "$what: no message"
  "$PYTHON" -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
o = json.loads(lines[-1])
assert o["ok"] is False and o["error"] == "unreachable", o
' "$tmpdir/lost" || fail "$what: no JSON error object"
  start_nbdkit "${args[@]}"
done

# 3. A normal end still passes CMD's status through, and what CMD left in
# the background is left alone (as before).
status=0
ctl run --snapshot t3 -- sh -c 'sleep 1000 & echo $! > "$0"; exit 42' \
  "$tmpdir/bg.pid" || status=$?
[ "$status" -eq 42 ] || fail "run: exit $status, not CMD's 42"
sleep 0.3
alive "$(cat "$tmpdir/bg.pid")" || fail "a normal end killed CMD's background job"
kill "$(cat "$tmpdir/bg.pid")"
