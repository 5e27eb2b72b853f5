#!/usr/bin/env bash
# nbdsnap test: reads and block-status past the end of a snapshot are
# refused whole (EINVAL), by libnbd and, with its strict checks off, by the
# server; the connection survives, the last bytes of the snapshot (in a
# copied, short last chunk) still read as at snapshot time.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
size=$(( 1024 * 1024 + 4097 ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/at-s1.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1
# Copy the last, short chunk.
timeout 60 qemu-io -f raw -c "write -P 0x99 $(( size - 4097 )) 4097" \
  "$uri" >/dev/null

nbdsh -c "
import errno
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri('nbd+unix:///s1?socket=$sock')
size = $size
want = open('$tmpdir/at-s1.img', 'rb').read()
assert h.get_size() == size

def refused(what, fn):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == errno.EINVAL, '%s: %s' % (what, e)
        return
    raise AssertionError('%s past the end was accepted' % what)

for strict in (True, False):
    if not strict:
        h.set_strict_mode(0)            # let the server answer
    refused('pread across the end', lambda: h.pread(2, size - 1))
    refused('pread at the end', lambda: h.pread(1, size))
    refused('pread far', lambda: h.pread(4096, 1 << 40))
    refused('block_status at the end',
            lambda: h.block_status(1, size, lambda *a: 0))
    assert h.pread(4097, size - 4097) == want[-4097:]
    assert h.pread(1, size - 1) == want[-1:]
"
