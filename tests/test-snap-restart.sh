#!/usr/bin/env bash
# nbdsnap test: snapshots survive a restart of nbdkit.  Two snapshots with
# overwrites between and after them; nbdkit is stopped and started again on
# the same state directory: both are listed with the same ids and creation
# times and read byte-exact.  Writes after the restart, to chunks copied
# before it and to chunks never copied, still leave them exact (the copied
# bitmaps were kept, and copy-on-write goes on).
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
size=$(( 4 * 1024 * 1024 + 1000 ))
head -c "$size" /dev/urandom > "$img"
args=("$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
      chunk-size=128K)

check ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img"
  if [ "$(sha "$tmpdir/got.img")" != "$(sha "$tmpdir/at-$1.img")" ]; then
    cmp "$tmpdir/got.img" "$tmpdir/at-$1.img" || :
    fail "snapshot $1 is not its instant ($2)"
  fi
}

# name, id, created of every snapshot.
listing ()
{
  ctl --json list |
    "$PYTHON" -c '
import json, sys
for s in json.load(sys.stdin)["snapshots"]:
    print(s["name"], s["id"], s["created"], s["state"], s["chunks_copied"])
'
}

start_nbdkit "${args[@]}"
cp "$img" "$tmpdir/at-s1.img"
ctl create s1
timeout 60 qemu-io -f raw -c 'write -P 0x01 0 300k' "$uri" >/dev/null
cp "$img" "$tmpdir/at-s2.img"
ctl create s2
timeout 60 qemu-io -f raw -c 'write -P 0x02 200k 400k' "$uri" >/dev/null
for s in s1 s2; do check $s "before the restart"; done
listing > "$tmpdir/before"
cat "$tmpdir/before"
[ "$(wc -l < "$tmpdir/before")" -eq 2 ]

stop_nbdkit
start_nbdkit "${args[@]}"

listing > "$tmpdir/after"
diff -u "$tmpdir/before" "$tmpdir/after" ||
  fail "the snapshots are listed differently after the restart"
for s in s1 s2; do check $s "after the restart"; done

# Over chunks copied before the restart and chunks never copied.
timeout 60 qemu-io -f raw -c 'write -P 0x03 0 1M' -c 'write -P 0x04 3M 100k' \
  "$uri" >/dev/null
nbdsh -u "$uri" -c "h.pwrite(b'\\x05' * 3000, $size - 3000)"
for s in s1 s2; do check $s "after writes following the restart"; done

# And once more across a second restart.
stop_nbdkit
start_nbdkit "${args[@]}"
for s in s1 s2; do check $s "after the second restart"; done
