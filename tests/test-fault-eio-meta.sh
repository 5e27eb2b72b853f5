#!/usr/bin/env bash
# nbdsnap test: EIO on every write to the state directory (issue 7), so
# that a snapshot's invalid mark cannot be made durable.  The state
# directory lives on tests/faultfs, the image does not.  After snapshot
# s1, faultfs fails every write, fsync, fdatasync, create, rename,
# truncate, unlink, fallocate and mkdir under the state directory (store,
# bitmap, meta and the directory itself) with EIO, and a client writes
# each of the 16 chunks once (a whole chunk, or 4K inside one).  Then:
#   - a write that failed failed with EIO, and the origin kept its old
#     bytes in that chunk; a write that succeeded left its new bytes;
#   - for every chunk, s1 returns its instant or EIO (never other bytes),
#     with the fault, and after nbdkit is stopped (stop) or killed (kill9),
#     the fault cleared and nbdkit started again: s1 must not come back
#     serving the new origin bytes.  (A write may only succeed once s1's
#     invalid mark is durable, which here it cannot be.)
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

start_faultfs "$tmpdir/fsrc" "$tmpdir/mnt"

img="$tmpdir/disk.img"
chunk=65536
size=$(( 16 * chunk ))
state_dir="$tmpdir/mnt/state"
args=("$img" statedir="$state_dir" admin="$tmpdir/admin.sock" chunk-size=64K)

# check WHEN: the origin against at-s1.img, new.img and the outcome of
# each write (results: "ok" or "eio", one per chunk); s1 reads its
# instant or EIO.
check ()
{
  timeout 120 "$PYTHON" - "$sock" "$tmpdir" "$round: $1" <<'PY'
import nbd, sys
sock, tmp, when = sys.argv[1:4]
chunk = 65536
old = open(tmp + "/at-s1.img", "rb").read()
new = open(tmp + "/new.img", "rb").read()
results = open(tmp + "/results").read().split()
origin = nbd.NBD()
origin.connect_uri("nbd+unix:///?socket=" + sock)
for c, res in enumerate(results):
    o = c * chunk
    got = origin.pread(chunk, o)
    want = new if res == "ok" else old
    assert got == want[o:o + chunk], \
        "%s: the origin at chunk %d is not what a write that %s left" \
        % (when, c, "succeeded" if res == "ok" else "failed")
print("%s: writes ok %d, failed %d"
      % (when, results.count("ok"), results.count("eio")))
PY
  reads_instant_or_eio --also 1000:100 --also 8192:4096 \
    --new "$tmpdir/new.img" "nbd+unix:///s1?socket=$sock" \
    "$tmpdir/at-s1.img" "$round: s1 $1"
}

for end in stop kill9; do
  round="$end"
  echo "=== round $round"
  fault_ctl clear
  rm -rf "$state_dir"
  head -c "$size" /dev/urandom > "$img"
  head -c "$size" /dev/urandom > "$tmpdir/new.img"
  cp "$img" "$tmpdir/at-s1.img"

  start_nbdkit "${args[@]}"
  ctl create s1
  fault_ctl fail write,fsync,fdatasync,create,rename,truncate,unlink,fallocate,mkdir \
    '*' EIO

  # One write per chunk: even chunks whole, odd ones 4K at +8K.  The
  # bytes written are new.img's at the same place; a chunk whose write
  # succeeded is new.img's in full (the untouched part of an odd chunk
  # is copied from at-s1.img to new.img below).
  timeout 120 "$PYTHON" - "$uri" "$tmpdir" <<'PY'
import errno, nbd, sys
uri, tmp = sys.argv[1:3]
chunk = 65536
old = bytearray(open(tmp + "/at-s1.img", "rb").read())
new = bytearray(open(tmp + "/new.img", "rb").read())
h = nbd.NBD()
h.connect_uri(uri)
results = []
for c in range(len(old) // chunk):
    o = c * chunk
    if c % 2:
        # Only 4K of the chunk is new.
        new[o:o + chunk] = old[o:o + chunk]
        new[o + 8192:o + 12288] = bytes(b ^ 0x5a for b in old[o + 8192:o + 12288])
        off, n = o + 8192, 4096
    else:
        off, n = o, chunk
    try:
        h.pwrite(bytes(new[off:off + n]), off)
        results.append("ok")
    except nbd.Error as e:
        assert e.errnum == errno.EIO, "write of chunk %d: %s" % (c, e)
        results.append("eio")
open(tmp + "/new.img", "wb").write(new)
open(tmp + "/results", "w").write("\n".join(results) + "\n")
PY
  n="$(fault_count)"
  echo "$round: faultfs failed $n calls"
  [ "$n" -gt 0 ] || fail "$round: the fault never fired"
  ctl list || :
  check "with the fault"

  "${end}_nbdkit"   # stop_nbdkit or kill9_nbdkit
  fault_ctl clear
  start_nbdkit "${args[@]}"
  ctl list || :
  check "after $end, the fault cleared and a restart"
  stop_nbdkit
done
