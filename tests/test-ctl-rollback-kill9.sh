#!/usr/bin/env bash
# nbdsnap test: nbdkit killed (SIGKILL) in the middle of a rollback, with
# durability=power and with durability=process.  Snapshot A of a 256 MiB image
# full of data, a little written, snapshot B; then each round overwrites the
# whole origin and runs "rollback A" (256 MiB to write back), running `list'
# over and over: nbdkit is killed once A shows "rollback" with done < total
# (round 1: at once; round 2: once some was written back).  nbdkit is started
# again on the same state directory: the start finishes the rollback before it
# serves, so the first read of the origin is A's instant; A and B read exactly
# their instants and A shows no rollback.  Two rounds per mode; at least one
# kill per mode must find the rollback recorded in the state directory (a
# rollback cut in the middle).  Afterwards writes to the origin land and A and
# B keep their instants.
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
snap_uri () { echo "nbd+unix:///$1?socket=$tmpdir/nbd.sock"; }
bigimg fill "$bigdir/pristine.img" "$size" 1
a_sha=$(file_sha "$bigdir/pristine.img")

for mode in power process; do
  rm -rf "$bigdir/state"
  cp "$bigdir/pristine.img" "$img"
  cp "$img" "$model"
  args=("$img" statedir="$bigdir/state" admin="$tmpdir/admin.sock"
        chunk-size=64K durability=$mode)
  start_nbdkit "${args[@]}"
  ctl create A
  bigimg ops "$uri" "$model" "w:$(( 3 * M )):$(( 8 * M )):2" \
    "z:$(( 20 * M )):$M"
  b_sha=$(file_sha "$model")
  ctl create B
  cut=0
  for round in 1 2; do
    when="durability=$mode, round $round"
    bigimg overwrite "$uri" "$model" 0 "$size" "$(( 10 * round ))"

    # Round 1 kills at the first sight of the job, round 2 once it has
    # done something (or at the 5th sight).
    jobwatch --kill "$(cat "$tmpdir/nbdkit.pid")" \
      --kill-at $(( round == 1 ? 1 : 5 )) --err "$tmpdir/err" \
      rollback A -- "${ctl_cmd[@]}" --json rollback A > "$tmpdir/watch.json"
    kill9_nbdkit
    cat "$tmpdir/watch.json"
    "$PYTHON" - "$tmpdir/watch.json" "$when" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))
assert w["killed"], \
    "%s: no list showed A with a rollback at done < total during the " \
    "rollback (%d lists answered during it; rollback A exit %s)" % (
        sys.argv[2], w["lists"], w["status"])
PY
    if ls "$bigdir/state" | grep -q -i rollback; then
      echo "$when: killed in the middle of the rollback"
      cut=$(( cut + 1 ))
    else
      echo "$0: warning: $when: the rollback was over before the kill"
    fi

    start_nbdkit "${args[@]}"
    [ "$(export_sha "$uri")" = "$a_sha" ] ||
      fail "$when: after the restart the origin is not A"
    ! ls "$bigdir/state" | grep -q -i rollback ||
      { ls -l "$bigdir/state"; fail "$when: the rollback record is left"; }
    [ "$(export_sha "$(snap_uri A)")" = "$a_sha" ] ||
      fail "$when: A is not its instant after the restart"
    [ "$(export_sha "$(snap_uri B)")" = "$b_sha" ] ||
      fail "$when: B is not its instant after the restart"
    ctl --json list > "$tmpdir/list.json"
    cat "$tmpdir/list.json"
    "$PYTHON" - "$tmpdir/list.json" "$when" <<'PY'
import json, sys
ss = json.load(open(sys.argv[1]))["snapshots"]
assert [(s["name"], s["state"]) for s in ss] == [("A", "live"),
                                                  ("B", "live")], \
    "%s: after the restart list shows %r" % (sys.argv[2], ss)
assert "rollback" not in ss[0], "%s: A still shows a rollback: %r" % (
    sys.argv[2], ss[0])
PY
    cp "$bigdir/pristine.img" "$model"
  done

  # The origin takes writes again.
  bigimg ops "$uri" "$model" "w:$(( 50 * M + 3 )):$(( 4 * M )):30"
  [ "$(export_sha "$uri")" = "$(file_sha "$model")" ] ||
    fail "durability=$mode: writes after the rollback do not read back"
  [ "$(export_sha "$(snap_uri A)")" = "$a_sha" ] ||
    fail "durability=$mode: A is not its instant after more writes"
  [ "$(export_sha "$(snap_uri B)")" = "$b_sha" ] ||
    fail "durability=$mode: B is not its instant after more writes"
  stop_nbdkit
  [ "$cut" -gt 0 ] ||
    fail "durability=$mode: no kill landed in the middle of a rollback"
done
