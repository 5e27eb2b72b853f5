# nbdsnap tests: NBD clients that die with requests in flight
# (tests/test-client-die.sh).  Each kills itself with SIGKILL at the
# moment its kind names, never reading what is owed to it:
#
#   queue URI SEED        32 reads and 32 writes (FUA on some) queued at
#                         once on URI (writes only if it is writable)
#   extents URI           block status over the whole export, which is
#                         fragmented (one extent per 4K), dying 0.2 s later
#                         without reading the reply
#   handshake SOCK STAGE  a raw socket, dying at STAGE: connect (before the
#                         greeting), greeting (after reading it), option
#                         (halfway through NBD_OPT_GO), list (after asking
#                         NBD_OPT_LIST, not reading the answer)
import os, random, signal, socket, struct, sys, time

def die():
    os.kill(os.getpid(), signal.SIGKILL)

kind = sys.argv[1]
if kind == "queue":
    import nbd
    h = nbd.NBD()
    h.connect_uri(sys.argv[2])
    rng = random.Random(sys.argv[3])
    size = h.get_size()
    writable = not h.is_read_only()
    bufs = []
    for i in range(32):
        n = rng.choice([4096, 65536, 1 << 20])
        off = rng.randrange(0, size - n)
        b = nbd.Buffer(n)
        bufs.append(b)
        h.aio_pread(b, off)
        if writable:
            w = nbd.Buffer.from_bytearray(bytearray([rng.randrange(256)]) * n)
            bufs.append(w)
            h.aio_pwrite(w, rng.randrange(0, size - n),
                         flags=nbd.CMD_FLAG_FUA if i % 4 == 0 else 0)
    die()
elif kind == "extents":
    import nbd
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(sys.argv[2])
    size = min(h.get_size(), (1 << 32) - 4096)
    h.aio_block_status(size, 0, lambda *args: 0)
    time.sleep(0.2)      # nbdkit fills the socket buffer, blocks in send
    die()
elif kind == "handshake":
    stage = sys.argv[3]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[2])
    if stage == "connect":
        die()
    greeting = b""
    while len(greeting) < 18:
        greeting += s.recv(18 - len(greeting))
    if stage == "greeting":
        die()
    # client flags: FIXED_NEWSTYLE | NO_ZEROES
    s.sendall(struct.pack(">I", 3))
    magic = 0x49484156454F5054       # IHAVEOPT
    if stage == "option":
        name = b""
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        msg = struct.pack(">QII", magic, 7, len(data)) + data  # NBD_OPT_GO
        s.sendall(msg[: len(msg) // 2])
        die()
    if stage == "list":
        s.sendall(struct.pack(">QII", magic, 3, 0))            # NBD_OPT_LIST
        die()
    sys.exit("unknown stage " + stage)
sys.exit("unknown kind " + kind)
