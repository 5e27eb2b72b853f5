#!/usr/bin/env bash
# nbdsnap test: snapshots as the disks of a QEMU guest.  Two snapshots
# are given to qemu-system-x86_64 as read-only virtio disks
# (-drive file=nbd+unix:///NAME?socket=...,readonly=on,if=virtio): QEMU's
# own NBD client, not the kernel's.  While a host client keeps writing
# random chunks of the origin (copy-on-write into s2), the guest reads
# /dev/vda (s1) and /dev/vdb (s2) whole: each has the size and sha256 of
# its instant and the guest sees both read-only.
source "${abs_top_builddir:?}/tests/functions.sh"
source "$abs_top_srcdir/tests/vm.sh"
vm_requires
requires "$PYTHON" -c 'import nbd'

M=$(( 1024 * 1024 ))
size=$(( 16 * M ))
img="$tmpdir/disk.img"
head -c "$size" /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
ctl create s1
cp "$img" "$tmpdir/at-s1.img"
nbdsh -u "$uri" -c 'import os; h.pwrite(os.urandom(4 << 20), 3 << 20)'
ctl create s2
cp "$img" "$tmpdir/at-s2.img"
! cmp -s "$tmpdir/at-s1.img" "$tmpdir/at-s2.img"

# The writer: a random 64K-unaligned piece anywhere in the origin every
# 20 ms until $tmpdir/stop appears; it prints how many it wrote.
STOP="$tmpdir/stop" nbdsh -u "$uri" -c '
import os, random, time
n, size = 0, h.get_size()
while not os.path.exists(os.environ["STOP"]):
    off = random.randrange(0, size - 70000)
    h.pwrite(os.urandom(70000), off)
    n += 1
    time.sleep(0.02)
print(n)
' > "$tmpdir/writes" &
writer=$!
cleanup_fn quiet_kill "$writer"

cat > "$tmpdir/guest.sh" <<'EOF2'
for d in vda vdb; do
  result $d-size $(( $(cat /sys/block/$d/size) * 512 ))
  result $d-ro "$(cat /sys/block/$d/ro)"
  result $d "$(sha /dev/$d)"
done
EOF2

drive ()
{
  echo "file=nbd+unix:///$1?socket=$sock,format=raw,readonly=on,if=virtio"
}
vm_net=no
vm_run "$tmpdir/guest.sh" -- -drive "$(drive s1)" -drive "$(drive s2)"
touch "$tmpdir/stop"
wait "$writer" || fail "the writer failed"
[ "$vm_status" -eq 0 ] || fail "the guest script failed ($vm_status)"
echo "the host wrote $(cat "$tmpdir/writes") pieces during the boot"
[ "$(cat "$tmpdir/writes")" -gt 0 ] || fail "no writes during the boot"

for d in vda:s1 vdb:s2; do
  dev=${d%:*} s=${d#*:}
  [ "$(vm_result "$dev-size")" -eq "$size" ] || fail "$dev: wrong size"
  [ "$(vm_result "$dev-ro")" = 1 ] || fail "$dev is writable in the guest"
  [ "$(vm_result "$dev")" = "$(sha "$tmpdir/at-$s.img")" ] ||
    fail "$dev: the guest did not read $s's instant"
done
