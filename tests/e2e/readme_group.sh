#!/usr/bin/env bash
# README.md's "Letting unprivileged workers read" block, run as written (build/ is the build
# tree; the group, segment and socket names made unique; the runtime directory a temporary one):
# nobody with the group as its primary group gets a token and checks it, nobody without it is
# refused with exit 4. The `usermod` line names a real account and is left out: the check lines
# give nobody the group with runuser -g instead. Needs root (groupadd, runuser).
# Env: PKGCTX_BIN, PKGCTX_SRC.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: needs root (groupadd, runuser)"; exit 77; }
command -v runuser >/dev/null && command -v groupadd >/dev/null || { echo "SKIPPED: no runuser/groupadd"; exit 77; }
readme=${PKGCTX_SRC:?}/README.md
work=$(mktemp -d)
chmod 0755 "$work"  # nobody must reach the runtime directory inside
grp="pkgctx-t$$"
seg="readme-group-$$"
PKGCTXD=
cleanup() {
  [ -n "$PKGCTXD" ] && { kill "$PKGCTXD" 2>/dev/null || true; wait "$PKGCTXD" 2>/dev/null || true; }
  groupdel "$grp" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export PKGCTX_RUNTIME_DIR=$work/run

block=$(awk '/^## Letting unprivileged workers read/{f=1} f&&/^```sh$/{g=1;next} g&&/^```$/{exit} g' "$readme")
[ -n "$block" ] || fail "no group block in README.md"
grep -q '^usermod ' <<<"$block" || fail "the block no longer shows usermod"
# The group name as a word (pkgctxd and pkgctl stay), build/ → the build tree, unique names.
script=$(grep -v '^usermod ' <<<"$block" |
  sed -E -e "s/(^|[ =])pkgctx([ ]|$)/\1$grp\2/g" -e "s|build/|${PKGCTX_BIN:?}/|g" \
    -e "s|/tmp/mine.sock|$work/mine.sock|g" -e "s|mine|$seg|g")
start=$(grep -n 'PKGCTXD=\$!' <<<"$script" | cut -d: -f1)
[ -n "$start" ] || fail "no daemon start line in the block"
before=$(head -n "$start" <<<"$script")
member=$(grep 'runuser -u nobody -g' <<<"$script") || fail "no member check line"
outsider=$(grep 'runuser -u nobody -- ' <<<"$script") || fail "no outsider check line"
rest=$(tail -n +"$((start + 1))" <<<"$script" | grep -v 'runuser')

eval "$before" 2>"$work/log"
for _ in $(seq 2000); do [ -S "$work/$seg.sock" ] && break; kill -0 "$PKGCTXD" || fail "pkgctxd exited: $(cat "$work/log")"; sleep 0.01; done
[ -S "$work/$seg.sock" ] || fail "no socket: $(cat "$work/log")"
[ "$(stat -c %G "$PKGCTX_RUNTIME_DIR/$seg")" = "$grp" ] || fail "segment group is $(stat -c %G "$PKGCTX_RUNTIME_DIR/$seg"), want $grp"
[ "$(stat -c %G "$work/$seg.sock")" = "$grp" ] || fail "socket group is $(stat -c %G "$work/$seg.sock"), want $grp"
eval "$rest" >/dev/null

token=$(eval "$member") || fail "a member could not read: $member"
[[ $token == pkgctx1:* ]] || fail "a member got '$token', not a token"
# The member may check the token too (the README's worker reads; check is one more read).
out=$(runuser -u nobody -g "$grp" -- "$PKGCTX_BIN/tools/pkgctl" check "$token") ||
  fail "a member could not check its token: $out"
[ "$out" = '{"cancelled":false,"cause":null}' ] || fail "check said $out"
# … and register a task through the socket (its group lets it connect).
out=$(runuser -u nobody -g "$grp" -- "$PKGCTX_BIN/tools/pkgctl" run web -- true 2>&1) ||
  fail "a member could not run a task: $out"

rc=0; err=$(eval "$outsider" 2>&1) || rc=$?
[ "$rc" -eq 4 ] || fail "an outsider exited $rc, want 4: $err"
[[ $err == *"ermission denied"* ]] || fail "the outsider's message does not say permission denied: $err"
rc=0; err=$(runuser -u nobody -- "$PKGCTX_BIN/tools/pkgctl" check "$token" 2>&1) || rc=$?
[ "$rc" -eq 4 ] || fail "an outsider's check exited $rc, want 4: $err"
echo "ok: README group setup"
