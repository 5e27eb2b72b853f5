#!/usr/bin/env bash
# nbdsnap test: export names.  "" (the origin) is listed, with a
# description naming the image by its base name only (a client never
# learns a server path) and saying read/write, or read-only under
# nbdkit -r; it is the only export while there is no snapshot; any other
# export name is refused, and the server's message names it.  The
# advertised maximum block size is what nbdkit serves (64 MiB), not 4 GiB.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdinfo --version

img="$tmpdir/disk.img"
truncate -s 1M "$img"

start_nbdkit "$img"

nbdinfo --list "$uri" > "$tmpdir/list"
cat "$tmpdir/list"
grep -q '^export="":' "$tmpdir/list" || fail "export \"\" not listed"
grep -q "description: origin" "$tmpdir/list" || fail "no description"
[ "$(grep -c '^export=' "$tmpdir/list")" -eq 1 ] || fail "extra exports"

nbdinfo "$uri" > "$tmpdir/info"
cat "$tmpdir/info"
grep -q "description: origin: disk.img (read/write)\$" "$tmpdir/info" ||
  fail "the description is not 'origin: disk.img (read/write)'"
grep -q "description: origin: disk.img (read/write)\$" "$tmpdir/list" ||
  fail "the listed description is not 'origin: disk.img (read/write)'"
! grep -h "description:" "$tmpdir/info" "$tmpdir/list" | grep -q "$tmpdir" ||
  fail "a client was told a server path"
grep -q "block_size_maximum: $(( 64 * 1024 * 1024 ))\$" "$tmpdir/info" ||
  fail "the maximum block size is not 64 MiB"

if nbdinfo "nbd+unix:///nightly?socket=$sock" > "$tmpdir/out" 2>&1; then
  cat "$tmpdir/out"
  fail "export \"nightly\" was served"
fi
grep -q 'error: export "nightly": no such' "$nbdkit_log" ||
  fail "the server did not say which export was refused"

# Read-only (nbdkit -r): the description says so, listed and asked.
stop_nbdkit
nbdkit_opts=(-r)
start_nbdkit "$img"
nbdinfo --list "$uri" > "$tmpdir/list-ro"
cat "$tmpdir/list-ro"
grep -q "description: origin: disk.img (read-only)\$" "$tmpdir/list-ro" ||
  fail "under nbdkit -r the listed description does not say read-only"
nbdinfo "$uri" > "$tmpdir/info-ro"
grep -q "description: origin: disk.img (read-only)\$" "$tmpdir/info-ro" ||
  fail "under nbdkit -r the description does not say read-only"
