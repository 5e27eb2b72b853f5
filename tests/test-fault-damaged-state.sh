#!/usr/bin/env bash
# nbdsnap test: damaged state found at start never makes a snapshot lie.
# (a) one snapshot's store file was truncated (its copied chunks are
#     gone): at start that snapshot is invalid - reads fail with EIO -
#     and the nbdkit log says what was wrong with it; the other snapshots
#     read their instants.
# (b) the meta file of a newer snapshot, into whose store chunks of an
#     older snapshot were copied (writes after both were taken), was
#     removed: at start its store is not thrown away as an unfinished
#     create - the older snapshot still reads its instant, also after more
#     writes and after the damaged one (listed as invalid) is deleted.
# (c) a second meta file carries the name of an existing snapshot (a copy
#     of s1's files under another id): the server starts and never lists
#     two live snapshots of one name.  With the copy at an id older than
#     every snapshot (nothing reads through it), s1 and s2 still read
#     their instants; with the copy at the newest id (older snapshots
#     might read through it, and its bitmap is not its own), s1 and s2 may
#     be made invalid, but a read never returns wrong bytes.
# Each case fails the test, but all three are run and reported.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

size=$(( 2 * 1024 * 1024 ))
img="$tmpdir/disk.img"
state="$tmpdir/state"
args=("$img" statedir="$state" admin="$tmpdir/admin.sock" chunk-size=64K)

problems=()
problem ()
{
  echo "$0: PROBLEM: $*" >&2
  problems+=("$*")
}

write () { timeout 60 qemu-io -f raw -c "write -P $1 $2 $3" "$uri" >/dev/null; }

# check NAME WHEN: NAME reads its instant.
check ()
{
  rm -f "$tmpdir/got.img"
  if ! timeout 60 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img"
  then
    problem "$1 cannot be read ($2)"
  elif [ "$(sha "$tmpdir/got.img")" != "$(sha "$tmpdir/at-$1.img")" ]; then
    cmp "$tmpdir/got.img" "$tmpdir/at-$1.img" || :
    problem "$1 is not its instant ($2)"
  fi
}

# check_no_lie NAME WHEN: every chunk read of NAME returns its instant's
# bytes or fails with EIO.
check_no_lie ()
{
  timeout 60 "$PYTHON" - "nbd+unix:///$1?socket=$sock" "$tmpdir/at-$1.img" \
    <<'PY' || problem "$1: a read returned wrong bytes ($2)"
import errno, nbd, sys
want = open(sys.argv[2], "rb").read()
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for off in range(0, len(want), 65536):
    try:
        got = h.pread(65536, off)
    except nbd.Error as e:
        if e.errnum != errno.EIO:
            sys.exit("read at %d: %s, not EIO" % (off, e))
        continue
    if got != want[off:off + 65536]:
        sys.exit("wrong bytes at %d" % off)
PY
}

# check_eio NAME WHEN: every chunk read of NAME fails with EIO.
check_eio ()
{
  timeout 60 "$PYTHON" - "nbd+unix:///$1?socket=$sock" <<'PY' ||
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
for off in range(0, size, 65536):
    try:
        h.pread(65536, off)
    except nbd.Error as e:
        if e.errnum != errno.EIO:
            sys.exit("read at %d: %s, not EIO" % (off, e))
        continue
    sys.exit("the read at %d succeeded" % off)
PY
    problem "$1: reads do not all fail with EIO ($2)"
}

# "NAME STATE" for every snapshot listed.
listing ()
{
  ctl --json list | "$PYTHON" -c '
import json, sys
for s in json.load(sys.stdin)["snapshots"]:
    print(s["name"], s["state"])
'
}

state_of () { listing | awk -v n="$1" '$1 == n { print $2 }'; }

# Three snapshots; chunks of s1 copied into s1 and (later) into s2, of s2
# into s2 and s3.  Ids 1, 2, 3; or, with `setup 1', 2, 3, 4 (a snapshot
# with id 1 was created and deleted first).
setup ()
{
  rm -rf "$state"
  head -c "$size" /dev/urandom > "$img"
  start_nbdkit "${args[@]}"
  if [ "${1:-0}" -eq 1 ]; then
    ctl create x >/dev/null
    ctl delete x >/dev/null
  fi
  cp "$img" "$tmpdir/at-s1.img"
  ctl create s1 >/dev/null
  write 0x11 0 256k                   # chunks 0-3 into s1
  cp "$img" "$tmpdir/at-s2.img"
  ctl create s2 >/dev/null
  write 0x12 128k 512k                # 2-9 into s2 (s1 reads 4-9 there)
  cp "$img" "$tmpdir/at-s3.img"
  ctl create s3 >/dev/null
  write 0x13 512k 512k                # 8-15 into s3 (s1, s2 read 10-15)
  for s in s1 s2 s3; do check "$s" "before the damage"; done
  stop_nbdkit
}

# ---- (a) a truncated store ----
setup
truncate -s 100k "$state/snap-000001.store"
if ! start_nbdkit "${args[@]}"; then
  problem "(a): nbdkit does not start with a truncated store"
else
  st=$(state_of s1)
  [ "$st" = invalid ] || problem "(a): s1, its store truncated, is '$st'"
  check_eio s1 "(a) its store truncated"
  grep -E -i '\bs1\b|snap-0*1\.' "$nbdkit_log" |
    grep -E -i -q 'truncat|size|short|small' ||
    problem "(a): the log does not say that s1's store was truncated"
  for s in s2 s3; do check "$s" "(a) s1's store truncated"; done
  stop_nbdkit
fi

# ---- (b) the meta file of a newer snapshot removed ----
setup
rm "$state/snap-000002.meta"
if ! start_nbdkit "${args[@]}"; then
  problem "(b): nbdkit does not start without s2's meta file"
else
  listing
  check s1 "(b) s2's meta file removed"
  check s3 "(b) s2's meta file removed"
  lost=$(listing | awk '$2 == "invalid" { print $1 }')
  [ "$(wc -w <<<"$lost")" -eq 1 ] ||
    problem "(b): not one invalid snapshot listed for s2: '$lost'"
  if [ "$(wc -w <<<"$lost")" -eq 1 ]; then
    check_eio "$lost" "(b) the snapshot without meta"
    write 0x14 0 1M
    check s1 "(b) after writes"
    check s3 "(b) after writes"
    ctl delete "$lost" || problem "(b): $lost cannot be deleted"
    check s1 "(b) after $lost was deleted"
    check s3 "(b) after $lost was deleted"
  fi
  stop_nbdkit
fi

# ---- (c) two meta files of one name ----
# dup_s1 FROM TO: s1's files (id FROM) copied to id TO, the meta's id
# changed (a checksum in it, if any, then no longer matches).
dup_s1 ()
{
  local from to ext
  from=$(printf %06d "$1")
  to=$(printf %06d "$2")
  for ext in bitmap store; do
    cp --sparse=always "$state/snap-$from.$ext" "$state/snap-$to.$ext"
  done
  sed "s/^id $1\$/id $2/" "$state/snap-$from.meta" > "$state/snap-$to.meta"
  grep -q "^id $2\$" "$state/snap-$to.meta" ||
    echo "$0: warning: no 'id $1' line in snap-$from.meta to change"
}

# two_live WHEN: a problem if two live snapshots are named s1.
two_live ()
{
  local n
  n=$(listing | awk '$1 == "s1" && $2 == "live"' | wc -l)
  [ "$n" -le 1 ] || problem "$1: $n live snapshots named s1 are listed"
}

# (c1) the copy is the oldest (id 1; s1 is id 2).
setup 1
dup_s1 2 1
if ! start_nbdkit "${args[@]}"; then
  problem "(c1): nbdkit does not start with two meta files named s1"
else
  listing
  two_live "(c1) a copy of s1 as the oldest"
  check s1 "(c1) a copy of s1 as the oldest"
  check s2 "(c1) a copy of s1 as the oldest"
  write 0x15 0 1M
  check s1 "(c1) after writes"
  check s2 "(c1) after writes"
  stop_nbdkit
fi

# (c2) the copy is the newest (id 4).
setup
dup_s1 1 4
if ! start_nbdkit "${args[@]}"; then
  problem "(c2): nbdkit does not start with two meta files named s1"
else
  listing
  two_live "(c2) a copy of s1 as the newest"
  check_no_lie s1 "(c2) a copy of s1 as the newest"
  check_no_lie s2 "(c2) a copy of s1 as the newest"
  write 0x16 0 1M
  check_no_lie s1 "(c2) after writes"
  check_no_lie s2 "(c2) after writes"
  stop_nbdkit
fi

[ "${#problems[@]}" -eq 0 ] || fail "$(printf '%s; ' "${problems[@]}")"
