#!/usr/bin/env bash
# nbdsnap test (issue 17): an admin client (nbdsnapctl) killed with
# SIGKILL in the middle of its job never takes the server down, never
# leaves it unable to answer, and never makes a snapshot read wrong
# bytes.  One server, 256 MiB of data on /dev/shm, 4K chunks (rollback
# and delete have 65536 chunks to move: long enough to be caught in the
# middle); snapshots s0 and s1 of that data, the whole origin
# overwritten, snapshot s2.  An NBD client reading s0 stays connected
# from the start to the restart.  nbdsnapctl is killed in the middle
# of, in turn:
#
#  1. backup s2 DEST, once a --json progress object says 0 < done <
#     total (the rate filter slows NBD to 8 MiB/s for this one);
#  2. send --from s1 s2 > FILE, once FILE has 8 MiB (same rate);
#  3. receive of an incremental stream s2 -> r1 (32 'w' records of 1 MiB)
#     from a slow pipe (the generator here writes ~16 records a second),
#     once 12 records went into the pipe;
#  4. rollback s1 (256 MiB to write back) with --json (progress asked
#     for), as soon as `list', asked over and over, shows it running;
#  5. delete s1, the middle snapshot (all its 256 MiB of copies move into
#     s0), the same way.
#
# Each kill must find nbdsnapctl still running (exit 137, no final answer
# printed), and for 4 and 5 `list' right after the kill must still show
# the job with done < total: the client died in the middle of it (the
# server finds it gone when it next writes to it: the next progress
# line, 0.25 s later).  After each kill: nbdkit runs (not a zombie),
# list and stats answer within 5 s, the reader of s0 reads s0's
# instant, the server's log has no assertion or sanitizer report, every
# snapshot reads its instant (sha of the origin when it was made) and
# `--json list' shows exactly the snapshots the man page says must be
# there (info of a deleted one: exit 5), with no hold left.  Then a
# clean restart on the same state directory and the same checks.
#
# What happens to a job whose admin client died (nbdsnapctl(1)), as
# observed here:
#  - backup, send: copies made by nbdsnapctl itself; the server only
#    holds their snapshots for the admin connection and releases the
#    holds when it closes.  DEST / the stream file is left partial;
#    backup run again with the same arguments completes DEST (documented:
#    "Interrupted ... finishes correctly when run again").
#  - receive: also nbdsnapctl's own.  SIGKILL leaves it no chance to undo
#    (SIGINT, SIGTERM, SIGHUP and a bad stream roll the origin back; this
#    is not said for SIGKILL, and cannot be): the origin is left partly
#    written - every 4K block is s2's or the stream's, never anything
#    else - r1 is not created, s2's hold is released and s2 keeps its
#    instant.  Nothing in list shows it; the same stream again is
#    refused (exit 1, "rollback s2" first) as documented, since the
#    origin no longer reads as s2; after "rollback s2" it is received.
#  - rollback, delete: server jobs.  "If a connection closes while such
#    a request runs, the request still runs to its end": the rollback
#    goes on and the origin ends as s1; the delete goes on and s1 is
#    gone, s0 holding its moved chunks (read whole by the reader of s0
#    right after the kill, while the move goes on, and after).
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires nbdcopy --version
filterdir=$("$NBDKIT" --dump-config | sed -n 's/^filterdir=//p')
requires test -f "$filterdir/nbdkit-rate-filter.so"

big_dir
M=$(( 1024 * 1024 ))
size=$(( 256 * M ))
img="$bigdir/disk.img"
model="$bigdir/model.img"          # what s2 (the second data) holds
dest="$bigdir/backup.img"
stream="$bigdir/send.stream"
snap_uri () { echo "nbd+unix:///$1?socket=$tmpdir/nbd.sock"; }

source "$abs_top_srcdir/tests/backup.sh"        # rate, mid_copy, holds

head -c "$size" /dev/urandom > "$img"
sha0=$(sha "$img")
sha0_head=$(head -c $(( 64 * M )) "$img" | sha256sum | cut -d' ' -f1)
head -c "$size" /dev/urandom > "$model"
sha2=$(sha "$model")
echo 100G > "$tmpdir/rate"
# Deletes and rollbacks are slowed (2 ms per 64 chunks: about 2 s for
# 256 MiB) so that the kill lands in the middle however fast the machine.
nbdkit_opts=(--filter=rate -D nbdsnap.job_delay_ms=2)
args=("$img" statedir="$bigdir/state" admin="$tmpdir/admin.sock"
      chunk-size=4K rate-file="$tmpdir/rate" burstiness=0.2)
start_nbdkit "${args[@]}"

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
  timeout 5 "$nbdsnapctl" -s "$tmpdir/admin.sock" "$@"
}

# log_clean WHEN: no assertion, abort or sanitizer report in the log.
log_clean ()
{
  if grep -E -n "$bad_log" "$nbdkit_log"; then
    fail "$1: the server's log has the report above"
  fi
}

# server_up WHEN [head]: nbdkit runs, answers list and stats at once, the
# reader of s0 reads s0's instant (with "head" its first 64 MiB only: the
# jobs that write nothing in the server), its log is clean.
server_up ()
{
  alive "$(cat "$tmpdir/nbdkit.pid")" || fail "$1: nbdkit is gone"
  quick list > /dev/null || fail "$1: list did not answer (exit $?)"
  quick stats > /dev/null || fail "$1: stats did not answer (exit $?)"
  if [ "${2:-}" = head ]; then
    ask "sha $(( 64 * M ))"
    [ "$reply" = "sha $sha0_head" ] ||
      fail "$1: the reader of s0 got '$reply', not s0's instant"
  else
    ask sha
    [ "$reply" = "sha $sha0" ] ||
      fail "$1: the reader of s0 got '$reply', not s0's instant"
  fi
  log_clean "$1"
}

# snaps_are WHEN WANT: `--json list' shows exactly WANT ("s0:live ...",
# oldest first), with no hold, no job figure left.
snaps_are ()
{
  local got
  got=$(quick --json list | "$PYTHON" -c '
import json, sys
ss = json.load(sys.stdin)["snapshots"]
for s in ss:
    assert s["holds"] == 0, "a hold is left: %r" % s
    assert "rollback" not in s and "progress" not in s, \
        "a job figure is left: %r" % s
print(" ".join("%s:%s" % (s["name"], s["state"]) for s in ss))') ||
    fail "$1: list: no answer or a hold or job left (above)"
  [ "$got" = "$2" ] || fail "$1: list shows '$got', not '$2'"
}

# reads_as WHEN NAME SHA [NAME SHA]...: each snapshot NAME (or "" the
# origin) reads SHA (one reader for all: a python start-up costs here).
reads_as ()
{
  local when=$1
  shift
  timeout 120 "$PYTHON" - "$sock" "$@" <<'PY' || fail "$when: (above)"
import hashlib, nbd, sys
sock, args = sys.argv[1], sys.argv[2:]
bad = []
for name, want in zip(args[0::2], args[1::2]):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    d, size, off = hashlib.sha256(), h.get_size(), 0
    while off < size:
        n = min(4 << 20, size - off)
        d.update(h.pread(n, off))
        off += n
    h.shutdown()
    if d.hexdigest() != want:
        bad.append("%s reads %s, not its instant %s"
                   % (name or "the origin", d.hexdigest(), want))
if bad:
    sys.exit("\n".join(bad))
PY
}

# jobs_idle: no server job runs any more.
jobs_idle ()
{
  quick --json stats | "$PYTHON" -c '
import json, sys
sys.exit(json.load(sys.stdin)["admin"]["jobs_running"] != 0)'
}

# kill_mid OUT COND ARGS...: nbdsnapctl ARGS in the background (stdout in
# OUT), SIGKILLed as soon as the command COND (OUT appended) succeeds; it
# must still have been running, without its final answer.
kill_mid ()
{
  local out=$1 cond=$2 pid status=0
  shift 2
  "$nbdsnapctl" -s "$tmpdir/admin.sock" "$@" > "$out" 2> "$out.err" &
  pid=$!
  if ! until_ok 30 $cond "$out"; then
    quiet_kill -9 "$pid"
    fail "$*: never seen in the middle: $(tail -c 300 "$out"; cat "$out.err")"
  fi
  kill -9 "$pid"
  wait "$pid" || status=$?
  [ "$status" -eq 137 ] ||
    fail "$*: exit $status: it had ended before the kill"
  ! grep -q '"ok":' "$out" ||
    fail "$*: it had its final answer before the kill"
  echo "killed: nbdsnapctl $*"
}

size_at_least () { [ "$(stat -c %s "$2")" -ge "$1" ]; }

# no_holds NAME...: no connection hold on any of them (asked each time).
no_holds ()
{
  local n
  for n; do
    [ "$(holds "$n")" -eq 0 ] || return 1
  done
}

ctl create s0
start_client "$(snap_uri s0)"
ctl create s1
nbdcopy --flush "$model" "$uri" || fail "nbdcopy to the origin failed"
ctl create s2
server_up "setup"

# 1. backup.
rate 64M
kill_mid "$tmpdir/backup.json" mid_copy --json backup s2 "$dest"
rate 100G
server_up "backup killed" head
until_ok 10 no_holds s2 ||
  fail "backup killed: its hold on s2 was not released"
[ "$(sha "$dest")" != "$sha2" ] ||
  fail "backup killed: DEST was already complete"
snaps_are "backup killed" "s0:live s1:live s2:live"
ctl backup s2 "$dest" || fail "backup again: exit $?"
[ "$(sha "$dest")" = "$sha2" ] || fail "backup again: DEST is not s2"
rm -f "$dest"

# 2. send.
rate 64M
kill_mid "$stream" "size_at_least $(( 8 * M ))" send --from s1 s2
rate 100G
server_up "send killed" head
until_ok 10 no_holds s1 s2 ||
  fail "send killed: its holds on s1 and s2 were not released"
[ "$(stat -c %s "$stream")" -lt "$size" ] ||
  fail "send killed: the stream was already complete"
rm -f "$stream"
snaps_are "send killed" "s0:live s1:live s2:live"
reads_as "send killed" s1 "$sha0" s2 "$sha2"

# 3. receive.  gen_stream PACE PROGRESS: an incremental stream s2 -> r1,
# 32 records of 1 MiB of data at every other MiB of the first 64 MiB
# (seeded), PACE seconds apart, the count of records written so far in
# the file PROGRESS.
nrec=32
gen_stream ()
{
  "$PYTHON" - "$size" "$nrec" "$1" "$2" <<'PY'
import os, random, struct, sys, time
size, nrec, pace, prog = int(sys.argv[1]), int(sys.argv[2]), \
    float(sys.argv[3]), sys.argv[4]
M = 1 << 20
out = sys.stdout.buffer
name = lambda tag, s: tag + struct.pack("<I", len(s)) + s.encode()
try:
    out.write(b"rbd diff v1\n" + name(b"f", "s2") + name(b"t", "r1")
              + b"s" + struct.pack("<Q", size))
    for i in range(nrec):
        data = random.Random(1000 + i).randbytes(M)
        out.write(b"w" + struct.pack("<QQ", 2 * i * M, M) + data)
        out.flush()
        open(prog, "w").write("%d\n" % (i + 1))
        time.sleep(pace)
    out.write(b"e")
    out.flush()
except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)   # no noise at exit
PY
}

# stream_check URI MODE: MODE "partial": every 4K block of URI is s2's or
# the stream's, some of the stream's landed and not all; "whole": URI
# reads s2 with the whole stream applied.  Prints how many blocks are the
# stream's, and the sha256 of URI.
stream_check ()
{
  timeout 60 "$PYTHON" - "$1" "$2" "$model" "$nrec" <<'PY'
import hashlib, nbd, random, sys
uri, mode, model, nrec = sys.argv[1], sys.argv[2], sys.argv[3], \
    int(sys.argv[4])
M, B = 1 << 20, 4096
h = nbd.NBD()
h.connect_uri(uri)
f = open(model, "rb")
new_blocks = total = 0
d = hashlib.sha256()
for mib in range(h.get_size() // M):
    old = f.read(M)
    got = h.pread(M, mib * M)
    d.update(got)
    new = None
    if mib % 2 == 0 and mib // 2 < nrec:
        new = random.Random(1000 + mib // 2).randbytes(M)
        total += M // B
    if got == old and new is None:
        continue
    for b in range(0, M, B):
        g = got[b:b + B]
        if new is not None and g == new[b:b + B]:
            new_blocks += 1
        elif g != old[b:b + B]:
            sys.exit("%s: at %d: neither s2's bytes nor the stream's"
                     % (mode, mib * M + b))
        elif mode == "whole" and new is not None:
            sys.exit("whole: at %d: s2's bytes, not the stream's"
                     % (mib * M + b))
h.shutdown()
if mode == "partial" and not 0 < new_blocks < total:
    sys.exit("partial: %d of the stream's %d blocks landed" %
             (new_blocks, total))
print("%s: %d of the stream's %d blocks, sha %s"
      % (mode, new_blocks, total, d.hexdigest()))
PY
}

rm -f "$tmpdir/gen.prog"
gen_stream 0.06 "$tmpdir/gen.prog" |
  "$nbdsnapctl" -s "$tmpdir/admin.sock" receive > "$tmpdir/receive.out" \
    2> "$tmpdir/receive.err" &
recv_pid=$!
until_ok 30 sh -c 'test "$(cat "$0" 2>/dev/null || echo 0)" -ge 12' \
  "$tmpdir/gen.prog" || fail "receive: the stream did not flow"
kill -9 "$recv_pid"
status=0
wait "$recv_pid" || status=$?
cat "$tmpdir/receive.out" "$tmpdir/receive.err"
[ "$status" -eq 137 ] || fail "receive: exit $status: it had ended"
echo "killed: nbdsnapctl receive"
server_up "receive killed" head
until_ok 10 no_holds s2 ||
  fail "receive killed: its hold on s2 was not released"
snaps_are "receive killed" "s0:live s1:live s2:live"
stream_check "$uri" partial || fail "receive killed: the origin is wrong"
reads_as "receive killed" s2 "$sha2" s1 "$sha0"
# Nothing says the origin is partly written but receive itself: the same
# stream again is refused (exit 1) as documented, since the origin no
# longer reads as s2, and the message says to roll back.
status=0
gen_stream 0 /dev/null | ctl receive > "$tmpdir/out" 2> "$tmpdir/err" ||
  status=$?
cat "$tmpdir/out" "$tmpdir/err"
[ "$status" -eq 1 ] && grep -q 'rollback s2' "$tmpdir/err" ||
  fail "receive over a partly written origin: exit $status, not 1 with" \
       "'rollback s2'"
snaps_are "receive refused" "s0:live s1:live s2:live"
# The documented repair, then the same stream, whole, is received.
ctl rollback s2
reads_as "rollback s2" "" "$sha2"
gen_stream 0 /dev/null | ctl receive || fail "receive, whole: exit $?"
stream_check "$(snap_uri r1)" whole > "$tmpdir/r1.check" ||
  fail "r1 is not the stream's instant"
cat "$tmpdir/r1.check"
sha_r1=$(sed -n 's/.*, sha //p' "$tmpdir/r1.check")
reads_as "receive, whole" "" "$sha_r1"
snaps_are "receive whole" "s0:live s1:live s2:live r1:live"

# kill_job WHEN KIND NAME: nbdsnapctl --json KIND NAME (rollback or
# delete: progress asked for), SIGKILLed as soon as `list', asked over
# and over on a connection of our own, shows the job (rollback: NAME's
# "rollback" figure; delete: NAME deleting, with "progress") with done <
# total.  Once it is reaped (its admin connection closed), the next
# `list' must still show the job with done < total, and nbdsnapctl must
# not have had its final answer: the client died in the middle of the
# job.  All in one process, polling without a pause: on an idle machine
# the delete lasts under half a second.
kill_job ()
{
  timeout 60 "$PYTHON" - "$nbdsnapctl" "$tmpdir/admin.sock" "$2" "$3" \
    <<'PY' || fail "$1: (above)"
import json, os, signal, socket, subprocess, sys, time
ctl, sock, kind, name = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
f = s.makefile("rb")

def figure():
    s.sendall(b"list\n")
    snaps = json.loads(f.readline())["snapshots"]
    x = [x for x in snaps if x["name"] == name]
    if not x:
        return None, "%s is gone" % name
    fig = x[0].get("rollback" if kind == "rollback" else "progress")
    return fig, json.dumps(x[0])

p = subprocess.Popen([ctl, "-s", sock, "--json", kind, name],
                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
deadline = time.time() + 30
while True:
    fig, seen = figure()
    if fig and fig["done"] < fig["total"]:
        break
    if p.poll() is not None or time.time() > deadline:
        sys.exit("%s %s: never seen running; exit %s; last list: %s"
                 % (kind, name, p.poll(), seen))
os.kill(p.pid, signal.SIGKILL)
status = p.wait()
out = p.stdout.read().decode()
print("killed: nbdsnapctl --json %s %s at %r" % (kind, name, fig))
assert status == -signal.SIGKILL, "exit %r: not killed" % status
assert '"ok"' not in out, "it had its final answer: %s" % out
fig, seen = figure()
print("then list: %s" % seen)
if not (fig and fig["done"] < fig["total"]):
    sys.exit("%s %s: the job was over when its client had died"
             % (kind, name))
PY
}

# 4. rollback s1: 256 MiB to write back.
kill_job "rollback killed" rollback s1
server_up "rollback killed (its job still running)"
until_ok 60 jobs_idle || fail "rollback killed: the job never ended"
server_up "rollback killed"
snaps_are "rollback killed" "s0:live s1:live s2:live r1:live"
reads_as "rollback killed" "" "$sha0" s1 "$sha0" s2 "$sha2" r1 "$sha_r1"

# 5. delete s1, the middle: its copies move into s0.
kill_job "delete killed" delete s1
server_up "delete killed (its job still running)"
until_ok 60 jobs_idle || fail "delete killed: the job never ended"
server_up "delete killed"
snaps_are "delete killed" "s0:live s2:live r1:live"
status=0
quick --json info s1 || status=$?
[ "$status" -eq 5 ] || fail "delete killed: info s1: exit $status, not 5"
reads_as "delete killed" s0 "$sha0" s2 "$sha2" r1 "$sha_r1" "" "$sha0"

# A clean restart: the same.
ask close
stop_nbdkit
log_clean "the first run's stop"
cp "$nbdkit_log" "$tmpdir/nbdkit-first.log"
start_nbdkit "${args[@]}"
start_client "$(snap_uri s0)"
server_up "restart"
snaps_are "restart" "s0:live s2:live r1:live"
reads_as "restart" s0 "$sha0" s2 "$sha2" r1 "$sha_r1" "" "$sha0"
ask close
stop_nbdkit
log_clean "the stop"
