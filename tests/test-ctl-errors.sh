#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl's exit statuses for bad input, each with a
# one-line message on stderr and nothing changed on the server:
#   invalid names ("../x", "-a", ".x", "a b", "x/y", 65 characters, "",
#   non-ASCII) -> 6, for every command that takes a name;
#   a name taken -> 7 (also one taken by a temporary snapshot);
#   no such snapshot (info, delete, hold, changes) -> 5;
#   usage errors -> 2; no server -> 3.
# Control characters in a name do not break the message's one line.
# The 64-character name and names with . _ - inside are accepted.
source "${abs_top_builddir:?}/tests/functions.sh"


# expect STATUS CMD...: CMD exits with STATUS and says one line on stderr.
expect ()
{
  local want=$1 status=0
  shift
  "$@" > "$tmpdir/out" 2> "$tmpdir/err" < /dev/null || status=$?
  if [ "$status" -ne "$want" ]; then
    cat "$tmpdir/out" "$tmpdir/err"
    fail "$*: exit $status, expected $want"
  fi
  [ "$(wc -l < "$tmpdir/err")" -eq 1 ] ||
    { cat "$tmpdir/err"; fail "$*: not a one-line message"; }
}

img="$tmpdir/disk.img"
truncate -s 1M "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"

ctl create s1
long64=$(printf 'a%.0s' {1..64})
ctl create "$long64"
ctl create "A.b_c-9"

for name in "../x" "-a" ".x" "_x" "a b" "x/y" "x:y" "${long64}b" "" \
            "é" "a
b"; do
  expect 6 ctl create -- "$name"
  grep -q -i 'invalid snapshot name' "$tmpdir/err" ||
    fail "create '$name': the message does not say the name is invalid"
  for cmd in delete info hold changes; do
    expect 6 ctl "$cmd" -- "$name"
  done
done
expect 6 ctl run --snapshot "../x" -- true

expect 7 ctl create s1
grep -q -i exists "$tmpdir/err" || fail "the message does not say exists"
expect 7 ctl create "$long64"
expect 7 ctl create --temporary s1
# A name held by a temporary snapshot is taken too.
ctl create --temporary t1 -- sh -c '
  "$0" -s "$1" create t1 2>/dev/null; echo "status $?"' \
  "$nbdsnapctl" "$tmpdir/admin.sock" > "$tmpdir/t1.out"
grep -q '^status 7$' "$tmpdir/t1.out" ||
  fail "create of a temporary snapshot's name did not exit 7"

for cmd in info delete hold changes; do
  expect 5 ctl "$cmd" nope
  grep -q -i 'not exist\|not found\|no such' "$tmpdir/err" ||
    fail "$cmd nope: the message does not say not found"
done
expect 5 ctl delete --defer nope
expect 5 ctl delete --force nope

expect 2 ctl frobnicate
expect 2 ctl create
expect 2 ctl create a b
expect 2 ctl delete --bogus s1
expect 2 ctl delete --defer --force s1
expect 2 ctl list extra
expect 3 "$nbdsnapctl" -s "$tmpdir/no-such.sock" list
expect 2 env -u NBDSNAP_SOCKET "$nbdsnapctl" list     # no socket given

# Nothing changed.
ctl --json list | "$PYTHON" -c '
import json, sys
names = [s["name"] for s in json.load(sys.stdin)["snapshots"]]
assert names == ["s1", "a" * 64, "A.b_c-9"], names
'
