#!/usr/bin/env bash
# nbdsnap test: nbdkit -r serves the origin read-only.
# The export says read-only; writes, zeros and trims (with libnbd's own
# checks off so that the server must refuse them) fail with EPERM or
# EROFS; qemu-io cannot write; the image is unchanged and still readable.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

img="$tmpdir/disk.img"
head -c $(( 2 * 1024 * 1024 )) /dev/urandom > "$img"
cp "$img" "$tmpdir/orig.img"

start_nbdkit -r "$img"

nbdsh -u "$uri" -c '
assert h.is_read_only()
h.set_strict_mode(0)
for what, fn in (("pwrite", lambda: h.pwrite(b"x" * 4096, 0)),
                 ("zero", lambda: h.zero(4096, 0)),
                 ("trim", lambda: h.trim(4096, 0))):
    try:
        fn()
    except nbd.Error as e:
        assert e.errno in ("EPERM", "EROFS"), "%s: %s" % (what, e)
        continue
    raise AssertionError("%s on a read-only export was accepted" % what)
'

if qemu-io -f raw -c 'write -P 0x11 0 64k' "$uri"; then
  fail "qemu-io wrote to a read-only export"
fi

cmp "$img" "$tmpdir/orig.img" || fail "the image changed"
nbdcopy "$uri" "$tmpdir/copy.img"
cmp "$img" "$tmpdir/copy.img" || fail "read back different bytes"
