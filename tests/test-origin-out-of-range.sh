#!/usr/bin/env bash
# nbdsnap test: requests past the end of the origin are refused whole.
# With libnbd's client-side bounds checks off, reads past the end fail
# with EINVAL, writes and zeros with ENOSPC (the NBD spec's answer for
# writes past the end), trims with EINVAL; the image's bytes and size are
# unchanged; the last bytes can still be read and written.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

img="$tmpdir/disk.img"
size=$(( 1024 * 1024 + 512 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/orig.img"

start_nbdkit "$img"

nbdsh -u "$uri" -c "
import errno
size = $size
h.set_strict_mode(0)            # let the server answer, not libnbd
assert h.get_size() == size

def refused(what, fn, err):
    try:
        fn()
    except nbd.Error as e:
        # nbd.Error.errno is the name, e.g. 'EINVAL'
        assert e.errno == errno.errorcode[err], \
            '%s: %s, expected %s' % (what, e, errno.errorcode[err])
        return
    raise AssertionError('%s past the end was accepted' % what)

refused('pread', lambda: h.pread(1024, size - 512), errno.EINVAL)
refused('pread at end', lambda: h.pread(1, size), errno.EINVAL)
refused('pread far', lambda: h.pread(512, 1 << 40), errno.EINVAL)
refused('pwrite', lambda: h.pwrite(b'x' * 1024, size - 512), errno.ENOSPC)
refused('pwrite far', lambda: h.pwrite(b'x', 1 << 40), errno.ENOSPC)
refused('zero', lambda: h.zero(1024, size - 512), errno.ENOSPC)
refused('trim', lambda: h.trim(1024, size - 512), errno.EINVAL)

# The connection is still good and the last bytes are reachable.
last = h.pread(512, size - 512)
h.pwrite(last, size - 512)
"

cmp "$img" "$tmpdir/orig.img" || fail "the image changed"
[ "$(stat -c %s "$img")" -eq "$size" ] || fail "the image changed size"
