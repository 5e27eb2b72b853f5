#!/usr/bin/env bash
# nbdsnap test: nbdkit killed (SIGKILL) in the middle of a long delete, with
# durability=power and with durability=process.  Snapshot A of a 256 MiB image
# full of data, a little written, snapshot B, the whole origin overwritten:
# deleting B moves nearly all of B's copies into A.  `list' is run over and
# over during "delete B"; nbdkit is killed once it shows B deleting with
# done < total (round 1: at once; round 2: once some was moved).  nbdkit is
# started again on the same state directory: the open finishes the delete,
# so B is gone (list, its files) and A reads exactly its instant, the origin
# what was written, also after more writes.  Two rounds per mode, with a new
# A and B each; at least one kill per mode must find B's files still there
# (a delete cut in the middle).
source "${abs_top_builddir:?}/tests/functions.sh"
# The job is slowed (20 ms per 64 chunks: seconds in all) so that it is
# seen, or killed, in the middle however fast the machine is: unslowed,
# a quiet machine moves it all in less than one progress interval.
nbdkit_opts=(-D nbdsnap.job_delay_ms=20)
requires "$PYTHON" -c 'import nbd'

big_dir
M=$(( 1024 * 1024 ))
size=$(( 256 * M ))
img="$bigdir/disk.img"
model="$bigdir/model.img"
a_uri="nbd+unix:///A?socket=$tmpdir/nbd.sock"
bigimg fill "$bigdir/pristine.img" "$size" 1

for mode in power process; do
  rm -rf "$bigdir/state"
  cp "$bigdir/pristine.img" "$img"
  cp "$img" "$model"
  args=("$img" statedir="$bigdir/state" admin="$tmpdir/admin.sock"
        chunk-size=64K durability=$mode)
  start_nbdkit "${args[@]}"
  cut=0
  for round in 1 2; do
    when="durability=$mode, round $round"
    [ "$(snap_state A)" = gone ] || ctl delete A
    a_sha=$(file_sha "$model")
    ctl create A
    bigimg ops "$uri" "$model" "w:$(( round * M )):$(( 8 * M )):$round"
    ctl create B
    b_id=$(snap_file_id B)
    bigimg overwrite "$uri" "$model" 0 "$size" "$(( 10 * round ))"

    # Round 1 kills at the first sight of the job, round 2 once it has
    # done something (or at the 5th sight).
    jobwatch --kill "$(cat "$tmpdir/nbdkit.pid")" \
      --kill-at $(( round == 1 ? 1 : 5 )) --err "$tmpdir/err" \
      delete B -- "${ctl_cmd[@]}" --json delete B > "$tmpdir/watch.json"
    kill9_nbdkit
    cat "$tmpdir/watch.json"
    "$PYTHON" - "$tmpdir/watch.json" "$when" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))
assert w["killed"], \
    "%s: no list showed B deleting with done < total during the delete " \
    "(%d lists answered during it, %d showed B deleting)" % (
        sys.argv[2], w["lists"], w["deleting"])
PY
    if snap_files_left "$bigdir/state" "$b_id"; then
      echo "$when: killed in the middle of the delete"
      cut=$(( cut + 1 ))
    else
      echo "$0: warning: $when: the delete was over before the kill"
    fi

    start_nbdkit "${args[@]}"
    ctl --json list > "$tmpdir/list.json"
    cat "$tmpdir/list.json"
    "$PYTHON" - "$tmpdir/list.json" "$when" <<'PY'
import json, sys
ss = json.load(open(sys.argv[1]))["snapshots"]
assert [(s["name"], s["state"]) for s in ss] == [("A", "live")], \
    "%s: after the restart list shows %r" % (sys.argv[2], ss)
PY
    ! snap_files_left "$bigdir/state" "$b_id" ||
      { ls -l "$bigdir/state"; fail "$when: B's files are left"; }
    [ "$(export_sha "$a_uri")" = "$a_sha" ] ||
      fail "$when: A is not its instant after the restart"
    [ "$(export_sha "$uri")" = "$(file_sha "$model")" ] ||
      fail "$when: the origin does not read what was written"
    bigimg ops "$uri" "$model" "w:$(( 100 * M + 5 )):$(( 3 * M )):$round"
    [ "$(export_sha "$a_uri")" = "$a_sha" ] ||
      fail "$when: A is not its instant after more writes"
  done
  stop_nbdkit
  [ "$cut" -gt 0 ] ||
    fail "durability=$mode: no kill landed in the middle of a delete"
done
