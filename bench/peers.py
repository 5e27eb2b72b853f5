#!/usr/bin/python3
# nbdsnap: the peer comparison (see bench/README.md, "run: nbdsnap against
# its peers"); run it with bench/run, which checks the tools and makes the
# scratch directories.
#
#   peers.py BUILDDIR SCRATCH OUTDIR COMMAND-LINE
#
# Each server is started on a unix socket (pinned to SERVER_CPU), the same
# fio (ioengine=nbd) and nbdcopy workloads run against it (pinned to
# CLIENT_CPU), and it is stopped by its PID.  Everything of one run is
# measured side by side: the servers of a run follow each other, in an
# order that rotates from run to run, and every ratio is taken against the
# nbdkit file plugin of the same run and location, then the median over
# runs is reported.  Writes OUTDIR/BENCHMARKS.md and OUTDIR/bench-*.png.
#
# Environment (bench/run passes it on):
#   RUNS=3               runs of the whole matrix (medians over runs)
#   WRITES=20000         writes per write workload, each to its own chunk
#   DEPTH=16             fio iodepth
#   LOCATIONS="shm ext4 xfs"
#   SERVERS=...          a subset of the server names (default: all)
#   LOOPDIR=/var/tmp     where the loop-mounted ext4/XFS image files go
#   LOOP_GIB=8           their size (sparse)
#   CREATE_SIZES="1G 16G 256G 1T"   image sizes of the create latency
#   RSS_SNAPS=64 RSS_WRITES=1000    the peak-RSS scenario (1 TiB image)
#   SERVER_CPU=0 CLIENT_CPU=1
#   NBDSNAP_PARAMS="chunk-size=16K"   more plugin parameters for nbdsnap
#   QUICK=1              the smoke test: defaults become RUNS=1 WRITES=2000

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time

CHUNK = 65536
MiB = 1 << 20
GiB = 1 << 30
TCK = os.sysconf("SC_CLK_TCK")


def env(name, default):
    return os.environ.get(name) or default


QUICK = env("QUICK", "0") not in ("0", "")
RUNS = int(env("RUNS", "1" if QUICK else "3"))
WRITES = int(env("WRITES", "2000" if QUICK else "20000"))
DEPTH = int(env("DEPTH", "16"))
LOCATIONS = env("LOCATIONS", "shm ext4 xfs").split()
LOOPDIR = env("LOOPDIR", "/var/tmp")
LOOP_GIB = int(env("LOOP_GIB", "8"))
CREATE_SIZES = env("CREATE_SIZES", "1G 1T" if QUICK
                   else "1G 16G 256G 1T").split()
RSS_SNAPS = int(env("RSS_SNAPS", "64"))
RSS_WRITES = int(env("RSS_WRITES", "200" if QUICK else "1000"))
SERVER_CPU = env("SERVER_CPU", "0")
CLIENT_CPU = env("CLIENT_CPU", "1")
NBDKIT = env("NBDKIT", "nbdkit")
QSD = env("QSD", "qemu-storage-daemon")
FIO = env("FIO", "fio")
# docs/BENCHMARKS.md's section written by bench/threads.
THREADS_BEGIN = "<!-- bench/threads: begin -->"
THREADS_END = "<!-- bench/threads: end -->"
NBDCOPY = env("NBDCOPY", "nbdcopy")

# The image: every write of a workload lands in a chunk of its own.
IMG_BYTES = max(GiB, -(-WRITES * CHUNK // (256 * MiB)) * 256 * MiB)

ALL_SERVERS = (["file"] +
               ["nbdsnap-%s-%d" % (m, n) for m in ("process", "power")
                for n in (0, 1, 64)] +
               ["qsd-raw", "qsd-qcow2", "cow"])
SERVERS = env("SERVERS", " ".join(ALL_SERVERS)).split()
for s in SERVERS:
    if s not in ALL_SERVERS:
        sys.exit("peers.py: unknown server %s (known: %s)"
                 % (s, " ".join(ALL_SERVERS)))
if "file" not in SERVERS:
    SERVERS.insert(0, "file")

WORKLOADS = ["first4k", "steady4k", "first64k", "snapread"]
WL_TITLE = {"first4k": "4K first write", "steady4k": "4K steady write",
            "first64k": "64K first write", "snapread": "snapshot read"}

SERVER_TITLE = {
    "file": "nbdkit file plugin (baseline, no snapshot)",
    "qsd-raw": "QEMU fleecing, raw target",
    "qsd-qcow2": "QEMU fleecing, qcow2 target",
    "cow": "nbdkit cow filter",
}
for _m in ("process", "power"):
    for _n in (0, 1, 64):
        SERVER_TITLE["nbdsnap-%s-%d" % (_m, _n)] = \
            "nbdsnap %s, %d snapshot%s" % (_m, _n, "" if _n == 1 else "s")

# Curves: nbdsnap process blues, power reds (0 snapshots dashed), QEMU
# greens, the cow filter orange, the baseline black.
COLOUR = {"file": "#000000",
          "nbdsnap-process-0": "#6baed6", "nbdsnap-process-1": "#2171b5",
          "nbdsnap-process-64": "#08306b",
          "nbdsnap-power-0": "#fc9272", "nbdsnap-power-1": "#de2d26",
          "nbdsnap-power-64": "#67000d",
          "qsd-raw": "#41ab5d", "qsd-qcow2": "#005a32", "cow": "#ff7f00"}

LOC_TITLE = {"shm": "tmpfs (/dev/shm)",
             "ext4": "ext4 (loop-mounted image file)",
             "xfs": "XFS, reflink=1 (loop-mounted image file)"}

# --- processes and clean-up -------------------------------------------------

live = {}        # pid -> Popen of servers still running
mounts = []      # mount points to unmount


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, timeout=600, **kw):
    return subprocess.run(cmd, timeout=timeout, check=True, **kw)


def cleanup():
    for pid, p in list(live.items()):
        kill(p)
    while mounts:
        m = mounts.pop()
        subprocess.run(["umount", m], stderr=subprocess.DEVNULL)
        # -o loop sets autoclear: the loop device goes with the mount.


def on_signal(sig, frame):
    raise SystemExit("peers.py: signal %d, cleaning up" % sig)


def kill(p, timeout=20):
    """Stop a server by its PID: SIGTERM, then SIGKILL after TIMEOUT s."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log("peers.py: pid %d ignored SIGTERM for %d s: SIGKILL"
                % (p.pid, timeout))
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    live.pop(p.pid, None)


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])      # utime + stime


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class Server:
    """One server on a unix socket in directory D, serving image IMG."""

    def __init__(self, name, d, img, builddir):
        self.name, self.d, self.img, self.builddir = name, d, img, builddir
        self.sock = os.path.join(d, "nbd.sock")
        self.admin = os.path.join(d, "admin.sock")
        self.state = os.path.join(d, "state")
        self.logf = os.path.join(d, "server.log")
        self.p = None
        self.snaps = []
        self.snapname = None
        self.nsnaps = 0
        self.kind = name.split("-")[0]
        if self.kind == "nbdsnap":
            self.mode = name.split("-")[1]
            self.nsnaps = int(name.split("-")[2])
        elif self.kind == "qsd":
            self.fmt = name.split("-")[1]

    def uri(self, export=""):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def argv(self):
        pidfile = os.path.join(self.d, "pid")
        if self.kind == "file":
            return [NBDKIT, "-f", "-U", self.sock, "-P", pidfile,
                    "file", self.img]
        if self.kind == "cow":
            return [NBDKIT, "-f", "-U", self.sock, "-P", pidfile,
                    "--filter=cow", "file", self.img]
        if self.kind == "nbdsnap":
            plugin = os.path.join(self.builddir, "plugin", ".libs",
                                  "nbdkit-nbdsnap-plugin.so")
            return [NBDKIT, "-f", "-U", self.sock, "-P", pidfile, plugin,
                    "file=" + self.img, "statedir=" + self.state,
                    "admin=" + self.admin, "durability=" + self.mode] \
                + env("NBDSNAP_PARAMS", "").split()
        tgt = os.path.join(self.d, "target." + self.fmt)
        return [QSD,
                "--blockdev", "driver=file,node-name=base-file,filename="
                + self.img,
                "--blockdev", "driver=raw,node-name=base,file=base-file",
                "--blockdev", "driver=file,node-name=tgt-file,filename="
                + tgt,
                "--blockdev", "driver=%s,node-name=tgt,file=tgt-file"
                % self.fmt,
                "--blockdev", "driver=copy-before-write,node-name=cbw,"
                "file=base,target=tgt,on-cbw-error=break-guest-write",
                "--blockdev", "driver=snapshot-access,node-name=acc,file=cbw",
                "--nbd-server", "addr.type=unix,addr.path=" + self.sock,
                "--export", "type=nbd,id=o,node-name=cbw,name=origin,"
                "writable=on",
                "--export", "type=nbd,id=s,node-name=acc,name=snap,"
                "writable=off",
                "--pidfile", pidfile]

    def origin_uri(self):
        return self.uri("origin" if self.kind == "qsd" else "")

    def snap_uri(self):
        """The export a backup would read, or None."""
        if self.kind == "file":
            return self.uri()         # the baseline: the image itself
        if self.kind == "qsd":
            return self.uri("snap")
        if self.kind == "nbdsnap" and self.snapname:
            return self.uri(self.snapname)
        return None

    def start(self):
        for f in (self.sock, os.path.join(self.d, "pid")):
            if os.path.exists(f):
                os.unlink(f)
        if self.kind == "qsd":
            tgt = os.path.join(self.d, "target." + self.fmt)
            if os.path.exists(tgt):
                os.unlink(tgt)
            if self.fmt == "raw":
                with open(tgt, "w") as f:
                    f.truncate(IMG_BYTES)
            else:
                run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                     "cluster_size=65536", tgt, str(IMG_BYTES)])
        e = dict(os.environ)
        e["TMPDIR"] = self.d        # the cow filter's overlay goes here
        lf = open(self.logf, "a")
        self.p = subprocess.Popen(["taskset", "-c", SERVER_CPU]
                                  + self.argv(), stdout=lf, stderr=lf,
                                  stdin=subprocess.DEVNULL, env=e)
        lf.close()
        live[self.p.pid] = self.p
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            if self.p.poll() is not None:
                raise RuntimeError("%s exited at start-up (status %s): %s"
                                   % (self.name, self.p.returncode,
                                      tail(self.logf)))
            if os.path.exists(self.sock):
                return
            time.sleep(0.02)
        kill(self.p)
        raise RuntimeError("%s did not start in 30 s" % self.name)

    def stop(self):
        if self.p:
            kill(self.p)
            self.p = None

    def ctl(self, *args):
        t = time.monotonic()
        r = subprocess.run([os.path.join(self.builddir, "src", "nbdsnapctl"),
                            "-s", self.admin] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=600)
        dt = time.monotonic() - t
        if r.returncode != 0:
            raise RuntimeError("nbdsnapctl %s: exit %d: %s"
                               % (" ".join(args), r.returncode, r.stderr))
        return dt

    def setup(self):
        """Start, and for nbdsnap with N snapshots create the N-1 that
        precede the one each first-write workload gets."""
        if self.kind == "nbdsnap":
            # A new state directory: the image's mark of the previous one
            # goes (nbdsnap refuses an image marked for another).
            run(["rm", "-rf", self.state])
            try:
                os.removexattr(self.img, "user.nbdsnap.state-id")
            except OSError:
                pass
        self.start()
        for i in range(max(0, self.nsnaps - 1)):
            self.ctl("create", "p%02d" % i)
            self.snaps.append("p%02d" % i)

    def fresh_snapshot(self, label):
        """Make the state in which the next writes are first writes: a new
        newest snapshot.  Returns nbdsnapctl create's time in ms, or None."""
        if self.kind == "nbdsnap":
            if self.nsnaps == 0:
                return None
            if len(self.snaps) >= self.nsnaps:
                # Keep the chain's length: drop the oldest (which moves
                # nothing: no older snapshot needs its chunks).
                self.ctl("delete", self.snaps.pop(0))
            dt = self.ctl("create", label)
            self.snaps.append(label)
            self.snapname = label
            return dt * 1000
        if self.kind in ("qsd", "cow") and self.p is not None:
            # Their snapshot (the fleecing target, the cow overlay) is made
            # when they start: a new one is a new server.
            self.stop()
            self.start()
        return None


def exit_how(status):
    if status < 0:
        return "killed by signal %d (%s)" % (-status,
                                             signal.Signals(-status).name)
    return "exit status %d" % status


def tail(path, n=5):
    try:
        with open(path) as f:
            return " | ".join(f.read().splitlines()[-n:])
    except OSError:
        return ""


# --- the clients -------------------------------------------------------------

def write_iolog(path, bs, seed):
    """WRITES writes of BS bytes at distinct chunk starts, random order."""
    offs = list(range(IMG_BYTES // CHUNK))
    random.Random(seed).shuffle(offs)
    with open(path, "w") as f:
        f.write("fio version 2 iolog\nnbd add\nnbd open\n")
        for o in offs[:WRITES]:
            f.write("nbd write %d %d\n" % (o * CHUNK, bs))


def fio(srv, iolog, bs, out, latlog):
    cmd = ["taskset", "-c", CLIENT_CPU, FIO, "--name=w", "--ioengine=nbd",
           "--uri=" + srv.origin_uri(), "--rw=randwrite", "--bs=%d" % bs,
           "--iodepth=%d" % DEPTH, "--read_iolog=" + iolog,
           "--output-format=json", "--output=" + out + ".json"]
    if latlog:
        cmd += ["--write_lat_log=" + out, "--log_avg_msec=0"]
    pid = srv.p.pid
    c0 = cpu_ticks(pid)
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=300)
    c1 = cpu_ticks(pid)
    if r.returncode != 0:
        raise RuntimeError("fio: exit %d: %s" % (r.returncode, r.stderr[-300:]))
    with open(out + ".json") as f:
        j = json.load(f)
    w = j["jobs"][0]["write"]
    if j["jobs"][0]["error"] or w["total_ios"] != WRITES:
        raise RuntimeError("fio: error %d, %d of %d writes"
                           % (j["jobs"][0]["error"], w["total_ios"], WRITES))
    pct = w["clat_ns"]["percentile"]
    res = {"iops": w["iops"], "p50": pct["50.000000"] / 1e6,
           "p99": pct["99.000000"] / 1e6, "p999": pct["99.900000"] / 1e6,
           "max": w["clat_ns"]["max"] / 1e6,
           "cpu_us": (c1 - c0) / TCK * 1e6 / WRITES}
    if latlog:
        lat = []
        with open(out + "_clat.1.log") as f:
            for line in f:
                lat.append(int(line.split(",")[1]))
        res["lat"] = lat
        for sfx in ("clat", "lat", "slat"):
            os.unlink("%s_%s.1.log" % (out, sfx))
    return res


def nbdcopy(srv, uri):
    pid = srv.p.pid
    c0 = cpu_ticks(pid)
    t = time.monotonic()
    run(["taskset", "-c", CLIENT_CPU, NBDCOPY, "--connections=1", uri,
         "null:"], timeout=900)
    dt = time.monotonic() - t
    c1 = cpu_ticks(pid)
    return {"mibs": IMG_BYTES / MiB / dt, "secs": dt,
            "cpu_us": (c1 - c0) / TCK * 1e6 / (IMG_BYTES / MiB)}


# --- locations ---------------------------------------------------------------

def fill(img, size):
    """A fully allocated image of SIZE bytes of random data."""
    block = os.urandom(16 * MiB)
    with open(img, "wb") as f:
        n = 0
        while n < size:
            f.write(block[:min(len(block), size - n)])
            n += len(block)
        f.flush()
        os.fsync(f.fileno())


def setup_location(loc, scratch):
    if loc == "shm":
        d = os.path.join(scratch, "shm")
        os.makedirs(d, exist_ok=True)
        return d
    if os.geteuid() != 0:
        raise RuntimeError("%s needs root (a loop mount)" % loc)
    backing = os.path.join(scratch, "loop", "%s.img" % loc)
    os.makedirs(os.path.dirname(backing), exist_ok=True)
    with open(backing, "w") as f:
        f.truncate(LOOP_GIB * GiB)
    if loc == "ext4":
        run(["mkfs.ext4", "-q", "-F", backing])
    else:
        run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", backing])
    d = os.path.join(scratch, "mnt-" + loc)
    os.makedirs(d, exist_ok=True)
    run(["mount", "-o", "loop", backing, d])
    mounts.append(d)
    return d


def teardown_location(loc, d, scratch):
    if loc == "shm":
        run(["rm", "-rf", d])
        return
    subprocess.run(["umount", d])
    if d in mounts:
        mounts.remove(d)
    os.unlink(os.path.join(scratch, "loop", "%s.img" % loc))


# --- one server, one run -----------------------------------------------------

def instance(name, loc, d, img, builddir, iologs, r, results):
    sd = os.path.join(d, name)
    os.makedirs(sd, exist_ok=True)
    srv = Server(name, sd, img, builddir)
    res = {}
    out = os.path.join(sd, "fio")
    try:
        # Write back what the previous server left dirty, so that it is
        # neither in this server's way nor flushed by its first create.
        run(["sync", "-f", img], timeout=300)
        srv.setup()
        res["create_ms"] = srv.fresh_snapshot("a")
        res["first4k"] = fio(srv, iologs[4096], 4096, out, True)
        res["steady4k"] = fio(srv, iologs[4096], 4096, out, False)
        u = srv.snap_uri()
        if u:
            res["snapread"] = nbdcopy(srv, u)
        c = srv.fresh_snapshot("b")
        if c is not None:
            res["create2_ms"] = c
        res["first64k"] = fio(srv, iologs[65536], 65536, out, True)
        res["hwm"] = vm_hwm(srv.p.pid)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        res["error"] = str(e)
        if srv.p is not None and srv.p.poll() is not None:
            # The server is gone: say how, and keep its log.
            res["error"] += "; the server had exited: %s; its log: %s" % (
                exit_how(srv.p.returncode), tail(srv.logf, 20))
        log("  %s: FAILED: %s" % (name, res["error"]))
    finally:
        srv.stop()
        run(["rm", "-rf", sd])
    results.setdefault(loc, {}).setdefault(name, []).append(res)
    f4 = res.get("first4k")
    log("  run %d %-18s 4K first %8s IOPS p99 %6s ms  steady %8s  64K %8s"
        "  read %6s MiB/s" % (
            r + 1, name,
            "%.0f" % f4["iops"] if f4 else "-",
            "%.2f" % f4["p99"] if f4 else "-",
            "%.0f" % res["steady4k"]["iops"] if "steady4k" in res else "-",
            "%.0f" % res["first64k"]["iops"] if "first64k" in res else "-",
            "%.0f" % res["snapread"]["mibs"] if "snapread" in res else "-"))


# --- snapshot create latency and peak RSS ------------------------------------

def parse_size(s):
    m = re.fullmatch(r"(\d+)([KMGT]?)", s)
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30,
                               "T": 40}[m.group(2)]


def create_latency(loc, d, builddir, out):
    for mode in ("process", "power"):
        for size in CREATE_SIZES:
            sd = os.path.join(d, "create")
            os.makedirs(sd, exist_ok=True)
            img = os.path.join(sd, "sparse.img")
            with open(img, "w") as f:
                f.truncate(parse_size(size))
            srv = Server("nbdsnap-%s-0" % mode, sd, img, builddir)
            try:
                srv.setup()
                ts = [srv.ctl("create", "c%d" % i) * 1000 for i in range(3)]
                out.setdefault(loc, {}).setdefault(mode, {})[size] = ts
            except (RuntimeError, subprocess.SubprocessError) as e:
                log("  create %s %s: FAILED: %s" % (mode, size, e))
            finally:
                srv.stop()
                run(["rm", "-rf", sd])
    log("  create latency: %s" % json.dumps(out.get(loc)))


def peak_rss(d, builddir):
    """VmHWM of the server with RSS_SNAPS snapshots of a 1 TiB sparse image,
    RSS_WRITES scattered 4 KiB writes before each create: half to new
    places, half rewriting earlier ones (copy-on-write)."""
    import nbd
    sd = os.path.join(d, "rss")
    os.makedirs(sd, exist_ok=True)
    img = os.path.join(sd, "sparse.img")
    size = 1 << 40
    with open(img, "w") as f:
        f.truncate(size)
    srv = Server("nbdsnap-process-0", sd, img, builddir)
    res = {}
    try:
        srv.setup()
        res["hwm_start"] = vm_hwm(srv.p.pid)
        h = nbd.NBD()
        h.connect_uri(srv.uri())
        rnd = random.Random(64)
        buf = os.urandom(4096)
        written = []
        for i in range(RSS_SNAPS):
            for k in range(RSS_WRITES):
                if written and k % 2:
                    off = rnd.choice(written)
                else:
                    off = rnd.randrange(size // 4096) * 4096
                    written.append(off)
                h.pwrite(buf, off)
            srv.ctl("create", "s%02d" % i)
        h.flush()
        h.shutdown()
        res["hwm"] = vm_hwm(srv.p.pid)
        with open("/proc/%d/status" % srv.p.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    res["rss"] = int(line.split()[1]) * 1024
        res["distinct"] = len(set(written))
    except (RuntimeError, subprocess.SubprocessError) as e:
        res["error"] = str(e)
        log("  peak RSS: FAILED: %s" % e)
    finally:
        srv.stop()
        run(["rm", "-rf", sd])
    log("  peak RSS: %s" % res)
    return res


# --- the report --------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def per_run(results, loc, name, wl, key):
    return [r[wl][key] if wl in r else None
            for r in results[loc].get(name, [])]


def ratios(results, loc, name, wl, key, base="file", basewl=None):
    """Per-run ratio of NAME's WL to BASE's (same run, same location)."""
    a = per_run(results, loc, name, wl, key)
    b = per_run(results, loc, base, basewl or wl, key)
    return [x / y if x is not None and y else None for x, y in zip(a, b)]


def fmt(x, f="%.2f"):
    return "–" if x is None else f % x


def kilo(x):
    if x is None:
        return "–"
    return "%.1fk" % (x / 1000) if x >= 1000 else "%.0f" % x


def report(results, creates, rss, meta, outdir):
    L = []
    w = L.append
    w("# nbdsnap against its peers")
    w("")
    w("Generated by `bench/run` (see [bench/README.md](../bench/README.md), "
      "\"run: nbdsnap against its peers\"); do not edit by hand.")
    w("")
    w("* Date: %s" % meta["date"])
    w("* Command: `%s`" % meta["command"])
    w("* Measured tree: %s (`git describe` of %s); bench scripts: `%s`"
      % (meta["tree"], meta["builddir"], meta["bench"]))
    w("* Machine: %s, `nproc` %s, memory %s; load average %s at the start, "
      "%s at the end; server pinned to CPU %s, client to CPU %s"
      % (meta["uname"], meta["nproc"], meta["mem"], meta["load0"],
         meta["load1"], SERVER_CPU, CLIENT_CPU))
    w("* Tools: %s" % meta["tools"])
    w("* Workloads: %d runs; %d writes per write workload, each at the start "
      "of a 64 KiB chunk no other write of the workload touches, in random "
      "order (fio `read_iolog`), iodepth %d, one connection; image %d MiB "
      "of random data (fully allocated); snapshot read: `nbdcopy "
      "--connections=1 SNAPSHOT null:` of the whole image"
      % (RUNS, WRITES, DEPTH, IMG_BYTES // MiB))
    w("")
    w("Ratios are to the nbdkit file plugin measured in the same run at the "
      "same location (median of the per-run ratios); IOPS, MiB/s, latencies "
      "and CPU are medians over runs. Latencies are fio's completion "
      "latency (clat) percentiles. *CPU* is the server's utime+stime "
      "(`/proc/PID/stat`) per write (µs), or per MiB read. *create* is "
      "`nbdsnapctl create` end to end on the fully allocated image.")
    w("")
    targets = []
    for loc in [l for l in LOCATIONS if l in results]:
        w("## %s" % LOC_TITLE[loc])
        w("")
        w("| server | 4K first | p50 / p99 ms | CPU µs | 4K steady | "
          "p99 ms | 64K first | p99 ms | CPU µs | snapshot read MiB/s | "
          "create ms | peak RSS MiB |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name in SERVERS:
            if name not in results[loc]:
                continue
            row = [SERVER_TITLE[name]]
            for wl in ("first4k", "steady4k", "first64k"):
                iops = med(per_run(results, loc, name, wl, "iops"))
                rt = med(ratios(results, loc, name, wl, "iops"))
                row.append("**%s** (%s)" % (fmt(rt), kilo(iops)))
                p50 = med(per_run(results, loc, name, wl, "p50"))
                p99 = med(per_run(results, loc, name, wl, "p99"))
                if wl == "first4k":
                    row.append("%s / %s" % (fmt(p50), fmt(p99)))
                else:
                    row.append(fmt(p99))
                if wl != "steady4k":
                    row.append(fmt(med(per_run(results, loc, name, wl,
                                               "cpu_us")), "%.0f"))
            mibs = med(per_run(results, loc, name, "snapread", "mibs"))
            if mibs is None:
                row.append("–")
            else:
                row.append("**%s** (%.0f)" % (
                    fmt(med(ratios(results, loc, name, "snapread", "mibs"))),
                    mibs))
            cr = med([r.get("create_ms") for r in results[loc][name]])
            row.append(fmt(cr, "%.1f"))
            hwm = med([r.get("hwm") for r in results[loc][name]])
            row.append(fmt(hwm / MiB if hwm else None, "%.0f"))
            w("| " + " | ".join(row) + " |")
        errs = [(name, i + 1, r["error"]) for name in SERVERS
                for i, r in enumerate(results[loc].get(name, []))
                if "error" in r]
        w("")
        for name, i, e in errs:
            w("* **failed**: %s, run %d: %s" % (name, i, e))
        if errs:
            w("")
        w("![IOPS, %s](bench-iops-%s.png)" % (loc, loc))
        w("![first-write latency, %s](bench-cdf-%s.png)" % (loc, loc))
        w("")

    # The targets.
    w("## Issue 11's targets")
    w("")
    w("| target | measured | |")
    w("|---|---|---|")

    def target(what, val, goal, ok):
        w("| %s | %s | %s |" % (what, val, "—" if ok is None
                                  else ("pass" if ok else "**missed**")))
        targets.append((what, val, ok))

    if "shm" in results and "nbdsnap-process-1" in results["shm"]:
        r = med(ratios(results, "shm", "nbdsnap-process-1", "first4k",
                       "iops"))
        target("tmpfs, process, 1 snapshot: 4K first writes ≥ 0.30× the "
               "file plugin", fmt(r), 0.3, r is not None and r >= 0.3)
        p99 = med(per_run(results, "shm", "nbdsnap-process-1", "first4k",
                          "p99"))
        peers = [(med(per_run(results, "shm", n, "first4k", "p99")), n)
                 for n in ("qsd-raw", "qsd-qcow2", "cow")
                 if n in results["shm"]]
        peers = [p for p in peers if p[0] is not None]
        if peers and p99 is not None:
            best = min(peers)
            target("tmpfs, process, 1 snapshot: 4K first-write p99 ≤ the "
                   "best peer's", "%s ms vs %s ms (%s)"
                   % (fmt(p99), fmt(best[0]), SERVER_TITLE[best[1]]),
                   None, p99 <= best[0])
    if "ext4" in results and "nbdsnap-power-1" in results["ext4"] and \
       "nbdsnap-process-1" in results["ext4"]:
        r = med(ratios(results, "ext4", "nbdsnap-power-1", "first4k",
                       "iops", base="nbdsnap-process-1"))
        target("ext4, 1 snapshot: 4K first writes, power ≥ 0.5× process",
               fmt(r), 0.5, r is not None and r >= 0.5)
    if "xfs" in results:
        for m in ("process", "power"):
            n = "nbdsnap-%s-1" % m
            if n in results["xfs"]:
                r = med(ratios(results, "xfs", n, "first4k", "iops",
                               base=n, basewl="steady4k"))
                target("XFS reflink, %s, 1 snapshot: 4K first ≥ 0.8× 4K "
                       "steady" % m, fmt(r), 0.8,
                       r is not None and r >= 0.8)
    w("")

    # Create latency and RSS.
    w("## Snapshot create latency against image size")
    w("")
    w("`nbdsnapctl create` end to end (ms, median of 3 creates, one after "
      "the other, on a sparse image: `truncate`), no snapshot before the "
      "first.")
    w("")
    hdr = "| location | durability | " + " | ".join(CREATE_SIZES) + " |"
    w(hdr)
    w("|---|---|" + "---|" * len(CREATE_SIZES))
    for loc in LOCATIONS:
        for mode in ("process", "power"):
            c = creates.get(loc, {}).get(mode)
            if not c:
                continue
            w("| %s | %s | %s |" % (loc, mode, " | ".join(
                fmt(med(c.get(s, [])), "%.1f") for s in CREATE_SIZES)))
    w("")
    w("## Peak RSS with %d snapshots of a 1 TiB image" % RSS_SNAPS)
    w("")
    if rss and "hwm" in rss:
        w("nbdsnap (durability=process, tmpfs), 1 TiB sparse image; before "
          "each of %d creates, %d scattered 4 KiB writes (half to new "
          "places, half rewriting earlier ones; %d distinct blocks in "
          "all): VmHWM %.1f MiB (%.1f MiB after start-up), VmRSS at the "
          "end %.1f MiB."
          % (RSS_SNAPS, RSS_WRITES, rss["distinct"], rss["hwm"] / MiB,
             rss["hwm_start"] / MiB, rss["rss"] / MiB))
    else:
        w("not measured%s" % (": " + rss["error"] if rss else ""))
    w("")
    w("## Per run")
    w("")
    w("IOPS of each run (4K first / 4K steady / 64K first), location by "
      "location; the run order of the servers rotates from run to run.")
    w("")
    for loc in [l for l in LOCATIONS if l in results]:
        w("| %s | %s |" % (loc, " | ".join("run %d" % (i + 1)
                                           for i in range(RUNS))))
        w("|---|" + "---|" * RUNS)
        for name in SERVERS:
            if name not in results[loc]:
                continue
            cells = []
            for r in results[loc][name]:
                cells.append(" / ".join(kilo(r[wl]["iops"]) if wl in r
                                        else "–" for wl in
                                        ("first4k", "steady4k", "first64k")))
            w("| %s | %s |" % (name, " | ".join(cells)))
        w("")
    # bench/threads' section (between its markers) is kept as it was.
    path = os.path.join(outdir, "BENCHMARKS.md")
    kept = ""
    if os.path.exists(path):
        old = open(path).read()
        b, e = old.find(THREADS_BEGIN), old.find(THREADS_END)
        if b >= 0 and e > b:
            kept = "\n" + old[b:e + len(THREADS_END)] + "\n"
    with open(path, "w") as f:
        f.write("\n".join(L) + kept)
    return targets


def plots(results, outdir, work):
    for loc in [l for l in LOCATIONS if l in results]:
        names = [n for n in SERVERS if n in results[loc]]
        dat = os.path.join(work, "iops-%s.dat" % loc)
        with open(dat, "w") as f:
            for n in names:
                vals = [med(per_run(results, loc, n, wl, "iops"))
                        for wl in ("first4k", "steady4k", "first64k")]
                rd = med(per_run(results, loc, n, "snapread", "mibs"))
                f.write('"%s" %s %s\n' % (
                    n, " ".join(fmt(v, "%.1f").replace("–", "NaN")
                                for v in vals),
                    fmt(rd, "%.1f").replace("–", "NaN")))
        gp = """
set terminal pngcairo size 1100,520 font ",10"
set output '%(out)s/bench-iops-%(loc)s.png'
set multiplot layout 1,2 title "%(title)s: median of %(runs)d runs, %(writes)d writes each, iodepth %(depth)d"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -40 scale 0
set logscale y
set yrange [100:*]
set grid y
set ylabel "IOPS"
set key top right
set title "writes (IOPS, log scale)"
plot '%(dat)s' using 2:xtic(1) title "4K first", '' using 3 title "4K steady", '' using 4 title "64K first"
unset logscale y
set yrange [0:*]
set ylabel "MiB/s"
set title "snapshot read (nbdcopy, MiB/s)"
plot '%(dat)s' using 5:xtic(1) title "snapshot read" lc rgb "#4c72b0"
unset multiplot
""" % {"out": outdir, "loc": loc, "dat": dat, "title": LOC_TITLE[loc],
            "runs": RUNS, "writes": WRITES, "depth": DEPTH}
        # The latency CDFs of 4K first writes, every run pooled.
        curves = []
        for i, n in enumerate(names):
            lat = sorted(x for r in results[loc][n] if "first4k" in r
                         for x in r["first4k"]["lat"])
            if not lat:
                continue
            cdat = os.path.join(work, "cdf-%s-%s.dat" % (loc, n))
            with open(cdat, "w") as f:
                m = len(lat)
                step = max(1, m // 2000)
                idx = list(range(0, m, step)) + [m - 1]
                for k in idx:
                    f.write("%.6f %.6f %.8f\n" % (lat[k] / 1e6, (k + 1) / m,
                                                   max(1 - (k + 1) / m,
                                                       0.5 / m)))
            curves.append((cdat, n, COLOUR[n], 2 if n.endswith("-0") else 1))
        if curves:
            gp += """
set output '%(out)s/bench-cdf-%(loc)s.png'
set terminal pngcairo size 1100,520 font ",10" dashed
set multiplot layout 1,2 title "%(title)s: completion latency of 4K first writes (every run, %(writes)d writes each, iodepth %(depth)d)"
unset style
set style data lines
set xtics norotate
set logscale x
set xlabel "latency (ms)"
set grid x y
set key bottom right
set ylabel "fraction of writes done"
set yrange [0:1]
set title "CDF"
plot %(cdf)s
set logscale y
set yrange [1e-5:1]
set format y "%%g"
set ylabel "fraction of writes slower (1 - CDF)"
set key bottom left
set title "the tail"
plot %(tail)s
unset multiplot
""" % {"out": outdir, "loc": loc, "title": LOC_TITLE[loc], "writes": WRITES,
                "depth": DEPTH,
                "cdf": ", ".join("'%s' using 1:2 title '%s' lc rgb '%s' dt %d lw 1.5"
                                 % c for c in curves),
                "tail": ", ".join("'%s' using 1:3 title '%s' lc rgb '%s' dt %d "
                                  "lw 1.5" % c for c in curves)}
        gpf = os.path.join(work, "plot-%s.gp" % loc)
        with open(gpf, "w") as f:
            f.write(gp)
        run(["gnuplot", gpf])


def sh(cmd):
    try:
        r = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        return r.stdout.strip().splitlines()[0] if r.stdout.strip() else "?"
    except subprocess.SubprocessError:
        return "?"


def machine(builddir):
    here = os.path.dirname(os.path.abspath(__file__))
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    top = sh("git -C '%s' rev-parse --show-toplevel" % builddir)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "uname": sh("uname -srm"),
        "nproc": sh("nproc"),
        "mem": "%.1f GiB" % (mem / GiB),
        "builddir": "`%s`" % builddir,
        "tree": "%s; its sources (src/ plugin/ include/ configure.ac) "
                "last changed in %s, %s" % (
                    sh("git -C '%s' describe --always --dirty --tags" % top),
                    sh("git -C '%s' log -1 --format='%%h (%%cs)' -- src plugin "
                       "include configure.ac" % top),
                    "modified since" if sh(
                        "git -C '%s' status --porcelain -- src plugin include "
                        "configure.ac | wc -l" % top) != "0"
                    else "unmodified since"),
        "bench": sh("git -C '%s' describe --always --dirty --tags" % here),
        "tools": ", ".join([
            sh("%s --version" % FIO),
            sh("%s --version" % NBDKIT),
            sh("%s --version" % NBDCOPY),
            sh("%s --version" % QSD).replace(" version", ""),
            sh("gnuplot --version")]),
    }


def main():
    builddir, scratch, outdir, command = sys.argv[1:5]
    meta = machine(builddir)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    work = os.path.join(scratch, "work")
    os.makedirs(work, exist_ok=True)
    iologs = {}
    for bs, seed in ((4096, 4), (65536, 64)):
        iologs[bs] = os.path.join(work, "iolog-%d" % bs)
        write_iolog(iologs[bs], bs, seed)
    results, creates = {}, {}
    rss = None
    meta["load0"] = open("/proc/loadavg").read().split()[0]
    t0 = time.monotonic()
    try:
        for loc in LOCATIONS:
            log("# %s: %d MiB image, %d runs of %s"
                % (loc, IMG_BYTES // MiB, RUNS, " ".join(SERVERS)))
            try:
                d = setup_location(loc, scratch)
            except (RuntimeError, subprocess.SubprocessError) as e:
                log("  %s: skipped: %s" % (loc, e))
                continue
            img = os.path.join(d, "disk.img")
            fill(img, IMG_BYTES)
            for r in range(RUNS):
                k = r % len(SERVERS)
                for name in SERVERS[k:] + SERVERS[:k]:
                    instance(name, loc, d, img, builddir, iologs, r, results)
            os.unlink(img)
            create_latency(loc, d, builddir, creates)
            if loc == "shm":
                rss = peak_rss(d, builddir)
            teardown_location(loc, d, scratch)
            log("# %s done, %.0f s so far" % (loc, time.monotonic() - t0))
    finally:
        cleanup()
    meta["load1"] = open("/proc/loadavg").read().split()[0]
    meta["command"] = command
    os.makedirs(outdir, exist_ok=True)
    plots(results, outdir, work)
    targets = report(results, creates, rss, meta, outdir)
    log("# wrote %s/BENCHMARKS.md and its plots in %.0f s"
        % (outdir, time.monotonic() - t0))
    for what, val, ok in targets:
        log("  %s: %s%s" % (what, val, "" if ok is None
                              else (" pass" if ok else " MISSED")))


if __name__ == "__main__":
    main()
