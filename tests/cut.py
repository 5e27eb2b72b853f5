# nbdsnap tests: the consistent cut (test-client-cut.sh,
# test-client-cut-kill9.sh), a driver in three steps:
#
#   cut.py [OPTS] init DIR --seed S --chunk C     the base image DIR/disk.img
#   cut.py [OPTS] run DIR --epoch E --seconds N [--kill-fifo F]
#   cut.py [OPTS] verify DIR --epoch E
#
# OPTS: --sock (nbdkit's unix socket), --admin (the admin socket), --ctl
# (nbdsnapctl).  The shell starts and restarts nbdkit between the steps,
# on the same state directory; with --kill-fifo F, run asks it to kill
# nbdkit (kill9_nbdkit) with a line "kill" on the FIFO F.req, and waits for
# "dead" on F.ack (a last "done" says that it asks no more).
#
# Notes on the design:
#
# - The image is cut into NREG regions of an odd size (they share chunks
#   with their neighbours at every chunk size; the image is not a multiple
#   of any chunk).  Writer thread r owns region r, with its own NBD handle,
#   and is synchronous: one request at a time, so its requests are totally
#   ordered.  Each request is logged with the CLOCK_MONOTONIC time before it
#   is sent (s) and after its reply (a): writes (1 byte .. 1.2 MB, unaligned,
#   40% placed across a chunk boundary, each with bytes derived from
#   (seed, epoch, region, generation) and so unique), trims, zeroes (with
#   and without NO_HOLE, some FAST_ZERO), flushes, FUA on a quarter of them.
#
# - One churn thread runs nbdsnapctl (a process per command) to create and
#   delete snapshots (plain, --defer, --force), logging the monotonic and
#   wall-clock times at which each command was started (s) and returned (r).
#   A third of the creates take again a name deleted earlier (a "nightly"):
#   a snapshot is known by its create's id, and a read belongs to the
#   incarnation of its name created last before it connected.  Reader
#   threads read whole live snapshots in unaligned pieces while all this
#   goes on, and log a digest per region; what block status says reads
#   as zeros (what nbdcopy skips) must.
#
# - The cut.  A snapshot is an instant T in [s, r] of its create.  With
#   sequential requests, region r of the snapshot must equal the base of the
#   epoch plus the first k requests of region r, for some k such that
#   request k-1 was sent before T and request k was answered after T: the
#   candidates are the k in [requests answered before s, requests sent
#   before r], tried in order (a torn request matches none of them).  Each
#   region gives the instants its matching k allow; they must meet in one
#   instant for all regions (one point in time, not one per region).  Every
#   read of a snapshot, before or after a kill and a restart, must give the
#   same bytes.
#
# - kill -9 (run --kill-fifo): the process is killed at a random moment, right
#   after a create or delete was sent, or on a timer.  Requests in flight
#   then (one per region at most) have no answer (a = infinity); requests
#   sent after nbdkit was seen dead (a zombie) were never served.  After the
#   restart, verify checks that the origin holds every answered request (a
#   kill -9 loses no page cache, whatever the durability mode) and the one
#   in flight whole, torn or not at all; what it reads becomes the base of
#   the next epoch.  A snapshot whose create was answered, and whose delete
#   was not, must be listed, live; one whose create was cut off may exist,
#   with the cut of [s, infinity).
#
# - Trims are exact zeros only where the kernel punches holes: init probes
#   that, and without it the writers do not trim.
import argparse
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time

import nbd

NREG = 4
REGION = 1835008 + 4097          # 1.75 MiB + 4097: odd, shares chunks
INF = math.inf
VERBOSE = os.environ.get("CUT_VERBOSE") == "1"


def die(msg):
    print("cut.py: FAIL: %s" % msg, file=sys.stderr, flush=True)
    sys.exit(1)


def load_config(d):
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f)


def regions(cfg):
    return [(r * REGION, (r + 1) * REGION) for r in range(NREG)]


def payload(cfg, epoch, r, g, n):
    return random.Random("%s/%d/%d/%d" % (cfg["seed"], epoch, r, g)) \
                 .randbytes(n)


def digest(b):
    return hashlib.sha256(b).hexdigest()[:32]


def region_digests(cfg, data):
    return [digest(data[a:b]) for a, b in regions(cfg)]


def snap_uri(args, name):
    return "nbd+unix:///%s?socket=%s" % (name, args.sock)


# --- init -----------------------------------------------------------------

def punch_works(d):
    """Does this filesystem punch holes (so that a trim reads zeros)?"""
    p = os.path.join(d, "probe")
    with open(p, "wb") as f:
        f.write(b"x" * 16384)
    r = subprocess.run(["fallocate", "-p", "-o", "4096", "-l", "4096", p],
                       capture_output=True)
    ok = r.returncode == 0 and open(p, "rb").read()[4096:8192] == bytes(4096)
    os.unlink(p)
    return ok


def cmd_init(args):
    d = args.dir
    os.makedirs(d, exist_ok=True)
    chunk = parse_size(args.chunk)
    cfg = {"seed": args.seed, "chunk": chunk, "size": NREG * REGION,
           "trim": punch_works(d)}
    rng = random.Random("%s/base" % args.seed)
    # Random islands in a sparse file: holes are not candidates.
    img = bytearray(cfg["size"])
    with open(os.path.join(d, "disk.img"), "wb") as f:
        f.truncate(cfg["size"])
        for off in range(0, cfg["size"], 65536):
            if rng.random() < 0.7:
                n = min(65536, cfg["size"] - off)
                b = rng.randbytes(n)
                img[off:off + n] = b
                f.seek(off)
                f.write(b)
    with open(os.path.join(d, "base-0.img"), "wb") as f:
        f.write(img)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(d, "known.json"), "w") as f:
        json.dump({"present": [], "absent": [], "digests": {}}, f)
    if not cfg["trim"]:
        print("cut.py: no hole punching here: the writers do not trim")


def parse_size(s):
    mult = {"K": 1024, "M": 1024 * 1024}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


# --- run ------------------------------------------------------------------

class Run:
    def __init__(self, args, cfg):
        self.args, self.cfg = args, cfg
        self.lock = threading.Lock()
        self.log = []
        self.stop = threading.Event()
        self.killed = threading.Event()   # the kill is asked for: errors
                                          # from now on are expected
        self.dead = threading.Event()     # nbdkit is dead (dead_t)
        self.dead_t = None
        self.errors = []
        self.live = set()             # snapshots readers may open
        self.forced = set()           # delete --force sent
        self.t0 = time.monotonic()

    def record(self, rec):
        with self.lock:
            self.log.append(rec)

    def error(self, msg):
        with self.lock:
            self.errors.append(msg)
        print("cut.py: FAIL: %s" % msg, file=sys.stderr, flush=True)
        self.stop.set()

    def kill(self, why):
        """Have the shell kill nbdkit (kill9_nbdkit: SIGKILL, then reaped)
        and wait until it says nbdkit is dead."""
        with self.lock:
            if self.killed.is_set():
                return
            self.killed.set()
        t = time.monotonic()
        with open(self.args.kill_fifo + ".req", "w") as f:
            f.write("kill\n")
        with open(self.args.kill_fifo + ".ack") as f:
            if f.readline().strip() != "dead":
                die("the shell did not kill nbdkit")
        self.dead_t = time.monotonic()
        self.dead.set()
        self.record({"k": "kill", "t": t, "dead": self.dead_t, "why": why})
        print("cut.py: killed nbdkit %.3f s into the epoch (%s)"
              % (t - self.t0, why), flush=True)

    def over(self):
        return self.stop.is_set() or self.dead.is_set()


def pick_range(rng, start, end, bounds):
    u = rng.random()
    if u < 0.35:
        n = rng.randint(1, 600)
    elif u < 0.7:
        n = rng.randint(601, 9000)
    elif u < 0.98:
        n = rng.randint(9001, 160000)
    else:
        n = rng.randint(160001, 1200000)
    n = min(n, end - start)
    if bounds and rng.random() < 0.4:
        b = rng.choice(bounds)           # across this chunk boundary
        n = max(n, 2)
        lo, hi = max(start, b - n + 1), min(b - 1, end - n)
        if lo <= hi:
            return rng.randint(lo, hi), n
    return rng.randint(start, end - n), n


def writer(run, r):
    cfg, epoch = run.cfg, run.args.epoch
    start, end = regions(cfg)[r]
    chunk = cfg["chunk"]
    bounds = list(range((start // chunk + 1) * chunk, end, chunk))
    rng = random.Random("%s/%d/w%d" % (cfg["seed"], epoch, r))
    h = nbd.NBD()
    try:
        h.connect_uri("nbd+unix:///?socket=%s" % run.args.sock)
        fast_ok = h.can_fast_zero()
    except nbd.Error as e:
        if not run.killed.is_set():
            run.error("writer %d: connect: %s" % (r, e))
        return
    g = 0
    while True:
        last = run.over()
        u = rng.random()
        if last:
            op = "flush"               # the end of the epoch: flush
        elif u < 0.58:
            op = "write"
        elif u < 0.70:
            op = "trim" if cfg["trim"] else "write"
        elif u < 0.90:
            op = "zero"
        else:
            op = "flush"
        rec = {"k": "op", "r": r, "g": g, "op": op}
        flags = 0
        if op != "flush":
            off, n = pick_range(rng, start, end, bounds)
            rec.update(off=off, len=n)
            if rng.random() < 0.25:
                flags |= nbd.CMD_FLAG_FUA
            if op == "zero":
                if rng.random() < 0.5:
                    flags |= nbd.CMD_FLAG_NO_HOLE
                if fast_ok and rng.random() < 0.1:
                    flags |= nbd.CMD_FLAG_FAST_ZERO
            rec["flags"] = flags
        if op == "write":
            buf = payload(cfg, epoch, r, g, n)
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0, 0.002))
        rec["s"] = time.monotonic()
        try:
            if op == "write":
                h.pwrite(buf, off, flags)
            elif op == "trim":
                h.trim(n, off, flags)
            elif op == "zero":
                h.zero(n, off, flags)
            else:
                h.flush()
            rec["a"], rec["st"] = time.monotonic(), "ok"
        except nbd.Error as e:
            if run.killed.is_set():
                rec["a"], rec["st"] = None, "unknown"
                run.record(rec)
                return
            if (op == "zero" and flags & nbd.CMD_FLAG_FAST_ZERO
                    and e.errno in ("ENOTSUP", "EOPNOTSUPP")):
                rec["a"], rec["st"] = time.monotonic(), "enotsup"
            else:
                run.error("writer %d: %s %s: %s" % (r, op, rec, e))
                return
        run.record(rec)
        g += 1
        if last:
            h.shutdown()
            return


def ctl(run, *words):
    a = run.args
    return subprocess.Popen([a.ctl, "-s", a.admin, "--json"] + list(words),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def churn(run, plan, rng):
    """Create and delete snapshots; plan ("create", "delete") is when to
    kill: just after one of those was sent, 0-15 ms later."""
    n = 0
    reuse = []          # names deleted here, to take again (a "nightly")
    deferred = set()    # of those, deleted with --defer: maybe still taken
    kill_after = run.args.seconds * rng.uniform(0.2, 0.8)
    while not run.over():
        time.sleep(rng.uniform(0, 0.04))
        with run.lock:
            live = sorted(run.live)
        if len(live) < 2 or (len(live) < 6 and rng.random() < 0.6):
            if reuse and rng.random() < 0.3:
                name = reuse.pop(rng.randrange(len(reuse)))
            else:
                name = "e%ds%d" % (run.args.epoch, n)
            words, kind = ("create", name), "create"
            extra = {"id": "e%dc%d" % (run.args.epoch, n)}
            n += 1
        else:
            name = rng.choice(live)
            mode = rng.choices(["", "--defer", "--force"], [5, 3, 2])[0]
            words = ("delete", mode, name) if mode else ("delete", name)
            kind = "delete"
            extra = {"mode": mode}
            with run.lock:
                run.live.discard(name)   # readers: gone from now on
                if mode == "--force":
                    run.forced.add(name)
        rec = dict(extra, k=kind, name=name, words=words,
                   s=time.monotonic(), wall_s=time.time())
        p = ctl(run, *words)
        if plan == kind and time.monotonic() - run.t0 > kill_after:
            time.sleep(rng.uniform(0, 0.015))
            run.kill("%s %s in flight" % (kind, name))
        out, err = p.communicate(timeout=120)
        rec.update(r=time.monotonic(), wall_r=time.time(), rc=p.returncode,
                   out=out.strip(), err=err.strip())
        if p.returncode != 0 and run.killed.is_set():
            rec["rc"] = "unknown"
        run.record(rec)
        if rec["rc"] == "unknown":
            return
        if kind == "create" and rec["rc"] == 0:
            deferred.discard(name)
            with run.lock:
                run.live.add(name)
        elif kind == "create" and rec["rc"] == 7 and name in deferred:
            pass                # its last client has not gone yet
        elif kind == "delete" and rec["rc"] == 4:         # busy
            with run.lock:
                run.live.add(name)
        elif kind == "delete" and rec["rc"] == 0:
            reuse.append(name)
            if extra["mode"] == "--defer":
                deferred.add(name)
        elif rec["rc"] != 0:
            run.error("nbdsnapctl %s: exit %s: %s"
                      % (" ".join(words), rec["rc"], rec["err"]))
            return


def zero_extents(h, size):
    """The extents that base:allocation says read as zeros."""
    zeros, off = [], 0

    def f(ctx, o, entries, err):
        nonlocal off
        if ctx == nbd.CONTEXT_BASE_ALLOCATION:
            for n, flags in zip(entries[0::2], entries[1::2]):
                if flags & nbd.STATE_ZERO:
                    zeros.append((o, n))
                o += n
            off = o
        return 0

    while off < size:
        h.block_status(min(size - off, 1 << 30), off, f)
    return zeros


def reader(run, i):
    cfg = run.cfg
    rng = random.Random("%s/%d/reader%d" % (cfg["seed"], run.args.epoch, i))
    size = cfg["size"]
    while not run.over():
        with run.lock:
            live = sorted(run.live)
        if not live:
            time.sleep(0.005)
            continue
        name = rng.choice(live)
        s = time.monotonic()
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        connected = False
        try:
            h.connect_uri(snap_uri(run.args, name))
            connected = True
            tc = time.monotonic()
            data = bytearray()
            while len(data) < size:
                n = min(size - len(data), rng.choice(
                    [rng.randint(1, 5000), rng.randint(5001, 600000)]))
                data += h.pread(n, len(data))
            zeros = zero_extents(h, size)
            h.shutdown()
        except nbd.Error as e:
            # Allowed: nbdkit was killed; the snapshot was deleted before
            # we were in; a forced delete revoked us.
            with run.lock:
                gone = name not in run.live
                forced = name in run.forced
            if run.killed.is_set() or (gone and not connected) \
               or (forced and e.errno == "ESHUTDOWN"):
                continue
            run.error("reader %d: %s: %s" % (i, name, e))
            return
        for o, n in zeros:
            if data[o:o + n] != bytes(n):
                run.error("reader %d: %s: block status says %d+%d reads as "
                          "zeros, but it does not" % (i, name, o, n))
                return
        run.record({"k": "read", "name": name, "who": "reader%d" % i,
                    "s": s, "tc": tc, "r": time.monotonic(),
                    "z": sum(n for _, n in zeros),
                    "d": region_digests(cfg, data)})


def run_threads(run, args, rng, plan, threads):
    for t in threads:
        t.start()
    deadline = run.t0 + args.seconds
    kill_at = run.t0 + args.seconds * rng.uniform(0.02, 1.0)
    while not run.over() and time.monotonic() < deadline:
        if plan == "timer" and time.monotonic() >= kill_at:
            run.kill("timer")
        time.sleep(0.005)
    if args.kill_fifo:
        run.kill(plan + ", late" if plan != "timer" else "timer")
    run.stop.set()
    for t in threads:
        t.join()


def cmd_run(args):
    cfg = load_config(args.dir)
    run = Run(args, cfg)
    rng = random.Random("%s/%d/run" % (cfg["seed"], args.epoch))
    known = json.load(open(os.path.join(args.dir, "known.json")))
    run.live = set(known["present"])
    plan = rng.choice(["timer", "create", "delete"]) if args.kill_fifo \
        else None
    threads = [threading.Thread(target=writer, args=(run, r))
               for r in range(NREG)]
    crng = random.Random("%s/%d/churn" % (cfg["seed"], args.epoch))
    threads.append(threading.Thread(target=churn, args=(run, plan, crng)))
    threads += [threading.Thread(target=reader, args=(run, i))
                for i in range(2)]
    try:
        run_threads(run, args, rng, plan, threads)
    finally:
        if args.kill_fifo and not run.killed.is_set():
            with open(args.kill_fifo + ".req", "w") as f:
                f.write("abort\n")
    run.log.sort(key=lambda x: x.get("s", x.get("t")))
    with open(os.path.join(args.dir, "epoch-%d.jsonl" % args.epoch), "w") as f:
        for rec in run.log:
            f.write(json.dumps(rec) + "\n")
    ops = [x for x in run.log if x["k"] == "op"]
    done = [x for x in ops if x["st"] == "ok"]
    slow = max(done, key=lambda x: x["a"] - x["s"], default=None)
    cmds = [x for x in run.log if x["k"] in ("create", "delete")]
    print("cut.py: epoch %d: %d requests (%d MB written), %d creates, "
          "%d deletes, %d snapshot reads; the slowest request %.0f ms (%s), "
          "create %.0f ms, delete %.0f ms"
          % (args.epoch, len(ops),
             sum(x.get("len", 0) for x in ops if x["op"] == "write") >> 20,
             sum(x["k"] == "create" for x in run.log),
             sum(x["k"] == "delete" for x in run.log),
             sum(x["k"] == "read" for x in run.log),
             (slow["a"] - slow["s"]) * 1000 if slow else 0,
             slow["op"] if slow else "-",
             max([(x["r"] - x["s"]) * 1000 for x in cmds
                  if x["k"] == "create"], default=0),
             max([(x["r"] - x["s"]) * 1000 for x in cmds
                  if x["k"] == "delete"], default=0)), flush=True)
    if run.errors:
        sys.exit(1)


# --- verify ---------------------------------------------------------------

def load_epoch(d, e):
    p = os.path.join(d, "epoch-%d.jsonl" % e)
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(l) for l in f]


def apply(cfg, epoch, state, start, op):
    """Apply a data-changing request to state (region bytes from start)."""
    o = op["off"] - start
    if op["op"] == "write":
        state[o:o + op["len"]] = payload(cfg, epoch, op["r"], op["g"],
                                         op["len"])
    else:
        state[o:o + op["len"]] = bytes(op["len"])


def region_ops(log, r, dead):
    """Region r's data-changing requests in order, each with s and a (INF
    for no answer); those sent after nbdkit was dead are left out."""
    out = []
    for x in log:
        if x["k"] != "op" or x["r"] != r or x["op"] == "flush" \
           or x["st"] == "enotsup":
            continue
        if x["st"] == "unknown":
            if dead is not None and x["s"] > dead:
                continue
            x = dict(x, a=INF)
        out.append(x)
    return out


def diff_ranges(a, b, limit=4):
    out, i, n = [], 0, len(a)
    while i < n and len(out) < limit:
        if a[i:i + 4096] == b[i:i + 4096]:
            i += 4096
            continue
        j = i
        while j < min(n, i + 4096) and a[j] == b[j]:
            j += 1
        k = j
        while k < n and a[k] != b[k]:
            k += 1
        if k > j:
            out.append((j, k - j))
        i = k if k > j else i + 4096
    return out


def explain(cfg, epoch, base, start, ops, lo, hi, got):
    """Where region bytes got differ from base + ops[:k], for the k in
    [lo, hi] that differs in the fewest 4K blocks."""
    st = bytearray(base)
    for op in ops[:lo]:
        apply(cfg, epoch, st, start, op)
    best = None
    for k in range(lo, hi + 1):
        if k > lo:
            apply(cfg, epoch, st, start, ops[k - 1])
        nd = sum(st[i:i + 4096] != got[i:i + 4096]
                 for i in range(0, len(st), 4096))
        if best is None or nd < best[0]:
            best = (nd, k, bytes(st))
    _, k, st = best
    lines = []
    for o, n in diff_ranges(st, got):
        at = start + o
        touch = [(op["g"], op["op"], op["off"], op["len"], op["flags"])
                 for op in ops if op["off"] <= at < op["off"] + op["len"]]
        lines.append("    bytes %d+%d (chunk %d) differ from base + %d "
                     "requests; requests (g, op, off, len, flags) touching "
                     "it: %s" % (at, n, at // cfg["chunk"], k, touch[-6:]))
    return "\n".join(lines)


def intersect(a, b):
    out = []
    for x0, x1 in a:
        for y0, y1 in b:
            lo, hi = max(x0, y0), min(x1, y1)
            if lo <= hi:
                out.append((lo, hi))
    return out


class Verifier:
    def __init__(self, args, cfg):
        self.args, self.cfg = args, cfg
        self.failures = []
        self.windows = []       # create's s..r of each snapshot verified
        self.inflight = 0       # regions with a request in that window

    def fail(self, msg):
        print("cut.py: FAIL: %s" % msg, file=sys.stderr, flush=True)
        self.failures.append(msg)

    def check_cut(self, epoch, log, dead, snaps, reads_n):
        """snaps: create id -> (create record, set of digest tuples, bytes
        or None).  Returns id -> digests of the snapshots that pass."""
        cfg = self.cfg
        base = open(os.path.join(self.args.dir, "base-%d.img" % epoch),
                    "rb").read()
        regs = regions(cfg)
        ops = [region_ops(log, r, dead) for r in range(NREG)]
        cur = [bytearray(base[a:b]) for a, b in regs]
        cur_k = [0] * NREG
        ok = {}
        order = sorted(snaps, key=lambda n: snaps[n][0]["s"])
        for name in order:
            crec, dsets, data = snaps[name]
            what = label(crec)
            ts = crec["s"]
            tr = crec["r"] if crec["rc"] == 0 else INF
            if len(dsets) != 1:
                vs = sorted(dsets)
                self.fail("%s: %d reads gave %d different contents "
                          "(regions %s differ): a snapshot that changed"
                          % (what, reads_n.get(name, 0), len(vs),
                             [r for r in range(NREG)
                              if len({v[r] for v in vs}) > 1]))
                continue
            want = next(iter(dsets))
            instants = [(ts, tr)]
            bad = False
            ks, lo_of, hi_of = [], [], []
            for r, (a, b) in enumerate(regs):
                L = ops[r]
                lo = sum(1 for x in L if x["a"] < ts)
                hi = sum(1 for x in L if x["s"] < tr)
                lo_of.append(lo)
                hi_of.append(hi)
                while cur_k[r] < lo:
                    apply(cfg, epoch, cur[r], a, L[cur_k[r]])
                    cur_k[r] += 1
                st = bytearray(cur[r])
                match = []
                for k in range(lo, hi + 1):
                    if k > lo:
                        apply(cfg, epoch, st, a, L[k - 1])
                    if digest(st) == want[r]:
                        t0 = L[k - 1]["s"] if k > 0 else -INF
                        t1 = L[k]["a"] if k < len(L) else INF
                        match.append((k, (max(t0, ts), min(t1, tr))))
                if not match:
                    msg = ("%s (epoch %d): region %d is not base + a prefix "
                           "of its %d requests with %d..%d of them (those "
                           "answered before create was sent .. those sent "
                           "before it returned): a torn or lost write, or "
                           "one from after the snapshot"
                           % (what, epoch, r, len(L), lo, hi))
                    if data is not None:
                        msg += "\n" + explain(cfg, epoch, base[a:b], a, L,
                                              lo, hi, data[a:b])
                    self.fail(msg)
                    bad = True
                    continue
                ks.append([k for k, _ in match])
                instants = intersect(instants, [iv for _, iv in match])
            if bad:
                continue
            if not instants:
                self.fail("%s (epoch %d): each region is a prefix (k = %s) "
                          "but no single instant gives them all: not one "
                          "point in time" % (what, epoch, ks))
                continue
            ok[name] = list(want)
            window = (tr if tr < INF else dead or ts) - ts
            self.windows.append(window)
            self.inflight += sum(max(k) - min(k) + (hi_of[r] - lo_of[r])
                                 > 0 for r, k in enumerate(ks))
            if crec["rc"] != 0:
                print("cut.py: %s, whose create the kill cut off, exists: "
                      "a consistent cut" % what, flush=True)
            if VERBOSE:
                print("cut.py: %s: a consistent cut, requests per region "
                      "%s, in-flight window %.1f ms"
                      % (what, [k[0] if len(k) == 1 else k for k in ks],
                         window * 1000), flush=True)
        return ok

    def check_origin(self, epoch, log, dead, got):
        cfg = self.cfg
        base = open(os.path.join(self.args.dir, "base-%d.img" % epoch),
                    "rb").read()
        fate = {"there": 0, "not there": 0, "torn": 0}
        for r, (a, b) in enumerate(regions(cfg)):
            L = ops = region_ops(log, r, dead)
            done = [x for x in L if x["a"] < INF]
            pending = L[len(done):]
            assert len(pending) <= 1, pending
            st = bytearray(base[a:b])
            for op in done:
                apply(cfg, epoch, st, a, op)
            have = got[a:b]
            if have == st:
                fate["not there"] += len(pending)
                continue
            if pending:
                op = pending[0]
                new = bytearray(st)
                apply(cfg, epoch, new, a, op)
                if have == new:
                    fate["there"] += 1
                    continue
                o0, o1 = op["off"] - a, op["off"] - a + op["len"]
                if have[:o0] == st[:o0] and have[o1:] == st[o1:] and all(
                        h in (x, y) for h, x, y in
                        zip(have[o0:o1], st[o0:o1], new[o0:o1])):
                    fate["torn"] += 1
                    print("cut.py: region %d: the %s (%d bytes) in flight "
                          "at the kill is partly there (allowed: it had no "
                          "answer)"
                          % (r, op["op"], op["len"]), flush=True)
                    continue
            self.fail("origin (epoch %d), region %d: does not hold every "
                      "answered request (%d of them)%s\n%s"
                      % (epoch, r, len(done),
                         " and the one in flight whole, torn or not at all"
                         if pending else "",
                         explain(cfg, epoch, base[a:b], a, ops, len(done),
                                 len(L), have)))
        if dead is not None:
            print("cut.py: origin after the kill: every answered request "
                  "is there; of those in flight: %s"
                  % ", ".join("%d %s" % (n, k) for k, n in fate.items()),
                  flush=True)

    def read_export(self, name):
        h = nbd.NBD()
        h.connect_uri(snap_uri(self.args, name))
        size, data = h.get_size(), bytearray()
        while len(data) < size:
            data += h.pread(min(1 << 20, size - len(data)), len(data))
        h.shutdown()
        return bytes(data)


def label(c):
    return "%s (create %s)" % (c["name"], c["id"])


def inc_at(incs, name, t):
    """The incarnation of snapshot name that was created last before t."""
    return [c for c in incs[name] if c["s"] < t][-1]


def cmd_verify(args):
    cfg = load_config(args.dir)
    d, E = args.dir, args.epoch
    v = Verifier(args, cfg)
    known = json.load(open(os.path.join(d, "known.json")))
    log = load_epoch(d, E)
    kills = [x for x in log if x["k"] == "kill"]
    dead = kills[0]["dead"] if kills else None

    # The origin: every answered request, then the base of the next epoch.
    origin = v.read_export("")
    v.check_origin(E, log, dead, origin)
    with open(os.path.join(d, "base-%d.img" % (E + 1)), "wb") as f:
        f.write(origin)

    # Snapshots by incarnation (a name may be taken again once deleted):
    # the create's id.  What must be listed, what may be.
    incs, deletes = {}, {}
    for e in range(E + 1):
        for x in load_epoch(d, e):
            if x["k"] == "create" and x["rc"] in (0, "unknown"):
                incs.setdefault(x["name"], []).append(dict(x, epoch=e))
            elif x["k"] == "delete" and x["rc"] != 4:
                c = inc_at(incs, x["name"], x["s"])
                deletes[c["id"]] = x
    r = subprocess.run([args.ctl, "-s", args.admin, "--json", "list"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        die("nbdsnapctl list: %s" % r.stderr)
    listed = {s["name"]: s for s in json.loads(r.stdout)["snapshots"]}
    for name, s in sorted(listed.items()):
        c = incs[name][-1] if name in incs else None
        if c is None:
            v.fail("%s is listed but was never created" % name)
            continue
        what = label(c)
        if c["id"] in known["absent"]:
            v.fail("%s is listed again after it was not" % what)
        elif c["id"] in deletes and s["state"] == "deleting":
            pass                # its chunk moves may still be going on
        elif c["id"] in deletes and deletes[c["id"]]["rc"] == 0:
            x = deletes[c["id"]]
            v.fail("%s was deleted (%s answered at %.6f) but is listed, %s"
                   % (what, " ".join(x["words"]), x["wall_r"], s["state"]))
        elif s["state"] != "live":
            v.fail("%s is %s, not live" % (what, s["state"]))
    for name, cs in sorted(incs.items()):
        for c in cs:
            if c is cs[-1] and name in listed:
                continue
            if c["rc"] == 0 and c["id"] not in deletes:
                v.fail("%s was created (nbdsnapctl answered at %.6f) and "
                       "not deleted, but is not listed"
                       % (label(c), c["wall_r"]))
            if c["id"] not in known["absent"]:
                known["absent"].append(c["id"])

    # Every read of every snapshot: this epoch's readers (of the
    # incarnation created last before they connected), a full read now.
    present = [n for n, s in listed.items() if s["state"] == "live"]
    creates = {c["id"]: c for cs in incs.values() for c in cs}
    reads, reads_n = {}, {}
    for x in log:
        if x["k"] == "read":
            i = inc_at(incs, x["name"], x["tc"])["id"]
            reads.setdefault(i, set()).add(tuple(x["d"]))
            reads_n[i] = reads_n.get(i, 0) + 1
    data = {}
    for name in present:
        i = incs[name][-1]["id"]
        data[i] = v.read_export(name)
        reads.setdefault(i, set()).add(tuple(region_digests(cfg, data[i])))
        reads_n[i] = reads_n.get(i, 0) + 1
    new = {}
    known_before = set(known["digests"])
    for i, dsets in reads.items():
        if i in known["digests"]:
            was = tuple(known["digests"][i])
            if dsets != {was}:
                v.fail("%s no longer reads as it did when epoch %d verified "
                       "it: regions %s differ (%d of the %d distinct contents "
                       "read now)"
                       % (label(creates[i]), creates[i]["epoch"],
                          sorted({r for d in dsets for r in range(NREG)
                                  if d[r] != was[r]}),
                          sum(d != was for d in dsets), len(dsets)))
        else:
            new.setdefault(creates[i]["epoch"], {})[i] = \
                (creates[i], dsets, data.get(i))
    nok = 0
    for e, snaps in sorted(new.items()):
        elog = log if e == E else load_epoch(d, e)
        ekills = [x for x in elog if x["k"] == "kill"]
        edead = ekills[0]["dead"] if ekills else None
        ok = v.check_cut(e, elog, edead, snaps, reads_n)
        known["digests"].update(ok)
        nok += len(ok)
    known["present"] = sorted(present)
    with open(os.path.join(d, "known.json"), "w") as f:
        json.dump(known, f)
    again = sum(1 for n in reads if n in known_before)
    print("cut.py: verify %d: %d snapshots listed; %d cuts verified now%s; "
          "%d read again as before; %d verified in all%s"
          % (E, len(listed), nok,
             " (%d regions had requests in flight at the create, which "
             "took %.1f..%.1f ms)" % (v.inflight, min(v.windows) * 1000,
                                      max(v.windows) * 1000)
             if v.windows else "", again, len(known["digests"]),
             "; origin ok" if not v.failures else ""), flush=True)
    if v.failures:
        sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sock")
    p.add_argument("--admin")
    p.add_argument("--ctl")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init")
    s.add_argument("dir")
    s.add_argument("--seed", required=True)
    s.add_argument("--chunk", required=True)
    s = sub.add_parser("run")
    s.add_argument("dir")
    s.add_argument("--epoch", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--kill-fifo", help="FIFO.req, FIFO.ack: kill nbdkit "
                   "through the shell")
    s = sub.add_parser("verify")
    s.add_argument("dir")
    s.add_argument("--epoch", type=int, required=True)
    args = p.parse_args()
    {"init": cmd_init, "run": cmd_run, "verify": cmd_verify}[args.cmd](args)


if __name__ == "__main__":
    main()
