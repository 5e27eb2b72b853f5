#!/usr/bin/env bash
# nbdsnap test: delete --force of a snapshot already deleted with --defer,
# whose client does not go away.  After --defer, s1 is listed as deleting
# and its client still reads it; a plain delete or another --defer says
# not found (exit 5: it is being deleted), info shows it deleting;
# --force then finds it (exit 0, "revoked": 1), the client's next read
# fails with ESHUTDOWN, and once the client is gone the files are removed
# and the name is free.
source "${abs_top_builddir:?}/tests/functions.sh"
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'

snapfiles () { ls "$tmpdir/state" | grep '^snap-' || :; }

img="$tmpdir/disk.img"
size=$(( 1024 * 1024 + 333 ))
head -c "$size" /dev/urandom > "$img"
want=$(sha "$img")

start_nbdkit "$img" statedir="$tmpdir/state" admin="$tmpdir/admin.sock"
ctl create s1
head -c "$size" /dev/urandom > "$tmpdir/new.img"
timeout 60 nbdcopy "$tmpdir/new.img" "$uri"

start_client "nbd+unix:///s1?socket=$sock"

ask sha
[ "$reply" = "sha $want" ] || fail "before the delete the client read $reply"

ctl --json delete --defer s1 | grep -q '"deferred":true' ||
  fail "s1 was not deferred"
ask sha
[ "$reply" = "sha $want" ] || fail "after --defer the client read $reply"
for cmd in "delete s1" "delete --defer s1"; do
  status=0
  ctl $cmd 2>/dev/null || status=$?
  [ "$status" -eq 5 ] || fail "$cmd after --defer: exit $status, not 5"
done
ctl --json info s1 | grep -q '"state":"deleting"' ||
  fail "info s1 after --defer does not say deleting"

ctl --json delete --force s1 > "$tmpdir/out.json" ||
  { cat "$tmpdir/out.json"; fail "delete --force of a deferred snapshot"; }
grep -q '"revoked":1' "$tmpdir/out.json" ||
  { cat "$tmpdir/out.json"; fail "the client of s1 was not revoked"; }
ask sha
[ "$reply" = "err ESHUTDOWN" ] ||
  fail "a read on the revoked handle gave: $reply (expected ESHUTDOWN)"

ask close
[ "$reply" = closed ]
wait "$client_pid" || :
for (( i = 0; i < 100; i++ )); do
  [ -n "$(snapfiles)" ] || break
  sleep 0.1
done
[ -z "$(snapfiles)" ] ||
  { ls -l "$tmpdir/state"; fail "the files are left after the client left"; }
ctl create s1
ctl delete s1
