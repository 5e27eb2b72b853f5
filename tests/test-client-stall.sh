#!/usr/bin/env bash
# nbdsnap test (issue 17): clients that stop reading never block the
# others, and clients that go away in the middle of a reply never take
# the server down (tests/stall-client.py: raw sockets, nothing reads
# for them behind their back).  A 64 MiB image with 4K chunks, on
# /dev/shm; snapshot S, then 4K of new data every 8K of the origin,
# snapshot F ("changes S" is then 8192 extents: an answer of 380 KB,
# more than a socket buffer holds).
#
# (a) Three NBD clients each send 64 reads of 1 MiB at once (after a
#     newstyle handshake with NBD_OPT_GO) and read no reply: O on the
#     origin, S' on S, F' on F.  (b) Two admin clients each pipeline
#     4000 list/stats requests and read no answer.  Each staller is
#     checked to have replies waiting unread in its socket, and the
#     server to have stopped serving the admin stallers (fewer than
#     4000 requests served in all).  While all five stall, each within
#     its timeout (15 s for an NBD read of a whole export, 5 s for an
#     admin command): new NBD clients read the origin, S and F, every
#     byte right; create T, list, stats, hello, info, clients, holds
#     answer, and 40 list/stats on one admin connection in under 5 s; a
#     write to the origin lands and T keeps its instant; "delete --force
#     F" (F' stalled on F) answers and F is gone; "rollback --force T" (O
#     stalled on the origin) answers and the origin reads as T.  Then F'
#     reads its replies: each one F's bytes or an error (ESHUTDOWN:
#     revoked), never other bytes; S' reads all 64, S's bytes; one admin
#     staller reads its 4000 answers, all ok, in order; O and the other
#     admin staller are killed (SIGKILL) with replies still owed to them.
# (c) SIGPIPE: NBD clients that close their socket while a 32 MiB read
#     reply is being written (after 0, 16 + 4096 bytes, 1 MiB of it), on
#     the origin and on S; admin clients that close while "changes S"
#     or 2000 answers are being written; nbdsnapctl changes piped into
#     `head -c 100'.
# After each step nbdkit runs (not a zombie), answers list and stats
# within 5 s and its log has no assertion or sanitizer report; the
# exports are read after each part; at the end one admin connection
# (ours) and no NBD client are left, and nbdkit stops cleanly (exit 0).
#
# On nbdkit 1.32.4 to 1.33.9 the plugin's default thread model is
# serialize_requests (test-config-parallel.sh).  PARAMS adds plugin
# parameters: with PARAMS=parallel=on, Debian 12's nbdkit 1.32.5 aborts
# when O is killed ("raw_send_socket: Assertion `sock >= 0' failed") and
# this test fails.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

big_dir
M=$(( 1024 * 1024 ))
size=$(( 64 * M ))
img="$bigdir/disk.img"
model="$bigdir/model.img"           # what the origin holds
admin_sock="$tmpdir/admin.sock"
snap_uri () { echo "nbd+unix:///$1?socket=$tmpdir/nbd.sock"; }
stall=("$PYTHON" "$abs_top_srcdir/tests/stall-client.py")

head -c "$size" /dev/urandom > "$img"
cp "$img" "$model"
cp "$img" "$bigdir/at-S.img"
start_nbdkit "$img" statedir="$bigdir/state" admin="$admin_sock" \
  chunk-size=4K ${PARAMS:-}

# alive PID: running (kill -0 and not a zombie: nbdkit is our child,
# reaped only by stop_nbdkit).
alive ()
{
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# What the server's log must never hold: an assertion, an abort, a
# sanitizer's report, glibc's heap checks.
bad_log='Assertion|assertion|Aborted|AddressSanitizer|LeakSanitizer'
bad_log+='|runtime error:|SUMMARY:|double free|corrupted'

# quick ARGS...: nbdsnapctl, which must answer within 5 s.
quick ()
{
  timeout 5 "$nbdsnapctl" -s "$admin_sock" "$@"
}

# reads_as WHEN NAME FILE: the export NAME ("" the origin) reads FILE's
# bytes, all of them within 15 s (0.5 s when all is well; a client
# blocked behind a staller waits until the staller goes, for ever).
reads_as ()
{
  local got t0=$EPOCHREALTIME
  got=$(timeout 15 "$PYTHON" "$abs_top_srcdir/tests/bigimg.py" sha \
          "$(snap_uri "$2")") ||
    fail "$1: reading ${2:-the origin} failed or took over 15 s"
  [ "$got" = "$(sha "$3")" ] ||
    fail "$1: ${2:-the origin} does not read as $(basename "$3")"
  printf '%s: %s read in %.2f s\n' "$1" "${2:-the origin}" \
    "$(bc <<< "$EPOCHREALTIME - $t0")"
}

# server_up WHEN: nbdkit runs, answers at once, its log is clean.
server_up ()
{
  alive "$(cat "$tmpdir/nbdkit.pid")" || fail "$1: nbdkit is gone"
  quick list > /dev/null || fail "$1: list did not answer (exit $?)"
  quick stats > /dev/null || fail "$1: stats did not answer (exit $?)"
  if grep -E -n "$bad_log" "$nbdkit_log"; then
    fail "$1: the server's log has the report above"
  fi
}

ctl create S
# 4K of new data every 8K: 8192 changed extents since S.
"$PYTHON" - "$uri" "$model" <<'PY'
import nbd, os, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
fd = os.open(sys.argv[2], os.O_WRONLY)
size = h.get_size()
for off in range(0, size, 8192):
    b = os.urandom(4096)
    h.aio_pwrite(b, off)
    os.pwrite(fd, b, off)
    while h.aio_in_flight() >= 64:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
h.shutdown()
PY
cp "$model" "$bigdir/at-F.img"
ctl create F
changes_bytes=$(quick --json changes S | wc -c)
echo "changes S: $changes_bytes bytes"
[ "$changes_bytes" -gt $(( 256 * 1024 )) ] ||
  fail "changes S is only $changes_bytes bytes: not a big answer"
server_up "setup"

# staller NAME KIND ARGS...: stall-client.py KIND ARGS in the background
# (pid in pid_NAME, stdout in $tmpdir/NAME.out), its READY file
# $tmpdir/NAME.ready: waits until it says it stalls.
staller ()
{
  local name=$1 kind=$2
  shift 2
  rm -f "$tmpdir/$name.ready"
  "${stall[@]}" "$kind" "$@" > "$tmpdir/$name.out" 2> "$tmpdir/$name.err" &
  printf -v "pid_$name" %s $!
  cleanup_fn quiet_kill -9 $!
  until_ok 20 test -s "$tmpdir/$name.ready" ||
    fail "$name: did not stall: $(cat "$tmpdir/$name.err")"
  echo "$name: $(cat "$tmpdir/$name.ready")"
}

# drain NAME: SIGUSR1 to the staller: it reads what waits for it (within
# 30 s) and checks it.
drain ()
{
  local pid_var="pid_$1" status=0 i
  kill -USR1 "${!pid_var}"
  for (( i = 0; i < 300; i++ )); do
    kill -0 "${!pid_var}" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "${!pid_var}" 2>/dev/null &&
    fail "$1: still reading its replies 30 s later"
  wait "${!pid_var}" || status=$?
  cat "$tmpdir/$1.out" "$tmpdir/$1.err"
  [ "$status" -eq 0 ] || fail "$1: reading its replies failed (exit $status)"
}

# kill9 NAME: SIGKILL the staller (it must still be there).
kill9 ()
{
  local pid_var="pid_$1"
  kill -9 "${!pid_var}" || fail "$1: gone before it was killed"
  wait "${!pid_var}" 2>/dev/null || :
}

# (a), (b): five stallers.
staller O nbd "$tmpdir/nbd.sock" "" 64 "$M" "$tmpdir/O.ready"
staller Sr nbd "$tmpdir/nbd.sock" S 64 "$M" "$tmpdir/Sr.ready" \
  "$bigdir/at-S.img"
staller Fr nbd "$tmpdir/nbd.sock" F 64 "$M" "$tmpdir/Fr.ready" \
  "$bigdir/at-F.img"
staller A1 admin "$admin_sock" 4000 "$tmpdir/A1.ready"
staller A2 admin "$admin_sock" 4000 "$tmpdir/A2.ready"

server_up "stalled"
# The server stopped reading the admin stallers' requests once 64 KiB of
# answers waited: far fewer than their 8000 were served.
quick --json stats | "$PYTHON" -c '
import json, sys
n = json.load(sys.stdin)["admin"]["requests"]
print("admin requests served so far:", n)
assert n < 4000, "the stallers got %d answers computed" % n' ||
  fail "stalled: the server went on serving the admin stallers"
reads_as "stalled" "" "$model"
reads_as "stalled" S "$bigdir/at-S.img"
reads_as "stalled" F "$bigdir/at-F.img"
quick create T > /dev/null || fail "stalled: create T: exit $?"
cp "$model" "$bigdir/at-T.img"
for c in list stats hello "info S" clients holds; do
  quick $c > /dev/null || fail "stalled: $c: exit $?"
done
# 40 requests on one connection (no process start-up in the time).
t0=$EPOCHREALTIME
for (( i = 0; i < 20; i++ )); do echo list; echo stats; done |
  quick shell > "$tmpdir/shell.out" || fail "stalled: shell: exit $?"
t=$(bc <<< "$EPOCHREALTIME - $t0")
echo "stalled: 40 admin requests in $t s"
[ "$(grep -c '"ok":true' "$tmpdir/shell.out")" -eq 40 ] ||
  fail "stalled: shell: not 40 answers: $(head -c 500 "$tmpdir/shell.out")"
(( $(bc <<< "$t < 5") )) || fail "stalled: 40 admin requests took $t s"
timeout 15 "$PYTHON" "$abs_top_srcdir/tests/bigimg.py" ops "$uri" "$model" \
  "w:$(( 3 * M + 5 )):$M:7" || fail "stalled: a write to the origin failed"
reads_as "stalled, written" "" "$model"
reads_as "stalled, written" T "$bigdir/at-T.img"
quick delete --force F || fail "stalled: delete --force F: exit $?"
[ "$(snap_state F)" = gone ] || fail "stalled: F is still listed"
server_up "F deleted"
# O stalls on the origin: rollback --force revokes it and goes on.
quick rollback --force T || fail "stalled: rollback --force T: exit $?"
cp "$bigdir/at-T.img" "$model"
reads_as "rolled back" "" "$model"
server_up "rolled back"

drain Fr
grep -E -q \
  '^drained 64 replies, [0-9]+ errors (\{\}|\{"ESHUTDOWN": [0-9]+\})$' \
  "$tmpdir/Fr.out" || fail "Fr: errors other than ESHUTDOWN"
drain Sr
grep -q '^drained 64 replies, 0 errors' "$tmpdir/Sr.out" ||
  fail "Sr: a read of S failed"
drain A1
kill9 O
kill9 A2
sleep 0.2
server_up "stallers gone"
reads_as "stallers gone" "" "$model"
reads_as "stallers gone" S "$bigdir/at-S.img"
reads_as "stallers gone" T "$bigdir/at-T.img"

# (c) Gone in the middle of a reply.
for exp in "" S; do
  for keep in 0 $(( 16 + 4096 )) "$M"; do
    "${stall[@]}" nbd-close "$tmpdir/nbd.sock" "$exp" $(( 32 * M )) "$keep" ||
      fail "nbd-close ${exp:-origin} $keep: the client failed"
    server_up "NBD client closed after $keep bytes of a 32 MiB reply"
  done
done
for keep in 0 1000; do
  "${stall[@]}" admin-close "$admin_sock" "$keep" "changes S" ||
    fail "admin-close changes S: the client failed"
  server_up "admin client closed after $keep bytes of changes S"
done
reqs=()
for (( i = 0; i < 1000; i++ )); do reqs+=(list stats); done
"${stall[@]}" admin-close "$admin_sock" 100 "${reqs[@]}" ||
  fail "admin-close: 2000 requests: the client failed"
server_up "admin client closed with 2000 answers owed"
"$nbdsnapctl" -s "$admin_sock" changes S | head -c 100 > /dev/null
echo "nbdsnapctl changes S | head -c 100: nbdsnapctl exit ${PIPESTATUS[0]}"
server_up "nbdsnapctl changes piped into head"
reads_as "(c)" "" "$model"
reads_as "(c)" S "$bigdir/at-S.img"
quick --json stats | "$PYTHON" -c '
import json, sys
a = json.load(sys.stdin)["admin"]
print("admin stats:", json.dumps(a))
assert a["connections"] == 1, "admin connections left: %r" % a'
quick --json clients

stop_nbdkit
if grep -E -n "$bad_log" "$nbdkit_log"; then
  fail "the stop: the server's log has the report above"
fi
