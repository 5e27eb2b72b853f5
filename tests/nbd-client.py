# nbdsnap tests: an NBD client driven line by line on stdin (functions.sh:
# start_client URI, then ask CMD).  It prints "ready" once connected;
# "sha" reads the whole export ("sha LEN": its first LEN bytes) and
# answers "sha HEX", or "err ERRNO" if a read fails; "close" disconnects
# and answers "closed".
import hashlib, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if words and words[0] == "sha":
        try:
            size, off, d = h.get_size(), 0, hashlib.sha256()
            if len(words) > 1:
                size = min(size, int(words[1]))
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
