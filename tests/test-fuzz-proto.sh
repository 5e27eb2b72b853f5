#!/usr/bin/env bash
# nbdsnap: fuzz the admin request parser (tests/fuzz/fuzz_proto.c) with
# libFuzzer for a bounded time; any crash, leak or failed invariant fails.
#
# Skips (77) without clang or libFuzzer, or when the tree was configured
# with --enable-sanitizers (gcc's ASan objects don't link with clang's).
# FUZZ_SECONDS (default 20) sets the time budget.
set -euo pipefail

: "${abs_top_srcdir:?run this from make check}"
: "${abs_top_builddir:?run this from make check}"

cc=${CLANG:-}
if [ -z "$cc" ]; then
  cc=$(command -v clang || command -v clang-14 || true)
fi
if [ -z "$cc" ]; then
  echo "$0: SKIP: clang not found"
  exit 77
fi

lib="$abs_top_builddir/src/.libs/libnbdsnap.a"
if [ ! -f "$lib" ]; then
  echo "$0: FAIL: $lib not built"
  exit 1
fi
if nm "$lib" 2>/dev/null | grep -c '__asan_' >/dev/null; then
  echo "$0: SKIP: the engine was built with --enable-sanitizers"
  exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# proto.c itself is rebuilt with coverage instrumentation; the rest (the
# engine's name check, the error shim) comes from the library.
if ! "$cc" -g -O1 -fsanitize=fuzzer,address,undefined \
     -fno-sanitize-recover=undefined \
     -I"$abs_top_builddir" -I"$abs_top_srcdir/include" \
     $(pkg-config --cflags jansson) \
     "$abs_top_srcdir/tests/fuzz/fuzz_proto.c" \
     "$abs_top_srcdir/src/proto.c" "$lib" \
     $(pkg-config --libs jansson) -pthread \
     -o "$tmp/fuzz_proto" 2>"$tmp/cc.log"; then
  if grep -q 'fuzzer' "$tmp/cc.log" && grep -qi 'no such file\|cannot find' "$tmp/cc.log"; then
    echo "$0: SKIP: clang has no libFuzzer runtime"
    exit 77
  fi
  cat "$tmp/cc.log"
  echo "$0: FAIL: cannot build the fuzzer"
  exit 1
fi

# Seeds: one valid request per command and a few near misses.
mkdir "$tmp/corpus"
i=0
for line in 'hello' 'create nightly' 'create t1 temporary' 'delete a defer' \
            'delete a force' 'list' 'info a' 'clients' 'hold a' \
            'release a' 'changes a' 'stats' 'create -x' 'info a b' \
            '{"ok":false,"error":"busy","errno":"EBUSY","message":"m"}'; do
  printf '%s' "$line" > "$tmp/corpus/seed$i"
  i=$((i + 1))
done

status=0
nice -n 10 "$tmp/fuzz_proto" -max_total_time="${FUZZ_SECONDS:-20}" -max_len=4200 \
  -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -dict="$abs_top_srcdir/tests/fuzz/proto.dict" \
  -artifact_prefix="$tmp/" "$tmp/corpus" >"$tmp/fuzz.log" 2>&1 || status=$?
tail -n 15 "$tmp/fuzz.log"
if [ "$status" -ne 0 ]; then
  for f in "$tmp"/crash-* "$tmp"/leak-* "$tmp"/timeout-* "$tmp"/oom-*; do
    [ -f "$f" ] || continue
    echo "$0: input that failed ($f):"
    od -c "$f" | head -n 20
  done
  echo "$0: FAIL: the fuzzer found a problem (exit $status)"
  exit 1
fi
echo "$0: PASS"
