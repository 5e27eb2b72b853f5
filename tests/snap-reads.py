# nbdsnap tests: read a snapshot chunk by chunk and judge every read
# (functions.sh: reads_eio, reads_instant_or_eio).
#
#   snap-reads.py eio|instant-or-eio [--also OFF:LEN]... [--new NEW]
#                 URI INSTANT WHEN
#
# Each 64K chunk of INSTANT (a file of the snapshot's bytes at its
# instant) is read from the export URI whole, then LEN bytes at OFF from
# its start for each --also, in that order.  A read may fail only with
# EIO: any other error stops at once.  Mode eio: every read must fail (an
# invalid snapshot is never read); mode instant-or-eio: a read that
# returns bytes must return the instant's.  A read that returns wrong
# bytes is named by whose they are: the origin's new bytes if NEW (a file
# of the bytes written to the origin since the instant) has them there,
# other bytes if not.  WHEN begins every message.  A summary goes to
# stderr, "READS EIO" (how many reads, how many failed with EIO) to
# stdout; any failure exits 1, saying which reads failed it.
import argparse, errno, nbd, sys

CHUNK = 65536


def off_len(s):
    o, n = s.split(":")
    return int(o), int(n)


p = argparse.ArgumentParser(allow_abbrev=False)
p.add_argument("mode", choices=("eio", "instant-or-eio"))
p.add_argument("--also", type=off_len, action="append", default=[])
p.add_argument("--new")
p.add_argument("uri")
p.add_argument("instant")
p.add_argument("when")
a = p.parse_args()
want = open(a.instant, "rb").read()
new = open(a.new, "rb").read() if a.new else None
when = a.when

h = nbd.NBD()
try:
    h.connect_uri(a.uri)
except nbd.Error as e:
    raise SystemExit("%s: cannot be opened: %s" % (when, e))
reads = eio = right = nnew = 0
bad = []   # the reads that failed the check, "OFF+LEN (whose bytes)"
for c in range(0, len(want), CHUNK):
    for o, n in [(c, CHUNK)] + [(c + ao, an) for ao, an in a.also]:
        reads += 1
        try:
            got = h.pread(n, o)
        except nbd.Error as e:
            if e.errnum != errno.EIO:
                raise SystemExit("%s: read at %d+%d: %s" % (when, o, n, e))
            eio += 1
            continue
        if got == want[o:o + n]:
            right += 1
            if a.mode == "eio":
                bad.append("%d+%d (its instant)" % (o, n))
        elif new is not None and got == new[o:o + n]:
            nnew += 1
            bad.append("%d+%d (the origin's new bytes)" % (o, n))
        else:
            bad.append("%d+%d (other bytes)" % (o, n))
wrong = reads - eio - right
print("%s: %d reads: %d failed with EIO, %d returned the instant's bytes, "
      "%d returned other bytes%s" % (when, reads, eio, right, wrong,
                            " (%d of them the origin's new bytes)" % nnew
                            if new is not None else ""), file=sys.stderr)
if bad:
    raise SystemExit("%s: %s in %d reads: %s%s"
                     % (when,
                        "an invalid snapshot was read" if a.mode == "eio"
                        else "the snapshot returned bytes that are not its "
                        "instant",
                        len(bad), ", ".join(bad[:3]),
                        ", ..." if len(bad) > 3 else ""))
print(reads, eio)
