#!/usr/bin/env bash
# nbdsnap test: the Linux kernel's NBD client (nbd-client, /dev/nbd0 in a
# QEMU guest) writes the origin.  One boot: O_DIRECT writes of one
# request each that straddle 64K chunk boundaries and the end of the
# image, one big enough that the kernel splits it, discards (blkdiscard)
# on and off chunk boundaries and a flush; then the host takes snapshot
# s1 while the guest stays connected, and the guest overwrites and
# discards again, partly over what s1 holds.  The origin (read in the
# guest with O_DIRECT, and on the host from the file) has the sha256 of
# the image the host computes from the same list of operations; s1 (read
# by the guest's kernel client and by nbdcopy) has the bytes of the
# first phase; s0, taken before the boot, the bytes of the start.  The
# log filter shows the kernel really sent the straddling writes and the
# discards as such.
source "${abs_top_builddir:?}/tests/functions.sh"
source "$abs_top_srcdir/tests/vm.sh"
vm_requires
requires nbdcopy --version

K=1024
M=$(( 1024 * K ))
chunk=$(( 64 * K ))
size=$(( 8 * M + 4608 ))        # a multiple of 512, not of the chunk
img="$tmpdir/disk.img"
head -c "$size" /dev/urandom > "$img"
head -c $(( 2 * M )) /dev/urandom > "$tmpdir/w.bin"
cp "$img" "$tmpdir/at-s0.img"

# The operations, one per line, run by the guest (below) and by the host
# (expected images): write OFFSET LENGTH FROM: one O_DIRECT write(2) of
# LENGTH bytes of w.bin from FROM; trim OFFSET LENGTH: blkdiscard;
# flush: fsync of the device.  Offsets and lengths are multiples of 512.
cat > "$tmpdir/ops1" <<EOF
write $(( 60 * K )) $(( 8 * K )) 0
write $(( 3 * chunk - 512 )) $(( 128 * K )) 12288
write $(( 1 * M )) 512 7
write $(( 2 * M + 4096 )) $(( 300 * K )) 400000
write $(( size - 16 * K )) $(( 16 * K )) 999936
trim $(( 3 * M + 512 )) $(( 200 * K ))
trim $(( 4 * M )) $(( 128 * K ))
flush
EOF
cat > "$tmpdir/ops2" <<EOF
write $(( 56 * K )) $(( 64 * K )) 1500000
trim $(( M - 4 * K )) $(( 8 * K ))
write $(( 3 * M + 4096 )) 4096 77777
write $(( 6 * M - 512 )) 1024 31
trim $(( size - 4608 )) 4608
flush
EOF

cat > "$tmpdir/guest.sh" <<'EOF'
run_ops ()
{
  while read -r op off len from; do
    case $op in
      write)
        dd if=/data/w.bin of=/dev/nbd0 bs=$len count=1 skip=$from seek=$off \
           iflag=skip_bytes oflag=seek_bytes,direct conv=notrunc 2>/tmp/err ||
          { cat /tmp/err; return 1; } ;;
      trim) blkdiscard -o $off -l $len /dev/nbd0 ;;
      flush) dd if=/dev/null of=/dev/nbd0 count=0 conv=notrunc,fsync \
                2>/dev/null ;;
    esac
  done < "$1"
}
attach nbd0 ""
run_ops /data/ops1
result phase1 done
wait_export s1
run_ops /data/ops2
dd if=/dev/nbd0 of=/tmp/origin bs=1M iflag=direct 2>/dev/null
result origin "$(sha /tmp/origin)"
rm /tmp/origin
detach nbd0
attach nbd1 s1
result s1 "$(sha /dev/nbd1)"
detach nbd1
attach nbd2 s0
result s0 "$(sha /dev/nbd2)"
detach nbd2
EOF

# The expected images: apply the operations to a copy.
expect ()
{
  cp "$1" "$3"
  "$PYTHON" - "$3" "$2" "$tmpdir/w.bin" <<'PY'
import sys
img, ops, w = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
with open(img, "r+b") as f:
    for line in open(ops):
        op, *args = line.split()
        if op == "write":
            off, n, src = map(int, args)
            f.seek(off); f.write(w[src:src + n])
        elif op == "trim":
            off, n = map(int, args)
            f.seek(off); f.write(bytes(n))
PY
}
expect "$img" "$tmpdir/ops1" "$tmpdir/at-s1.img"
expect "$tmpdir/at-s1.img" "$tmpdir/ops2" "$tmpdir/end.img"
[ "$(stat -c %s "$tmpdir/end.img")" -eq "$size" ]

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K --filter=log logfile="$tmpdir/requests.log"
ctl create s0

vm_start "$tmpdir/guest.sh" "$tmpdir/w.bin" "$tmpdir/ops1" "$tmpdir/ops2"
vm_wait_for 240 '^RESULT phase1 done'
ctl create s1
vm_wait
[ "$vm_status" -eq 0 ] || fail "the guest script failed ($vm_status)"

[ "$(vm_result origin)" = "$(sha "$tmpdir/end.img")" ] ||
  fail "the guest read back a wrong origin"
[ "$(vm_result s1)" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "the guest's kernel client read a wrong s1"
[ "$(vm_result s0)" = "$(sha "$tmpdir/at-s0.img")" ] ||
  fail "the guest's kernel client read a wrong s0"

for s in s0 s1; do
  timeout 60 nbdcopy "nbd+unix:///$s?socket=$sock" "$tmpdir/$s.img"
  [ "$(sha "$tmpdir/$s.img")" = "$(sha "$tmpdir/at-$s.img")" ] ||
    fail "nbdcopy read a wrong $s"
done
stop_nbdkit
cmp "$img" "$tmpdir/end.img" || fail "the origin file is not the expected image"

# What the kernel sent: writes across a chunk boundary (one request
# each), discards that are not chunk-aligned, flushes.
"$PYTHON" - "$tmpdir/requests.log" "$chunk" <<'PY'
import re, sys
chunk = int(sys.argv[2])
reqs = [(m.group(1), int(m.group(2), 16), int(m.group(3), 16))
        for m in re.finditer(r"connection=\d+ (Write|Trim|Zero) id=\d+ "
                             r"offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)",
                             open(sys.argv[1]).read())]
flushes = open(sys.argv[1]).read().count(" Flush id=")
crossing = [r for r in reqs if r[0] == "Write" and
            r[1] // chunk != (r[1] + r[2] - 1) // chunk]
odd_trims = [r for r in reqs if r[0] == "Trim" and
             (r[1] % chunk or r[2] % chunk)]
print("requests:", {k: sum(1 for r in reqs if r[0] == k)
                    for k in ("Write", "Trim", "Zero")}, "flushes:", flushes)
print("chunk-crossing writes:", [(hex(o), n) for _, o, n in crossing])
print("unaligned trims:", [(hex(o), n) for _, o, n in odd_trims])
assert (60 * 1024, 8 * 1024) in [(o, n) for _, o, n in crossing], crossing
assert len(crossing) >= 4, crossing
assert odd_trims, reqs
assert flushes >= 2, flushes
PY
