#!/usr/bin/env bash
# nbdsnap test: nbdinfo --list shows the origin and every live snapshot,
# each with a description: the origin says so; a snapshot's names it, its
# creation time (the one nbdsnapctl list gives), its state and the chunks
# copied.  Snapshots are read-only and the size of the origin; a deleted
# snapshot is no longer listed.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdinfo --version
requires qemu-io --version


img="$tmpdir/disk.img"
size=$(( 3 * 1024 * 1024 + 5 ))
head -c "$size" /dev/urandom > "$img"

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
ctl create nightly
# 2 chunks copied
timeout 60 qemu-io -f raw -c 'write -P 1 0 100k' "$uri" >/dev/null
ctl create backup.2024-01-01_x

# check_list NAME...: the listed exports are "" and NAME..., described.
check_list ()
{
  timeout 60 nbdinfo --json --list "$uri" > "$tmpdir/list.json"
  ctl --json list > "$tmpdir/ctl.json"
  "$PYTHON" - "$tmpdir/list.json" "$tmpdir/ctl.json" "$size" "$@" <<'PY'
import json, sys
exports = json.load(open(sys.argv[1]))["exports"]
snaps = {s["name"]: s for s in json.load(open(sys.argv[2]))["snapshots"]}
size = int(sys.argv[3])
want = [""] + sys.argv[4:]
names = [e["export-name"] for e in exports]
assert names == want, "listed %r, expected %r" % (names, want)
for e in exports:
    d = e.get("description", "")
    assert e["export-size"] == size, e
    if e["export-name"] == "":
        assert "origin" in d, d
        assert not e["is_read_only"], e
        continue
    s = snaps[e["export-name"]]
    print("%s: %s" % (e["export-name"], d))
    assert s["name"] in d, d
    assert s["created"] in d, (d, s["created"])
    assert s["state"] in d, d
    assert "%d chunks copied" % s["chunks_copied"] in d, (d, s)
    assert e["is_read_only"], e
PY
}

check_list nightly backup.2024-01-01_x
grep -q '"chunks_copied":2' "$tmpdir/ctl.json" ||
  fail "nightly should have 2 chunks copied"

ctl delete nightly
check_list backup.2024-01-01_x
