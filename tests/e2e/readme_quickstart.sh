#!/usr/bin/env bash
# README.md's "After the demo" block, run as written (build/ is the build tree, the segment and
# socket names made unique, the runtime directory a temporary one; `watch`, a live view that
# runs until quit, takes one frame): each command succeeds, and the outputs the comments promise
# appear — the update creates the package, the waiter prints its cancellation by the version
# change, dump lists the package.
# Env: PKGCTX_BIN, PKGCTX_SRC.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
readme=${PKGCTX_SRC:?}/README.md
work=$(mktemp -d)
PKGCTXD=
cleanup() {
  [ -n "$PKGCTXD" ] && { kill "$PKGCTXD" 2>/dev/null || true; wait "$PKGCTXD" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
export PKGCTX_RUNTIME_DIR=$work/run

block=$(awk '/^## After the demo/{f=1} f&&/^```sh$/{g=1;next} g&&/^```$/{exit} g' "$readme")
[ -n "$block" ] || fail "no quick-start block in README.md"
seg="readme-qs-$$"
grep -q 'pkgctl watch *#' <<<"$block" || fail "the block no longer ends with watch"
script=$(sed -e "s|build/|${PKGCTX_BIN:?}/|g" -e "s|/tmp/mine.sock|$work/mine.sock|g" -e "s|mine|$seg|g" \
  -e 's|pkgctl watch |pkgctl watch --count 1 |' <<<"$block")
start=$(head -1 <<<"$script")
[[ $start == *'PKGCTXD=$!'* ]] || fail "the block does not start the daemon first"

eval "$start" 2>"$work/log"
for _ in $(seq 2000); do [ -S "$work/$seg.sock" ] && break; kill -0 "$PKGCTXD" || fail "pkgctxd exited: $(cat "$work/log")"; sleep 0.01; done
# The rest in this shell (its export and background waiter), output to a file.
eval "$(tail -n +2 <<<"$script")" >"$work/out" 2>&1 || fail "a command failed: $(cat "$work/out")"
wait "$!" 2>/dev/null || true  # the waiter, the last command started in the background
out=$(cat "$work/out")
[[ $out == *'{"name":"web","context":"pkgctx1:'*'","change":"created"}'* ]] || fail "no creation answer: $out"
[[ $out == *'{"cancelled":true,"cause":"version_changed"}'* ]] || fail "the waiter did not print its cancellation: $out"
grep -Eq '^web +1\.1 ' <<<"$out" || fail "dump does not list web 1.1: $out"
echo "ok: README quick start"
