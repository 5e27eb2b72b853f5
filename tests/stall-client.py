# nbdsnap tests: clients that stop reading (tests/test-client-stall.sh).
# Raw sockets, no libnbd: nothing reads for them behind their back.
#
#   nbd SOCK EXPORT N LEN READY [IMAGE]
#       the fixed newstyle handshake with NBD_OPT_GO for EXPORT (no
#       structured replies: simple replies), then N NBD_CMD_READs of LEN
#       bytes (request i at offset i * LEN modulo the export's size) sent
#       at once, and no reply read.  Once the server has replies waiting
#       unread in this socket (FIONREAD > 0, checked 0.5 s after the
#       send), writes "stalled BYTES" into the file READY, then waits for
#       SIGUSR1 (at most 120 s).  On SIGUSR1 it reads every reply: with
#       IMAGE, a reply with data must hold IMAGE's bytes at its offset, an
#       error reply is counted (errno named); prints "drained N replies,
#       E errors {errno: count}" and exits 0, or exits 1 on a wrong byte,
#       a reply for no request, or a connection that ends early.
#
#   admin SOCK N READY
#       N requests "list" and "stats", alternating, sent in one go on the
#       admin socket (blocking, 5 s send timeout: a server that stopped
#       reading makes it stop early), none of the answers read; once
#       answers wait unread (FIONREAD > 0, 0.5 s later) writes
#       "stalled SENT BYTES" into READY (SENT: complete request lines
#       sent), then waits for SIGUSR1 (at most 120 s).  On SIGUSR1 it
#       reads the SENT answers: each must be ok, a list or a stats
#       answer in request order; prints "drained SENT answers".
#
#   nbd-close SOCK EXPORT LEN KEEP
#       handshake as above, one NBD_CMD_READ of LEN bytes at offset 0,
#       reads KEEP bytes of the reply (0: none), then closes the socket
#       with the rest of the reply unread (the server is in the middle of
#       writing it: EPIPE, or SIGPIPE if it did not guard against it).
#
#   admin-close SOCK KEEP REQUEST...
#       sends the REQUEST lines on the admin socket, reads KEEP bytes of
#       the answers (0: none), then closes.
import array, errno, fcntl, json, os, signal, socket, struct, sys, termios
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_INFO_EXPORT = 0
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
NBD_CMD_READ = 0


def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        d = s.recv(min(n - len(b), 1 << 20))
        if not d:
            raise EOFError("the server closed the connection after %d of "
                           "%d bytes" % (len(b), n))
        b += d
    return bytes(b)


def handshake(path, export):
    """The connected socket and the export's size."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    magic, opt, flags = struct.unpack(">QQH", recv_exact(s, 18))
    assert magic == NBDMAGIC and opt == IHAVEOPT, "not an NBD server"
    s.sendall(struct.pack(">I", 3))          # FIXED_NEWSTYLE | NO_ZEROES
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_GO, len(data)) + data)
    size = None
    while True:
        magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        assert magic == REPLY_MAGIC and opt == NBD_OPT_GO, "bad option reply"
        payload = recv_exact(s, length)
        if rtype == NBD_REP_ACK:
            break
        if rtype == NBD_REP_INFO:
            if struct.unpack(">H", payload[:2])[0] == NBD_INFO_EXPORT:
                size = struct.unpack(">QH", payload[2:12])[0]
            continue
        sys.exit("stall-client.py: NBD_OPT_GO %r refused: type 0x%x %r"
                 % (export, rtype, payload))
    assert size is not None, "no export size"
    return s, size


def unread(s):
    buf = array.array("i", [0])
    fcntl.ioctl(s.fileno(), termios.FIONREAD, buf)
    return buf[0]


def stalled(s, ready, what):
    time.sleep(0.5)
    n = unread(s)
    if n == 0:
        sys.exit("stall-client.py: nothing waits unread: the server did "
                 "not answer")
    with open(ready + ".tmp", "w") as f:
        f.write("stalled %s%d\n" % (what, n))
    os.rename(ready + ".tmp", ready)


def wait_usr1():
    got = []
    signal.signal(signal.SIGUSR1, lambda sig, frame: got.append(sig))
    deadline = time.time() + 120
    while not got and time.time() < deadline:
        time.sleep(0.05)
    if not got:
        sys.exit("stall-client.py: no SIGUSR1 within 120 s")


def nbd(path, export, n, length, ready, image=None):
    s, size = handshake(path, export)
    offs = {}
    reqs = b""
    for i in range(n):
        off = i * length % size
        if off + length > size:
            off = 0
        offs[i + 1] = off
        reqs += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, NBD_CMD_READ, i + 1,
                            off, length)
    s.sendall(reqs)
    stalled(s, ready, "")
    wait_usr1()
    img = open(image, "rb") if image else None
    errs = {}
    for k in range(n):
        magic, err, handle = struct.unpack(">IIQ", recv_exact(s, 16))
        assert magic == SIMPLE_REPLY_MAGIC, "bad reply magic %x" % magic
        if handle not in offs:
            sys.exit("stall-client.py: a reply for no request (%d)" % handle)
        off = offs.pop(handle)
        if err:
            name = errno.errorcode.get(err, str(err))
            errs[name] = errs.get(name, 0) + 1
            continue
        data = recv_exact(s, length)
        if img:
            img.seek(off)
            if data != img.read(length):
                sys.exit("stall-client.py: wrong bytes in the read at %d"
                         % off)
    s.close()
    print("drained %d replies, %d errors %s"
          % (n, sum(errs.values()), json.dumps(errs)))


def admin(path, n, ready):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                 struct.pack("ll", 5, 0))
    reqs = ["list" if i % 2 == 0 else "stats" for i in range(n)]
    data = "".join(r + "\n" for r in reqs).encode()
    sent = 0
    try:
        while sent < len(data):
            sent += s.send(data[sent:])
    except (BlockingIOError, socket.timeout):
        pass
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                 struct.pack("ll", 0, 0))
    # Only complete lines count; a partial last one is completed (at
    # once if the server reads again, which the drain makes it do).
    lines = data[:sent].count(b"\n")
    stalled(s, ready, "%d " % lines)
    wait_usr1()
    if sent < len(data):
        rest = data[sent:].index(b"\n") + 1
        s.sendall(data[sent:sent + rest])
        lines += 1
    f = s.makefile("rb")
    for i in range(lines):
        line = f.readline()
        if not line:
            sys.exit("stall-client.py: the server closed after %d of %d "
                     "answers" % (i, lines))
        o = json.loads(line)
        if "progress" in o:
            sys.exit("stall-client.py: a progress line: %r" % o)
        want = "snapshots" if reqs[i] == "list" else "admin"
        if o.get("ok") is not True or want not in o:
            sys.exit("stall-client.py: answer %d to %s: %r"
                     % (i, reqs[i], line[:200]))
    s.close()
    print("drained %d answers" % lines)


def nbd_close(path, export, length, keep):
    s, size = handshake(path, export)
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, NBD_CMD_READ, 1, 0,
                          length))
    if keep:
        recv_exact(s, keep)
    s.close()


def admin_close(path, keep, reqs):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall("".join(r + "\n" for r in reqs).encode())
    if keep:
        recv_exact(s, keep)
    s.close()


kind, a = sys.argv[1], sys.argv[2:]
if kind == "nbd":
    nbd(a[0], a[1], int(a[2]), int(a[3]), a[4], a[5] if len(a) > 5 else None)
elif kind == "admin":
    admin(a[0], int(a[1]), a[2])
elif kind == "nbd-close":
    nbd_close(a[0], a[1], int(a[2]), int(a[3]))
elif kind == "admin-close":
    admin_close(a[0], int(a[1]), a[2:])
else:
    sys.exit("stall-client.py: unknown kind " + kind)
