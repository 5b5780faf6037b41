#!/usr/bin/env bash
# `./build.sh demo fleet` in CI: tools/demo_fleet.sh runs to completion by itself (exit 0, well
# under a minute) against the real etcd it starts, each scene shows what it promises (the put
# applied on both hosts and cancelling the worker, `pkgctl fleet` with both hosts, the delete
# draining on host-a with the holder listed), and nothing is left behind: no etcd, daemon or
# worker process, no segment, socket or temp file. Skipped (77) without etcd or the follower.
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir, PKGCTX_SRC source dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}" "${PKGCTX_SRC:?set PKGCTX_SRC to the source directory}"

fail() { echo "demo fleet: FAIL: $*" >&2; exit 1; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null || { echo "SKIPPED: etcd is not installed"; exit 77; }
if "$PKGCTX_BIN/tools/pkgctl" fleet --etcd-endpoints http://127.0.0.1:1 2>&1 | grep -q "without etcd support"; then
  echo "SKIPPED: built with PKGCTX_ETCD=OFF"
  exit 77
fi
SEG=pkgctx-fleet-e2e-$$
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/tmpdir"

start=$SECONDS
rc=0
PKGCTX_DEMO_SEGMENT=$SEG TMPDIR=$TMP/tmpdir timeout 55 bash "$PKGCTX_SRC/tools/demo_fleet.sh" "$PKGCTX_BIN" \
  >"$TMP/out" 2>&1 || rc=$?
cat "$TMP/out"
[ "$rc" -eq 0 ] || fail "tools/demo_fleet.sh exited $rc"
[ $((SECONDS - start)) -lt 50 ] || fail "the demo took $((SECONDS - start)) s"

for want in '"version":"1.0"' "cause version_changed" "draining, 1 holder" "holder pid" "[migrate db] done" \
  "etcd: deleted db" "follows   etcd, applied revision" "Cleaned up"; do
  grep -qF -- "$want" "$TMP/out" || fail "the output lacks: $want"
done
[ "$(grep -c '^    host-[ab] ' "$TMP/out")" -ge 4 ] || fail "pkgctl fleet did not show both hosts' packages"

# Nothing left behind (etcd's data and the runtime directories are in its TMPDIR).
[ -z "$(ls -A "$TMP/tmpdir")" ] || fail "left behind in TMPDIR: $(ls -A "$TMP/tmpdir")"
if pgrep -f -- "$SEG" >/dev/null; then fail "processes left behind: $(pgrep -af -- "$SEG")"; fi
if pgrep -f -- "$TMP/tmpdir" >/dev/null; then fail "processes left behind: $(pgrep -af -- "$TMP/tmpdir")"; fi
echo "demo fleet: ok in $((SECONDS - start)) s, nothing left behind"
