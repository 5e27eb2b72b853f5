#!/usr/bin/env bash
# nbdsnap test: the plugin raises the soft RLIMIT_NOFILE to the hard
# limit at start-up (nbdkit started with 64:256 runs with 256:256), and
# the admin connection limit is a quarter of the raised limit (64).
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
ctl --json stats > "$tmpdir/stats.json"
grep -q '"connection_limit":64' "$tmpdir/stats.json" ||
  fail "admin connection limit is not 64: $(cat "$tmpdir/stats.json")"
stop_nbdkit
