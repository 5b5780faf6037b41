#!/usr/bin/env bash
# `./build.sh demo` in CI: tools/demo.sh runs to completion by itself (exit 0, well under a
# minute), every worker stops with the cause the scene promises, and nothing is left behind: no
# segment, no socket or temp files, no process.
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir, PKGCTX_SRC source dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}" "${PKGCTX_SRC:?set PKGCTX_SRC to the source directory}"

fail() { echo "demo: FAIL: $*" >&2; exit 1; }
SEG=pkgctx-demo-e2e-$$
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/tmpdir"

start=$SECONDS
rc=0
PKGCTX_DEMO_SEGMENT=$SEG TMPDIR=$TMP/tmpdir timeout 55 bash "$PKGCTX_SRC/tools/demo.sh" "$PKGCTX_BIN" \
  >"$TMP/out" 2>&1 || rc=$?
cat "$TMP/out"
[ "$rc" -eq 0 ] || fail "tools/demo.sh exited $rc"
[ $((SECONDS - start)) -lt 50 ] || fail "the demo took $((SECONDS - start)) s"

for want in "cause version_changed" "cause rescheduled" "cause removed" "cause deleted" \
  '"change":"settings"' "[deploy db 14.2] finished" 'settings {"image":"web:1.1","replicas":4}' \
  "daemon    stopped" "Cleaned up"; do
  grep -qF -- "$want" "$TMP/out" || fail "the output lacks: $want"
done
[ "$(grep -c -- '-> stopped: cause' "$TMP/out")" -eq 5 ] || fail "want 5 workers stopped"
grep -q 'still working' "$TMP/out" || fail "no worker survived the settings-only update"

# Nothing left behind (the demo's runtime directory, segment included, is in its TMPDIR).
[ -z "$(ls -A "$TMP/tmpdir")" ] || fail "left behind in TMPDIR: $(ls -A "$TMP/tmpdir")"
if pgrep -f -- "$SEG" >/dev/null; then fail "processes left behind: $(pgrep -af -- "$SEG")"; fi
echo "demo: ok in $((SECONDS - start)) s, nothing left behind"
