#!/usr/bin/env bash
# nbdsnap test: snapshots can be deleted when the state directory's
# filesystem is full - deleting is how an administrator makes room.  Four
# snapshots s1..s4 on a small tmpfs, each with chunks copied into its
# store, then a filler file takes the last page.  Deleting the middle
# snapshot s3 (whose chunks s2 reads, so they must move into s2's store)
# may fail for want of space, but then with a message saying so and
# changing nothing; if it succeeds, its files are gone.  Either way s2
# and s4 still read their instants.  Deleting the oldest snapshot (no
# chunk to move) must succeed on the full filesystem: its files are gone
# and df shows the space freed; with the filesystem filled again, so must
# the next oldest.  After a restart the deleted snapshots stay deleted and
# the others read their instants.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

mnt="$tmpdir/mnt"
small_fs 8m "$mnt"

img="$tmpdir/disk.img"
size=$(( 4 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"
state="$mnt/state"
args=("$img" statedir="$state" admin="$tmpdir/admin.sock" chunk-size=64K)

avail () { df -B1 --output=avail "$mnt" | tail -n 1 | tr -d ' '; }

check ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img" ||
    fail "$1 cannot be read ($2)"
  [ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-$1.img")" ] ||
    fail "$1 is not its instant ($2)"
}

names () { ctl --json list | grep -o '"name":"[^"]*"' | cut -d'"' -f4 | sort; }

files_of () { ls "$state" | grep "^snap-$(printf %06d "$1")\." || :; }

start_nbdkit "${args[@]}"
# Each snapshot gets 8 chunks copied; s2's and s3's overlap, so deleting
# s3 has chunks to move into s2.
off=(0 0 512k 1M 2M)
for i in 1 2 3 4; do
  cp "$img" "$tmpdir/at-s$i.img"
  ctl create "s$i"
  timeout 60 qemu-io -f raw -c "write -P 0x3$i ${off[i]} 512k" \
    -c "write -P 0x4$i 768k 256k" "$uri" >/dev/null
done
ctl list
fill_fs "$mnt"

# The middle one: either outcome, but a clean one.
status=0
ctl delete s3 > "$tmpdir/out" 2>&1 || status=$?
cat "$tmpdir/out"
if [ "$status" -eq 0 ]; then
  [ -z "$(files_of 3)" ] || fail "s3 was deleted but its files are left"
  deleted=(s3)
else
  grep -E -q -i 'space|ENOSPC' "$tmpdir/out" ||
    fail "deleting s3 failed without saying it was for want of space"
  names | grep -qx s3 || fail "deleting s3 failed but s3 is gone"
  check s3 "after a failed delete"
  deleted=()
fi
check s2 "after deleting s3 on a full filesystem"
check s4 "after deleting s3 on a full filesystem"

# The oldest: must work on a full filesystem, and free its space.
fill_fs "$mnt"
before=$(avail)
ctl delete s1 || fail "deleting the oldest snapshot failed on a full filesystem"
[ -z "$(files_of 1)" ] || { ls -l "$state"; fail "the files of s1 are left"; }
after=$(avail)
echo "available before deleting s1: $before, after: $after"
[ "$after" -gt "$before" ] || fail "deleting s1 freed no space"
deleted+=(s1)

fill_fs "$mnt"
ctl delete s2 ||
  fail "deleting the (now) oldest snapshot failed on a full filesystem"
[ -z "$(files_of 2)" ] || { ls -l "$state"; fail "the files of s2 are left"; }
deleted+=(s2)
names | grep -qx -E "$(IFS='|'; echo "${deleted[*]}")" &&
  fail "a deleted snapshot is still listed"

stop_nbdkit
start_nbdkit "${args[@]}"
ctl list
if names | grep -qx -E "$(IFS='|'; echo "${deleted[*]}")"; then
  fail "a deleted snapshot is back after the restart"
fi
for s in s3 s4; do
  case " ${deleted[*]} " in *" $s "*) continue ;; esac
  check "$s" "after a restart"
done

# With the filler gone, the surviving ones can be deleted too.
rm -f "$mnt/filler"
for s in s3 s4; do
  case " ${deleted[*]} " in *" $s "*) continue ;; esac
  ctl delete "$s"
done
[ -z "$(ls "$state" | grep '^snap-')" ] ||
  { ls -l "$state"; fail "snapshot files are left"; }
