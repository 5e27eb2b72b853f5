# nbdsnap tests: helpers of the backup tests that slow a backup down to
# catch it mid-copy (sourced after functions.sh and start_nbdkit with
# nbdkit's rate filter: rate-file="$tmpdir/rate").

# rate RATE: the rate filter's new rate (it polls the file).
rate ()
{
  echo "$1" > "$tmpdir/rate.new"
  mv "$tmpdir/rate.new" "$tmpdir/rate"
  sleep 0.3                                 # the filter polls the file
}

# mid_copy FILE: FILE (--json output) has a progress object with
# 0 < done < total.
mid_copy ()
{
  "$PYTHON" - "$1" <<'PY'
import json, sys
for l in open(sys.argv[1]).read().splitlines():
    try:
        o = json.loads(l)
    except ValueError:
        continue
    if o.get("progress") == "backup" and 0 < o["done"] < o["total"]:
        sys.exit(0)
sys.exit(1)
PY
}

# holds NAME: the snapshot's connection holds.
holds ()
{
  ctl --json info "$1" | "$PYTHON" -c '
import json, sys
print(json.load(sys.stdin)["snapshot"]["holds"])'
}
