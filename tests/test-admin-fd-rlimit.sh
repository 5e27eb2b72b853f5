#!/usr/bin/env bash
# nbdsnap test: the plugin raises the soft RLIMIT_NOFILE to the hard
# limit at start-up (nbdkit started with 64:256 runs with 256:256).
source "${abs_top_builddir:?}/tests/functions.sh"
requires prlimit --version

img="$tmpdir/disk.img"
truncate -s 1M "$img"

nbdkit_wrapper=(prlimit --nofile=64:256)
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
pid=$(cat "$tmpdir/nbdkit.pid")
grep -E -q '^Max open files +256 +256 ' "/proc/$pid/limits" ||
  fail "the soft limit was not raised: $(grep 'open files' \
        "/proc/$pid/limits")"
stop_nbdkit
