#!/usr/bin/env bash
# nbdsnap test: a snapshot invalidated while it is being read never
# returns wrong bytes.  With max-store=128K and 64K chunks a snapshot has
# room for two copied chunks; the third origin write that needs a copy
# makes it invalid, and from then on the origin is overwritten without a
# copy.  Each of many rounds takes a fresh snapshot; several NBD
# connections read it in a loop (spans of 1 to 64 chunks, aligned or not)
# and compare every read with the image as it was at the instant, while
# writers overwrite random chunks of the origin with new bytes, so that
# the snapshot is invalidated in the middle of reads.  A read may fail
# with EIO; it must never return other bytes (a read that checked the
# state before the invalidation and then read chunks of the origin that
# were overwritten without a copy).  The seed is printed: SEED=N reruns
# the same choices (the timing differs).
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

img="$tmpdir/disk.img"
size=$(( 4 * 1024 * 1024 ))
head -c "$size" /dev/urandom > "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K max-store=128K

seed=${SEED:-$RANDOM}
rounds=${ROUNDS:-30}
echo "seed $seed, $rounds rounds"

timeout 300 "$PYTHON" - "$sock" "$img" "$nbdsnapctl" "$tmpdir/admin.sock" \
  "$seed" "$rounds" <<'PY' ||
import errno, json, random, subprocess, sys, threading, time
import nbd

sock, img, ctlbin, admin, seed, rounds = sys.argv[1:7]
seed, rounds = int(seed), int(rounds)
CHUNK = 65536
READERS, WRITERS = 6, 3

def ctl(*args):
    r = subprocess.run([ctlbin, "-s", admin, "--json"] + list(args),
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SystemExit("nbdsnapctl %s: %s" % (" ".join(args), r.stderr))
    return json.loads(r.stdout)

def uri(name):
    return "nbd+unix:///%s?socket=%s" % (name, sock)

total = {"reads": 0, "right": 0, "eio": 0, "wrong": 0, "invalidated": 0,
         "mid": 0}
lock = threading.Lock()
failures = []

def reader(name, want, rng, go, stop, stats):
    h = nbd.NBD()
    h.connect_uri(uri(name))
    size = len(want)
    first = True
    while not stop.is_set():
        n = rng.randint(1, 64) * CHUNK
        n -= rng.randrange(2) * rng.randrange(1, 4096)
        off = rng.randrange(0, size - n + 1)
        if rng.randrange(2):
            off &= ~(CHUNK - 1)
            n = min(n, size - off)
        try:
            got = h.pread(n, off)
        except nbd.Error as e:
            with lock:
                stats["reads"] += 1
                if e.errnum == errno.EIO:
                    stats["eio"] += 1
                else:
                    failures.append("%s: read %d+%d: %s" % (name, off, n, e))
            if first:
                go.set()
                first = False
            continue
        with lock:
            stats["reads"] += 1
            if got == want[off:off + n]:
                stats["right"] += 1
            else:
                stats["wrong"] += 1
                bad = next(i for i in range(n) if got[i] != want[off + i])
                print("%s: WRONG read %d+%d: first wrong byte at %d "
                      "(chunk %d)" % (name, off, n, off + bad,
                                      (off + bad) // CHUNK), flush=True)
        if first:
            go.set()
            first = False
    h.shutdown()

def writer(rng, pattern, nwrites):
    h = nbd.NBD()
    h.connect_uri(uri(""))
    nchunks = h.get_size() // CHUNK
    for _ in range(nwrites):
        c = rng.randrange(nchunks)
        h.pwrite(pattern, c * CHUNK)
    h.shutdown()

master = random.Random(seed)
t0 = time.time()
for r in range(rounds):
    name = "r%d" % r
    ctl("create", name)
    with open(img, "rb") as f:
        want = f.read()
    stats = dict.fromkeys(total, 0)
    stop = threading.Event()
    gos = [threading.Event() for _ in range(READERS)]
    readers = [threading.Thread(target=reader,
                                args=(name, want,
                                      random.Random(master.random()),
                                      gos[i], stop, stats))
               for i in range(READERS)]
    for t in readers:
        t.start()
    for g in gos:                      # every reader is reading
        g.wait(30)
    writers = [threading.Thread(target=writer,
                                args=(random.Random(master.random()),
                                      master.randbytes(CHUNK), 24))
               for _ in range(WRITERS)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    time.sleep(0.02)                   # a few reads of the invalid one
    stop.set()
    for t in readers:
        t.join()
    info = ctl("info", name)["snapshot"]
    if info["state"] == "invalid":
        stats["invalidated"] = 1
    if stats["right"] > 0 and stats["eio"] > 0:
        stats["mid"] = 1                # it was read on both sides
    for k in total:
        total[k] += stats[k]
    print("round %d: %d reads, %d right, %d EIO, %d wrong, state %s"
          % (r, stats["reads"], stats["right"], stats["eio"],
             stats["wrong"], info["state"]), flush=True)
    ctl("delete", name)

print("seed %d: %d rounds in %.1f s, %d snapshots invalidated (%d read "
      "before and after), %d reads: %d right, %d EIO, %d WRONG"
      % (seed, rounds, time.time() - t0, total["invalidated"], total["mid"],
         total["reads"], total["right"], total["eio"], total["wrong"]))
for f in failures:
    print("unexpected error:", f)
if total["invalidated"] < rounds:
    print("a snapshot was not invalidated: the test is broken")
    sys.exit(1)
if failures or total["wrong"] > 0:
    sys.exit(1)
PY
  fail "an invalidated snapshot returned wrong bytes (seed $seed)"
