#!/usr/bin/env bash
# nbdsnap test (issue 8, make check-clients): the consistent cut.  Four
# writer connections (libnbd, one thread and one NBD handle each, one
# request at a time) each own a region of the origin and write logged,
# uniquely patterned generations: mixed sizes, unaligned, across chunk
# boundaries, trims, zeroes with and without NO_HOLE, FUA on some.
# Meanwhile nbdsnapctl creates and deletes snapshots (plain, --defer,
# --force) and two readers read whole snapshots.  Every snapshot read, at
# any time, must be base + every write answered before its create was sent
# + some of those in flight then, each whole, + nothing sent after create
# returned, at one instant for all regions (tests/cut.py says how that is
# checked).  Chunk sizes 4K, 64K and 1M; both durability modes; a clean
# restart at the end, after which every snapshot still reads the same.
#
# SEED replays a run's choices (printed first; CUT_KEEP=DIR keeps the logs
# of a failed run); CUT_SECONDS (default 2) is the length of each round,
# CUT_ROUNDS (default 2) their number.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

seed=${SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
seconds=${CUT_SECONDS:-2}
rounds=${CUT_ROUNDS:-2}
echo "$0: SEED=$seed CUT_SECONDS=$seconds CUT_ROUNDS=$rounds"

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
       "SEED=$seed CUT_SECONDS=$seconds CUT_ROUNDS=$rounds" \
       "${CUT_KEEP:+(logs in $CUT_KEEP)}"
}

cut ()
{
  "$PYTHON" "$abs_top_srcdir/tests/cut.py" --sock "$sock" \
    --admin "$tmpdir/admin.sock" --ctl "$nbdsnapctl" "$@" ||
    cut_failed "cut.py $1"
}

for cfg in 4K:power 64K:process 1M:power 4K:process 64K:power 1M:process
do
  chunk=${cfg%:*} mode=${cfg#*:}
  d="$tmpdir/$chunk-$mode"
  echo "=== chunk-size=$chunk durability=$mode"
  sock=
  cut init "$d" --seed "$seed-$cfg" --chunk "$chunk"
  args=("$d/disk.img" statedir="$d/state" admin="$tmpdir/admin.sock"
        chunk-size="$chunk" durability="$mode")
  start_nbdkit "${args[@]}"
  for (( e = 0; e < rounds; e++ )); do
    cut run "$d" --epoch "$e" --seconds "$seconds"
    cut verify "$d" --epoch "$e"
  done
  stop_nbdkit
  start_nbdkit "${args[@]}"
  cut verify "$d" --epoch "$rounds"
  stop_nbdkit
  rm -rf "$d"
done
