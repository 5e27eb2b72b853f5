#!/usr/bin/env bash
# nbdsnap test: the admin loop out of file descriptors (issue 7, case 5).
# nbdkit runs with RLIMIT_NOFILE 64:64 (admin connections are then capped
# at 16, a quarter of the limit).  NBD clients take nbdkit's descriptors
# until fewer than 10 are free, then 24 admin connections are opened:
# the first few are served, the rest stay queued because accept fails
# with EMFILE.  While they are held, nbdkit must not spin (its CPU time
# over 2 s, from /proc/PID/stat, stays far below what a busy loop burns),
# its log must not grow (the failure burst is logged once), and the NBD
# clients keep working.  When the sockets close, the queued admin
# connections are served, "nbdsnapctl list" works, "stats" counted the
# failures, and a new NBD client (nbdinfo) connects.
source "${abs_top_builddir:?}/tests/functions.sh"
requires prlimit --version
requires "$PYTHON" -c 'import nbd'
requires nbdinfo --version

img="$tmpdir/disk.img"
truncate -s 16M "$img"
printf 'origin bytes' | dd of="$img" conv=notrunc status=none

# The snapshot is taken first, with the usual limit: under 64 descriptors
# create refuses (snapshots must leave the admin loop's and the clients'
# descriptors), but a directory that holds one starts, with a warning.
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s >/dev/null
stop_nbdkit

# This test is about accept failing (EMFILE): the reserve the admin loop
# keeps for NBD clients (ADMIN_FDS_KEEP, test-admin-fd-prlimit.sh) would
# refuse the admin connections before that, so there is none here.
nbdkit_wrapper=(prlimit --nofile=64:64)
nbdkit_opts=(-D nbdsnap.admin_fd_keep=-1)
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
pid=$(cat "$tmpdir/nbdkit.pid")
grep -E -q '^Max open files +64 +64 ' "/proc/$pid/limits" ||
  fail "nbdkit does not run with RLIMIT_NOFILE 64:64: $(grep 'open files' \
        "/proc/$pid/limits")"
grep -q 'starting all the same' "$nbdkit_log" ||
  fail "no warning that the snapshot eats into the descriptors kept"
ctl --json stats > "$tmpdir/stats.json"
grep -q '"connection_limit":16' "$tmpdir/stats.json" ||
  fail "admin connection limit is not 16 under 64 descriptors:" \
       "$(cat "$tmpdir/stats.json")"

# holder.py PID NBDSOCK ADMINSOCK: fill nbdkit's descriptors, hold them,
# print "holding NBD ADMIN_SERVED ADMIN_QUEUED NBDKIT_FDS", wait for a line
# on stdin, check the NBD clients still read, close everything, print
# "closed".
cat > "$tmpdir/holder.py" <<'PY'
import nbd, os, socket, sys, time
pid, nbdsock, adminsock = sys.argv[1:4]
LIMIT = 64

def used():
    # Slots below the limit in use (descriptors nbdkit inherited above
    # the limit stay open but take none).
    return sum(int(fd) < LIMIT for fd in os.listdir("/proc/%s/fd" % pid))

def settle(before):
    # Wait until nbdkit has taken the descriptors of a new connection.
    end = time.monotonic() + 5
    while used() <= before and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.05)

clients = []
while LIMIT - used() >= 10 and len(clients) < 64:
    before = used()
    h = nbd.NBD()
    h.connect_unix(nbdsock)
    clients.append(h)
    settle(before)
assert LIMIT - used() < 10, "nbdkit still has %d free" % (LIMIT - used())

admins = []
for i in range(24):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(adminsock)          # queued by the kernel if not accepted
    s.sendall(b"hello\n")
    admins.append(s)
served = queued = 0
time.sleep(0.5)
for s in admins:
    s.settimeout(0.2)
    try:
        served += b'"ok":true' in s.recv(4096)
    except socket.timeout:
        queued += 1
print("holding", len(clients), served, queued, used(), flush=True)

sys.stdin.readline()
for h in clients:
    assert h.pread(12, 0) == b"origin bytes"
for s in admins:
    s.close()
for h in clients:
    h.shutdown()
del clients
print("closed", flush=True)
sys.stdin.read()                # until the test closes our stdin
PY

cpu_ticks ()
{
  # utime + stime of the whole process (fields 14 and 15; the command
  # name in field 2 has no spaces here).
  awk '{ print $14 + $15 }' "/proc/$pid/stat"
}

coproc HOLDER { exec "$PYTHON" "$tmpdir/holder.py" "$pid" "$sock" \
                  "$tmpdir/admin.sock"; }
holder_pid=$HOLDER_PID
cleanup_fn quiet_kill "$holder_pid"
read -r -t 60 word nbd_clients served queued fds <&"${HOLDER[0]}" ||
  fail "the holder did not start"
[ "$word" = holding ] || fail "the holder: $word $nbd_clients $served"
echo "$nbd_clients NBD clients; admin connections: $served served," \
     "$queued queued; nbdkit uses $fds of its 64 descriptors"
[ "$queued" -gt 0 ] ||
  fail "no admin connection is waiting: accept never failed"
# Served ones are below the cap: the queued ones wait for descriptors.
[ "$served" -lt 16 ] || fail "$served admin connections were served"

log_before=$(stat -c %s "$nbdkit_log")
t0=$(cpu_ticks)
sleep 2
t1=$(cpu_ticks)
hz=$(getconf CLK_TCK)
log_after=$(stat -c %s "$nbdkit_log")
echo "nbdkit used $(( t1 - t0 )) ticks of CPU (at $hz Hz) in 2 s;" \
     "its log grew by $(( log_after - log_before )) bytes"
# A spinning accept loop burns about 2 s of CPU in 2 s; retrying every
# 100 ms costs microseconds.  Allow a quarter of a second.
[ $(( (t1 - t0) * 4 )) -lt "$hz" ] ||
  fail "nbdkit used $(( t1 - t0 )) ticks of CPU in 2 s while accept failed"
[ $(( log_after - log_before )) -lt 4096 ] ||
  fail "the log grew by $(( log_after - log_before )) bytes in 2 s"
n=$(grep -c 'admin: accept: ' "$nbdkit_log" || :)
[ "$n" -eq 1 ] || fail "the accept failure was logged $n times, not once"

echo close >&"${HOLDER[1]}"
read -r -t 60 reply <&"${HOLDER[0]}" || fail "the holder did not finish"
[ "$reply" = closed ] || fail "the holder: $reply"
holder_in=${HOLDER[1]}
exec {holder_in}>&-
wait "$holder_pid" || fail "the holder failed"

until_ok 10 ctl list >/dev/null || fail "ctl list fails after the burst"
ctl --json stats > "$tmpdir/stats.json"
grep -q '"accept_paused":false' "$tmpdir/stats.json" &&
  grep -q '"accept_errors":[1-9]' "$tmpdir/stats.json" ||
  fail "stats after the burst: $(cat "$tmpdir/stats.json")"
timeout 60 nbdinfo "nbd+unix:///s?socket=$sock" > "$tmpdir/info" ||
  fail "nbdinfo cannot connect after the burst"
grep -q 'description: snapshot s' "$tmpdir/info" ||
  { cat "$tmpdir/info"; fail "nbdinfo: wrong export"; }
stop_nbdkit
