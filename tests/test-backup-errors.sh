#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl backup refuses bad input before writing
# anything.  Each case checks the exit status, that stderr is one line
# "nbdsnapctl: ..." (naming both sizes for a size mismatch), that an
# existing DEST is unchanged (sha256 and mtime) and that a missing one is
# not created: an unknown SNAP or OLD (5), OLD newer than SNAP (2, the
# server's bad-request), DEST's size not the image's (1; also an empty
# DEST or a missing one with --since), DEST a directory or on a read-only
# file system (1), --verify of a DEST that is not SNAP (1, the first
# differing offset), the admin server or the NBD server unreachable (3),
# bad options (2) and names (6).  Afterwards no hold is left behind.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'

C=65536
size=$(( 64 * C + 123 ))
img="$tmpdir/disk.img"
bigimg fill "$img" "$size" 1
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
  chunk-size=64K
ctl create s0
bigimg ops "$uri" "$img" "w:$(( 3 * C )):$C:2" "t:$(( 9 * C )):$C"
ctl create s1

dest="$tmpdir/backup.img"
ctl backup s0 "$dest" > /dev/null
touch -d '2020-01-01 00:00:00' "$dest"
dest_sha=$(sha "$dest")
missing="$tmpdir/missing.img"

# refuse STATUS PATTERN CMD...: CMD exits STATUS with one line on stderr
# matching PATTERN; DEST and the missing file are as they were.
refuse ()
{
  local want=$1 pattern=$2 status=0
  shift 2
  "$@" > "$tmpdir/out" 2> "$tmpdir/err" || status=$?
  cat "$tmpdir/err"
  [ "$status" -eq "$want" ] ||
    fail "$*: exit $status, expected $want"
  [ "$(wc -l < "$tmpdir/err")" -eq 1 ] && grep -q "^nbdsnapctl: " \
    "$tmpdir/err" || fail "$*: not one message line on stderr"
  grep -E -q -- "$pattern" "$tmpdir/err" ||
    fail "$*: the message does not match '$pattern'"
  [ ! -s "$tmpdir/out" ] || fail "$*: printed on stdout: $(cat "$tmpdir/out")"
  [ "$(sha "$dest")" = "$dest_sha" ] || fail "$*: DEST changed"
  [ "$(stat -c %Y "$dest")" = "$(date -d '2020-01-01 00:00:00' +%s)" ] ||
    fail "$*: DEST was written to"
  [ ! -e "$missing" ] || fail "$*: created $missing"
}

# Unknown snapshots.
refuse 5 "nosuch" ctl backup nosuch "$dest"
refuse 5 "nosuch" ctl backup nosuch "$missing"
refuse 5 "nosuch" ctl backup s1 "$dest" --since nosuch

# OLD newer than SNAP: the server's bad-request.
refuse 2 "not newer" ctl backup s0 "$dest" --since s1

# DEST's size.
truncate -s $(( size - 1 )) "$tmpdir/short.img"
refuse 1 "is $(( size - 1 )) bytes, snapshot s1 is $size bytes" \
  ctl backup s1 "$tmpdir/short.img"
[ "$(stat -c %s "$tmpdir/short.img")" -eq $(( size - 1 )) ] ||
  fail "a DEST of the wrong size was resized"
: > "$tmpdir/empty.img"
refuse 1 "is 0 bytes, snapshot s1 is $size bytes.*--since" \
  ctl backup s1 "$tmpdir/empty.img" --since s0
[ ! -s "$tmpdir/empty.img" ] || fail "--since extended an empty DEST"
refuse 1 "missing.img: No such file.*--since" \
  ctl backup s1 "$missing" --since s0

# DEST not writable.
mkdir "$tmpdir/dir"
refuse 1 "Is a directory" ctl backup s1 "$tmpdir/dir"
refuse 1 "No such file or directory" \
  ctl backup s1 "$tmpdir/nodir/backup.img"
if [ "$(id -u)" -eq 0 ] &&
   mkdir "$tmpdir/ro" &&
   mount -t tmpfs -o size=16m nbdsnap-test "$tmpdir/ro" 2>/dev/null; then
  cleanup_fn umount -l "$tmpdir/ro"
  cp "$dest" "$tmpdir/ro/backup.img"
  mount -o remount,ro "$tmpdir/ro"
  refuse 1 "Read-only file system" ctl backup s1 "$tmpdir/ro/backup.img"
  refuse 1 "Read-only file system" ctl backup s1 "$tmpdir/ro/new.img"
  [ "$(sha "$tmpdir/ro/backup.img")" = "$dest_sha" ] ||
    fail "the read-only DEST changed"
else
  echo "$0: not root or no tmpfs: the read-only DEST case is skipped"
fi

# Unreachable servers.
refuse 3 "cannot connect to admin socket" \
  "$nbdsnapctl" -s "$tmpdir/nope.sock" backup s0 "$missing"
refuse 3 "cannot connect to the NBD server" \
  ctl backup s0 "$missing" --nbd-socket "$tmpdir/nope.sock"
refuse 3 "cannot connect to the NBD server" \
  env NBDSNAP_NBD_SOCKET="$tmpdir/nope.sock" "${ctl_cmd[@]}" \
  backup s1 "$dest" --since s0

# --verify finds DEST is not SNAP: "--since s1" to s1 changes nothing,
# and DEST holds s0; the message names the first differing offset.
first=$(cmp "$dest" "$img" | sed -n 's/.* differ: byte \([0-9]*\),.*/\1/p')
[ -n "$first" ] || fail "s0 and s1 do not differ"
refuse 1 "backup: verify: $dest differs from snapshot s1 at offset $(( first - 1 ))\$" \
  ctl backup s1 "$dest" --since s1 --verify

# Bad usage and names.
refuse 2 "--connections" ctl backup s0 "$dest" --connections 0
refuse 2 "--connections" ctl backup s0 "$dest" --connections 17
refuse 2 "--connections" ctl backup s0 "$dest" --connections 2x
refuse 2 "needs SNAP and DEST" ctl backup s0
refuse 2 "unexpected argument 'extra'" ctl backup s0 "$dest" extra
refuse 2 "unknown option" ctl backup s0 "$dest" --bogus
refuse 2 "needs an argument" ctl backup s0 "$dest" --since
refuse 6 "invalid snapshot name" ctl backup 'a/b' "$dest"
refuse 6 "invalid snapshot name" ctl backup s1 "$dest" --since 'x y'

# Nothing held now; the good command still works on the same DEST.
ctl --json list | "$PYTHON" -c '
import json, sys
ss = json.load(sys.stdin)["snapshots"]
assert [(s["name"], s["holds"]) for s in ss] == [("s0", 0), ("s1", 0)], ss
'
ctl backup s1 "$dest" --since s0 > /dev/null
[ "$(sha "$dest")" = "$(export_sha "nbd+unix:///s1?socket=$sock")" ] ||
  fail "the backup after the refusals is not s1"
