#!/usr/bin/env bash
# nbdsnap test: export names.  "" (the origin) is listed, with a
# description naming the image, and is the only export while there is no
# snapshot; any other export name is refused, and the server's message
# names it.
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
grep -q "description: origin: $img" "$tmpdir/info" ||
  fail "the description does not name the image"

if nbdinfo "nbd+unix:///nightly?socket=$sock" > "$tmpdir/out" 2>&1; then
  cat "$tmpdir/out"
  fail "export \"nightly\" was served"
fi
grep -q 'error: export "nightly": no such' "$nbdkit_log" ||
  fail "the server did not say which export was refused"
