#!/usr/bin/env bash
# nbdsnap test: replication with nbdsnapctl send | receive between two
# servers, checked byte for byte, and the stream checked against Ceph's
# documentation of the rbd diff v1 format by a decoder of our own
# (tests/rbddiff.py), independent of nbdsnapctl's C code.
#
# Server one's image has data, holes and an unaligned tail; server two's
# holds other data everywhere.  A full stream of s0 ("send s0") is
# decoded into a plain file of garbage and received by server two: both
# then equal s0, and server two has snapshot s0 reading the same.  Then
# three rounds: writes on server one (into former holes too), zeroes
# with and without NO_HOLE, trims, unaligned writes; snapshot sN; "send
# --from sN-1 sN" decoded into the plain file and received by server
# two: the origin of server two, its new snapshot sN and the plain file
# all equal server one's sN.  Rotation deletes snapshots between rounds:
# the oldest on server two, the middle one and the oldest on server one.
# A fourth round applies a stream that the decoder's encoder wrote as
# `rbd export-diff --from-snap' does (its metadata in another order):
# receive applies a stream it did not write.
source "${abs_top_builddir:?}/tests/functions.sh"
source "$abs_top_srcdir/tests/stream.sh"
requires "$PYTHON" -c 'import nbd'

C=65536
M=$(( 1024 * 1024 ))
size=$(( 12 * M + 5000 ))
img1="$tmpdir/one.img"
img2="$tmpdir/two.img"
plain="$tmpdir/plain.img"          # the decoder's replica
model="$tmpdir/model.img"          # what server one's origin holds now

# Server one: pseudo-random data with holes at 4-7 MiB and 9.5-10 MiB.
bigimg fill "$img1" "$size" 1
fallocate -p -o $(( 4 * M )) -l $(( 3 * M )) "$img1"
fallocate -p -o $(( 19 * M / 2 )) -l $(( M / 2 )) "$img1"
cp --sparse=always "$img1" "$model"
# Server two and the plain file: other data everywhere.
bigimg fill "$img2" "$size" 2
bigimg fill "$plain" "$size" 3

start_server one "$img1"
start_server two "$img2"

# check N: server two's origin, its snapshot sN and the plain file read
# as server one's sN.
check ()
{
  local want
  want=$(file_sha "$tmpdir/at-s$1.img")
  [ "$(export_sha "$(snap_uri one "s$1")")" = "$want" ] ||
    fail "round $1: server one's s$1 is not its instant"
  [ "$(file_sha "$plain")" = "$want" ] ||
    fail "round $1: the decoded stream does not give s$1"
  [ "$(export_sha "$uri_two")" = "$want" ] ||
    fail "round $1: server two's origin is not s$1 after receive"
  [ "$(export_sha "$(snap_uri two "s$1")")" = "$want" ] ||
    fail "round $1: server two's snapshot s$1 is not s$1"
}

# decode N FROM STREAM: the decoder applies STREAM and checks what it
# says: to sN, from FROM (or none), the image's size, 'w' records of at
# most 4 MiB in offset order.
decode ()
{
  rbddiff apply "$3" "$plain" > "$tmpdir/summary.json" ||
    fail "round $1: the decoder refused the stream"
  cat "$tmpdir/summary.json"
  "$PYTHON" - "$tmpdir/summary.json" "s$1" "$2" "$size" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
frm = sys.argv[3] or None
assert s["to"] == sys.argv[2] and s["from"] == frm, s
assert s["size"] == int(sys.argv[4]), s
assert s["in_order"] and 0 < s["w_max"] <= 4 << 20, s
PY
}

# Round 0: the full stream.
cp "$model" "$tmpdir/at-s0.img"
ctl1 create s0
ctl1 send s0 > "$tmpdir/s0.stream"
decode 0 "" "$tmpdir/s0.stream"
# It says where the holes are ('z') and sends the rest ('w'): about the
# data's bytes, not the image's.
"$PYTHON" - "$tmpdir/summary.json" "$size" <<'PY'
import json, sys
s, size = json.load(open(sys.argv[1])), int(sys.argv[2])
assert s["w_bytes"] + s["z_bytes"] == size, s
assert s["z_bytes"] >= 3 * 2**20 + 2**19, s
PY
ctl2 receive < "$tmpdir/s0.stream" > "$tmpdir/out"
cat "$tmpdir/out"
grep -q "^received snapshot s0 " "$tmpdir/out"
check 0
[ "$(snaps ctl2)" = "s0" ]

# round N OPS...: writes on server one, sN, send | receive, checks.
round ()
{
  local n=$1 prev=$(( $1 - 1 ))
  shift
  bigimg ops "$uri_one" "$model" "$@"
  cp "$model" "$tmpdir/at-s$n.img"
  ctl1 create "s$n"
  ctl1 send --from "s$prev" "s$n" > "$tmpdir/s$n.stream"
  decode "$n" "s$prev" "$tmpdir/s$n.stream"
  # An incremental stream is about what changed, not the whole image.
  [ "$(stat -c %s "$tmpdir/s$n.stream")" -lt $(( size / 2 )) ] ||
    fail "round $n: the incremental stream is as big as the image"
  # As over ssh: through a pipe (both ends must succeed).
  ctl1 send --from "s$prev" "s$n" | ctl2 receive ||
    fail "round $n: send | receive: exit ${PIPESTATUS[*]}"
  check "$n"
}

# Round 1: into both holes, over data, zeroes (with and without holes),
# a trim, unaligned writes across chunks, the tail.
round 1 \
  "w:$(( 4 * M + 100 )):$(( M + 3 )):10" "w:$(( 19 * M / 2 + C )):$C:11" \
  "z:$(( 2 * M )):$(( 5 * C ))" "Z:$(( 8 * M + 7 )):$(( C + 9 ))" \
  "t:$(( 10 * M )):$(( 2 * C ))" "w:$(( 3 * C - 1 )):2:12" \
  "w:$(( size - 700 )):700:13"
# Rotation on server two: its oldest goes; s1 stays the newest.
ctl2 delete s0
[ "$(snaps ctl2)" = "s1" ]

# Round 2: big writes (more than 4 MiB in one extent), over zeroed and
# trimmed ranges, a zero over the rest of a former hole.
round 2 \
  "w:$(( 6 * C )):$(( 5 * M + 3 * C )):20" "w:$(( 10 * M )):$C:21" \
  "z:$(( 5 * M + 200 )):$(( 2 * M ))" "t:$(( 11 * M )):$M" \
  "Z:$(( 12 * M )):5000"
# Rotation on server one: the middle snapshot goes.
ctl1 delete s1
[ "$(snaps ctl1)" = "s0 s2" ]

# Round 3: chunk 0, scattered small writes, a trim of fresh data.
round 3 \
  "w:0:$(( C / 2 )):30" "w:$(( 7 * M + 13 )):17:31" "w:$(( 9 * M )):$C:32" \
  "t:$(( 6 * C )):$(( 3 * C ))" "w:$(( size - 1 )):1:33" \
  "z:$(( 12 * M - C )):$(( C / 3 ))"
ctl1 delete s0
[ "$(snaps ctl1)" = "s2 s3" ]
[ "$(snaps ctl2)" = "s1 s2 s3" ]

# Round 4: a foreign stream, written by the decoder's encoder as rbd
# export-diff would (per 4 MiB object, metadata in the order s, t, f).
bigimg ops "$uri_one" "$model" \
  "w:$(( 3 * M )):$(( 2 * M )):40" "z:$(( 9 * M )):$M" "t:0:$C" \
  "w:$(( 11 * M + 5 )):$(( C + 5 )):41"
cp "$model" "$tmpdir/at-s4.img"
ctl1 create s4
rbddiff encode --shuffle-meta --from s3 --to s4 --old "$tmpdir/at-s3.img" \
  "$tmpdir/at-s4.img" > "$tmpdir/s4.stream"
decode 4 s3 "$tmpdir/s4.stream"
ctl2 receive < "$tmpdir/s4.stream"
check 4
[ "$(snaps ctl2)" = "s1 s2 s3 s4" ]

# Our send of the same change gives the same bytes to the decoder.
cp "$tmpdir/at-s3.img" "$plain"
ctl1 send --from s3 s4 > "$tmpdir/s4-ours.stream"
decode 4 s3 "$tmpdir/s4-ours.stream"
[ "$(file_sha "$plain")" = "$(file_sha "$tmpdir/at-s4.img")" ]

# No hold is left behind on either server.
for c in ctl1 ctl2; do
  "$c" --json list | "$PYTHON" -c '
import json, sys
for s in json.load(sys.stdin)["snapshots"]:
    assert s["holds"] == 0, s'
done
