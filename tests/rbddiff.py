# nbdsnap tests: rbd diff v1 streams, decoded and encoded independently
# of nbdsnapctl's C code, from Ceph's documentation of the format
# (doc/dev/rbd-diff.rst, https://docs.ceph.com/en/latest/dev/rbd-diff/):
#
#   "rbd diff v1\n", then records, each a one-byte tag:
#     'f' le32 LEN + name     from snapshot    } metadata, any order,
#     't' le32 LEN + name     to snapshot      } before the data
#     's' le64 SIZE           image size at the end
#     'w' le64 OFFSET, le64 LENGTH, LENGTH bytes of data
#     'z' le64 OFFSET, le64 LENGTH   (zeroes)
#     'e'                     end
#
#   rbddiff.py apply STREAM FILE
#       checks STREAM against the documentation (strictly: each metadata
#       record at most once and before the data, every data record inside
#       the image, 'e' last, nothing after it), applies its records to
#       the plain file FILE (which must be 's' bytes long: nbdsnap does
#       not resize) and prints a summary as JSON: {"from", "to", "size",
#       "w", "z" (record counts), "w_bytes", "z_bytes", "w_max" (the
#       longest 'w'), "in_order" (data
#       records in increasing, non-overlapping offset order)}.  A
#       stream that breaks the format: a message on stderr, exit 1.
#   rbddiff.py check STREAM
#       the same without a file.
#   rbddiff.py encode [--from A] --to B [--old OLD] NEW
#       writes on stdout the stream that `rbd export-diff [--from-snap A]
#       IMAGE@B' writes (Ceph's src/tools/rbd/action/ExportDiff.cc): the
#       header; 'f' A (with --from); 't' B; 's' size; then, object by
#       object (4 MiB) in offset order, one record per changed extent of
#       the object ('w', or 'z' when its data are all zeroes); 'e'.  The
#       changed extents are the 4 KiB blocks where NEW differs from OLD
#       (without --old: where NEW is not zero, as rbd reports only the
#       allocated extents of an image without a base), merged within an
#       object.  --shuffle-meta writes the metadata records as 's', 't',
#       'f' instead (their order is free).
import json, struct, sys

BANNER = b"rbd diff v1\n"
OBJECT = 4 << 20
BLOCK = 4096


class FormatError(Exception):
    pass


def read_exact(f, n, what):
    b = f.read(n)
    if len(b) != n:
        raise FormatError("truncated in %s (wanted %d bytes, got %d)"
                          % (what, n, len(b)))
    return b


def decode(f, out=None):
    """Check the stream in f; apply it to the file object out if given."""
    if f.read(len(BANNER)) != BANNER:
        raise FormatError("bad header (not \"rbd diff v1\\n\")")
    s = {"from": None, "to": None, "size": None, "w": 0, "z": 0,
         "w_bytes": 0, "z_bytes": 0, "w_max": 0, "in_order": True}
    data = False
    last_end = 0
    pos = len(BANNER)
    while True:
        tag = f.read(1)
        if not tag:
            raise FormatError("truncated: no 'e' record")
        at = pos
        pos += 1
        if tag in (b"f", b"t"):
            if data:
                raise FormatError("%r at byte %d after data records"
                                  % (tag, at))
            key = "from" if tag == b"f" else "to"
            if s[key] is not None:
                raise FormatError("second %r record at byte %d" % (tag, at))
            (n,) = struct.unpack("<I", read_exact(f, 4, "a name length"))
            s[key] = read_exact(f, n, "a name").decode()
            pos += 4 + n
        elif tag == b"s":
            if data:
                raise FormatError("'s' at byte %d after data records" % at)
            if s["size"] is not None:
                raise FormatError("second 's' record at byte %d" % at)
            (s["size"],) = struct.unpack("<Q", read_exact(f, 8, "the size"))
            pos += 8
        elif tag in (b"w", b"z"):
            if s["size"] is None:
                raise FormatError("data record before the size")
            data = True
            off, n = struct.unpack("<QQ", read_exact(f, 16, "an extent"))
            pos += 16
            if off + n > s["size"]:
                raise FormatError("%r record at byte %d beyond the image: "
                                  "%d+%d > %d" % (tag, at, off, n, s["size"]))
            if off < last_end:
                s["in_order"] = False
            last_end = off + n
            if tag == b"w":
                s["w"] += 1
                s["w_bytes"] += n
                s["w_max"] = max(s["w_max"], n)
                left = n
                while left:
                    k = min(left, OBJECT)
                    buf = read_exact(f, k, "data")
                    if out is not None:
                        out.seek(off + n - left)
                        out.write(buf)
                    left -= k
                pos += n
            else:
                s["z"] += 1
                s["z_bytes"] += n
                if out is not None:
                    left = n
                    while left:
                        k = min(left, OBJECT)
                        out.seek(off + n - left)
                        out.write(bytes(k))
                        left -= k
        elif tag == b"e":
            if f.read(1):
                raise FormatError("data after the 'e' record (byte %d)" % at)
            return s
        else:
            raise FormatError("unknown record type %r at byte %d" % (tag, at))


def encode(new, old, frm, to, shuffle):
    out = sys.stdout.buffer
    size = len(new)
    meta = []
    if frm is not None:
        meta.append(b"f" + struct.pack("<I", len(frm)) + frm.encode())
    meta.append(b"t" + struct.pack("<I", len(to)) + to.encode())
    meta.append(b"s" + struct.pack("<Q", size))
    if shuffle:
        meta.reverse()
    out.write(BANNER + b"".join(meta))
    for obj in range(0, size, OBJECT):
        end = min(obj + OBJECT, size)
        run = None                      # [start, end) of changed blocks
        for b in range(obj, end, BLOCK):
            e = min(b + BLOCK, end)
            nb = new[b:e]
            changed = nb != old[b:e] if old is not None else nb.count(0) != len(nb)
            if changed and run is not None and run[1] == b:
                run[1] = e
                continue
            if run is not None:
                record(out, new, run)
                run = None
            if changed:
                run = [b, e]
        if run is not None:
            record(out, new, run)
    out.write(b"e")


def record(out, new, run):
    data = new[run[0]:run[1]]
    if data.count(0) == len(data):
        out.write(b"z" + struct.pack("<QQ", run[0], run[1] - run[0]))
    else:
        out.write(b"w" + struct.pack("<QQ", run[0], run[1] - run[0]) + data)


def main(argv):
    try:
        if argv[0] == "check":
            with open(argv[1], "rb") as f:
                print(json.dumps(decode(f)))
        elif argv[0] == "apply":
            import os
            with open(argv[1], "rb") as f, open(argv[2], "r+b") as out:
                s = decode(f, None)
                if s["size"] != os.fstat(out.fileno()).st_size:
                    raise FormatError("size %d, the file has %d bytes"
                                      % (s["size"],
                                         os.fstat(out.fileno()).st_size))
                f.seek(0)
                decode(f, out)
            print(json.dumps(s))
        elif argv[0] == "encode":
            args = argv[1:]
            opts = {"--from": None, "--to": None, "--old": None}
            shuffle = False
            while args and args[0].startswith("--"):
                if args[0] == "--shuffle-meta":
                    shuffle = True
                    args = args[1:]
                    continue
                opts[args[0]] = args[1]
                args = args[2:]
            new = open(args[0], "rb").read()
            old = open(opts["--old"], "rb").read() if opts["--old"] else None
            encode(new, old, opts["--from"], opts["--to"], shuffle)
        else:
            raise SystemExit("rbddiff.py: unknown command %s" % argv[0])
    except FormatError as e:
        print("rbddiff.py: %s: %s" % (argv[1], e), file=sys.stderr)
        sys.exit(1)


main(sys.argv[1:])
