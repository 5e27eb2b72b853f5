#!/usr/bin/env bash
# nbdsnap test: flush and FUA are accepted and really sync the image.
# nbdkit runs under strace counting fdatasync of the image: plain writes
# must not sync, and each FUA write, FUA zero, FUA trim and flush must
# sync once (FUA is native, not emulated by nbdkit with a flush).  (The
# state directory's seal is synced too, on another descriptor.)  The bytes
# are checked too.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires strace -f -o /dev/null true

img="$tmpdir/disk.img"
head -c $(( 1024 * 1024 )) /dev/urandom > "$img"
cp "$img" "$tmpdir/orig.img"

nbdkit_wrapper=(strace -f -qq -y -e trace=fdatasync -o "$tmpdir/trace")
start_nbdkit "$img"

nbdsh -u "$uri" -c '
assert h.can_flush()
assert h.can_fua()
h.pwrite(b"a" * 4096, 0)
h.pwrite(b"b" * 4096, 8192)
h.pwrite(b"c" * 4096, 4096, nbd.CMD_FLAG_FUA)
h.flush()
h.zero(4096, 16384, nbd.CMD_FLAG_FUA)
h.trim(4096, 32768, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 0) == b"a" * 4096
assert h.pread(4096, 4096) == b"c" * 4096
assert h.pread(4096, 8192) == b"b" * 4096
assert h.pread(4096, 16384) == bytes(4096)
assert h.pread(4096, 32768) == bytes(4096)
'
stop_nbdkit                     # flushes strace's output

cat "$tmpdir/trace"
syncs="$(grep -c 'fdatasync([0-9]*<.*/disk\.img>)' "$tmpdir/trace" || :)"
[ "$syncs" -eq 4 ] || fail "$syncs fdatasync calls, expected 4"

# Untouched bytes are the original ones.
cmp -n 4096 -i 12288 "$img" "$tmpdir/orig.img" ||
  fail "bytes at 12288 changed"
cmp -i 36864 "$img" "$tmpdir/orig.img" || fail "bytes after 36864 changed"
