# nbdsnap tests: an NBD client driven line by line on stdin (functions.sh:
# start_client URI, then ask CMD).  It prints "ready" once connected;
# "sha" reads the whole export and answers "sha HEX", or "err ERRNO" if a
# read fails; "close" disconnects and answers "closed".
import hashlib, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "sha":
        try:
            size, off, d = h.get_size(), 0, hashlib.sha256()
            while off < size:
                n = min(1 << 20, size - off)
                d.update(h.pread(n, off))
                off += n
            print("sha", d.hexdigest(), flush=True)
        except nbd.Error as e:
            print("err", e.errno, flush=True)
    elif line.strip() == "close":
        h.shutdown()
        del h
        print("closed", flush=True)
        break
