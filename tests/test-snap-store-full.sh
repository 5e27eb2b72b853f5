#!/usr/bin/env bash
# nbdsnap test: a snapshot whose store is full (max-store) becomes
# invalid, and the origin loses nothing.  With max-store=256K (4 chunks of
# 64K), a snapshot s1 and 1 MiB of origin writes (16 chunks): every write
# succeeds and the origin has the new bytes; s1 is listed as invalid (list,
# info, nbdinfo --list) and reads of it fail with EIO, never wrong bytes;
# the state survives a restart; the invalid snapshot can be deleted (files
# removed), and a new snapshot afterwards works.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-io --version
requires nbdcopy --version
requires nbdinfo --version
requires "$PYTHON" -c 'import nbd'

state () {
  ctl --json info "$1" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}

img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/at-s1.img"
args=("$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
      chunk-size=64K max-store=256K)

start_nbdkit "${args[@]}"
ctl create s1
[ "$(state s1)" = live ]

# 16 chunks to copy, room for 4: the writes succeed all the same.
timeout 60 qemu-io -f raw -c 'write -P 0x77 0 1M' "$uri" > "$tmpdir/out" ||
  { cat "$tmpdir/out"; fail "an origin write failed when the store filled"; }
cmp <(head -c $(( 1024 * 1024 )) "$img") \
    <(head -c $(( 1024 * 1024 )) /dev/zero | tr '\0' '\167') ||
  fail "the origin lacks the writes"
cmp <(tail -c +$(( 1024 * 1024 + 1 )) "$img") \
    <(tail -c +$(( 1024 * 1024 + 1 )) "$tmpdir/at-s1.img") ||
  fail "the origin changed where it was not written"

# check_invalid WHEN: s1 is invalid everywhere and never reads wrong.
check_invalid ()
{
  [ "$(state s1)" = invalid ] || fail "s1 is not invalid ($1)"
  timeout 60 nbdinfo --list "$uri" |
    grep -q 'description: snapshot s1.*invalid' ||
    fail "nbdinfo --list does not say s1 is invalid ($1)"
  reads_eio --also 1000:100 "nbd+unix:///s1?socket=$sock" "$tmpdir/at-s1.img" \
    "s1 $1"
}
check_invalid "after the store filled"

stop_nbdkit
start_nbdkit "${args[@]}"
check_invalid "after a restart"

ctl delete s1
[ -z "$(ls "$tmpdir/state" | grep '^snap-')" ] ||
  { ls -l "$tmpdir/state"; fail "the files of s1 are left"; }

# A new snapshot, within its limit, works.
cp "$img" "$tmpdir/at-s2.img"
ctl create s2
timeout 60 qemu-io -f raw -c 'write -P 0x78 0 192k' "$uri" >/dev/null
[ "$(state s2)" = live ] || fail "s2 is not live with 3 of 4 chunks used"
timeout 60 nbdcopy "nbd+unix:///s2?socket=$sock" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s2.img")" ] ||
  fail "s2 is not its instant"
