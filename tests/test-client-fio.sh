#!/usr/bin/env bash
# nbdsnap test: fio's nbd engine as the writer.  fio writes every 16K
# block of a 32 MiB origin (4K chunks: each write spans four of them)
# once, in random order, 16 writes in flight (randwrite, iodepth=16).
# Each block is written with fio's verify header (verify=md5,
# do_verify=0): magic 0xacca, type, length, seed, the block's offset,
# time, thread, number, the header's crc32c, then the md5 of the rest of
# the block - so every block says which write it is and whether it is
# whole.  While fio writes:
# * nbdcopy reads s0, a snapshot taken before fio started, again and
#   again: each copy has the sha256 of the image saved at that instant;
# * snapshots are taken every 0.1 s; in each of them every 16K block is
#   either the original block or a whole, valid fio block for that offset,
#   the very one the origin ends with (a write is never torn across its
#   chunks, never stale); a block that is fio's in one snapshot is fio's in
#   every later one; at least one snapshot caught fio in the middle.
# Afterwards fio itself verifies the origin (--verify_only, which must
# read all 2048 blocks: with do_verify=0 it reads nothing and exits 0)
# and finds every block whole, and it finds s0 is not fio's (exit 1).
#
# Why fio's verify header and not a pattern per block: --buffer_pattern
# is one pattern for every write, so it cannot tell a torn write from a
# whole one; the verify header names the block's offset and checksums it.
# md5 rather than crc32c because Python's hashlib has it (the header's
# own crc32c is 36 bytes, cheap in pure Python).
source "${abs_top_builddir:?}/tests/functions.sh"
requires fio --version
requires fio --enghelp=nbd
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
bs=16384
size=$(( 32 * 1024 * 1024 ))
nblocks=$(( size / bs ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/orig.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=4K
ctl create s0

# fio's job; --output-format=json to count the I/Os it did;
# --verify_state_save=0, or fio leaves local-nbdsnap-0-verify.state in
# the current directory.
job=(--name=nbdsnap --ioengine=nbd --uri="$uri" --rw=randwrite --bs="$bs"
     --iodepth=16 --verify=md5 --verify_state_save=0 --output-format=json)

timeout 300 fio "${job[@]}" --do_verify=0 --output="$tmpdir/fio.json" \
  2>"$tmpdir/fio.err" &
fio_pid=$!
cleanup_fn quiet_kill "$fio_pid"

# Read s0 while fio writes (at least once).
(
  n=0
  while [ "$n" -eq 0 ] || kill -0 "$fio_pid" 2>/dev/null; do
    n=$(( n + 1 ))
    timeout 60 nbdcopy "nbd+unix:///s0?socket=$sock" "$tmpdir/s0-$n.img"
    sleep 0.3
  done
) &
copy_pid=$!
cleanup_fn quiet_kill "$copy_pid"

snaps=()
for (( i = 1; i <= 30; i++ )); do
  kill -0 "$fio_pid" 2>/dev/null || break
  ctl create "p$i" >/dev/null
  snaps+=("p$i")
  sleep 0.1
done
status=0
wait "$fio_pid" || status=$?
cat "$tmpdir/fio.err"
[ "$status" -eq 0 ] || fail "fio exited $status"
wait "$copy_pid" || fail "nbdcopy of s0 during fio failed"
"$PYTHON" - "$tmpdir/fio.json" write "$nblocks" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
assert j["error"] == 0, j["error"]
n = j[sys.argv[2]]["total_ios"]
assert n == int(sys.argv[3]), "fio: %d %ss, not %s" % (n, sys.argv[2],
                                                      sys.argv[3])
PY

ncopies=0
for f in "$tmpdir"/s0-*.img; do
  [ "$(sha "$f")" = "$(sha "$tmpdir/orig.img")" ] ||
    fail "$f, s0 read during fio's writes: not the instant's bytes"
  ncopies=$(( ncopies + 1 ))
done
echo "fio wrote $nblocks blocks; s0 read $ncopies times meanwhile;" \
     "${#snaps[@]} snapshots: ${snaps[*]}"

# Every block of the origin is a whole fio block; then every block of
# every snapshot is the original one or the origin's.
"$PYTHON" - "$sock" "$tmpdir" "$bs" "${snaps[@]}" <<'PY'
import hashlib, nbd, struct, sys
sock, tmpdir, BS, snaps = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    sys.argv[4:]
orig = open(tmpdir + "/orig.img", "rb").read()
final = open(tmpdir + "/disk.img", "rb").read()
n = len(orig) // BS

def crc32c(b):
    # fio_crc32c (): seeded with ~0, not inverted at the end.
    crc = 0xffffffff
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 & -(crc & 1))
    return crc

# fio's struct verify_header (verify.h), little-endian, then the md5 of
# the rest of the block (struct vhdr_md5).
HDR = struct.Struct("<HHIQQIIHHI")
VERIFY_MD5 = 2
def fio_block_error(b, off):
    (magic, vtype, length, seed, hoff, tsec, tnsec, thread, numberio,
     crc) = HDR.unpack_from(b)
    if magic != 0xacca:
        return "magic %#x" % magic
    if crc != crc32c(b[:HDR.size - 4]):
        return "header crc32c"
    if (vtype, length, hoff) != (VERIFY_MD5, BS, off):
        return "type %d length %d offset %d" % (vtype, length, hoff)
    if hashlib.md5(b[HDR.size + 16:]).digest() != b[HDR.size:HDR.size + 16]:
        return "md5 of the data"
    return None

for i in range(n):
    b = final[i * BS:(i + 1) * BS]
    err = fio_block_error(b, i * BS)
    assert err is None, "origin block %d is not fio's: %s" % (i, err)

def diff_chunks(a, b):
    return [k for k in range(0, BS, 4096) if a[k:k + 4096] != b[k:k + 4096]]

prev = set()
middle = 0
for name in snaps:
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    got = b"".join(h.pread(4 << 20, o) for o in range(0, len(orig), 4 << 20))
    h.shutdown()
    new = set()
    for i in range(n):
        o = i * BS
        b = got[o:o + BS]
        if b == final[o:o + BS]:
            new.add(i)
        elif b != orig[o:o + BS]:
            raise AssertionError(
                "%s: block %d (offset %d) is neither the original nor fio's "
                "(%s); 4K pieces unlike the original: %s, unlike fio's: %s"
                % (name, i, o, fio_block_error(b, o),
                   diff_chunks(b, orig[o:o + BS]),
                   diff_chunks(b, final[o:o + BS])))
    lost = prev - new
    assert not lost, "%s: %d blocks of fio's in an older snapshot are " \
        "not in it, e.g. %d" % (name, len(lost), min(lost))
    if 0 < len(new) < n:
        middle += 1
    print("%s: %d of %d blocks written by fio" % (name, len(new), n))
    prev = new
assert middle > 0, "no snapshot caught fio in the middle of its writes"
PY

# fio's own verification: all blocks of the origin, none of s0.
timeout 300 fio "${job[@]}" --verify_only --output="$tmpdir/verify.json" \
  2>&1 || fail "fio --verify_only: the origin has blocks that are not fio's"
"$PYTHON" - "$tmpdir/verify.json" read "$nblocks" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
assert j["error"] == 0, j["error"]
n = j[sys.argv[2]]["total_ios"]
assert n == int(sys.argv[3]), "fio: %d %ss, not %s" % (n, sys.argv[2],
                                                      sys.argv[3])
PY
status=0
timeout 300 fio "${job[@]}" --uri="nbd+unix:///s0?socket=$sock" \
  --verify_only --verify_fatal=1 --output="$tmpdir/verify-s0.json" \
  > "$tmpdir/verify-s0.err" 2>&1 || status=$?
[ "$status" -eq 1 ] ||
  { cat "$tmpdir/verify-s0.err"; fail "fio --verify_only of s0 exited $status, not 1"; }
grep -q "bad magic header" "$tmpdir/verify-s0.err" ||
  fail "fio --verify_only of s0: no bad block reported"
