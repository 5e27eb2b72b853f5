#!/usr/bin/env bash
# nbdsnap test: deleting the middle one of three snapshots leaves the
# others exact.  The oldest snapshot needs chunks that were copied into the
# middle one (first written after the middle one was taken); the delete must
# move them, not drop them.  After the delete, and after more writes, the
# oldest and the newest snapshot still read as their instants; the middle
# one is no longer listed, exported or stored.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires nbdinfo --version
requires qemu-io --version


img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K

check ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img"
  if [ "$(sha "$tmpdir/got.img")" != "$(sha "$tmpdir/at-$1.img")" ]; then
    cmp "$tmpdir/got.img" "$tmpdir/at-$1.img" || :
    fail "snapshot $1 is not its instant ($2)"
  fi
}

cp "$img" "$tmpdir/at-s1.img"
ctl create s1
# Copied into s1, into s2, into s3.
timeout 60 qemu-io -f raw -c 'write -P 0x01 0 128k' "$uri" >/dev/null
cp "$img" "$tmpdir/at-s2.img"
ctl create s2
timeout 60 qemu-io -f raw -c 'write -P 0x02 512k 256k' "$uri" >/dev/null
cp "$img" "$tmpdir/at-s3.img"
ctl create s3
timeout 60 qemu-io -f raw -c 'write -P 0x03 600k 600k' "$uri" >/dev/null

ctl --json info s2 > "$tmpdir/s2.json"
"$PYTHON" -c '
import json, sys
s = json.load(open(sys.argv[1]))["snapshot"]
assert s["chunks_copied"] == 4, s      # 512k..768k: what s1 needs from s2
' "$tmpdir/s2.json"

for s in s1 s2 s3; do check $s "before the delete"; done

ctl delete s2
for s in s1 s3; do check $s "after deleting s2"; done

ctl --json list > "$tmpdir/list.json"
"$PYTHON" -c '
import json, sys
names = [s["name"] for s in json.load(open(sys.argv[1]))["snapshots"]]
assert names == ["s1", "s3"], names
' "$tmpdir/list.json"
if nbdinfo "nbd+unix:///s2?socket=$sock" >/dev/null 2>&1; then
  fail "the deleted snapshot s2 is still exported"
fi
# Three snapshots had three stores; two are left.
[ "$(ls "$tmpdir/state" | grep -c '^snap-.*\.store$')" -eq 2 ] ||
  { ls -l "$tmpdir/state"; fail "the store of s2 was not removed"; }

# More writes over everything that was copied; the survivors hold.
timeout 60 qemu-io -f raw -c 'write -P 0x04 0 1536k' "$uri" >/dev/null
for s in s1 s3; do check $s "after more writes"; done
