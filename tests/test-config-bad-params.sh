#!/usr/bin/env bash
# nbdsnap test: every bad parameter is refused at start-up.
# For each case nbdkit must exit non-zero with exactly one error line,
# which names the parameter ("KEY=..."), and nothing may be created on
# disk (no state directory, no socket, no other file).
source "${abs_top_builddir:?}/tests/functions.sh"

mkdir "$tmpdir/w"
cd "$tmpdir/w"
truncate -s 1M disk.img
: > empty.img
mkdir dir
mkfifo fifo
long="$tmpdir/w/$(printf 'x%.0s' $(seq 1 120))"

# KEY|ARGS...  (ARGS split on spaces)
cases=(
  "foo|disk.img foo=bar"
  "Statedir|disk.img Statedir=$tmpdir/w/s"
  "file|missing.img"
  "file|dir"
  "file|empty.img"
  "file|fifo"
  "file|statedir=$tmpdir/w/s"
  "file|disk.img file=disk.img"
  "file|file="
  "chunk-size|disk.img chunk-size=3K"
  "chunk-size|disk.img chunk-size=2M"
  "chunk-size|disk.img chunk-size=2K"
  "chunk-size|disk.img chunk-size=65537"
  "chunk-size|disk.img chunk-size=64Q"
  "chunk-size|disk.img chunk-size=K"
  "chunk-size|disk.img chunk-size="
  "chunk-size|disk.img chunk-size=64K chunk-size=64K"
  "durability|disk.img durability=fast"
  "durability|disk.img durability="
  "durability|disk.img durability=POWER"
  "max-store|disk.img max-store=-1"
  "max-store|disk.img max-store=1X"
  "max-store|disk.img max-store=1.5G"
  "max-store|disk.img max-store=99999999999999999999"
  "max-store|disk.img max-store=16E"
  "statedir|disk.img statedir="
  "statedir|disk.img statedir=disk.img"
  "statedir|disk.img statedir=$tmpdir/w/no/such/dir"
  "admin|disk.img admin="
  "admin|disk.img admin=$tmpdir/w/no/such/admin.sock"
  "admin|disk.img admin=$long"
  "admin|disk.img statedir=$long"
)

ls -AR > "$tmpdir/before"
for c in "${cases[@]}"; do
  key="${c%%|*}"
  read -r -a args <<< "${c#*|}"
  echo "--- ${args[*]}"
  status=0
  run_nbdkit -f -U "$tmpdir/nbd.sock" "$plugin" "${args[@]}" \
    > "$tmpdir/out" 2>&1 || status=$?
  cat "$tmpdir/out"
  [ "$status" -ne 0 ] || fail "${args[*]}: accepted"
  [ "$status" -ne 124 ] || fail "${args[*]}: nbdkit did not exit"
  errors="$(grep -c 'error' "$tmpdir/out" || :)"
  [ "$errors" -eq 1 ] || fail "${args[*]}: $errors error lines, expected 1"
  grep -q "error: $key=" "$tmpdir/out" ||
    fail "${args[*]}: the message does not name $key="
  ls -AR > "$tmpdir/after"
  cmp -s "$tmpdir/before" "$tmpdir/after" ||
    fail "${args[*]}: created $(comm -13 "$tmpdir/before" "$tmpdir/after")"
  [ ! -e "$tmpdir/nbd.sock" ] || fail "${args[*]}: created the socket"
done
[ ! -e disk.img.nbdsnap ] || fail "a state directory was created"
