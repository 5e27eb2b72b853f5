#!/usr/bin/python3
# nbdsnap: the stall benchmark (see bench/README.md); run it with
# bench/stall, which finds the build tree and makes the scratch directory.
#
#   stall.py run BUILDDIR NBDKIT SCRATCH   the whole scenario (env below)
#   stall.py qd1 URI SIZE OUT              4 KiB random writes, one at a time
#   stall.py qd16 URI SIZE OUT             4 KiB random writes, 16 in flight
#   stall.py lister NBDSNAPCTL SOCKET OUT  `nbdsnapctl list` in a loop
#
# The three helpers run as processes of their own; each prints "ready"
# once it is connected, works until its standard input is closed, then
# writes what it measured to OUT: one record per request, its start and
# end on CLOCK_MONOTONIC (nanoseconds, the clock of every process on the
# machine, so the driver can place each request against the operations
# it timed itself) and, for the lister, nbdsnapctl's exit status.
#
# Environment of `run` (bench/stall passes it on):
#   GIB=2              image size in GiB
#   DURABILITY="process power"   the modes to run, one after the other
#   ROUNDS=1           run everything this many times; then the summary
#                      adds the median of each column per mode
#   BASE=10            seconds of the delete scenario's baseline phase
#   CREATES=10         snapshots created in the create phase, one a second
#                      (its baseline phase lasts as long)
#   KEEP=4             the create phase deletes the oldest beyond KEEP
#                      snapshots (0: never)
#   LIST_PAUSE=0.02    seconds between two `nbdsnapctl list`
#   CHUNK=64K          the plugin's chunk-size

import array
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
BS = 4096
TARGET_WRITE_MS = 50.0
TARGET_LIST_MS = 100.0


def now():
    return time.monotonic_ns()


def stdin_closed():
    r, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(r)


def ready():
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def save(out, *arrays):
    with open(out, "wb") as f:
        for a in arrays:
            a.tofile(f)


def load(path, k):
    a = array.array("q")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    n = len(a) // k
    return [a[i * n:(i + 1) * n] for i in range(k)]


# --- the helpers ----------------------------------------------------------

def qd1(uri, size, out):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    nblocks = size // BS
    buf = os.urandom(BS)
    start, end = array.array("q"), array.array("q")
    rnd = random.Random(1)
    ready()
    while True:
        for _ in range(32):
            off = rnd.randrange(nblocks) * BS
            t = now()
            h.pwrite(buf, off)
            start.append(t)
            end.append(now())
        if stdin_closed():
            break
    h.shutdown()
    save(out, start, end)


def qd16(uri, size, out, depth=16):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    nblocks = size // BS
    buf = os.urandom(BS)
    start, end = array.array("q"), array.array("q")
    rnd = random.Random(16)
    inflight = [0]

    def done(t, err):
        end.append(now())
        start.append(t)
        inflight[0] -= 1
        if err.value != 0:
            raise SystemExit("write failed: errno %d" % err.value)
        return 1

    ready()
    polls = 0
    while True:
        while inflight[0] < depth:
            off = rnd.randrange(nblocks) * BS
            t = now()
            h.aio_pwrite(buf, off,
                         completion=lambda err, t=t: done(t, err))
            inflight[0] += 1
        h.poll(-1)
        polls += 1
        if polls % 32 == 0 and stdin_closed():
            break
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.shutdown()
    save(out, start, end)


def lister(ctl, sock, out, pause):
    start, end, rc = array.array("q"), array.array("q"), array.array("q")
    ready()
    while not stdin_closed():
        t = now()
        r = subprocess.run([ctl, "-s", sock, "list"],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL).returncode
        start.append(t)
        end.append(now())
        rc.append(r)
        time.sleep(pause)
    save(out, start, end, rc)


# --- the driver -----------------------------------------------------------

class Child:
    """One helper process: started, waited for "ready", stopped."""

    def __init__(self, *args):
        self.out = args[-1]
        self.p = subprocess.Popen([sys.executable, __file__] + list(args),
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if line != "ready\n":
            raise SystemExit("stall.py %s did not start" % args[0])

    def stop(self, k):
        self.p.stdin.close()
        if self.p.wait(timeout=600) != 0:
            raise SystemExit("stall.py helper exited %d" % self.p.returncode)
        return load(self.out, k)


def pct(sorted_ms, p):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_ms:
        return float("nan")
    i = max(0, min(len(sorted_ms) - 1,
                   int(-(-p * len(sorted_ms) // 100)) - 1))
    return sorted_ms[i]


class Lat(list):
    """Latencies in ms, sorted, and when the worst request started."""

    def __init__(self, pairs):
        pairs = sorted((e - s, s) for s, e in pairs)
        super().__init__(d / 1e6 for d, _ in pairs)
        self.worst_start = pairs[-1][1] if pairs else None


def window(start, end, lo, hi):
    """The requests that overlap [lo, hi): those an operation running
    then may have delayed."""
    return Lat((s, e) for s, e in zip(start, end) if e > lo and s < hi)


def inside(start, end, lo, hi):
    """The requests that began and ended in [lo, hi): a baseline's."""
    return Lat((s, e) for s, e in zip(start, end) if s >= lo and e <= hi)


def attribute(start, end, spans):
    """Each request that overlaps some of spans ((lo, hi, label), not
    overlapping each other), given to the one it overlaps most: a request
    delayed by an operation ends when it does, so it overlaps it most.
    Returns {label: Lat}."""
    spans = sorted(spans)
    res = {label: [] for _, _, label in spans}
    j = 0
    for s, e in sorted(zip(start, end)):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        best, label = 0, None
        k = j
        while k < len(spans) and spans[k][0] < e:
            o = min(e, spans[k][1]) - max(s, spans[k][0])
            if o > best:
                best, label = o, spans[k][2]
            k += 1
        if label is not None:
            res[label].append((s, e))
    return {label: Lat(v) for label, v in res.items()}


def fmt_ms(x):
    return "%9.2f" % x


def row(label, t, secs, lat):
    """One line: the requests of a phase that began at t (ns)."""
    n = len(lat)
    at = (lat.worst_start - t) / 1e9 if lat.worst_start is not None else 0
    print("  %-34s %6.2f %7d %8.0f %s %s %s %+7.2f" % (
        label, secs, n, n / secs if secs > 0 else 0,
        fmt_ms(pct(lat, 50)), fmt_ms(pct(lat, 99)),
        fmt_ms(lat[-1] if lat else float("nan")), at))


def header(what):
    print("  %-34s %6s %7s %8s %9s %9s %9s %7s" % (
        what, "secs", "n", "per sec", "p50 ms", "p99 ms", "max ms",
        "max at"))


def verdict(x, target):
    return "%.1f ms (target <= %.0f ms: %s)" % (
        x, target, "pass" if x <= target else "FAIL")


class Server:
    def __init__(self, builddir, nbdkit, scratch, durability, chunk):
        self.dir = scratch
        self.sock = os.path.join(scratch, "nbd.sock")
        self.admin = os.path.join(scratch, "admin.sock")
        self.uri = "nbd+unix:///?socket=" + self.sock
        self.ctlpath = os.path.join(builddir, "src", "nbdsnapctl")
        self.img = os.path.join(scratch, "disk.img")
        plugin = os.path.join(builddir, "plugin", ".libs",
                              "nbdkit-nbdsnap-plugin.so")
        pidfile = os.path.join(scratch, "nbdkit.pid")
        self.log = open(os.path.join(scratch, "nbdkit.log"), "w")
        self.p = subprocess.Popen(
            [nbdkit, "-f", "-U", self.sock, "-P", pidfile, plugin,
             "file=" + self.img, "statedir=" + os.path.join(scratch, "state"),
             "admin=" + self.admin, "durability=" + durability,
             "chunk-size=" + chunk], stderr=self.log)
        for _ in range(300):
            if os.path.exists(pidfile) and os.path.getsize(pidfile) > 0 \
               and os.path.exists(self.sock):
                return
            if self.p.poll() is not None:
                raise SystemExit("nbdkit exited at start-up; see its log")
            time.sleep(0.1)
        raise SystemExit("nbdkit did not start")

    def ctl(self, *args):
        """nbdsnapctl --json ARGS: (seconds, last JSON object printed)."""
        t = now()
        r = subprocess.run([self.ctlpath, "-s", self.admin, "--json"]
                           + list(args), stdout=subprocess.PIPE, text=True,
                           timeout=1800)
        secs = (now() - t) / 1e9
        if r.returncode != 0:
            raise SystemExit("nbdsnapctl %s: exit status %d"
                             % (" ".join(args), r.returncode))
        obj = None
        for line in r.stdout.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                pass
        return secs, obj

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def fill(path, size):
    buf = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for i in range(size // MiB):
            buf[0:8] = i.to_bytes(8, "little")
            f.write(buf)


def overwrite(uri, lo, hi):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    buf = os.urandom(MiB)
    for off in range(lo, hi, MiB):
        h.pwrite(buf[:min(MiB, hi - off)], off)
    h.flush()
    h.shutdown()


def copied(srv, name):
    _, j = srv.ctl("info", name)
    return j["snapshot"]["chunks_copied"]


def run_delete(srv, size, chunk, base, pause, res):
    """A, 1/4 of the image overwritten (copied into A), B, the other 3/4
    overwritten (copied into B: every one of these chunks is one A needs),
    then `delete B` moves 3/4 of the image into A while a QD1 writer and a
    `list` loop run."""
    print("# delete: %.2f GiB image; A; %.2f GiB overwritten; B; "
          "%.2f GiB overwritten; delete B moves them into A"
          % (size / 2**30, size / 4 / 2**30, size * 3 / 4 / 2**30))
    q = size // 4 // chunk * chunk
    srv.ctl("create", "A")
    overwrite(srv.uri, 0, q)
    srv.ctl("create", "B")
    overwrite(srv.uri, q, size)
    os.sync()
    a_before = copied(srv, "A")

    w = Child("qd1", srv.uri, str(size), os.path.join(srv.dir, "qd1.log"))
    ls = Child("lister", srv.ctlpath, srv.admin,
               os.path.join(srv.dir, "list.log"))
    time.sleep(0.5 + base)      # the writer settles, then the baseline
    t0 = now()
    dsecs, dj = srv.ctl("delete", "B")
    t1 = now()
    time.sleep(0.2)
    ws, we = w.stop(2)
    lst, le, lrc = ls.stop(3)
    moved = (copied(srv, "A") - a_before) * chunk
    if dj and "moved_bytes" in dj:
        moved = dj["moved_bytes"]

    # The baseline phase: as long as the delete when the baseline allows,
    # ending where the delete starts.
    blen = min(t1 - t0, int(base * 1e9))
    during = window(ws, we, t0, t1)
    before = inside(ws, we, t0 - blen, t0)
    ldur = window(lst, le, t0, t1)
    lbase = inside(lst, le, t0 - blen, t0)
    lfail = sum(1 for r in lrc if r != 0)
    print("  delete B: %.2f s, moved %.2f GiB into A; %d `list` runs failed"
          % (dsecs, moved / 2**30, lfail))
    header("4 KiB writes, QD1")
    row("baseline (just before the delete)", t0 - blen, blen / 1e9, before)
    row("during delete B", t0, (t1 - t0) / 1e9, during)
    header("nbdsnapctl list")
    row("baseline", t0 - blen, blen / 1e9, lbase)
    row("during delete B", t0, (t1 - t0) / 1e9, ldur)
    res.update(delete_s=dsecs, moved=moved,
               del_base_p99=pct(before, 99), del_base_max=before[-1],
               del_p99=pct(during, 99),
               del_max=during[-1] if during else float("nan"),
               list_max=ldur[-1] if ldur else float("nan"),
               list_base_max=lbase[-1] if lbase else float("nan"),
               list_fail=lfail)


def run_create(srv, size, creates, keep, res):
    """A writer with 16 writes in flight on an origin with one snapshot
    taken just before (so the baseline's writes copy-on-write too, fewer
    and fewer); a baseline as long as the create phase, then a snapshot
    a second (the oldest deleted beyond KEEP)."""
    print("# create: 4 KiB random writes, 16 in flight; %d s baseline, then "
          "a snapshot a second for %d s%s"
          % (creates, creates,
             ", the oldest deleted beyond %d" % keep if keep else ""))
    srv.ctl("delete", "A")      # the oldest: nothing to move
    os.sync()
    w = Child("qd16", srv.uri, str(size), os.path.join(srv.dir, "qd16.log"))
    srv.ctl("create", "c-base")
    time.sleep(0.5)             # let the writer settle
    t0 = now()
    time.sleep(creates)
    t1 = now()
    cspans, dspans, csecs, dsecs, snaps = [], [], [], [], ["c-base"]
    for i in range(creates):
        tick = t1 + i * 1_000_000_000
        time.sleep(max(0, (tick - now()) / 1e9))
        name = "c%d" % i
        c0 = now()
        secs, _ = srv.ctl("create", name)
        cspans.append((c0, now(), "create"))
        csecs.append(secs * 1e3)
        snaps.append(name)
        if keep and len(snaps) > keep:
            time.sleep(max(0, (tick + 500_000_000 - now()) / 1e9))
            d0 = now()
            secs, _ = srv.ctl("delete", snaps.pop(0))
            dspans.append((d0, now(), "delete"))
            dsecs.append(secs * 1e3)
    time.sleep(max(0, (t1 + creates * 1_000_000_000 - now()) / 1e9))
    t2 = now()
    ws, we = w.stop(2)
    base = inside(ws, we, t0, t1)
    phase = window(ws, we, t1, t2)
    by_op = attribute(ws, we, cspans + dspans)
    oc = by_op.get("create", Lat([]))
    od = by_op.get("delete", Lat([]))
    csecs.sort()
    print("  create: median %.1f ms, max %.1f ms" % (pct(csecs, 50),
                                                     csecs[-1]), end="")
    if dsecs:
        dsecs.sort()
        print("; delete of the oldest: median %.1f ms, max %.1f ms"
              % (pct(dsecs, 50), dsecs[-1]), end="")
    print()
    header("4 KiB writes, QD16")
    row("baseline (no snapshot operation)", t0, (t1 - t0) / 1e9, base)
    row("creates phase, all writes", t1, (t2 - t1) / 1e9, phase)
    row("  writes overlapping a create", t1,
        sum(e - s for s, e, _ in cspans) / 1e9, oc)
    if dspans:
        row("  writes overlapping a delete", t1,
            sum(e - s for s, e, _ in dspans) / 1e9, od)
    res.update(cre_base_p99=pct(base, 99), cre_base_max=base[-1],
               cre_p99=pct(phase, 99), cre_max=phase[-1],
               cre_ov_max=oc[-1] if oc else float("nan"),
               old_ov_max=od[-1] if od else float("nan"),
               create_ms=pct(csecs, 50))


def size_arg(s):
    m = {"K": 1 << 10, "M": 1 << 20}
    return int(s[:-1]) * m[s[-1].upper()] if s[-1].upper() in m else int(s)


# The summary's columns: heading, key, format.
SUMMARY = [
    ("durab.", "mode", "%s"),
    ("delete s", "delete_s", "%.2f"),
    ("moved GiB", "moved_gib", "%.2f"),
    ("dbase max", "del_base_max", "%.1f"),
    ("del p99", "del_p99", "%.1f"),
    ("del max", "del_max", "%.1f"),
    ("lbase max", "list_base_max", "%.1f"),
    ("list max", "list_max", "%.1f"),
    ("cbase p99", "cre_base_p99", "%.1f"),
    ("cbase max", "cre_base_max", "%.1f"),
    ("cre p99", "cre_p99", "%.1f"),
    ("cre max", "cre_max", "%.1f"),
    ("@create", "cre_ov_max", "%.1f"),
    ("@del-old", "old_ov_max", "%.1f"),
    ("create ms", "create_ms", "%.1f"),
]


def summary_row(label, r):
    ok = (r["del_max"] <= TARGET_WRITE_MS and r["cre_max"] <= TARGET_WRITE_MS
          and r["list_max"] <= TARGET_LIST_MS)
    print("%-7s" % label + " ".join("%9s" % (f % r[k]) for _, k, f in SUMMARY)
          + " %7s" % ("pass" if ok else "FAIL"))


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def run(builddir, nbdkit, scratch):
    gib = float(os.environ.get("GIB", "2"))
    modes = os.environ.get("DURABILITY", "process power").split()
    rounds = int(os.environ.get("ROUNDS", "1"))
    base = float(os.environ.get("BASE", "10"))
    creates = int(os.environ.get("CREATES", "10"))
    keep = int(os.environ.get("KEEP", "4"))
    pause = float(os.environ.get("LIST_PAUSE", "0.02"))
    chunk = os.environ.get("CHUNK", "64K")
    os.environ["LIST_PAUSE"] = str(pause)
    size = int(gib * 2**30) // MiB * MiB
    results = []
    for rnd in range(rounds):
        for mode in modes:
            d = tempfile.mkdtemp(prefix="stall-" + mode + ".", dir=scratch)
            print("\n## round %d of %d: durability=%s, chunk-size=%s, in %s"
                  % (rnd + 1, rounds, mode, chunk, d))
            fill(os.path.join(d, "disk.img"), size)
            srv = Server(builddir, nbdkit, d, mode, chunk)
            res = {"mode": mode}
            try:
                run_delete(srv, size, size_arg(chunk), base, pause, res)
                run_create(srv, size, creates, keep, res)
            finally:
                srv.stop()
                subprocess.run(["rm", "-rf", d])
            res["moved_gib"] = res["moved"] / 2**30
            results.append(res)

    print("\n## summary, ms unless said (the columns: bench/README.md)")
    print("%-7s" % "round" + " ".join("%9s" % h for h, _, _ in SUMMARY)
          + " %7s" % "targets")
    for i, r in enumerate(results):
        summary_row("%d" % (i // len(modes) + 1), r)
    meds = []
    if rounds > 1:
        for mode in modes:
            rs = [r for r in results if r["mode"] == mode]
            m = {k: median([r[k] for r in rs])
                 for _, k, _ in SUMMARY[1:]}
            m["mode"] = mode
            summary_row("median", m)
            meds.append(m)
    else:
        meds = results
    for r in meds:
        print("%s%s: worst write during delete %s; during creates %s; "
              "worst list during delete %s"
              % (r["mode"], " (median of %d)" % rounds if rounds > 1 else "",
                 verdict(r["del_max"], TARGET_WRITE_MS),
                 verdict(r["cre_max"], TARGET_WRITE_MS),
                 verdict(r["list_max"], TARGET_LIST_MS)))
    return 0


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    a = sys.argv[2:]
    if cmd == "qd1" and len(a) == 3:
        qd1(a[0], int(a[1]), a[2])
    elif cmd == "qd16" and len(a) == 3:
        qd16(a[0], int(a[1]), a[2])
    elif cmd == "lister" and len(a) == 3:
        lister(a[0], a[1], a[2], float(os.environ.get("LIST_PAUSE", "0.02")))
    elif cmd == "run" and len(a) == 3:
        sys.exit(run(*a))
    else:
        sys.exit("usage: see the top of " + __file__)


if __name__ == "__main__":
    main()
