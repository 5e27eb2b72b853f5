#!/usr/bin/env bash
# nbdsnap test: good parameters are accepted and parsed as meant.
# With -v -D nbdsnap.config=1 the plugin prints the resolved configuration:
# sizes with suffixes, the defaults (statedir = FILE.nbdsnap beside the
# image, admin = STATEDIR/admin.sock, relative paths made absolute) and
# the explicit values must appear as expected, and the export must work.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdinfo --version

# Each case in a directory of its own: the state directory fixes the chunk
# size when it is created.
n=0
fresh ()
{
  n=$(( n + 1 ))
  mkdir "$tmpdir/$n"
  cd "$tmpdir/$n"
  truncate -s 1M disk.img
  mkdir state
}

# ARGS|EXPECTED (a substring of the debug line; @DIR@ is the case's
# directory)
cases=(
  "disk.img|file=@DIR@/disk.img statedir=@DIR@/disk.img.nbdsnap admin=@DIR@/disk.img.nbdsnap/admin.sock chunk-size=0 (the directory's) durability=power max-store=0"
  "file=disk.img chunk-size=64K|chunk-size=65536 durability"
  "disk.img chunk-size=4096|chunk-size=4096 durability"
  "disk.img chunk-size=1m|chunk-size=1048576 durability"
  "disk.img chunk-size=8k|chunk-size=8192 durability"
  "disk.img durability=process|durability=process"
  "disk.img max-store=10G|max-store=10737418240"
  "disk.img max-store=0|max-store=0"
  "disk.img max-store=512b|max-store=512"
  "disk.img statedir=state|statedir=@DIR@/state admin=@DIR@/state/admin.sock"
  "disk.img statedir=new admin=ctl.sock|statedir=@DIR@/new admin=@DIR@/ctl.sock"
)

for c in "${cases[@]}"; do
  fresh
  read -r -a args <<< "${c%%|*}"
  want="${c#*|}"
  want="${want//@DIR@/$tmpdir/$n}"
  echo "--- ${args[*]}"
  run_nbdkit -v -U - -D nbdsnap.config=1 "$plugin" "${args[@]}" \
    --run 'nbdinfo --size "$uri"' > "$tmpdir/out" 2>&1 ||
    { cat "$tmpdir/out"; fail "${args[*]}: refused"; }
  cat "$tmpdir/out"
  grep -q '^1048576$' "$tmpdir/out" || fail "${args[*]}: export size"
  grep -F -q -- "$want" "$tmpdir/out" ||
    fail "${args[*]}: configuration line does not contain: $want"
done

# -D nbdsnap.engine=1 turns on the engine's (src/) debug messages.
fresh
run_nbdkit -v -U - -D nbdsnap.engine=1 "$plugin" disk.img --run true \
  > "$tmpdir/out" 2>&1
cat "$tmpdir/out"
grep -q "origin $tmpdir/$n/disk.img: regular file, 1048576 bytes" \
  "$tmpdir/out" || fail "-D nbdsnap.engine=1 printed nothing"
