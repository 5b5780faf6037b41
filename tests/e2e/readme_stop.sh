#!/usr/bin/env bash
# README.md's daemon start line and its "stop the daemon and remove the segment" block, run as
# written (build/ is the build tree, the segment and socket names made unique, the runtime
# directory a temporary one): the daemon exits 0 and no segment file is left.
# Env: PKGCTX_BIN, PKGCTX_SRC.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
readme=${PKGCTX_SRC:?}/README.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PKGCTX_RUNTIME_DIR=$work/run

start=$(grep -m1 '^build/daemon/pkgctxd --segment mine' "$readme") || fail "no daemon start line in README.md"
stop=$(awk '/^Stop the daemon and remove the segment/{f=1} f&&/^```sh$/{g=1;next} g&&/^```$/{exit} g' "$readme")
[ -n "$stop" ] || fail "no stop block in README.md"
seg="readme-$$"
script=$(printf '%s\n%s\n' "$start" "$stop" |
  sed -e "s|build/|${PKGCTX_BIN:?}/|g" -e "s|/tmp/mine.sock|$work/mine.sock|g" -e "s|mine|$seg|g")
cat >"$work/readme.sh" <<SH
set -euo pipefail
$(head -1 <<<"$script") 2>"$work/log"
for _ in \$(seq 2000); do [ -S "$work/$seg.sock" ] && break; sleep 0.01; done
[ -e "$PKGCTX_RUNTIME_DIR/$seg" ] || { echo "no segment"; exit 1; }
$(tail -n +2 <<<"$script")
SH
bash "$work/readme.sh" || fail "README commands failed: $(cat "$work/readme.sh") $(cat "$work/log" 2>/dev/null)"
left=$(ls -A "$PKGCTX_RUNTIME_DIR")
[ -z "$left" ] || fail "left in the runtime directory: $left"
[ ! -e "$work/$seg.sock" ] || fail "socket left behind"
echo "ok: README stop and cleanup"
