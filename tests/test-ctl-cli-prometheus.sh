#!/usr/bin/env bash
# nbdsnap test: nbdsnapctl stats --prometheus.
#  - Every line is valid text exposition format: "# HELP name text",
#    "# TYPE name counter|gauge", or "name[{label="value"}] number"; each
#    family's HELP and TYPE come once, before its samples; counters end
#    in _total.
#  - Against a stand-in server answering a stats object of our making:
#    totals.* are counters without the "totals" level (nbdsnap_origin_
#    bytes_written_total), other numbers gauges (nbdsnap_admin_
#    connections), booleans 0/1, strings skipped, totals.errors a label
#    map (nbdsnap_errors_total{errno="EIO"}), label values escaped.
#  - Against the real server: every number of stats is there, and
#    nbdsnap_origin_bytes_written_total grows by what was written.
source "${abs_top_builddir:?}/tests/functions.sh"

check_format ()
{
  "$PYTHON" - "$1" <<'PY' || fail "stats --prometheus: bad format ($1)"
import re, sys
name = r'[a-zA-Z_:][a-zA-Z0-9_:]*'
val = r'(?:[-+]?[0-9.eE+-]+|NaN|[+-]Inf)'
label = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
sample = re.compile(r'^(%s)(\{%s(?:,%s)*\})? %s$' % (name, label, label, val))
helpre = re.compile(r'^# HELP (%s) .+$' % name)
typere = re.compile(r'^# TYPE (%s) (counter|gauge)$' % name)
seen, types, cur = set(), {}, None
for n, line in enumerate(open(sys.argv[1]).read().splitlines(), 1):
    m = helpre.match(line)
    if m:
        assert m.group(1) not in seen, "family twice: %s" % line
        seen.add(m.group(1)); cur = m.group(1); continue
    m = typere.match(line)
    if m:
        assert m.group(1) == cur, "TYPE without HELP: %s" % line
        types[cur] = m.group(2)
        assert (m.group(2) == "counter") == cur.endswith("_total"), line
        continue
    m = sample.match(line)
    assert m, "line %d not valid: %r" % (n, line)
    assert m.group(1) == cur, "sample outside its family: %r" % line
PY
}

# A stand-in server: answers every request line with $stats.
stats='{"ok":true,"snapshots":2,"version":"x","flag":true,"admin":{"connections":3},"totals":{"origin":{"bytes_written":4096,"writes":1},"errors":{"EIO":2,"E\"X":1},"syncs":7}}'
"$PYTHON" - "$tmpdir/fake.sock" "$stats" <<'PY' &
import socket, sys, os
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
while True:
    c, _ = s.accept()
    f = c.makefile("rwb")
    for line in f:
        f.write(sys.argv[2].encode() + b"\n"); f.flush()
    c.close()
PY
fake=$!
cleanup_fn kill "$fake"
until_ok 10 test -S "$tmpdir/fake.sock"
"$nbdsnapctl" -s "$tmpdir/fake.sock" stats --prometheus > "$tmpdir/fake.prom"
cat "$tmpdir/fake.prom"
check_format "$tmpdir/fake.prom"
for want in 'nbdsnap_snapshots 2' 'nbdsnap_flag 1' \
            'nbdsnap_admin_connections 3' \
            'nbdsnap_origin_bytes_written_total 4096' \
            'nbdsnap_origin_writes_total 1' 'nbdsnap_syncs_total 7' \
            'nbdsnap_errors_total{errno="EIO"} 2' \
            'nbdsnap_errors_total{errno="E\"X"} 1' \
            '# TYPE nbdsnap_syncs_total counter' \
            '# TYPE nbdsnap_admin_connections gauge'; do
  grep -qxF "$want" "$tmpdir/fake.prom" || fail "missing: $want"
done
! grep -q version "$tmpdir/fake.prom" || fail "a string was printed"
! grep -q '^nbdsnap_ok' "$tmpdir/fake.prom" || fail "ok was printed"

# The real server.
img="$tmpdir/disk.img"
truncate -s 4M "$img"
start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1 > /dev/null
ctl stats --prometheus > "$tmpdir/a.prom"
check_format "$tmpdir/a.prom"
# Every number of the JSON is a sample.
ctl --json stats | "$PYTHON" -c '
import json, sys
prom = open(sys.argv[1]).read()
def walk(o, path, counter):
    for k, v in o.items():
        if not path and k == "ok": continue
        if not path and k == "totals" and isinstance(v, dict):
            walk(v, path, True); continue
        p = path + [k]
        if isinstance(v, dict):
            if k == "errors" and counter: continue
            walk(v, p, counter)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            n = "nbdsnap_" + "_".join(p) + ("_total" if counter else "")
            assert ("\n" + n + " ") in ("\n" + prom), "missing " + n
walk(json.load(sys.stdin), [], False)
' "$tmpdir/a.prom" || fail "a stats number is missing"

counter () { awk -v n="$1" '$1 == n { print $2 }' "$2"; }
before=$(counter nbdsnap_origin_bytes_written_total "$tmpdir/a.prom")
[ -n "$before" ] || fail "no nbdsnap_origin_bytes_written_total counter"
nbdsh -u "$uri" -c 'h.pwrite(b"y" * 1048576, 0)'
ctl stats --prometheus > "$tmpdir/b.prom"
check_format "$tmpdir/b.prom"
after=$(counter nbdsnap_origin_bytes_written_total "$tmpdir/b.prom")
[ "$after" -ge $(( before + 1048576 )) ] ||
  fail "bytes written: $before, then $after after 1 MiB of writes"
