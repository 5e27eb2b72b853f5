#!/usr/bin/env bash
# nbdsnap test: a long delete leaves `list' and the origin's writers
# alone.  Snapshot A of a 512 MiB image full of data, a little written,
# snapshot B, then the whole origin overwritten: deleting B must move
# nearly all of B's chunks into A.  While "delete B" runs, nbdsnapctl
# list (another connection) is run over and over: at least one answer
# comes while the delete is still running and shows B as "deleting" with
# "progress" (0 <= done <= total), and every list answers.  Meanwhile a
# writer keeps writing the origin (64K at qd 1, random places, over the
# chunks being moved): writes complete during the delete, every one
# succeeds, and afterwards the origin reads exactly what was written, A
# exactly its instant; B is gone, its files too.
source "${abs_top_builddir:?}/tests/functions.sh"
# The job is slowed (20 ms per 64 chunks: seconds in all) so that it is
# seen in the middle however fast the machine is: unslowed, a quiet
# machine moves it all before the first look.
nbdkit_opts=(-D nbdsnap.job_delay_ms=20)
requires "$PYTHON" -c 'import nbd'

big_dir
M=$(( 1024 * 1024 ))
size=$(( 512 * M ))
img="$bigdir/disk.img"
model="$bigdir/model.img"
a_uri="nbd+unix:///A?socket=$tmpdir/nbd.sock"

bigimg fill "$img" "$size" 1
cp "$img" "$model"
a_sha=$(file_sha "$img")
start_nbdkit "$img" statedir="$bigdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K

ctl create A
bigimg ops "$uri" "$model" "w:0:$(( 8 * M )):2"    # A copies 8 MiB
ctl create B
b_id=$(snap_file_id B)
bigimg overwrite "$uri" "$model" 0 "$size" 3       # B copies everything

# The writer, from before the delete to after it.
"$PYTHON" "$abs_top_srcdir/tests/bigimg.py" writer "$uri" "$model" \
  "$tmpdir/writes.log" 2> "$tmpdir/writer.err" &
writer=$!
cleanup_fn quiet_kill "$writer"
until_ok 10 test -s "$tmpdir/writes.log" || fail "the writer did not start"

jobwatch --out "$tmpdir/out.json" --err "$tmpdir/err" delete B -- \
  "${ctl_cmd[@]}" --json delete B > "$tmpdir/watch.json"
sleep 0.2
kill "$writer"
status=0
wait "$writer" || status=$?
cat "$tmpdir/watch.json" "$tmpdir/out.json" "$tmpdir/err" \
    "$tmpdir/writer.err"
[ "$status" -eq 0 ] || fail "a write of the origin failed (see above)"

"$PYTHON" - "$tmpdir/watch.json" "$tmpdir/writes.log" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))
assert w["status"] == 0, "delete B: exit %s" % w["status"]
assert w["lists"] > 0, \
    "no list answered while the delete was running (it waits for the delete)"
assert w["seen"] > 0, \
    "%d lists answered during the delete, none showed B deleting with " \
    "progress (%d showed it deleting)" % (w["lists"], w["deleting"])
times = [float(l.split()[0]) for l in open(sys.argv[2])]
during = [t for t in times if w["start"] < t < w["end"]]
print("%d lists during the delete, %d saw it, last at %s of %s; "
      "%d writes, %d during the delete"
      % (w["lists"], w["seen"], w["done"], w["total"], len(times),
         len(during)))
assert during, "no origin write completed while the delete was running"
PY
json_final "$tmpdir/out.json" | "$PYTHON" -c '
import json, sys
r = json.load(sys.stdin)
assert r["ok"] is True and r["name"] == "B" and r["deferred"] is False, r
'

[ "$(snap_state B)" = gone ] || fail "B is still listed after the delete"
! snap_files_left "$bigdir/state" "$b_id" ||
  { ls -l "$bigdir/state"; fail "B's files are left"; }
[ "$(export_sha "$a_uri")" = "$a_sha" ] ||
  fail "A is not its instant after the delete"
[ "$(export_sha "$uri")" = "$(file_sha "$model")" ] ||
  fail "the origin does not hold what was written during the delete"
