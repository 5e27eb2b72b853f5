# nbdsnap tests: big images for the job and rollback tests (functions.sh:
# bigimg, export_sha, file_sha).  Run with the Debian python3 (libnbd).
#
#   bigimg.py fill PATH SIZE SEED
#       PATH becomes SIZE bytes of pseudo-random data made from SEED.
#   bigimg.py overwrite URI PATH OFFSET LENGTH SEED
#       writes LENGTH pseudo-random bytes (from SEED) at OFFSET to the NBD
#       export URI and the same bytes into the file PATH, which so goes on
#       holding what the export must read.
#   bigimg.py ops URI PATH OP...
#       does each OP on the NBD export URI and the same to the file PATH:
#       w:OFFSET:LENGTH:SEED writes pseudo-random bytes, z:OFFSET:LENGTH
#       zeroes (holes allowed), Z:OFFSET:LENGTH zeroes with NO_HOLE,
#       t:OFFSET:LENGTH trims (the origin then reads zeroes there); then
#       flushes.
#   bigimg.py sha PATH|URI
#       the sha256 of a file, or of everything an NBD export returns; a
#       failed read prints "bigimg.py: reading URI at OFFSET: ERROR" on
#       stderr and exits 1.
#   bigimg.py writer URI PATH LOG
#       an origin writer: 64K writes at qd 1 at pseudo-random offsets (some
#       unaligned) of the export URI until SIGTERM, each one also written
#       into PATH once the server has acknowledged it; LOG gets one line
#       "TIME OFFSET" per acknowledged write(TIME: seconds since the epoch,
#       as bash's $EPOCHREALTIME).  A failed write prints what failed and
#       exits 1; SIGTERM exits 0 after the current write.
#
# Pseudo-random data is random.Random(SEED): fast, and different for
# each seed and each place, so misplaced chunks are caught.
import hashlib, os, random, signal, sys, time

PIECE = 4 << 20


def fill(path, size, seed):
    r = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(PIECE, left)
            f.write(r.randbytes(n))
            left -= n


def connect(uri):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def overwrite(uri, path, off, length, seed):
    r = random.Random(seed)
    h = connect(uri)
    fd = os.open(path, os.O_WRONLY)
    end = off + length
    while off < end:
        n = min(PIECE, end - off)
        buf = r.randbytes(n)
        h.pwrite(buf, off)
        os.pwrite(fd, buf, off)
        off += n
    h.flush()
    h.shutdown()
    os.close(fd)


def ops(uri, path, oplist):
    import nbd
    h = connect(uri)
    fd = os.open(path, os.O_WRONLY)
    for op in oplist:
        kind, f = op[0], [int(x) for x in op[2:].split(":")]
        off, n = f[0], f[1]
        if kind == "w":
            buf = random.Random(f[2]).randbytes(n)
            h.pwrite(buf, off)
        elif kind in "zZt":
            buf = bytes(n)
            if kind == "z":
                h.zero(n, off)
            elif kind == "Z":
                h.zero(n, off, nbd.CMD_FLAG_NO_HOLE)
            else:
                h.trim(n, off)
        else:
            sys.exit("bigimg.py: bad op %s" % op)
        os.pwrite(fd, buf, off)
    h.flush()
    h.shutdown()
    os.close(fd)


def sha(what):
    d = hashlib.sha256()
    if "://" not in what:
        with open(what, "rb") as f:
            while True:
                b = f.read(PIECE)
                if not b:
                    break
                d.update(b)
        return d.hexdigest()
    import nbd
    h = connect(what)
    size, off = h.get_size(), 0
    while off < size:
        n = min(PIECE, size - off)
        try:
            d.update(h.pread(n, off))
        except nbd.Error as e:
            sys.exit("bigimg.py: reading %s at %d: %s (%s)"
                     % (what, off, e.string, e.errno))
        off += n
    h.shutdown()
    return d.hexdigest()


def writer(uri, path, log):
    import nbd
    stop = []
    signal.signal(signal.SIGTERM, lambda sig, frame: stop.append(sig))
    h = connect(uri)
    size = h.get_size()
    r = random.Random(os.getpid())
    fd = os.open(path, os.O_WRONLY)
    n = 0
    with open(log, "w", buffering=1) as lf:
        while not stop:
            off = r.randrange(0, size - 65536)
            if r.random() < 0.75:
                off -= off % 65536
            buf = r.randbytes(65536)
            try:
                h.pwrite(buf, off)
            except nbd.Error as e:
                sys.exit("bigimg.py writer: write %d at %d failed: %s (%s)"
                         % (n, off, e.string, e.errno))
            os.pwrite(fd, buf, off)
            print("%.6f %d" % (time.time(), off), file=lf)
            n += 1
    h.flush()
    h.shutdown()
    os.close(fd)
    print("bigimg.py writer: %d writes" % n, file=sys.stderr)


cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "fill":
    fill(args[0], int(args[1]), int(args[2]))
elif cmd == "overwrite":
    overwrite(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
elif cmd == "ops":
    ops(args[0], args[1], args[2:])
elif cmd == "sha":
    print(sha(args[0]))
elif cmd == "writer":
    writer(args[0], args[1], args[2])
else:
    sys.exit("bigimg.py: unknown command %s" % cmd)
