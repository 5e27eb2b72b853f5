#!/usr/bin/env bash
# nbdsnap test: a snapshot keeps its instant while the origin is
# overwritten.  The image size is not a multiple of the chunk size.  After
# partial writes (qemu-io, nbdsh across the last byte) and a full overwrite
# (nbdcopy), the snapshot read with nbdcopy and with qemu-img convert has
# the sha256 of a copy of the image taken at snapshot time, the origin has
# the new bytes, and every candidate chunk was copied exactly once.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires qemu-img --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
chunk=65536
size=$(( 3 * 1024 * 1024 + 12345 ))     # 49 chunks, the last one partial
nchunks=$(( (size + chunk - 1) / chunk ))
head -c "$size" /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
snapuri="nbd+unix:///s1?socket=$sock"

cp "$img" "$tmpdir/at-s1.img"
ctl create s1

# Partial overwrites: two chunks and a bit, then the tail across EOF.
timeout 60 qemu-io -f raw -c 'write -P 0x11 0 140000' "$uri" >/dev/null
nbdsh -u "$uri" -c "h.pwrite(b'\\x77' * 70000, $size - 70000)"
timeout 60 nbdcopy "$snapuri" "$tmpdir/s1-a.img"
[ "$(sha "$tmpdir/s1-a.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "snapshot changed by partial origin writes"

# Overwrite every byte.
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"
cmp "$img" "$tmpdir/new.img" || fail "the origin lacks the new bytes"

timeout 60 nbdcopy "$snapuri" "$tmpdir/s1-b.img"
[ "$(sha "$tmpdir/s1-b.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "snapshot changed by the full overwrite (nbdcopy)"
# QEMU's NBD client rounds the size up to 512 bytes and reads the
# padding as zeros: compare the image's bytes, then the padding.
timeout 60 qemu-img convert -f raw -O raw "$snapuri" "$tmpdir/s1-c.img"
[ "$(stat -c %s "$tmpdir/s1-c.img")" -eq $(( (size + 511) / 512 * 512 )) ] ||
  fail "qemu-img convert: wrong size"
[ "$(head -c "$size" "$tmpdir/s1-c.img" | sha256sum | cut -d' ' -f1)" \
  = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "snapshot changed by the full overwrite (timeout 60 qemu-img convert)"
tail -c +$(( size + 1 )) "$tmpdir/s1-c.img" | cmp -s - <(head -c \
  $(( (size + 511) / 512 * 512 - size )) /dev/zero) ||
  fail "qemu-img convert: padding is not zeros"

ctl --json info s1 > "$tmpdir/info.json"
"$PYTHON" - "$tmpdir/info.json" "$nchunks" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["snapshot"]
n = int(sys.argv[2])
assert s["chunks_candidate"] == n, s
assert s["chunks_copied"] == n, s
assert s["cow_count"] == n, s           # each chunk copied once, not twice
assert s["state"] == "live", s
PY
