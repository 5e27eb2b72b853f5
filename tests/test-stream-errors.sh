#!/usr/bin/env bash
# nbdsnap test: send and receive refuse bad input.  Server two has
# received s0 from server one; every bad stream below is refused, the
# exit status says why, and server two's origin reads as s0 afterwards
# with no new snapshot: a wrong header, an unknown record type or a
# second 't' among the metadata, a stream cut inside its metadata, no
# 't', a size other than the origin's, a 't' that exists, a base that is
# not the newest snapshot (or is unknown) - all refused before the origin
# is touched.  A stream cut in the middle of its data, one with an
# unknown record or bytes after its end, or a record beyond the image,
# are refused once the origin is written: it is rolled back to the
# stream's base.  A full stream cut in the middle leaves the origin
# partly written and says so.  receive refuses an origin with an NBD
# client, or one written since the base.  send refuses an unknown
# snapshot (5), a base not older (2), a terminal as its output (2).
# In the end the good stream still applies.
source "${abs_top_builddir:?}/tests/functions.sh"
source "$abs_top_srcdir/tests/stream.sh"
requires "$PYTHON" -c 'import nbd'

C=65536
size=$(( 64 * C + 5000 ))
img1="$tmpdir/one.img"
img2="$tmpdir/two.img"
bigimg fill "$img1" "$size" 1
bigimg fill "$img2" "$size" 2
start_server one "$img1"
start_server two "$img2"

ctl1 create s0
ctl1 send s0 > "$tmpdir/s0.stream"
ctl2 receive < "$tmpdir/s0.stream"
s0_sha=$(export_sha "$uri_one")
bigimg ops "$uri_one" /dev/null "w:0:$(( 40 * C )):10" "z:$(( 50 * C )):$C" \
  "w:$(( size - 9 )):9:11"
ctl1 create s1
ctl1 send --from s0 s1 > "$tmpdir/good.stream"
s1_sha=$(export_sha "$(snap_uri one s1)")
[ "$s0_sha" != "$s1_sha" ]

# mangle OUT PYTHON-EXPR: OUT is the good stream changed by the
# expression, of s (the stream's bytes) and m (where its metadata ends).
mangle ()
{
  "$PYTHON" - "$tmpdir/good.stream" "$tmpdir/$1" "$2" <<'PY'
import struct, sys
s = open(sys.argv[1], "rb").read()
m = 12
while s[m:m + 1] in (b"f", b"t", b"s"):
    m += 9 if s[m:m + 1] == b"s" else 5 + struct.unpack("<I", s[m + 1:m + 5])[0]
open(sys.argv[2], "wb").write(eval(sys.argv[3]))
PY
}

# untouched WHAT: server two's origin still reads as s0, its only
# snapshot, no hold left.
untouched ()
{
  [ "$(export_sha "$uri_two")" = "$s0_sha" ] ||
    fail "$1: server two's origin was changed"
  [ "$(snaps ctl2)" = s0 ] || fail "$1: server two has snapshots $(snaps ctl2)"
  ctl2 --json info s0 | "$PYTHON" -c '
import json, sys
assert json.load(sys.stdin)["snapshot"]["holds"] == 0, "a hold left"'
}

# refused WANT WHAT STREAM MESSAGE: receive of STREAM exits WANT, says
# MESSAGE, and leaves server two's origin untouched.
refused ()
{
  expect_status "$1" "$2" ctl2 receive < "$tmpdir/$3"
  grep -q -- "$4" "$tmpdir/err" || fail "$2: the message does not say '$4'"
  untouched "$2"
}

# Before the origin is touched.
mangle bad-header 'b"rbd diff v2\n" + s[12:]'
refused 1 "wrong header" bad-header "not an rbd diff v1 stream"
mangle empty 'b""'
refused 1 "empty stream" empty "no stream"
mangle unknown-meta 's[:12] + b"x" + s[12:]'
refused 1 "unknown record among the metadata" unknown-meta \
  "unknown record type 0x78 at byte 12"
mangle unknown-first 's[:m] + b"q" + s[m + 1:]'
refused 1 "unknown first data record" unknown-first "unknown record type 0x71"
mangle two-t 's[:m] + b"t\x02\0\0\0s9" + s[m:]'
refused 1 "a second 't'" two-t "a second 't' record"
mangle cut-meta 's[:20]'
refused 1 "cut in the metadata" cut-meta "the stream is truncated"
mangle cut-header 's[:7]'
refused 1 "cut in the header" cut-header "not an rbd diff v1 stream"
mangle no-t 's[:12] + s[12:m].replace(b"t\x02\0\0\0s1", b"") + s[m:]'
refused 1 "no 't'" no-t "names no snapshot"
mangle bad-name 's[:m].replace(b"t\x02\0\0\0s1", b"t\x02\0\0\0s ") + s[m:]'
refused 6 "an invalid 't' name" bad-name "not a valid name"
mangle size 's[:m - 8] + struct.pack("<Q", '"$size"' + 512) + s[m:]'
refused 1 "size mismatch" size "resiz"
refused 7 "'t' exists" s0.stream "snapshot s0 exists"
# The wrong base: s1 | s2 while server two's newest is s0.
ctl1 create s2
ctl1 send --from s1 s2 > "$tmpdir/s1-s2.stream"
refused 1 "wrong base" s1-s2.stream \
  "stream is for base s1, this server's newest snapshot is s0"
# A base that exists but is not the newest: s0 | s1 once server two has
# a newer snapshot.
ctl2 create extra
expect_status 1 "base not the newest" ctl2 receive < "$tmpdir/good.stream"
grep -q "this server's newest snapshot is extra" "$tmpdir/err"
ctl2 delete extra
untouched "base not the newest"
# The origin was written since the base: refused; rolled back by hand.
bigimg ops "$uri_two" /dev/null "w:$(( 60 * C )):1:12"
refused_written=$(export_sha "$uri_two")
expect_status 1 "origin written since s0" ctl2 receive < "$tmpdir/good.stream"
grep -q "the origin was written since snapshot s0" "$tmpdir/err"
[ "$(export_sha "$uri_two")" = "$refused_written" ]
ctl2 rollback s0
untouched "origin written since s0"
# An NBD client on the origin.
start_client "$uri_two"
expect_status 4 "an origin client" ctl2 receive < "$tmpdir/good.stream"
grep -q "the origin has 1 NBD client" "$tmpdir/err"
ask close
until_ok 10 eval '[ "$(ctl2 --json clients | grep -c "\"export\"")" -eq 0 ]'
untouched "an origin client"

# After the origin is touched: rolled back to s0.
rolled_back ()
{
  grep -q "rolled the origin back to snapshot s0" "$tmpdir/err" ||
    fail "$1: no rollback reported"
  untouched "$1"
}
len=$(stat -c %s "$tmpdir/good.stream")
[ "$len" -gt $(( 30 * C )) ]
# Cut inside the first record (2.5 MiB, read whole before it is
# written): nothing was written yet.
mangle cut-first "s[:$(( len / 2 ))]"
refused 1 "cut in the first record" cut-first \
  "the stream is truncated: it ends inside its 'w' record at byte"
grep -q "nothing was written: the origin is unchanged" "$tmpdir/err"
# Cut inside the last record, after the others were applied.
mangle cut-data "s[:$(( len - 100 ))]"
refused 1 "cut in the data" cut-data "the stream is truncated: it ends inside"
rolled_back "cut in the data"
mangle no-end 's[:-1]'
refused 1 "no end record" no-end "without its end record"
rolled_back "no end record"
mangle bad-end 's[:-1] + b"x"'
refused 1 "unknown record at the end" bad-end "unknown record type 0x78"
rolled_back "unknown record at the end"
mangle trailing 's + b"junk"'
refused 1 "data after the end" trailing "data after its end record"
rolled_back "data after the end"
mangle late-meta 's[:-1] + b"s" + s[m - 8:m] + b"e"'
refused 1 "metadata after data" late-meta "after the data records"
rolled_back "metadata after data"
mangle beyond 's[:-1] + b"z" + struct.pack("<QQ", '"$size"' - 4096, 8192) + b"e"'
refused 1 "a record beyond the image" beyond "goes beyond the image"
rolled_back "a record beyond the image"
mangle overflow 's[:-1] + b"w" + struct.pack("<QQ", 4096, 2**64 - 4096) + b"e"'
refused 1 "a length that wraps" overflow "goes beyond the image"
rolled_back "a length that wraps"

# Interrupted (SIGINT) while it waits for the rest of the stream, once
# it has written the first records: rolled back too.
fifo="$tmpdir/fifo"
mkfifo "$fifo"
exec 7<>"$fifo"
"$nbdsnapctl" -s "$tmpdir/two/admin.sock" receive < "$fifo" \
  2> "$tmpdir/err" &
rpid=$!
cleanup_fn quiet_kill "$rpid"
head -c $(( len - 100 )) "$tmpdir/good.stream" >&7
written ()
{
  ctl2 --json clients | "$PYTHON" -c '
import json, sys
c = [x for x in json.load(sys.stdin)["clients"] if x["export"] == ""]
sys.exit(0 if c and c[0]["bytes_written"] >= 40 * 65536 else 1)'
}
until_ok 20 written || fail "receive did not write the origin"
kill -INT "$rpid"
status=0
wait "$rpid" || status=$?
exec 7>&-
cat "$tmpdir/err"
[ "$status" -eq 1 ] || fail "receive after SIGINT: exit $status"
grep -q "receive: interrupted" "$tmpdir/err"
rolled_back "interrupted"

# A reader that goes away: send says so (exit 1).
ctl1 send --from s0 s1 2> "$tmpdir/err" | head -c 100 > /dev/null
status=${PIPESTATUS[0]}
cat "$tmpdir/err"
[ "$status" -eq 1 ] || fail "send to a closed pipe: exit $status"
grep -q "send: writing the stream: Broken pipe" "$tmpdir/err"

# A full stream cut in the middle: no base to roll back to.
slen=$(stat -c %s "$tmpdir/s0.stream")
ctl2 delete s0
head -c $(( slen - 100 )) "$tmpdir/s0.stream" > "$tmpdir/cut-full"
expect_status 1 "a full stream cut" ctl2 receive < "$tmpdir/cut-full"
grep -q "the origin is partly written" "$tmpdir/err"
[ "$(snaps ctl2)" = "" ]
ctl2 receive < "$tmpdir/s0.stream"
[ "$(export_sha "$uri_two")" = "$s0_sha" ]
untouched "the full stream again"

# send: unknown snapshots, a base not older, a terminal.
expect_status 5 "send unknown" ctl1 send nosuch
expect_status 5 "send --from unknown" ctl1 send --from nosuch s1
expect_status 2 "send --from newer" ctl1 send --from s2 s1
grep -q "not older than s1" "$tmpdir/err"
expect_status 2 "send --from itself" ctl1 send --from s1 s1
expect_status 6 "send a bad name" ctl1 send "a b"
[ ! -s "$tmpdir/out" ] || fail "send wrote a stream after a refusal"
# On a pseudo-terminal: refused before anything is written.
tty_status ()
{
  "$PYTHON" - "$@" <<'PY'
import os, pty, subprocess, sys
master, slave = os.openpty()
which = sys.argv[1]
p = subprocess.run(sys.argv[2:], stdout=slave if which == "out" else None,
                   stdin=slave if which == "in" else subprocess.DEVNULL)
os.close(slave)
os.set_blocking(master, False)
try:
    out = os.read(master, 4096)
except OSError:
    out = b""
assert out == b"", "wrote %r on the terminal" % out[:40]
print(p.returncode)
PY
}
[ "$(tty_status out "$nbdsnapctl" -s "$tmpdir/one/admin.sock" send s1)" = 2 ]
[ "$(tty_status in "$nbdsnapctl" -s "$tmpdir/two/admin.sock" receive)" = 2 ]
# No hold left on server one by the refusals.
ctl1 --json list | "$PYTHON" -c '
import json, sys
for s in json.load(sys.stdin)["snapshots"]:
    assert s["holds"] == 0, s'

# The good stream still applies.
ctl2 receive < "$tmpdir/good.stream"
[ "$(export_sha "$uri_two")" = "$s1_sha" ]
[ "$(export_sha "$(snap_uri two s1)")" = "$s1_sha" ]
[ "$(snaps ctl2)" = "s0 s1" ]
