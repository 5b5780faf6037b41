#!/usr/bin/env bash
# crash_points.sh present|absent BINARY… — checks that the store's test-only crash points are in
# each binary exactly when the build enables PKGCTX_FAULT_INJECTION (release builds carry none).
set -euo pipefail
want=$1; shift
for bin in "$@"; do
  syms=$(nm -C "$bin")
  # A stripped binary would pass "absent" for nothing: the store itself must be visible.
  grep -q 'pkgctx::Store::update' <<<"$syms" || { echo "$bin: no symbols to inspect" >&2; exit 1; }
  hooks=$(grep -E 'set_crash_point|fault_steps|g_crash_point|crash_at' <<<"$syms" || true)
  if [ "$want" = absent ] && [ -n "$hooks" ]; then
    echo "$bin carries crash points:" >&2; echo "$hooks" >&2; exit 1
  fi
  if [ "$want" = present ] && [ -z "$hooks" ]; then
    echo "$bin has no crash points although PKGCTX_FAULT_INJECTION is on" >&2; exit 1
  fi
  echo "$bin: crash points $want"
done
