#!/usr/bin/env bash
# nbdsnap test: progress of a long delete (B's 512 MiB of copies moved
# into the older A), shown three ways by nbdsnapctl:
#  - --json: stdout is one or more progress objects {"progress":"delete",
#    "name":"B","done","total"} (0 <= done <= total, done never going
#    back, total the same once known), then the final answer: ok,
#    moved_bytes the whole image; A then reads as its instant;
#  - stderr a terminal (a pty), no --json: stderr shows a progress line
#    drawn with "\r", in MiB with a percentage; stdout (not a terminal)
#    gets the usual message and no progress;
#  - neither: no progress text anywhere, nothing on stderr.
source "${abs_top_builddir:?}/tests/functions.sh"
# The job is slowed (20 ms per 64 chunks: seconds in all) so that it is
# seen, or killed, in the middle however fast the machine is: unslowed,
# a quiet machine moves it all in less than one progress interval.
nbdkit_opts=(-D nbdsnap.job_delay_ms=20)
requires "$PYTHON" -c 'import nbd, pty, termios'

big_dir
M=$(( 1024 * 1024 ))
size=$(( 512 * M ))
img="$bigdir/disk.img"
model="$bigdir/model.img"
a_uri="nbd+unix:///A?socket=$tmpdir/nbd.sock"

bigimg fill "$img" "$size" 1
cp "$img" "$model"
start_nbdkit "$img" statedir="$bigdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K

# setup ROUND: A and B, then the whole origin overwritten, so that
# deleting B moves all of B's copies into A.
setup ()
{
  a_sha=$(file_sha "$model")
  ctl create A
  ctl create B
  bigimg overwrite "$uri" "$model" 0 "$size" "$(( 10 + $1 ))"
}

# on_pty OUT ERR CMD...: run CMD with stderr on a pty (raw: "\r" and "\n"
# as written), stdout into OUT; what the pty got goes into ERR.
on_pty ()
{
  "$PYTHON" - "$@" <<'PY'
import fcntl, os, pty, struct, subprocess, sys, termios, tty
out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
m, s = pty.openpty()
tty.setraw(s)
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(out, "wb"),
                     stderr=s)
os.close(s)
data = b""
while True:
    try:
        b = os.read(m, 65536)
    except OSError:             # EIO: the last writer closed the pty
        break
    if not b:
        break
    data += b
open(err, "wb").write(data)
sys.exit(p.wait())
PY
}

# --json.
setup 1
status=0
ctl --json delete B > "$tmpdir/out.json" || status=$?
cat "$tmpdir/out.json"
[ "$status" -eq 0 ] || fail "--json delete B: exit $status"
"$PYTHON" - "$tmpdir/out.json" "$size" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
size = int(sys.argv[2])
objs = [json.loads(l) for l in lines]
progress, final = objs[:-1], objs[-1]
assert progress, "no progress object before the final answer"
last = None
for p in progress:
    assert "ok" not in p, "an answer before the last line: %r" % p
    assert p["progress"] == "delete" and p["name"] == "B", p
    assert 0 <= p["done"] <= p["total"] <= size, p
    if last:
        assert last["total"] in (0, p["total"]), \
            "total changed: %r then %r" % (last, p)
        assert p["done"] >= last["done"], "done went back: %r %r" % (last, p)
    last = p
assert last["total"] > 0, "no progress object gave a total"
assert final["ok"] is True and final["name"] == "B", final
assert final["moved_bytes"] == size, \
    "moved_bytes %r, expected %d" % (final.get("moved_bytes"), size)
print("%d progress objects" % len(progress))
PY
[ "$(export_sha "$a_uri")" = "$a_sha" ] || fail "A is not its instant"
ctl delete A

# A terminal.
setup 2
status=0
on_pty "$tmpdir/out" "$tmpdir/err" "${ctl_cmd[@]}" delete B || status=$?
echo "stdout:"; cat "$tmpdir/out"
echo "stderr (pty):"; cat -A "$tmpdir/err"; echo
[ "$status" -eq 0 ] || fail "delete B on a terminal: exit $status"
grep -q 'MiB' "$tmpdir/err" && grep -q '%' "$tmpdir/err" ||
  fail "no progress line (MiB, %) on the terminal"
grep -q $'\r' "$tmpdir/err" || fail "the progress line is not drawn with \\r"
grep -q -w B "$tmpdir/out" || fail "stdout lacks the usual message"
! grep -q -e '%' -e ETA -e $'\r' "$tmpdir/out" ||
  fail "progress on stdout, which is not a terminal"
ctl delete A

# Neither: no progress.
setup 3
status=0
ctl delete B > "$tmpdir/out" 2> "$tmpdir/err" || status=$?
echo "stdout:"; cat -A "$tmpdir/out"
echo "stderr:"; cat -A "$tmpdir/err"
[ "$status" -eq 0 ] || fail "delete B: exit $status"
[ ! -s "$tmpdir/err" ] || fail "stderr, not a terminal, got output"
[ "$(wc -l < "$tmpdir/out")" -eq 1 ] && grep -q -w B "$tmpdir/out" ||
  fail "stdout is not just the usual one-line message"
! grep -q -e '%' -e ETA -e $'\r' "$tmpdir/out" ||
  fail "progress on stdout, which is not a terminal"
ctl delete A
