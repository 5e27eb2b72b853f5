#!/usr/bin/env bash
# nbdsnap test (issue 17): admin connections never take the descriptors NBD
# clients need, even when the limit is lowered while the server runs.
# nbdkit starts with the usual limit; then, as an administrator tightening
# a running service does, `prlimit --pid' lowers it to what is in use +
# 20 (with 30 snapshots open, so that a quarter of the new limit, the
# admin connection cap, is more than the descriptors left).  200 admin connections are opened and held: the admin loop accepts
# some and refuses the rest with "too many admin connections" (keeping 16
# descriptors free); a new NBD client still completes its handshake and
# reads, nbdkit does not spin or flood its log, "stats" counts the
# refusals, and once the admin connections close nbdsnapctl works again.
source "${abs_top_builddir:?}/tests/functions.sh"
requires prlimit --version
requires "$PYTHON" -c 'import nbd'

img="$tmpdir/disk.img"
truncate -s 16M "$img"
printf 'origin bytes' | dd of="$img" conv=notrunc status=none
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s >/dev/null
for i in $(seq 1 30); do ctl create "s$i" >/dev/null; done
pid=$(cat "$tmpdir/nbdkit.pid")
inuse=$(ls "/proc/$pid/fd" | wc -l)
limit=$(( inuse + 20 ))
hard=$(awk '/^Max open files/ { print $5 }' "/proc/$pid/limits")
prlimit --pid "$pid" --nofile="$limit:$hard"
echo "nbdkit has $inuse descriptors open; soft limit lowered to $limit"

# holder.py ADMINSOCK N: open N admin connections, say how many were
# served (answered hello) and refused (an error line, then EOF), hold the
# served ones until a line comes on stdin, then close them, say "closed"
# and wait for the end of stdin (so that the coprocess, and its
# descriptors in ${HOLDER[@]}, outlive the answer).
cat > "$tmpdir/holder.py" <<'PY'
import socket, sys, time
adminsock, n = sys.argv[1], int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(adminsock)
    s.sendall(b"hello\n")
    conns.append(s)
time.sleep(1)
served = refused = other = 0
for s in conns:
    s.settimeout(2)
    try:
        data = s.recv(4096)
    except socket.timeout:
        data = b""
    if b'"ok":true' in data:
        served += 1
    elif b'too many admin connections' in data:
        refused += 1
    else:
        other += 1
print("holding", served, refused, other, flush=True)
sys.stdin.readline()
for s in conns:
    s.close()
print("closed", flush=True)
sys.stdin.read()
PY
coproc HOLDER { exec "$PYTHON" "$tmpdir/holder.py" "$tmpdir/admin.sock" 200; }
holder_pid=$HOLDER_PID
cleanup_fn quiet_kill "$holder_pid"
read -r -t 60 word served refused other <&"${HOLDER[0]}" ||
  fail "the holder did not start"
[ "$word" = holding ] || fail "the holder: $word"
echo "admin connections: $served served, $refused refused, $other other;" \
     "nbdkit uses $(ls "/proc/$pid/fd" | wc -l) of $limit descriptors"
[ "$other" -eq 0 ] || fail "$other admin connections got no clear answer"
[ "$refused" -gt 0 ] || fail "no admin connection was refused"
[ "$served" -gt 0 ] || fail "no admin connection was served"

# A new NBD client gets its handshake and reads, promptly.
log_before=$(stat -c %s "$nbdkit_log")
timeout 10 "$PYTHON" -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(12, 0) == b"origin bytes"
h.shutdown()' "$uri" || fail "an NBD client cannot connect or read"
timeout 10 "$PYTHON" -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(12, 0) == b"origin bytes"
h.shutdown()' "nbd+unix:///s?socket=$sock" ||
  fail "an NBD client of the snapshot cannot connect or read"
sleep 1
log_after=$(stat -c %s "$nbdkit_log")
[ $(( log_after - log_before )) -lt 8192 ] ||
  fail "the log grew by $(( log_after - log_before )) bytes"

echo close >&"${HOLDER[1]}"
read -r -t 60 reply <&"${HOLDER[0]}" || fail "the holder did not finish"
[ "$reply" = closed ] || fail "the holder: $reply"
holder_in=${HOLDER[1]}
exec {holder_in}>&-
wait "$holder_pid" || fail "the holder failed"

until_ok 10 ctl list >/dev/null || fail "ctl list fails after the burst"
ctl --json stats > "$tmpdir/stats.json"
grep -q "\"descriptor_limit\":$limit" "$tmpdir/stats.json" &&
  grep -q '"refused_descriptors":[1-9]' "$tmpdir/stats.json" ||
  fail "stats: $(cat "$tmpdir/stats.json")"
n=$(grep -c 'short of\|descriptors free of the limit' "$nbdkit_log" || :)
[ "$n" -eq 1 ] || fail "the refusals were logged $n times, not once"
stop_nbdkit
