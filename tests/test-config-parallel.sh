#!/usr/bin/env bash
# nbdsnap test (issue 17): the thread model is chosen for the nbdkit the
# plugin runs in.  parallel=auto (the default) asks for SERIALIZE_REQUESTS
# on nbdkit 1.32.4 to 1.33.9, which abort when a client dies with requests
# in flight, and PARALLEL elsewhere; parallel=on and off force it (on,
# on an affected nbdkit, warns).  The version is the running nbdkit's
# (nbdkit --version here), or -D nbdsnap.nbdkit_version=N to pretend.
# On the safe model a block-status reply carries one extent, merged over
# the chunks of one type; otherwise all of them.  stats says which model
# is in force and why.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

ver="$("$NBDKIT" --version | head -n 1)"
echo "running: $ver"
# The model auto must pick for this nbdkit.
read -r maj min mic < <(echo "$ver" | sed -E 's/^nbdkit ([0-9]+)\.([0-9]+)\.([0-9]+).*/\1 \2 \3/')
v=$(( maj * 1000000 + min * 1000 + mic ))
if [ "$v" -ge 1032004 ] && [ "$v" -lt 1033010 ]; then
  auto=serialize_requests
else
  auto=parallel
fi

# dump ARGS...: the thread_model nbdkit reports with those options and
# plugin parameters (nbdkit options before "--").
dump ()
{
  local opts=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  run_nbdkit "${opts[@]}" --dump-plugin "$plugin" "$@" > "$tmpdir/dump" ||
    fail "--dump-plugin $*: failed"
  sed -n 's/^thread_model=//p' "$tmpdir/dump"
}

check_model ()
{
  local want=$1 got
  shift
  got="$(dump "$@")"
  [ "$got" = "$want" ] ||
    fail "$*: thread_model=$got, not $want ($(grep reason "$tmpdir/dump"))"
}

check_model "$auto" --
check_model serialize_requests -D nbdsnap.nbdkit_version=1032005 --
check_model serialize_requests -D nbdsnap.nbdkit_version=1032004 --
check_model serialize_requests -D nbdsnap.nbdkit_version=1033009 --
check_model parallel -D nbdsnap.nbdkit_version=1032003 --
check_model parallel -D nbdsnap.nbdkit_version=1033010 --
check_model parallel -D nbdsnap.nbdkit_version=1034000 --
check_model parallel -D nbdsnap.nbdkit_version=1032005 -- parallel=on
check_model serialize_requests -D nbdsnap.nbdkit_version=1034000 -- \
  parallel=off
check_model "$auto" -- parallel=auto
grep -q "^nbdsnap_thread_model_reason=.*${ver#nbdkit }" "$tmpdir/dump" ||
  fail "the reason does not name nbdkit's version: $(cat "$tmpdir/dump")"

# Bad values are refused, naming the parameter.
img="$tmpdir/disk.img"
truncate -s 1M "$img"
for bad in yes 2 "" ON; do
  if run_nbdkit -U - "$plugin" "$img" parallel="$bad" --run true \
       2>"$tmpdir/err"; then
    fail "parallel=$bad was accepted"
  fi
  grep -q "parallel=$bad: must be 'auto', 'on' or 'off'" "$tmpdir/err" ||
    fail "parallel=$bad: $(cat "$tmpdir/err")"
done
if run_nbdkit -U - "$plugin" "$img" parallel=on parallel=off --run true \
     2>"$tmpdir/err"; then
  fail "parallel= given twice was accepted"
fi
rm -rf "$img.nbdsnap"

# A fragmented image: 8 MiB of data, then 4K of data and a 4K hole over
# 2 MiB (512 extents), then 2 MiB of hole.
"$PYTHON" - "$img" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(b"\x11" * (8 << 20))
    for i in range(256):
        f.write(b"\x22" * 4096)
        f.seek(4096, os.SEEK_CUR)
    f.truncate(12 << 20)
PY

# extents EXPORT: the block-status entries of one request over the whole
# export, as "length/flags" words.
extents ()
{
  "$PYTHON" - "nbd+unix:///$1?socket=$sock" <<'PY'
import nbd, sys
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
got = []
def cb(meta, off, entries, err):
    got.extend(entries)
    return 0
h.block_status(h.get_size(), 0, cb)
print(" ".join("%d/%d" % (got[i], got[i + 1]) for i in range(0, len(got), 2)))
h.shutdown()
PY
}

# serve VERSION PARAMS...: start nbdkit pretending to be that version.
serve ()
{
  local v=$1
  shift
  nbdkit_opts=(-D nbdsnap.nbdkit_version="$v")
  start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
    chunk-size=16K "$@"
  ctl create s >/dev/null 2>&1 || :
}

# The safe model: one extent per reply.  The origin's first is the 8 MiB
# of data and the first 4K block after it; the snapshot's is 10 MiB of
# data, merged over its 16K chunks (a chunk with any data is data).
serve 1032005
ctl --json stats > "$tmpdir/stats.json"
grep -q '"threads":{"model":"serialize_requests"' "$tmpdir/stats.json" ||
  fail "stats: $(cat "$tmpdir/stats.json")"
grep -q '"short_extents":true' "$tmpdir/stats.json" ||
  fail "stats: $(cat "$tmpdir/stats.json")"
got="$(extents "")"
[ "$got" = "8392704/0" ] || fail "origin, safe model: extents '$got'"
got="$(extents s)"
[ "$got" = "10485760/0" ] || fail "snapshot, safe model: extents '$got'"
stop_nbdkit

# Parallel on a fixed nbdkit: every extent in one reply.
serve 1033010
ctl --json stats > "$tmpdir/stats.json"
grep -q '"threads":{"model":"parallel"' "$tmpdir/stats.json" &&
  grep -q '"short_extents":false' "$tmpdir/stats.json" ||
  fail "stats: $(cat "$tmpdir/stats.json")"
n=$(extents "" | wc -w)
[ "$n" -eq 512 ] || fail "origin, parallel: $n extents, not 512"
got="$(extents s)"
[ "$got" = "10485760/0 2097152/3" ] || fail "snapshot, parallel: '$got'"
stop_nbdkit

# parallel=on on an affected nbdkit: parallel, and a warning at start.
serve 1032005 parallel=on
ctl --json stats > "$tmpdir/stats.json"
grep -q '"threads":{"model":"parallel"' "$tmpdir/stats.json" ||
  fail "parallel=on: stats: $(cat "$tmpdir/stats.json")"
grep -q 'warning: parallel=on: a client that dies with requests in flight may abort this nbdkit' \
  "$nbdkit_log" || fail "parallel=on: no warning in the log"
stop_nbdkit
