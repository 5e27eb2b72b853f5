#!/usr/bin/env bash
# nbdsnap test: NBD clients ask for a snapshot's export description while
# the snapshot is force-deleted and re-created, over and over (issue 7,
# case 4: .export_description read the engine snapshot that delete --force
# frees — a heap-use-after-free under ASan; in a normal build garbage
# bytes reached the client and nbdkit could hang at SIGTERM).
#
# Each round, four clients open the export "s" as fast as they can
# (NBD_OPT_INFO in option mode, and sometimes a full NBD_OPT_GO), with
# set_full_info so that libnbd asks for the description, while an admin
# connection runs "delete s force" / "create s" in a loop with random
# pauses.  Every description must be the right text: "snapshot s, taken
# DATE, live, N chunks copied", or, for a handle revoked between .open
# and the question, "snapshot s, deleted (delete --force): this handle is
# revoked"; an open that loses the race must fail cleanly (the option is
# refused, the connection stays usable).  nbdkit must survive every round
# and stop on SIGTERM within seconds; with --enable-sanitizers, any report
# in its log fails the test (functions.sh).
#
# NBDSNAP_SEED and NBDSNAP_ROUNDS (default: random, 20) repeat a run.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd; nbd.NBD().set_full_info(True)'
requires nbdinfo --version

seed=${NBDSNAP_SEED:-$RANDOM}
rounds=${NBDSNAP_ROUNDS:-20}
echo "seed $seed, $rounds rounds"

img="$tmpdir/disk.img"
truncate -s 16M "$img"
printf 'some data' | dd of="$img" conv=notrunc status=none

# describer.py SOCK SEED SECONDS: open "s" again and again; print
# "ok N revoked N refused N bad N [examples]".
cat > "$tmpdir/describer.py" <<'PY'
import nbd, random, re, sys, time
sock, seed, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rnd = random.Random(seed)
live = re.compile(r"snapshot s, taken \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, "
                  r"live, \d+ chunks copied\Z")
revoked_text = "snapshot s, deleted (delete --force): this handle is revoked"
ok = revoked = refused = 0
bad = []

def check(h):
    global ok, revoked
    try:
        d = h.get_export_description()
    except Exception as e:      # nbd.Error, or bytes that are not UTF-8
        bad.append("description: %r" % e)
        return
    if live.match(d):
        ok += 1
    elif d == revoked_text:
        revoked += 1
    else:
        bad.append(repr(d))

end = time.monotonic() + secs
h = None
while time.monotonic() < end and len(bad) < 10:
    if rnd.random() < 0.1:
        # A whole connection, as nbdinfo makes it.
        g = nbd.NBD()
        g.set_full_info(True)
        try:
            g.connect_uri("nbd+unix:///s?socket=" + sock)
        except nbd.Error as e:
            if "disconnected" in e.string or "reset by peer" in e.string:
                bad.append("connection lost: %s" % e.string)
            refused += 1
            continue
        check(g)
        g.shutdown()
        continue
    if h is not None and options >= 24:
        h.opt_abort()           # nbdkit allows 32 options per connection
        h = None
    if h is None:
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.set_full_info(True)
        h.connect_unix(sock)
        h.set_export_name("s")
        options = 0
    options += 1
    try:
        h.opt_info()
    except nbd.Error as e:
        refused += 1
        if not h.aio_is_negotiating():
            bad.append("connection lost: %s" % e.string)
            h = None
        continue
    check(h)
if h is not None:
    h.opt_abort()
print("ok %d revoked %d refused %d bad %d %s"
      % (ok, revoked, refused, len(bad), bad[:3]), flush=True)
PY

# racer.py ADMINSOCK SEED SECONDS: delete --force s, create s, with random
# pauses; print "cycles N revoked N" (deletes that revoked open handles).
cat > "$tmpdir/racer.py" <<'PY'
import json, random, socket, sys, time
rnd = random.Random(int(sys.argv[2]))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
s.connect(sys.argv[1])
f = s.makefile("rb")

def ask(line):
    s.sendall(line)
    r = json.loads(f.readline())
    assert r["ok"], (line, r)
    return r

end = time.monotonic() + float(sys.argv[3])
cycles = revoked = 0
while time.monotonic() < end:
    time.sleep(rnd.choice([0, 0, 0.0005, 0.002]))
    revoked += ask(b"delete s force\n")["revoked"] > 0
    time.sleep(rnd.choice([0, 0.0005, 0.001]))
    ask(b"create s\n")
    cycles += 1
print("cycles %d revoked %d" % (cycles, revoked), flush=True)
PY

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s >/dev/null

total_revoking_deletes=0
total_revoked_descriptions=0
for (( round = 1; round <= rounds; round++ )); do
  pids=()
  for i in 1 2 3 4; do
    timeout 60 "$PYTHON" "$tmpdir/describer.py" "$sock" \
      $(( seed * 100 + round * 10 + i )) 1 > "$tmpdir/d$i.out" &
    pids+=($!)
  done
  timeout 60 "$PYTHON" "$tmpdir/racer.py" "$tmpdir/admin.sock" \
    $(( seed * 100 + round )) 1 > "$tmpdir/racer.out" ||
    fail "round $round: the admin racer failed"
  for i in 1 2 3 4; do
    wait "${pids[i-1]}" || fail "round $round: describer $i failed"
  done
  read -r _ cycles _ revoking < "$tmpdir/racer.out"
  n_ok=0 n_revoked=0 n_refused=0
  for i in 1 2 3 4; do
    read -r _ ok _ revoked _ refused _ bad rest < "$tmpdir/d$i.out"
    [ "$bad" -eq 0 ] ||
      fail "round $round: describer $i got wrong descriptions: $rest"
    n_ok=$(( n_ok + ok ))
    n_revoked=$(( n_revoked + revoked ))
    n_refused=$(( n_refused + refused ))
  done
  echo "round $round: $cycles delete/create cycles ($revoking revoked" \
       "open handles); descriptions: $n_ok live, $n_revoked revoked;" \
       "$n_refused opens refused"
  total_revoked_descriptions=$(( total_revoked_descriptions + n_revoked ))
  total_revoking_deletes=$(( total_revoking_deletes + revoking ))
  kill -0 "$(cat "$tmpdir/nbdkit.pid")" ||
    fail "round $round: nbdkit died"
done
echo "in $rounds rounds: $total_revoking_deletes deletes revoked open" \
     "handles, $total_revoked_descriptions descriptions of revoked handles"

# The server still serves the snapshot and the origin, then stops.
ctl list >/dev/null
timeout 60 nbdinfo "nbd+unix:///s?socket=$sock" > "$tmpdir/info" ||
  fail "nbdinfo of s failed after the race"
grep -q 'description: snapshot s, taken' "$tmpdir/info" ||
  { cat "$tmpdir/info"; fail "nbdinfo: wrong description of s"; }
start=$(date +%s)
stop_nbdkit
elapsed=$(( $(date +%s) - start ))
[ "$elapsed" -le 10 ] ||
  fail "nbdkit took $elapsed s to stop on SIGTERM"
