#!/usr/bin/env bash
# nbdsnap test (issue 8, make check-clients): the consistent cut survives
# kill -9.  The workload of test-client-cut.sh (writers owning regions,
# snapshot create/delete churn, snapshot readers; tests/cut.py) runs in
# rounds; each round nbdkit is killed with SIGKILL at a random moment
# (just after a create or a delete was sent, or on a timer) and started
# again on the same state directory.  Then: the origin holds every
# answered write (a kill loses no page cache, in either durability mode),
# the one in flight whole, torn or not at all; every snapshot whose create
# was answered (and whose delete was not) is listed, live; a snapshot whose
# create was cut off may exist, and then it is a consistent cut like every
# other; every snapshot reads as it did before the kill.  A last clean
# round follows the kills.  Both durability modes, chunk sizes 4K, 64K, 1M.
#
# SEED replays a run's choices (printed first; CUT_KEEP=DIR keeps the logs
# of a failed run); CUT_KILLS (default 3) is the number of kills per
# configuration, CUT_SECONDS (default 2) the longest a round runs before
# its kill.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

seed=${SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
seconds=${CUT_SECONDS:-2}
kills=${CUT_KILLS:-3}
echo "$0: SEED=$seed CUT_SECONDS=$seconds CUT_KILLS=$kills"

# On failure: how to run the same choices again (the timing differs),
# and the logs kept in $CUT_KEEP if it is set.
cut_failed ()
{
  if [ -n "${CUT_KEEP:-}" ]; then
    mkdir -p "$CUT_KEEP"
    cp "$d"/*.jsonl "$d"/*.json "$d"/*.log "$nbdkit_log" "$CUT_KEEP" \
      2>/dev/null || :
  fi
  fail "chunk-size=$chunk durability=$mode: $1 failed; replay with" \
       "SEED=$seed CUT_SECONDS=$seconds CUT_KILLS=$kills" \
       "${CUT_KEEP:+(logs in $CUT_KEEP)}"
}

cut_py=("$PYTHON" "$abs_top_srcdir/tests/cut.py" --admin "$tmpdir/admin.sock"
        --ctl "$nbdsnapctl")
cut ()
{
  "${cut_py[@]}" --sock "$sock" "$@" || cut_failed "cut.py $1"
}

# cut.py run asks for the kill on kill.req ("kill", or "abort" if it
# fails first) and waits for "dead" on kill.ack.  Both are open read-write
# here, so that neither side blocks opening them.
mkfifo "$tmpdir/kill.req" "$tmpdir/kill.ack"
exec 3<>"$tmpdir/kill.req" 4<>"$tmpdir/kill.ack"

for cfg in 4K:power 4K:process 64K:power 64K:process 1M:power 1M:process
do
  chunk=${cfg%:*} mode=${cfg#*:}
  d="$tmpdir/$chunk-$mode"
  echo "=== chunk-size=$chunk durability=$mode"
  sock=
  cut init "$d" --seed "$seed-$cfg" --chunk "$chunk"
  args=("$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock"
        chunk-size="$chunk" durability="$mode")
  start_nbdkit "${args[@]}"
  for (( e = 0; e < kills; e++ )); do
    "${cut_py[@]}" --sock "$sock" run "$d" --epoch "$e" \
      --seconds "$seconds" --kill-fifo "$tmpdir/kill" &
    cut_pid=$!
    cleanup_fn quiet_kill "$cut_pid"
    read -r -t 120 -u 3 line || line=timeout
    if [ "$line" = kill ]; then
      kill9_nbdkit
      echo dead >&4
    fi
    wait "$cut_pid" ||
      cut_failed "cut.py run"
    [ "$line" = kill ] || fail "cut.py run did not ask for the kill ($line)"
    _check_sanitizer_log "$nbdkit_log"
    cp "$nbdkit_log" "$d/nbdkit-$e.log"
    start_nbdkit "${args[@]}"
    cut verify "$d" --epoch "$e"
  done
  cut run "$d" --epoch "$kills" --seconds "$seconds"
  cut verify "$d" --epoch "$kills"
  stop_nbdkit
  rm -rf "$d"
done
