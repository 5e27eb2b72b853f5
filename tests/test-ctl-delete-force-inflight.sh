#!/usr/bin/env bash
# nbdsnap test: delete --force while requests are in flight, and while the
# origin is being overwritten.  s0 is taken, some chunks are overwritten
# (copied into s0), then s1 is taken.  A libnbd client keeps 16 unaligned
# reads of s1 in flight, each checked against the image at s1's instant;
# nbdcopy overwrites the whole origin (the copies go into s1, and s0 needs
# them from there) while s1 is force-deleted.  Every read completes with
# the right bytes or fails with ESHUTDOWN, never wrong data; once the delete
# has returned, every new read fails with ESHUTDOWN; s0 still reads exactly
# its instant (the chunks it needed were moved out of s1, and later
# writes are copied into s0); the origin has the new bytes.  Three rounds.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'


img="$tmpdir/disk.img"
size=$(( 8 * 1024 * 1024 + 3000 ))

# Reads s1 until told "deleted" on stdin; then 64 more, which must all
# fail with ESHUTDOWN.  Prints "running" after 100 good reads, and at the
# end "done GOOD SHUTDOWN" or "WRONG ...".
cat > "$tmpdir/reader.py" <<'PY'
import errno, nbd, os, random, select, sys
want = open(sys.argv[2], "rb").read()
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
assert size == len(want)
rnd = random.Random()
good = shut = 0
wrong = []
deleted = False
after = 0                       # reads issued after "deleted"

def done(off, n, buf, err):
    global good, shut
    if err.value == 0:
        if buf.to_bytearray() != want[off:off + n]:
            wrong.append((off, n))
        else:
            good += 1
    elif err.value == errno.ESHUTDOWN:
        shut += 1
        err.value = 0           # retire it quietly
    else:
        wrong.append((off, n, "errno %d" % err.value))
        err.value = 0
    return 1

def issue():
    off = rnd.randrange(size - 1)
    n = rnd.randrange(1, min(200000, size - off) + 1)
    buf = nbd.Buffer(n)
    h.aio_pread(buf, off,
                completion=lambda err, o=off, n=n, b=buf: done(o, n, b, err))

told = False
while True:
    if not deleted:
        # Once revoked, stop issuing until told (the log stays short).
        while h.aio_in_flight() < 16 and shut == 0:
            issue()
        if good >= 100 and not told:
            print("running", flush=True)
            told = True
        if select.select([sys.stdin], [], [], 0)[0]:
            sys.stdin.readline()
            # Let what is in flight finish; from now on, all must fail.
            while h.aio_in_flight() > 0:
                h.poll(-1)
            deleted = True
            shut_before = shut
            continue
        if h.aio_in_flight() > 0:
            h.poll(-1)
        else:
            select.select([sys.stdin], [], [], 30)
    else:
        if after == 64 and h.aio_in_flight() == 0:
            break
        while after < 64 and h.aio_in_flight() < 16:
            issue()
            after += 1
        h.poll(-1)
if wrong:
    print("WRONG", wrong[:5], flush=True)
elif shut - shut_before != 64:
    print("WRONG: only %d of 64 reads after the delete failed"
          % (shut - shut_before), flush=True)
else:
    print("done", good, shut, flush=True)
PY

for round in 1 2 3; do
  rm -rf "$tmpdir/state"
  head -c "$size" /dev/urandom > "$img"
  head -c "$size" /dev/urandom > "$tmpdir/new.img"
  start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
               chunk-size=4K durability=power

  cp "$img" "$tmpdir/at-s0.img"
  ctl create s0 >/dev/null
  timeout 60 qemu-io -f raw -c 'write -P 0x10 0 2M' "$uri" >/dev/null
  cp "$img" "$tmpdir/at-s1.img"
  ctl create s1 >/dev/null

  coproc READER { exec "$PYTHON" "$tmpdir/reader.py" \
                    "nbd+unix:///s1?socket=$sock" "$tmpdir/at-s1.img"; }
  reader_pid=$READER_PID
  cleanup_fn quiet_kill "$reader_pid"
  read -r -t 30 reply <&"${READER[0]}" || fail "the reader did not start"
  [ "$reply" = running ] || fail "the reader: $reply"

  timeout 60 nbdcopy "$tmpdir/new.img" "$uri" &
  writer=$!
  # Delete once copy-on-write into s1 has begun (4K chunks with
  # durability=power make it slow enough to be caught in the middle).
  for (( i = 0; i < 500; i++ )); do
    n=$(ctl --json info s1 | grep -o '"chunks_copied":[0-9]*' | cut -d: -f2)
    [ "$n" -gt 0 ] && break
    sleep 0.01
  done
  ctl --json delete --force s1 > "$tmpdir/del.json"
  echo "round $round: deleted s1 after $n chunks were copied into it"
  grep -q '"revoked":1' "$tmpdir/del.json" ||
    { cat "$tmpdir/del.json"; fail "round $round: nothing was revoked"; }
  wait "$writer" || fail "round $round: the origin writer failed"

  echo deleted >&"${READER[1]}"
  read -r -t 30 reply <&"${READER[0]}" || fail "the reader did not finish"
  echo "round $round: reader: $reply"
  case "$reply" in
    done*) ;;
    *) fail "round $round: the reader of s1 got wrong data: $reply" ;;
  esac
  wait "$reader_pid" || :

  cmp "$img" "$tmpdir/new.img" || fail "round $round: the origin is wrong"
  rm -f "$tmpdir/got.img"
  timeout 60 nbdcopy "nbd+unix:///s0?socket=$sock" "$tmpdir/got.img"
  if [ "$(sha "$tmpdir/got.img")" != "$(sha "$tmpdir/at-s0.img")" ]; then
    cmp "$tmpdir/got.img" "$tmpdir/at-s0.img" || :
    fail "round $round: s0 is not its instant after s1 was force-deleted"
  fi
  stop_nbdkit
done
