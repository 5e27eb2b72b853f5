# nbdsnap tests: a Linux guest under QEMU, for the real-client tests
# (issue 8): the kernel's NBD client (tests/test-client-kernel-*.sh) and a
# QEMU guest whose disks are snapshots (tests/test-client-qemu-guest.sh).
# Sourced after functions.sh:
#
#   source "${abs_top_builddir:?}/tests/functions.sh"
#   source "$abs_top_srcdir/tests/vm.sh"
#   vm_requires
#
# Notes on the design
#
# * The guest kernel is Debian's linux-image-amd64 in /boot (the newest
#   /boot/vmlinuz-KVER whose modules are in /lib/modules/KVER; or
#   $NBDSNAP_VM_KVER), not the host's kernel.  It runs under
#   qemu-system-x86_64 with TCG (no KVM needed), -cpu max (crc32c-intel,
#   which ext4 wants, needs SSE4.2), 256 MiB, one CPU, no reboot.
# * The kernel is booted uncompressed: vmlinux, extracted from vmlinuz as
#   linux's scripts/extract-vmlinux does (the first xz or gzip payload that
#   decompresses to an ELF), through QEMU's PVH entry.  Under TCG that
#   skips the bzImage's own decompression (about 3 s of every boot).  If
#   nothing can be extracted the bzImage is booted as it is.
# * The initramfs (newc, uncompressed) holds the static busybox, the host's
#   nbd-client with the libraries ldd lists, the modules
#   `modprobe -S KVER --show-depends' gives for virtio_pci virtio_net nbd
#   ext4 virtio_blk, in load order (compressed .ko files are decompressed
#   here: busybox insmod loads them one by one), and the /init below.
# * Both are built once and cached in $abs_top_builddir/tests/vm/:
#   vmlinux-KVER-HASH (HASH: of the vmlinuz) and initramfs-KVER-KEY.cpio
#   (KEY: of the vmlinuz, this file, which holds /init, busybox and
#   nbd-client), so that any change rebuilds.  Each is built under a
#   temporary name and renamed: tests that build at the same time each
#   make a whole file and the last rename wins.  make clean removes them.
# * Per run, the test's guest script (/test.sh) and its data files
#   (/data/BASENAME) go in a second small newc archive, appended to a copy
#   of the cached one: the kernel unpacks both into the rootfs.
# * /init mounts /dev /proc /sys, loads the modules (nbd with nbds_max=4
#   max_part=0: no partition scan reads the export behind our back), gives
#   eth0 10.0.2.15/24 (if the kernel command line has nbdsnap.net=1),
#   prints "VM READY", sources /test.sh in a subshell
#   under `set -e', prints "VM EXIT STATUS" and powers off (poweroff -f).
# * Network without any TCP listener on the host: user networking with
#   restrict=on, and guestfwd sends the guest's connections to
#   10.0.2.100:10809 to `socat STDIO UNIX-CONNECT:$sock', spawned once per
#   connection.  slirp gives the command the connection as stdin, stdout
#   and stderr: socat's stderr goes to $tmpdir/socat.log instead.
# * The serial console (kernel messages at loglevel 4, and everything the
#   script prints) is written to $vm_log; the script reports with lines
#   "RESULT KEY VALUE..." and the host reads them (vm_result).  Host-side
#   steps during a run wait for a line with vm_wait_for.
# * Every run has a timeout ($vm_timeout s, default 300); a run that ends
#   without "VM EXIT" (a panic, a hang, QEMU failing) fails the test.
#
# Host-side functions
#
#   vm_requires            skip (77) unless QEMU, a guest kernel with its
#                          modules, static busybox, nbd-client, socat,
#                          cpio and modprobe are there (scripts/deps)
#   vm_start SCRIPT [FILE...] [-- QEMU-ARG...]
#                          boot the guest in the background running the
#                          guest script SCRIPT (a file) with FILEs as
#                          /data/BASENAME; QEMU-ARGs are added (drives);
#                          with $sock set (start_nbdkit) the guest reaches
#                          that nbdkit at 10.0.2.100:10809 (unless
#                          vm_net=no: no network device at all)
#   vm_wait                wait for it; $vm_status is the guest script's
#                          exit status; the console log goes to stderr
#   vm_run SCRIPT ...      vm_start, then vm_wait
#   vm_wait_for SECONDS ERE  wait until a console line matches ERE
#   vm_result KEY          the VALUE of the last "RESULT KEY VALUE" line
#                          (fails if there is none)
#   vm_results KEY         the VALUEs of all "RESULT KEY VALUE" lines
#
# Guest-side functions (sh, busybox), for the guest script
#
#   attach DEV EXPORT [NBD-CLIENT-ARG...]
#                          connect /dev/DEV (nbd0...) to the export EXPORT
#                          ("" is the origin) of the host's nbdkit
#   detach DEV             disconnect it
#   result KEY VALUE...    print "RESULT KEY VALUE..."
#   sha FILE               its sha256, the hex digest only
#   wait_export NAME       wait until the server lists the export NAME (the
#                          host signals the guest by creating a snapshot)

vm_timeout=${vm_timeout:-300}
vm_net=yes
vm_cache="$abs_top_builddir/tests/vm"
vm_log="$tmpdir/console.log"
vm_nbd_client="$(command -v nbd-client || echo /usr/sbin/nbd-client)"
vm_busybox=/bin/busybox
vm_modules="virtio_pci virtio_net nbd ext4 virtio_blk"

# The guest kernel's version: the newest in /boot with its modules.
_vm_kver ()
{
  local f v best=
  if [ -n "${NBDSNAP_VM_KVER:-}" ]; then
    echo "$NBDSNAP_VM_KVER"
    return
  fi
  for f in /boot/vmlinuz-*; do
    v=${f#/boot/vmlinuz-}
    [ -f "/lib/modules/$v/modules.dep" ] || continue
    best+="$v"$'\n'
  done
  printf '%s' "$best" | sort -V | tail -n 1
}

vm_requires ()
{
  local c
  for c in qemu-system-x86_64 socat cpio modprobe; do
    command -v "$c" >/dev/null ||
      { echo "$0: no $c: skipping this test"; exit 77; }
  done
  [ -x "$vm_nbd_client" ] ||
    { echo "$0: no nbd-client: skipping this test"; exit 77; }
  # busybox-static, not the dynamic busybox: the guest has no libc of
  # its own beyond nbd-client's.
  if [ ! -x "$vm_busybox" ] || ldd "$vm_busybox" >/dev/null 2>&1; then
    echo "$0: no static $vm_busybox (busybox-static): skipping this test"
    exit 77
  fi
  vm_kver=$(_vm_kver)
  if [ -z "$vm_kver" ] || [ ! -f "/boot/vmlinuz-$vm_kver" ]; then
    echo "$0: no guest kernel in /boot (linux-image-amd64): skipping this test"
    exit 77
  fi
  [ -r "/boot/vmlinuz-$vm_kver" ] ||
    fail "/boot/vmlinuz-$vm_kver is not readable (run as root, or chmod)"
}

# The guest's /init (busybox sh), with the guest-side functions.
_vm_init ()
{
  cat <<'EOF'
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /tmp /mnt
while read -r mod args; do
  insmod "/lib/modules/$mod.ko" $args || echo "VM WARN: insmod $mod failed"
done < /lib/modules/order
ip link set lo up
if grep -q 'nbdsnap.net=1' /proc/cmdline; then
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do
    sleep 0.1; i=$((i + 1))
  done
  ip addr add 10.0.2.15/24 dev eth0
  ip link set eth0 up
fi

attach ()
{
  _dev=$1 _name=$2
  shift 2
  nbd-client 10.0.2.100 10809 "/dev/$_dev" -N "$_name" "$@"
}
detach ()
{
  nbd-client -d "/dev/$1"
}
result ()
{
  echo "RESULT $*"
}
sha ()
{
  sha256sum < "$1" | cut -d' ' -f1
}
wait_export ()
{
  _i=0
  until nbd-client -l 10.0.2.100 10809 2>/dev/null | grep -q "^$1:"; do
    _i=$((_i + 1))
    [ $_i -lt 600 ] || { echo "VM: no export $1 after 60 s"; return 1; }
    sleep 0.1
  done
}

echo "VM READY"
(set -e; cd /tmp; . /test.sh)
echo "VM EXIT $?"
sync
poweroff -f
EOF
}

# _vm_extract_vmlinux VMLINUZ OUT: the uncompressed kernel, or exit 1.
_vm_extract_vmlinux ()
{
  "$PYTHON" - "$1" "$2" <<'PY'
import lzma, sys, zlib
data = open(sys.argv[1], "rb").read()
for magic, unpack in (
        (b"\xfd7zXZ\x00",
         lambda b: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(b)),
        (b"\x1f\x8b\x08",
         lambda b: zlib.decompressobj(31).decompress(b))):
    pos = data.find(magic)
    while pos >= 0:
        try:
            out = unpack(data[pos:])
            if out[:4] == b"\x7fELF":
                open(sys.argv[2], "wb").write(out)
                sys.exit(0)
        except (lzma.LZMAError, zlib.error):
            pass
        pos = data.find(magic, pos + 1)
sys.exit(1)
PY
}

# _vm_build_initramfs OUT
_vm_build_initramfs ()
{
  local out=$1 root f path args name
  root=$(mktemp -d "$vm_cache/tmp-root.XXXXXX")
  cleanup_fn rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,mnt,data} \
           "$root/lib/modules"
  cp "$vm_busybox" "$root/bin/busybox"
  cp "$vm_nbd_client" "$root/sbin/nbd-client"
  for f in $(ldd "$vm_nbd_client" | awk '{ for (i = 1; i <= NF; i++)
                                             if ($i ~ /^\//) print $i }'); do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
  done
  # The modules in load order, each once; nbd with our own options.
  modprobe -a -S "$vm_kver" --show-depends $vm_modules |
    while read -r what path args; do
      [ "$what" = insmod ] || continue
      name=$(basename "$path")
      name=${name%%.ko*}
      [ ! -e "$root/lib/modules/$name.ko" ] || continue
      case "$path" in
        *.ko) cp "$path" "$root/lib/modules/$name.ko" ;;
        *.ko.xz) xz -dc "$path" > "$root/lib/modules/$name.ko" ;;
        *.ko.zst) zstd -qdc "$path" > "$root/lib/modules/$name.ko" ;;
        *.ko.gz) gzip -dc "$path" > "$root/lib/modules/$name.ko" ;;
        *) echo "$0: unknown module file $path" >&2; exit 1 ;;
      esac
      [ "$name" != nbd ] || args="nbds_max=4 max_part=0"
      echo "$name $args" >> "$root/lib/modules/order"
    done
  grep -q '^nbd ' "$root/lib/modules/order" ||
    fail "modprobe --show-depends gave no nbd module for $vm_kver"
  _vm_init > "$root/init"
  chmod 755 "$root/init"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out"
  rm -rf "$root"
}

# Build (or find) the cached kernel and initramfs: $vm_kernel, $vm_initrd.
# Files of other keys are removed when a new one is made.
_vm_prepare ()
{
  local vmlinuz="/boot/vmlinuz-$vm_kver" khash key tmp
  mkdir -p "$vm_cache"
  khash=$(sha256sum < "$vmlinuz" | cut -c1-12)
  vm_kernel="$vm_cache/vmlinux-$vm_kver-$khash"
  if [ ! -s "$vm_kernel" ]; then
    tmp=$(mktemp "$vm_cache/tmp-vmlinux.XXXXXX")
    cleanup_fn rm -f "$tmp"
    if _vm_extract_vmlinux "$vmlinuz" "$tmp"; then
      chmod 644 "$tmp"
      _vm_drop_stale vmlinux "$vm_kernel"
      mv -f "$tmp" "$vm_kernel"
    else
      echo "$0: no vmlinux found in $vmlinuz: booting the bzImage"
      vm_kernel="$vmlinuz"
    fi
  fi
  # The modules come with the kernel: its hash is in the key.
  key=$( (echo "$khash"
          cat "$abs_top_srcdir/tests/vm.sh" "$vm_busybox" "$vm_nbd_client") |
          sha256sum | cut -c1-12)
  vm_initrd="$vm_cache/initramfs-$vm_kver-$key.cpio"
  if [ ! -s "$vm_initrd" ]; then
    tmp=$(mktemp "$vm_cache/tmp-initramfs.XXXXXX")
    cleanup_fn rm -f "$tmp"
    _vm_build_initramfs "$tmp"
    chmod 644 "$tmp"
    _vm_drop_stale initramfs "$vm_initrd"
    mv -f "$tmp" "$vm_initrd"
  fi
}

# _vm_drop_stale PREFIX KEEP: remove the cached PREFIX-* but KEEP.
_vm_drop_stale ()
{
  local f
  for f in "$vm_cache/$1"-*; do
    [ "$f" = "$2" ] || rm -f "$f"
  done
}

vm_start ()
{
  local script=$1 extra="$tmpdir/vm-extra" qemu_args=() cmd netdev
  local append="console=ttyS0 panic=-1 loglevel=4"
  shift
  _vm_prepare

  rm -rf "$extra"
  mkdir -p "$extra/data"
  cp "$script" "$extra/test.sh"
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    cp "$1" "$extra/data/"
    shift
  done
  [ $# -eq 0 ] || shift
  qemu_args=("$@")
  cp "$vm_initrd" "$tmpdir/vm-initrd.cpio"
  (cd "$extra" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) \
    >> "$tmpdir/vm-initrd.cpio"

  if [ "$vm_net" = yes ] && [ -n "${sock:-}" ]; then
    cmd="sh -c 'exec 2>>$tmpdir/socat.log; "
    cmd+="exec socat STDIO UNIX-CONNECT:$sock'"
    # QEMU's option syntax: a comma inside a value is doubled.
    netdev="user,id=n,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:"
    netdev+="${cmd//,/,,}"
    qemu_args+=(-netdev "$netdev" -device virtio-net-pci,netdev=n)
    append+=" nbdsnap.net=1"
  fi

  : > "$vm_log"
  vm_t0=$SECONDS
  timeout -k 10 "$vm_timeout" qemu-system-x86_64 \
    -nodefaults -no-user-config -machine pc,accel=tcg -cpu max \
    -m 256M -smp 1 -display none -no-reboot \
    -serial "file:$vm_log" \
    -kernel "$vm_kernel" -initrd "$tmpdir/vm-initrd.cpio" \
    -append "$append" \
    "${qemu_args[@]}" 2>"$tmpdir/qemu.log" &
  vm_pid=$!
  _vm_dumped=
  cleanup_fn _vm_dump
  cleanup_fn quiet_kill "$vm_pid"
}

# Print the console log (and socat's and QEMU's stderr) once: at vm_wait,
# or at exit if the test failed before.
_vm_dump ()
{
  [ -z "$_vm_dumped" ] || return 0
  _vm_dumped=1
  echo "--- guest console ($vm_log), $(( SECONDS - vm_t0 )) s ---" >&2
  _print_log "$vm_log"
  if [ -s "$tmpdir/socat.log" ]; then
    echo "--- socat stderr ---" >&2
    cat "$tmpdir/socat.log" >&2
  fi
  if [ -s "$tmpdir/qemu.log" ]; then
    echo "--- qemu stderr ---" >&2
    cat "$tmpdir/qemu.log" >&2
  fi
}

vm_wait ()
{
  local status=0
  wait "$vm_pid" || status=$?
  _vm_dump
  [ "$status" -ne 124 ] && [ "$status" -ne 137 ] ||
    fail "the guest did not finish within $vm_timeout s"
  [ "$status" -eq 0 ] || fail "qemu-system-x86_64 exited with status $status"
  vm_status=$(sed -n 's/^VM EXIT \([0-9]*\).*/\1/p' "$vm_log" | tail -n 1)
  [ -n "$vm_status" ] || fail "the guest ended without VM EXIT (a panic?)"
}

vm_run ()
{
  vm_start "$@"
  vm_wait
}

# vm_wait_for SECONDS ERE: until a console line matches ERE; fails if the
# guest ends or time is up first.
vm_wait_for ()
{
  local i n=$(( $1 * 10 ))
  for (( i = 0; i < n; i++ )); do
    grep -E -q -- "$2" "$vm_log" && return 0
    kill -0 "$vm_pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -E -q -- "$2" "$vm_log" && return 0
  fail "no console line matching '$2' within $1 s"
}

# The console has CRLF line ends.
vm_results ()
{
  tr -d '\r' < "$vm_log" | sed -n "s/^RESULT $1 //p"
}

vm_result ()
{
  local v
  v=$(vm_results "$1" | tail -n 1)
  [ -n "$v" ] || fail "the guest gave no RESULT $1"
  printf '%s\n' "$v"
}
