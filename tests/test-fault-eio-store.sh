#!/usr/bin/env bash
# nbdsnap test: EIO from the store of a snapshot (issue 7).  The state
# directory lives on tests/faultfs, the image does not.  Snapshots s0 and
# s1 (s0 older, with chunks of its own copied), then faultfs fails, with
# EIO, every write (round "write", durability=power), every fdatasync
# (round "fdatasync", power) or every fsync and fdatasync (round "flush",
# durability=process: the first sync is the client's FUA or FLUSH) of
# s1's store, snap-ID.store, and the origin is overwritten (1 MiB plus
# part of what s0 copied; half the writes FUA, then a FLUSH).  Then:
#   - every origin write and flush succeeded and the origin has the new
#     bytes (DESIGN 5: EIO on the store invalidates that snapshot, the
#     origin write succeeds and loses nothing);
#   - s1 is invalid (ctl --json info) and every read of it fails with EIO,
#     never other bytes;
#   - s0, which takes the copies s1 could not, still reads its instant --
#     except in round "flush": there the copies of the chunks s0 needs
#     went into s1's store (its writes succeed) and then s1's sync failed;
#     after an fsync error the kernel may drop those pages, so s0 cannot
#     vouch for them any more and must be invalid too (EIO, never wrong
#     bytes);
#   - all of that still holds after nbdkit is stopped (stop) or killed
#     (kill9), the fault cleared and nbdkit started again, and after more
#     origin writes.
source "${abs_top_builddir:?}/tests/functions.sh"
requires qemu-io --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'

start_faultfs "$tmpdir/fsrc" "$tmpdir/mnt"

state ()
{
  ctl --json info "$1" | grep -o '"state":"[a-z]*"' | cut -d'"' -f4
}

# check_invalid NAME WHEN: NAME is invalid and every read of it is EIO.
check_invalid ()
{
  local got
  got="$(state "$1")" || fail "$round: ctl info $1 failed ($2)"
  [ "$got" = invalid ] || fail "$round: $1 is $got, not invalid ($2)"
  reads_eio --also 1000:100 "nbd+unix:///$1?socket=$sock" "$tmpdir/at-$1.img" \
    "$round: $1 $2"
}

# check_instant NAME WHEN: NAME reads exactly its instant.
check_instant ()
{
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///$1?socket=$sock" "$tmpdir/got.img" ||
    fail "$round: reading $1 failed ($2)"
  cmp "$tmpdir/got.img" "$tmpdir/at-$1.img" ||
    fail "$round: $1 is not its instant ($2)"
}

img="$tmpdir/disk.img"
size=$(( 2 * 1024 * 1024 ))
state_dir="$tmpdir/mnt/state"

for fault in write fdatasync flush; do
  case $fault in
    write) ops=write mode=power ;;
    fdatasync) ops=fdatasync mode=power ;;
    flush) ops=fsync,fdatasync mode=process ;;
  esac
  args=("$img" statedir="$state_dir" admin="$tmpdir/admin.sock"
        chunk-size=64K durability=$mode)
  for end in stop kill9; do
    round="$fault/$end"
    echo "=== round $round"
    fault_ctl clear
    rm -rf "$state_dir"
    head -c "$size" /dev/urandom > "$img"

    start_nbdkit "${args[@]}"
    cp "$img" "$tmpdir/at-s0.img"
    ctl create s0
    # 4 chunks at 1M copied into s0.
    timeout 60 qemu-io -f raw -c 'write -P 0x11 1M 256k' "$uri" >/dev/null
    cp "$img" "$tmpdir/at-s1.img"
    ctl create s1
    store="$(cd "$tmpdir/fsrc/state" && ls snap-*.store | sort | tail -n 1)"

    fault_ctl fail "$ops" "$store" EIO
    # 16 chunks new to both snapshots, 2 that s0 already holds; half of
    # the writes FUA, then a flush.
    timeout 60 "$PYTHON" - "$uri" "$round" <<'PY' ||
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
errors = []
for off in range(0, 1152 * 1024, 65536):
    fua = off < 576 * 1024
    try:
        h.pwrite(b"\x77" * 65536, off, nbd.CMD_FLAG_FUA if fua else 0)
    except nbd.Error as e:
        errors.append("%swrite at %d: %s" % ("FUA " if fua else "", off, e))
try:
    h.flush()
except nbd.Error as e:
    errors.append("flush: %s" % e)
if errors:
    raise SystemExit("%s: %d origin requests failed: %s"
                     % (sys.argv[2], len(errors), "; ".join(errors[:3])))
PY
      fail "$round: the origin requests must succeed (see above)"
    n="$(fault_count)"
    echo "$round: faultfs failed $n calls on $store"
    [ "$n" -gt 0 ] || fail "$round: the fault on $store never fired"
    cmp <(head -c $(( 1152 * 1024 )) "$img") \
        <(head -c $(( 1152 * 1024 )) /dev/zero | tr '\0' '\167') ||
      fail "$round: the origin lacks the writes"
    cmp <(tail -c +$(( 1152 * 1024 + 1 )) "$img") \
        <(tail -c +$(( 1152 * 1024 + 1 )) "$tmpdir/at-s1.img") ||
      fail "$round: the origin changed where it was not written"

    # check_s0 WHEN: s0 as the round expects (see the header).
    check_s0 ()
    {
      if [ "$fault" = flush ]; then check_invalid s0 "$1"
      else check_instant s0 "$1"; fi
    }
    check_invalid s1 "with the fault"
    check_s0 "with the fault"

    "${end}_nbdkit"   # stop_nbdkit or kill9_nbdkit
    fault_ctl clear
    start_nbdkit "${args[@]}"
    check_invalid s1 "after $end and a restart"
    check_s0 "after $end and a restart"

    # More writes: copies go to s0 (s1 takes none), s1 stays invalid.
    timeout 60 qemu-io -f raw -c 'write -P 0x78 512k 1M' -c flush "$uri" \
      >/dev/null
    check_invalid s1 "after $end, a restart and more writes"
    check_s0 "after $end, a restart and more writes"
    stop_nbdkit
  done
done
