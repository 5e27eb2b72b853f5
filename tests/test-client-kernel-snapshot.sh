#!/usr/bin/env bash
# nbdsnap test: an ext4 file system through the Linux kernel's NBD client
# (nbd-client, /dev/nbdN in a QEMU guest).  The origin is an ext4 image
# made from a directory of known files; snapshot s1 is taken; the guest
# mounts the origin read-write and changes, appends to, renames, deletes
# and adds files, and syncs.  With the origin still mounted, the guest
# attaches s1 (the kernel sees it read-only), and its device sha256 and
# every file's sha256 (mounted -o ro,noload) are those of the instant;
# then it remounts the origin and finds exactly the changed tree.  On the
# host, s1 read with nbdcopy is still the instant and both file systems
# pass e2fsck -fn.
source "${abs_top_builddir:?}/tests/functions.sh"
source "$abs_top_srcdir/tests/vm.sh"
vm_requires
requires mkfs.ext4 -V
requires e2fsck -V
requires nbdcopy --version

K=1024
files="$tmpdir/files"
mkdir -p "$files/sub/deep" "$files/many"
echo "a small text file" > "$files/small.txt"
: > "$files/empty"
head -c $(( 300 * K )) /dev/urandom > "$files/big.bin"
head -c $(( 200 * K )) /dev/urandom > "$files/change.bin"
head -c 70000 /dev/urandom > "$files/sub/deep/nested.bin"
head -c $(( 100 * K )) /dev/urandom > "$files/delete-me.bin"
seq 1 5000 > "$files/append.log"
for i in $(seq 1 20); do
  head -c $(( i * 3001 )) /dev/urandom > "$files/many/f$i"
done
head -c 20000 /dev/urandom > "$tmpdir/patch.bin"
head -c $(( 150 * K )) /dev/urandom > "$tmpdir/new.bin"

# The change, run by the guest on the mounted origin and by the host on
# a copy of the tree (busybox and coreutils alike): mutate DIR DATA.
mutate='
mutate ()
{
  dd if="$2/patch.bin" of="$1/change.bin" bs=4096 seek=10 conv=notrunc \
     2>/dev/null
  cat "$2/patch.bin" >> "$1/append.log"
  rm "$1/delete-me.bin" "$1/many/f7"
  mv "$1/small.txt" "$1/sub/renamed.txt"
  mkdir "$1/new"
  cp "$2/new.bin" "$1/new/new.bin"
  echo hello > "$1/new/hello.txt"
  dd if="$2/patch.bin" of="$1/big.bin" bs=1 count=1 seek=300000 \
     conv=notrunc 2>/dev/null
}'

# sha256sum lines ("HEX  ./PATH") of every file under DIR, sorted.
manifest ()
{
  (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum)
}

img="$tmpdir/disk.img"
mkfs.ext4 -q -F -L nbdsnap -d "$files" "$img" 32M
manifest "$files" > "$tmpdir/files-s1"
cp "$img" "$tmpdir/at-s1.img"
cp -a "$files" "$tmpdir/after"
eval "$mutate"
mutate "$tmpdir/after" "$tmpdir"
manifest "$tmpdir/after" > "$tmpdir/files-after"
! cmp -s "$tmpdir/files-s1" "$tmpdir/files-after"

cat > "$tmpdir/guest.sh" <<EOF
$mutate
EOF
cat >> "$tmpdir/guest.sh" <<'EOF'
# Like the host's manifest; each line as RESULT KEY HEX  ./PATH.
manifest ()
{
  (cd "$1" && find . -type f | sort | xargs sha256sum) |
    while read -r line; do result "$2" "$line"; done
}
mkdir -p /mnt/origin /mnt/s1
attach nbd0 ""
mount -t ext4 /dev/nbd0 /mnt/origin
mutate /mnt/origin /data
sync
attach nbd1 s1
result s1-ro "$(cat /sys/block/nbd1/ro)"
result s1-dev "$(sha /dev/nbd1)"
mount -t ext4 -o ro,noload /dev/nbd1 /mnt/s1
manifest /mnt/s1 s1-files
umount /mnt/s1
detach nbd1
umount /mnt/origin
mount -t ext4 -o ro /dev/nbd0 /mnt/origin
manifest /mnt/origin origin-files
umount /mnt/origin
detach nbd0
EOF

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
ctl create s1

vm_run "$tmpdir/guest.sh" "$tmpdir/patch.bin" "$tmpdir/new.bin"
[ "$vm_status" -eq 0 ] || fail "the guest script failed ($vm_status)"

[ "$(vm_result s1-ro)" = 1 ] || fail "the kernel sees s1 as writable"
[ "$(vm_result s1-dev)" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "the guest read a wrong s1 device"
vm_results s1-files > "$tmpdir/guest-s1"
diff -u "$tmpdir/files-s1" "$tmpdir/guest-s1" ||
  fail "the files of s1 in the guest are not those of the instant"
vm_results origin-files > "$tmpdir/guest-after"
diff -u "$tmpdir/files-after" "$tmpdir/guest-after" ||
  fail "the files of the origin in the guest are not the changed tree"

timeout 60 nbdcopy "nbd+unix:///s1?socket=$sock" "$tmpdir/s1.img"
[ "$(sha "$tmpdir/s1.img")" = "$(sha "$tmpdir/at-s1.img")" ] ||
  fail "nbdcopy read a wrong s1"
stop_nbdkit
e2fsck -fn "$tmpdir/s1.img" || fail "e2fsck: s1"
e2fsck -fn "$img" || fail "e2fsck: the origin"
! cmp -s "$img" "$tmpdir/at-s1.img" || fail "the origin did not change"
