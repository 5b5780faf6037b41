#!/usr/bin/env bash
# Usage: sdk_only_configure.sh CMAKE SOURCE_DIR — configures the SDK-only build (the command of
# docs/design.md § Building) in a temporary directory: the SDK is a target, pkgctxd and pkgctl
# are not.
set -euo pipefail
cmake=$1 src=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$cmake" -S "$src" -B "$dir" -G Ninja -DPKGCTX_BUILD_DAEMON=OFF -DPKGCTX_BUILD_TESTS=OFF \
  -DPKGCTX_BUILD_BENCH=OFF >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; exit 1; }
targets=$(ninja -C "$dir" -t targets all)
grep -q '^worker-sdk/libpkgctx.so' <<<"$targets" || { echo "FAIL: no libpkgctx.so target"; exit 1; }
! grep -Eq '^(daemon/pkgctxd|tools/pkgctl):' <<<"$targets" || { echo "FAIL: pkgctxd or pkgctl is built"; exit 1; }
# Without the daemon, asking for the tests is a clear configuration error, not a broken build.
if "$cmake" -S "$src" -B "$dir/t" -G Ninja -DPKGCTX_BUILD_DAEMON=OFF >"$dir/t.log" 2>&1; then
  echo "FAIL: tests without the daemon configured"; exit 1
fi
grep -q 'PKGCTX_BUILD_TESTS=OFF' "$dir/t.log" || { cat "$dir/t.log"; exit 1; }
echo "ok: SDK-only configuration"
