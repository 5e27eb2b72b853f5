#!/usr/bin/env bash
# nbdsnap test: fast zero is honest.  On tmpfs, which can punch holes but
# has no FALLOC_FL_ZERO_RANGE, a fast zero that may not punch a hole
# (NO_HOLE) must fail with ENOTSUP and change nothing; a fast zero that
# may punch one must succeed; a plain zero with NO_HOLE must fall back to
# writing zeros.  Skipped (77) without a tmpfs at /dev/shm.
source "${abs_top_builddir:?}/tests/functions.sh"
requires "$PYTHON" -c 'import nbd'
requires test "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs

shm="$(mktemp -d /dev/shm/nbdsnap-fast-zero.XXXXXX)"
cleanup_fn rm -rf "$shm"
img="$shm/disk.img"
head -c $(( 1024 * 1024 )) /dev/zero | tr '\0' '\377' > "$img"

start_nbdkit "$img" statedir="$tmpdir/state"

nbdsh -u "$uri" -c '
K = 65536
assert h.can_fast_zero()
try:
    h.zero(K, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
    raise AssertionError("fast zero without holes was accepted on tmpfs")
except nbd.Error as e:
    assert e.errno in ("ENOTSUP", "EOPNOTSUPP"), e
assert h.pread(K, 0) == b"\xff" * K, "a refused fast zero changed data"

h.zero(K, K, nbd.CMD_FLAG_FAST_ZERO)            # may punch: fast
assert h.pread(K, K) == bytes(K)
h.zero(K, 2 * K, nbd.CMD_FLAG_NO_HOLE)          # falls back to writing
assert h.pread(K, 2 * K) == bytes(K)
assert h.pread(K, 3 * K) == b"\xff" * K
'

"$PYTHON" - "$img" <<'PY'
import sys
K = 65536
data = open(sys.argv[1], "rb").read()
assert data[:K] == b"\xff" * K, "file changed by the refused fast zero"
assert data[K:3 * K] == bytes(2 * K), "file not zeroed"
assert data[3 * K:] == b"\xff" * (len(data) - 3 * K), "file changed after"
PY
