#!/usr/bin/env bash
# nbdsnap test: snapshots taken while clients write are points in time.
# Four NBD clients each write their own region of the origin with a
# sequence of unaligned 5000-byte writes (FUA), each write tagged with
# (client, sequence number), each spanning two or three 4K chunks.  While
# they write, snapshots are taken one after the other.  In every snapshot,
# for every client: each write is there whole or not at all (no torn
# write across chunks), the writes that are there are a prefix of the
# client's sequence (a write never shows without the ones before it), a
# later snapshot never has fewer of them than an earlier one, every write
# that returned before "create" was run is there, and none that started
# after "create" returned.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
region=$(( 2 * 1024 * 1024 ))
size=$(( 4 * region ))
head -c "$size" /dev/urandom > "$img"
cp "$img" "$tmpdir/orig.img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=4K

cat > "$tmpdir/common.py" <<'PY'
import struct
REGION = 2 * 1024 * 1024
W = 5000
N = REGION // W                 # writes per client

def offset(client, j):
    return client * REGION + 123 + j * W

def data(client, j):
    return struct.pack("<HH", client, j) * (W // 4)
PY

pids=()
for c in 0 1 2 3; do
  "$PYTHON" - "$uri" "$c" "$tmpdir" <<'PY' &
import nbd, sys
sys.path.insert(0, sys.argv[3])
from common import *
import time
client = int(sys.argv[2])
h = nbd.NBD()
h.connect_uri(sys.argv[1])
with open("%s/w%d.log" % (sys.argv[3], client), "w") as log:
    for j in range(N - 1):
        t0 = time.time()
        h.pwrite(data(client, j), offset(client, j), nbd.CMD_FLAG_FUA)
        print(j, t0, time.time(), file=log)
PY
  pids+=($!)
done

# Snapshots while they write (at most 10).
snaps=()
for (( i = 1; i <= 10; i++ )); do
  t0=$EPOCHREALTIME
  ctl create "p$i" >/dev/null
  echo "p$i $t0 $EPOCHREALTIME" >> "$tmpdir/snaps.log"
  snaps+=("p$i")
  running=0
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null && running=1
  done
  [ "$running" -eq 1 ] || break
  sleep 0.03
done
for p in "${pids[@]}"; do wait "$p" || fail "a writer failed"; done
echo "took ${#snaps[@]} snapshots: ${snaps[*]}"

"$PYTHON" - "$sock" "$tmpdir" "${snaps[@]}" <<'PY'
import nbd, sys
sys.path.insert(0, sys.argv[2])
from common import *
sock, tmpdir, snaps = sys.argv[1], sys.argv[2], sys.argv[3:]
orig = open(tmpdir + "/orig.img", "rb").read()
# When each snapshot was asked for and answered; when each write started
# and returned (one clock: time.time () and bash's EPOCHREALTIME).
when = {l.split()[0]: [float(x) for x in l.split()[1:]]
        for l in open(tmpdir + "/snaps.log")}
writes = [[[float(x) for x in l.split()[1:]]
           for l in open("%s/w%d.log" % (tmpdir, c))] for c in range(4)]
prev = [0] * 4
middle = 0
for name in snaps:
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    counts = []
    for client in range(4):
        base = client * REGION
        got = h.pread(REGION, base)
        present = []
        for j in range(N - 1):
            o = offset(client, j)
            piece = got[o - base:o - base + W]
            if piece == data(client, j):
                present.append(True)
            elif piece == orig[o:o + W]:
                present.append(False)
            else:
                raise AssertionError("%s: client %d write %d is torn"
                                     % (name, client, j))
        asked, answered = when[name]
        for j, (start, end) in enumerate(writes[client]):
            if end < asked:
                assert present[j], "%s: client %d write %d returned " \
                    "before the snapshot was asked for, but is not in it" \
                    % (name, client, j)
            if start > answered:
                assert not present[j], "%s: client %d write %d started " \
                    "after the snapshot was taken, but is in it" \
                    % (name, client, j)
        k = present.index(False) if False in present else len(present)
        assert not any(present[k:]), \
            "%s: client %d: write %d is there but write %d is not" \
            % (name, client, k + present[k:].index(True), k)
        assert k >= prev[client], \
            "%s: client %d: %d writes, an older snapshot had %d" \
            % (name, client, k, prev[client])
        if 0 < k < N - 1:
            middle += 1
        counts.append(k)
        prev[client] = k
    print("%s: writes present per client: %s" % (name, counts))
    h.shutdown()
# Not a failure, but then the test proved less.
if middle == 0:
    print("warning: no snapshot was taken in the middle of the writes")
PY

# The origin has every write.
"$PYTHON" - "$img" "$tmpdir" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from common import *
img = open(sys.argv[1], "rb").read()
for client in range(4):
    for j in range(N - 1):
        o = offset(client, j)
        assert img[o:o + W] == data(client, j), (client, j)
PY
