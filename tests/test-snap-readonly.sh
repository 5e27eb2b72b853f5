#!/usr/bin/env bash
# nbdsnap test: a snapshot export is read-only.  It is advertised so
# (read-only, no trim, no zero, no flush); libnbd then refuses writes
# client-side with EPERM; with libnbd's strict checks off the server
# itself refuses write, trim and zero (with and without FUA) with EPERM or
# EROFS; qemu-io cannot write to it.  The snapshot's bytes (sha256) and its
# store are unchanged, the connection still reads, and the origin is
# untouched.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
size=$(( 1024 * 1024 + 300 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/at-s1.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
snapuri="nbd+unix:///s1?socket=$sock"
ctl create s1
# One copied chunk, so that the store has something a write could hit.
timeout 60 qemu-io -f raw -c 'write -P 0x33 0 4k' "$uri" >/dev/null
cp "$img" "$tmpdir/origin.img"
store_before=$(sha "$(ls "$tmpdir"/state/snap-*.store)")

nbdsh -u "$snapuri" -c "
import errno

assert h.is_read_only()
assert not h.can_trim()
assert not h.can_zero()
assert not h.can_flush()
before = h.pread(8192, 0)

def refused(what, fn, allowed):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum in allowed, '%s: %s' % (what, e)
        print('%s refused: %s' % (what, e.string))
        return
    raise AssertionError('%s on the snapshot was accepted' % what)

# libnbd knows the export is read-only.
refused('pwrite (client-side)', lambda: h.pwrite(b'x' * 512, 0),
        (errno.EPERM, errno.EROFS))

# Let the requests reach the server.
h.set_strict_mode(0)
w = (errno.EPERM, errno.EROFS)
refused('pwrite', lambda: h.pwrite(b'x' * 4096, 0), w)
refused('pwrite FUA', lambda: h.pwrite(b'x', 5000, nbd.CMD_FLAG_FUA), w)
refused('pwrite over the end', lambda: h.pwrite(b'x' * 600, $size - 300),
        w + (errno.ENOSPC, errno.EINVAL))
refused('trim', lambda: h.trim(65536, 0), w)
refused('zero', lambda: h.zero(65536, 65536), w)
refused('zero NO_HOLE', lambda: h.zero(4096, 0, nbd.CMD_FLAG_NO_HOLE), w)

# Still connected, still the same bytes.
assert h.pread(8192, 0) == before
"

timeout 60 nbdcopy "$snapuri" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "the snapshot's bytes changed"
[ "$(sha "$(ls "$tmpdir"/state/snap-*.store)")" = "$store_before" ] ||
  fail "the snapshot's store changed"
cmp "$img" "$tmpdir/origin.img" || fail "the origin changed"

# qemu-io, asked to write, fails and writes nothing.
if qemu-io -f raw -c 'write -P 0x44 0 64k' "$snapuri" \
     > "$tmpdir/qemu-io.out" 2>&1 &&
   ! grep -q -i 'error\|read-only\|denied\|not permitted' \
     "$tmpdir/qemu-io.out"; then
  cat "$tmpdir/qemu-io.out"
  fail "qemu-io wrote to the snapshot"
fi
cat "$tmpdir/qemu-io.out"
timeout 60 nbdcopy "$snapuri" "$tmpdir/got.img"
[ "$(sha "$tmpdir/got.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "the snapshot's bytes changed after qemu-io"
cmp "$img" "$tmpdir/origin.img" || fail "the origin changed after qemu-io"
