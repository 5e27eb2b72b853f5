#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl's command-line conventions.
#  - Global options (-s, --json, -H, -o, -p) are taken before the
#    command, after it and after NAME, like zfs/rbd/lvs.
#  - A bad option is named in the message ("create: unknown option
#    -bad"), exit 2.
#  - -H: no heading, fields tab-separated; -o COLS picks and orders
#    columns (unknown column: exit 2 naming the valid ones); -p: exact
#    bytes and epoch seconds.  For list, clients, info and changes.
#  - --json: every failure prints exactly one JSON error object on
#    stdout, {"ok":false,"error","errno","message"}, and its message on
#    stderr: usage (2), invalid name (6), not found (5, the server's),
#    exists (7), no server (3), permission denied connecting (8, as
#    nobody against the 0600 socket; needs root and setpriv).
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import json'

# expect STATUS CMD...: exit STATUS, stdout in $tmpdir/out, stderr in err.
expect ()
{
  local want=$1 status=0
  shift
  "$@" > "$tmpdir/out" 2> "$tmpdir/err" < /dev/null || status=$?
  [ "$status" -eq "$want" ] ||
    { cat "$tmpdir/out" "$tmpdir/err"; fail "$*: exit $status, not $want"; }
}

# json_error KIND: stdout is exactly one error object of KIND, whose
# message is the one line on stderr.
json_error ()
{
  "$PYTHON" - "$1" "$tmpdir/out" "$tmpdir/err" <<'PY' || fail "$2: bad JSON error"
import json, sys
kind, out, err = sys.argv[1:]
lines = open(out).read().splitlines()
assert len(lines) == 1, "stdout has %d lines: %r" % (len(lines), lines)
o = json.loads(lines[0])
assert o["ok"] is False and o["error"] == kind, o
assert isinstance(o["errno"], str) and o["errno"], o
errl = open(err).read().splitlines()
assert len(errl) == 1 and o["message"] in errl[0], (o, errl)
PY
}

img="$tmpdir/disk.img"
head -c 1M /dev/urandom > "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock" \
             chunk-size=64K
ctl create s1 >/dev/null
nbdsh -u "$uri" -c 'h.pwrite(b"x" * 200000, 0)'
ctl create s2 >/dev/null

# Options anywhere.
for args in "--json list" "list --json" "list -j" "-j list" \
            "info s1 --json" "info --json s1" "list -s $tmpdir/admin.sock -j"
do
  "$nbdsnapctl" -s "$tmpdir/admin.sock" $args > "$tmpdir/out" ||
    fail "nbdsnapctl $args failed"
  "$PYTHON" -c 'import json,sys; assert json.load(sys.stdin)["ok"]' \
    < "$tmpdir/out" || fail "nbdsnapctl $args: not JSON"
done
NBDSNAP_SOCKET=/nowhere "$nbdsnapctl" list -s "$tmpdir/admin.sock" -H \
  > "$tmpdir/out" || fail "-s after the command"
[ "$(wc -l < "$tmpdir/out")" -eq 2 ] || fail "list -H: not two lines"
"$nbdsnapctl" list --socket="$tmpdir/admin.sock" > /dev/null ||
  fail "--socket=PATH after the command"

# Bad options are named.
expect 2 ctl create -bad s3
grep -q '^nbdsnapctl: create: unknown option -bad' "$tmpdir/err" ||
  fail "create -bad: $(cat "$tmpdir/err")"
expect 2 ctl create s3 --bogus
grep -q 'create: unknown option --bogus' "$tmpdir/err" || fail "--bogus"
expect 2 ctl -x list
grep -q 'unknown option -x' "$tmpdir/err" || fail "-x: $(cat "$tmpdir/err")"
expect 2 ctl list --force
grep -q 'list: unknown option --force' "$tmpdir/err" || fail "list --force"
expect 2 ctl delete s1 -t
grep -q 'delete: unknown option -t' "$tmpdir/err" || fail "delete -t"
for args in "backup -bad s1 $tmpdir/x" "send s1 -xyz" "receive -q"; do
  expect 2 ctl $args
  grep -q "^nbdsnapctl: ${args%% *}: unknown option $(echo "$args" |
    grep -o -- ' -[a-z]*' | head -1 | tr -d ' ')" "$tmpdir/err" ||
    fail "$args: $(cat "$tmpdir/err")"
done
expect 2 ctl list -o
grep -q 'option -o needs an argument' "$tmpdir/err" || fail "-o alone"
ctl list -H | grep -q '^s1' || fail "s1 gone after bad options"
! ctl list -H | grep -q '^s3' || fail "s3 was created"

# -H, -o, -p on list.
ctl list -H -p > "$tmpdir/list"
"$PYTHON" - "$tmpdir/list" <<'PY' || fail "list -H -p"
import sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
assert [r[0] for r in rows] == ["s1", "s2"], rows
assert all(len(r) == 8 for r in rows), rows
for r in rows:
    assert r[1].isdigit() and int(r[1]) > 1500000000, r   # epoch seconds
    assert r[7].isdigit(), r                              # exact bytes
assert int(rows[0][7]) >= 200000, rows   # s1 kept the old chunks
PY
ctl --json list | "$PYTHON" -c '
import json, sys, calendar, time
snaps = json.load(sys.stdin)["snapshots"]
for s, line in zip(snaps, open(sys.argv[1]).read().splitlines()):
    f = line.split("\t")
    assert int(f[7]) == s["store_bytes"], (f, s)
    t = calendar.timegm(time.strptime(s["created"], "%Y-%m-%dT%H:%M:%SZ"))
    assert int(f[1]) == t, (f, s)
' "$tmpdir/list" || fail "list -p does not match the JSON"
ctl list -o store,NAME -H -p > "$tmpdir/out"
s1_store=$(ctl --json info s1 | "$PYTHON" -c \
  'import json,sys; print(json.load(sys.stdin)["snapshot"]["store_bytes"])')
[ "$(head -1 "$tmpdir/out")" = "$s1_store	s1" ] ||
  fail "list -o store,NAME: $(head -1 "$tmpdir/out")"
ctl list -o name,store > "$tmpdir/out"
[ "$(head -1 "$tmpdir/out" | tr -s ' ')" = "NAME STORE" ] ||
  fail "list -o: heading $(head -1 "$tmpdir/out")"
ctl list -o store | sed -n 2p | grep -Eq '^ *[0-9.]+[KMG]?$' ||
  fail "list without -p: not a human size"
expect 2 ctl list -o name,bogus
grep -q "unknown column 'bogus'.*NAME,CREATED,STATE" "$tmpdir/err" ||
  fail "-o bogus: $(cat "$tmpdir/err")"

# info: "field<TAB>value", -o picks fields, -p epoch seconds.
ctl info s1 -H -p -o name,created,store_bytes > "$tmpdir/out"
awk -F'\t' 'NR==1 && ($1 != "name" || $2 != "s1") { exit 1 }
            NR==2 && ($1 != "created" || $2 !~ /^[0-9]+$/) { exit 1 }
            NR==3 && $1 != "store_bytes" { exit 1 }
            END { if (NR != 3) exit 1 }' "$tmpdir/out" ||
  { cat "$tmpdir/out"; fail "info -H -p -o"; }
expect 2 ctl info s1 -o nosuchfield
grep -q "unknown field 'nosuchfield'" "$tmpdir/err" || fail "info -o bad"

# clients: one connected.
exec {cfd}> >(nbdsh -u "$uri" -c 'import sys; sys.stdin.read()' 2>/dev/null)
until_ok 10 sh -c '"$0" -s "$1" clients -H | grep -q .' "$nbdsnapctl" \
  "$tmpdir/admin.sock"
ctl clients -H -p -o id,export,read > "$tmpdir/out"
awk -F'\t' 'NF != 3 || $1 !~ /^[0-9]+$/ || $3 !~ /^[0-9]+$/ { exit 1 }' \
  "$tmpdir/out" || { cat "$tmpdir/out"; fail "clients -H -p -o"; }
exec {cfd}>&-

# changes: -H rows "offset<TAB>length<TAB>data|zero", no summary.
ctl changes s1 -H > "$tmpdir/out"
[ "$(head -1 "$tmpdir/out")" = "$(printf '0\t262144\tdata')" ] ||
  { cat "$tmpdir/out"; fail "changes -H"; }
[ "$(wc -l < "$tmpdir/out")" -eq 1 ] || fail "changes -H: a summary line"
ctl changes s1 -o length,offset -H | grep -qx "$(printf '262144\t0')" ||
  fail "changes -o length,offset"

# --json error objects, one per failure class.
expect 2 ctl --json create -bad s3;          json_error usage "bad option"
expect 2 ctl create s3 extra --json;         json_error usage "extra arg"
expect 2 "$nbdsnapctl" --json list;          json_error usage "no socket"
expect 6 ctl create '../x' --json;           json_error invalid-name "name"
expect 6 ctl --json changes s1 '.x';         json_error invalid-name "name2"
expect 5 ctl info nosuch --json;             json_error not-found "not found"
expect 7 ctl create s1 -j;                   json_error exists "exists"
expect 3 "$nbdsnapctl" -s "$tmpdir/no.sock" list --json
json_error unreachable "unreachable"
grep -q '"errno":"ENOENT"' "$tmpdir/out" || fail "unreachable: errno"
# Without --json nothing on stdout.
expect 3 "$nbdsnapctl" -s "$tmpdir/no.sock" list
[ ! -s "$tmpdir/out" ] || fail "an error printed on stdout without --json"

# Permission denied on the 0600 socket: exit 8 (not 3).
if [ "$(id -u)" -eq 0 ] && setpriv --version >/dev/null 2>&1; then
  chmod 0711 "$tmpdir" "$tmpdir/state" 2>/dev/null || :
  [ "$(stat -c %a "$tmpdir/admin.sock")" = 600 ] || fail "socket mode"
  expect 8 setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$nbdsnapctl" -s "$tmpdir/admin.sock" list --json
  json_error permission "permission"
  grep -q '"errno":"EACCES"' "$tmpdir/out" || fail "permission: errno"
  grep -q 'Permission denied' "$tmpdir/err" || fail "permission: message"
else
  echo "$0: not root or no setpriv: exit 8 not checked" >&2
fi
