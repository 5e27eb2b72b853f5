#!/usr/bin/env bash
# nbdsnap test: many snapshots and the file descriptor limit.  nbdkit is
# started with RLIMIT_NOFILE soft limit 1024 (the usual default).
#
# With a hard limit well above it (65536, or the caller's hard limit if
# lower, at least 4096): 1500 snapshots can be taken; an NBD client still
# connects to the origin and to the first and last snapshot and reads the
# right bytes; nbdkit restarts with all of them.
#
# With hard limit 1024: snapshots are taken until one is refused - with a
# message that names the cause (file descriptors, RLIMIT_NOFILE, ulimit) -
# before NBD clients are locked out: after the refusal nbdinfo on the
# origin and on a snapshot still works, the snapshot reads its instant,
# ctl list works, nbdkit is not spinning (with a few admin connections
# open and an NBD client connecting once a second its CPU time stays low
# and its log does not grow by megabytes), and it restarts.
source "${abs_top_builddir:?}/tests/functions.sh"
requires prlimit --version
requires nbdinfo --version
requires nbdcopy --version
requires qemu-io --version

img="$tmpdir/disk.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img"

check ()
{
  rm -f "$tmpdir/got.img"
  timeout 20 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img" ||
    { problem "$1 cannot be read ($2)"; return 0; }
  [ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-$1.img")" ] ||
    problem "$1 is not its instant ($2)"
}

problems=()
problem ()
{
  echo "$0: PROBLEM: $*" >&2
  problems+=("$*")
}

# How many snapshots are listed (quick: a locked-out server must not make
# this test wait for ctl's usual minute).
count ()
{
  timeout 10 "$nbdsnapctl" -s "$tmpdir/admin.sock" --json list |
    grep -o '"name":"' | wc -l
}

# utime + stime of nbdkit, in clock ticks.
cpu_ticks () { awk '{ print $14 + $15 }' "/proc/$(cat "$tmpdir/nbdkit.pid")/stat"; }

# ---- Hard limit above 1024: nbdsnap may raise its soft limit. ----
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=65536
[ "$hard" -gt 65536 ] && hard=65536
if [ "$hard" -lt 4096 ]; then
  echo "$0: the hard RLIMIT_NOFILE is $hard here: not testing 1500" \
       "snapshots with a raisable limit"
else
  args=("$img" statedir="$tmpdir/state-a" admin="$tmpdir/admin.sock"
        chunk-size=64K durability=process)
  nbdkit_wrapper=(prlimit --nofile=1024:"$hard")
  start_nbdkit "${args[@]}"
  cp "$img" "$tmpdir/at-s1.img"
  ctl create s1
  timeout 60 qemu-io -f raw -c 'write -P 0x11 0 64k' "$uri" >/dev/null
  for (( i = 2; i <= 1500; i++ )); do echo "create s$i"; done |
    timeout 300 "$nbdsnapctl" -s "$tmpdir/admin.sock" shell \
      > "$tmpdir/shell.out" 2>&1 || :
  ok=$(grep -c '"ok":true' "$tmpdir/shell.out" || :)
  echo "soft 1024, hard $hard: $(( ok + 1 )) of 1500 snapshots taken"
  grep -v '"ok":true' "$tmpdir/shell.out" | sort | uniq -c | head -5
  if [ "$ok" -ne 1499 ]; then
    problem "hard limit $hard: only $(( ok + 1 )) of 1500 snapshots taken"
  else
    cp "$img" "$tmpdir/at-s1500.img"
    timeout 60 qemu-io -f raw -c 'write -P 0x12 0 128k' "$uri" >/dev/null
    timeout 10 nbdinfo "$uri" >/dev/null ||
      problem "hard limit $hard: nbdinfo on the origin fails"
    check s1 "1500 snapshots"
    check s1500 "1500 snapshots"
    timeout 60 nbdcopy "$uri" "$tmpdir/got.img" &&
      cmp "$tmpdir/got.img" "$img" ||
      problem "hard limit $hard: the origin reads wrong"
    stop_nbdkit
    if start_nbdkit "${args[@]}"; then
      n=$(count) || n=-1
      [ "$n" -eq 1500 ] ||
        problem "hard limit $hard: $n snapshots after a restart, not 1500"
      check s1 "1500 snapshots, after a restart"
      check s1500 "1500 snapshots, after a restart"
    else
      problem "hard limit $hard: nbdkit does not restart with 1500 snapshots"
    fi
  fi
  stop_nbdkit
fi

# ---- Hard limit 1024: a clear refusal before clients are locked out. ----
# Another image: an image has one state directory.
img="$tmpdir/disk2.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img"
args=("$img" statedir="$tmpdir/state-b" admin="$tmpdir/admin.sock"
      chunk-size=64K durability=process)
nbdkit_wrapper=(prlimit --nofile=1024:1024)
start_nbdkit "${args[@]}"
cp "$img" "$tmpdir/at-t1.img"
ctl create t1
timeout 60 qemu-io -f raw -c 'write -P 0x21 0 64k' "$uri" >/dev/null

# One request at a time, stopping at the first refusal.
coproc SHELL {
  exec timeout 300 "$nbdsnapctl" -s "$tmpdir/admin.sock" shell \
    2>"$tmpdir/shell.err"
}
shell_pid=$SHELL_PID     # bash unsets SHELL_PID once the coprocess is gone
refusal=
taken=1
for (( i = 2; i <= 2000; i++ )); do
  echo "create t$i" >&"${SHELL[1]}"
  read -r -t 60 line <&"${SHELL[0]}" || fail "no answer to create t$i"
  case $line in
    *'"ok":true'*) taken=$i ;;
    *) refusal=$line; break ;;
  esac
done
eval "exec ${SHELL[1]}>&-"
wait "$shell_pid" 2>/dev/null || :
echo "soft 1024, hard 1024: $taken snapshots taken; then: ${refusal:-none}"
if [ -n "$refusal" ]; then
  grep -E -i -q 'file descriptor|RLIMIT_NOFILE|ulimit|nofile' <<<"$refusal" ||
    problem "the refusal does not name the file descriptor limit: $refusal"
fi

# Clients are not locked out.
if timeout 10 nbdinfo "$uri" >/dev/null 2>"$tmpdir/err"; then
  timeout 10 nbdinfo "nbd+unix:///t1?socket=$sock" >/dev/null \
    2>"$tmpdir/err" ||
    problem "nbdinfo on t1 fails: $(head -c 300 "$tmpdir/err")"
  check t1 "after the refusal"
else
  problem "NBD clients are locked out: nbdinfo on the origin fails" \
          "$(head -c 300 "$tmpdir/err")"
fi
n=$(count) || n=-1
[ "$n" -eq "$taken" ] ||
  problem "ctl list after the refusal: $n snapshots, not $taken"

# Nearly idle - three admin connections open, an NBD client connecting
# once a second - nbdkit does not spin (as it does on a connection that it
# cannot accept for want of a descriptor) and its log does not grow.
bg=()
for i in 1 2 3; do
  sleep 4 | timeout 10 "$nbdsnapctl" -s "$tmpdir/admin.sock" shell \
    >/dev/null 2>&1 &
  bg+=($!)
done
sleep 0.5
log0=$(stat -c %s "$nbdkit_log")
t0=$(cpu_ticks)
for i in 1 2 3; do
  timeout 1 nbdinfo "$uri" >/dev/null 2>&1 &
  sleep 1
done
t1=$(cpu_ticks)
log1=$(stat -c %s "$nbdkit_log")
wait "${bg[@]}" || :
hz=$(getconf CLK_TCK)
echo "idle for 3 s: $(( t1 - t0 )) ticks of CPU (of $hz a second), log" \
     "grew $(( log1 - log0 )) bytes"
[ $(( t1 - t0 )) -le $(( hz / 2 )) ] ||
  problem "nbdkit spins: $(( t1 - t0 )) ticks of CPU in 3 idle seconds"
[ $(( log1 - log0 )) -le 100000 ] ||
  problem "the log grew by $(( log1 - log0 )) bytes in 3 idle seconds"

stop_nbdkit
if start_nbdkit "${args[@]}"; then
  n=$(count) || n=-1
  [ "$n" -eq "$taken" ] ||
    problem "after a restart: $n snapshots listed, not $taken"
  if timeout 10 nbdinfo "$uri" >/dev/null; then
    check t1 "after a restart"
  else
    problem "after a restart: NBD clients are locked out"
  fi
else
  problem "nbdkit does not restart with $taken snapshots"
fi

[ "${#problems[@]}" -eq 0 ] || fail "$(printf '%s; ' "${problems[@]}")"
