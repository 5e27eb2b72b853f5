#!/usr/bin/env bash
# nbdsnap test: `changes` at the scale of a big, busy disk: 2,097,152
# scattered changed chunks (every other 64 KiB chunk of a 256 GiB sparse
# image, between snapshots a and b; one in 1024 written with data, the rest
# trimmed), listed in full by `nbdsnapctl changes a b` (table and --json)
# and `changes a` (until now): every extent exactly once, in order, with
# its zero/data mark, through 128 pages.  A single answer would be about
# 130 MB, over the protocol's 64 MiB limit; paging keeps both processes'
# memory to about a page, checked here: nbdsnapctl's peak resident memory
# under 64 MiB, the server's growth under 128 MiB.  The time and the peak
# memory of both are printed in the log.  (In `make check-clients`: the
# generator alone makes 2 million engine calls.)
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import json'
requires /usr/bin/time --version

img="$tmpdir/disk.img"
gen="$abs_top_builddir/tests/changes_gen"

read -r next ndata chunk < <("$gen" "$img" "$tmpdir/state" 256 1024)
[ "$next" = 2097152 ] && [ "$ndata" = 2048 ] && [ "$chunk" = 65536 ] ||
  fail "changes_gen made $next extents, $ndata with data, chunk $chunk"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
pid=$(cat "$tmpdir/nbdkit.pid")
hwm () { awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status"; }
before=$(hwm)

# count FILE: "EXTENTS DATA" of a table, checking offsets and lengths.
count ()
{
  awk -v C="$chunk" '
    NR == 1 { next }
    $2 == "extents," { next }   # the summary line
    {
      k = NR - 2
      if ($1 != 2 * k * C || $2 != C) { print "bad line " NR ": " $0; exit 1 }
      want = (k % 1024 == 0) ? "data" : "zero"
      if ($3 != want) { print "line " NR ": " $3 ", want " want; exit 1 }
      n++; if ($3 == "data") d++
    }
    END { print n, d }' "$1"
}

for to in b ""; do
  /usr/bin/time -f "%e %M" -o "$tmpdir/time" \
    "$nbdsnapctl" -s "$tmpdir/admin.sock" changes a $to > "$tmpdir/out" ||
    fail "changes a $to failed"
  got=$(count "$tmpdir/out") || fail "changes a $to: $got"
  [ "$got" = "2097152 2048" ] || fail "changes a $to: extents, data: $got"
  tail -n 1 "$tmpdir/out" | grep -q '^2097152 extents, 128G changed' ||
    fail "changes a $to: summary: $(tail -n 1 "$tmpdir/out")"
  read -r secs kib < "$tmpdir/time"
  echo "changes a ${to:-(now)}: 2097152 extents in $secs s," \
       "nbdsnapctl peak RSS $((kib / 1024)) MiB"
  [ "$kib" -lt 65536 ] ||
    fail "nbdsnapctl used $kib KiB: the list is not streamed"
done

/usr/bin/time -f "%e %M" -o "$tmpdir/time" \
  "$nbdsnapctl" -s "$tmpdir/admin.sock" --json changes a b > "$tmpdir/out.json" ||
  fail "--json changes a b failed"
read -r secs kib < "$tmpdir/time"
echo "--json changes a b: $secs s, nbdsnapctl peak RSS $((kib / 1024)) MiB," \
     "$(stat -c %s "$tmpdir/out.json") bytes of JSON"
[ "$kib" -lt 65536 ] || fail "nbdsnapctl --json used $kib KiB"
"$PYTHON" - "$tmpdir/out.json" "$chunk" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
C = int(sys.argv[2])
ext = r["extents"]
assert r["ok"] and r["name"] == "a" and r["to"] == "b", r.keys()
assert len(ext) == r["extent_count"] == 2097152, len(ext)
for k, e in enumerate(ext):
    want = {"offset": 2 * k * C, "length": C, "zero": k % 1024 != 0}
    assert e == want, (k, e, want)
assert r["changed_bytes"] == 2097152 * C
assert r["zero_bytes"] == (2097152 - 2048) * C
PY

after=$(hwm)
echo "server: peak RSS $((before / 1024)) MiB before, $((after / 1024)) MiB after"
[ $((after - before)) -lt 131072 ] ||
  fail "the server's peak RSS grew by $(( (after - before) / 1024 )) MiB"
