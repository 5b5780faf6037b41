#!/usr/bin/env bash
# Honest outcomes and refusals of pkgctl (DESIGN.md §4.1, §7), against a real pkgctxd:
#   - forbidden: `nobody`, able to connect but off the allow-list, runs `pkgctl update` → exit 7
#     ("forbidden", no longer 4), and nothing changes;
#   - outcome unknown: the daemon SIGSTOPped, `pkgctl update --timeout 0.5` → exit 6 "outcome
#     unknown: the request was sent …"; after SIGCONT the write is applied (so 6 was honest, and
#     "unreachable" would have been a lie);
#   - wrong segment: PKGCTX_SEGMENT=other against the daemon serving $SEG → exit 5 naming both,
#     nothing changes.
# CI runs as root; the attacks run as nobody through runuser (skipped, exit 77, if not root).
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}"
PKGCTL=$PKGCTX_BIN/tools/pkgctl
PKGCTXD=$PKGCTX_BIN/daemon/pkgctxd
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: needs root to run pkgctl as nobody"; exit 77; }

SEG=pkgctl-sec-$$
TMP=$(mktemp -d)
SOCK=$TMP/s.sock
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && { kill -CONT "$DAEMON" 2>/dev/null || true; kill -TERM "$DAEMON" 2>/dev/null || true
                        wait "$DAEMON" 2>/dev/null || true; }
  rm -f "/dev/shm/$SEG" "/dev/shm/$SEG.lock"
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "pkgctl_outcomes: FAIL: $*" >&2; [ -f "$TMP/daemon.log" ] && tail -5 "$TMP/daemon.log" >&2; exit 1; }

# run WANT_RC CMD… — sets OUT, ERR; checks the exit code.
run() {
  local want=$1 rc=0
  shift
  "$@" >"$TMP/out" 2>"$TMP/err" </dev/null || rc=$?
  OUT=$(cat "$TMP/out")
  ERR=$(cat "$TMP/err")
  [ "$rc" -eq "$want" ] || fail "$* exited $rc, want $want (stdout: $OUT; stderr: $ERR)"
}
has() { [[ $1 == *"$2"* ]] || fail "${3:-output} lacks '$2': $1"; }

# The socket is connectable by everyone (0666 in a 0755 directory); writes stay allow-listed.
chmod 0755 "$TMP"
export PKGCTX_SEGMENT=$SEG PKGCTX_SOCKET=$SOCK
. "$(dirname "$0")/../support/e2e_daemon.sh"
start_pkgctxd --config /dev/null --segment "$SEG" --socket "$SOCK" --capacity 8 --set socket_mode=0666 \
  --heartbeat-ms 100
run 0 "$PKGCTL" update web 1.0 --settings '{"a":1}'

# --- forbidden: nobody connects, the daemon refuses the write -> 7, nothing changed ----------
run 7 runuser -u nobody -- env PKGCTX_SEGMENT="$SEG" PKGCTX_SOCKET="$SOCK" "$PKGCTL" update web 6.6.6
has "$ERR" "may not \"update\""
has "$ERR" "allow"
run 7 runuser -u nobody -- env PKGCTX_SOCKET="$SOCK" "$PKGCTL" delete web
run 0 "$PKGCTL" settings web
has "$OUT" '"version":"1.0"' "after nobody's refused writes"

# --- wrong segment: the daemon refuses a write meant for another segment -> 5 -----------------
run 5 env PKGCTX_SEGMENT=other-$$ "$PKGCTL" update web 2.0
has "$ERR" "\"other-$$\""; has "$ERR" "\"$SEG\""; has "$ERR" "--socket"
run 5 "$PKGCTL" --segment other-$$ delete web
run 0 "$PKGCTL" settings web
has "$OUT" '"version":"1.0"' "after wrong-segment writes"

# --- outcome unknown: the daemon stopped after accepting the connection -> 6 -----------------
kill -STOP "$DAEMON"
run 6 "$PKGCTL" update web 3.0 --timeout 0.5
[[ $ERR == "pkgctl: outcome unknown: the request was sent"* ]] || fail "outcome unknown message: $ERR"
has "$ERR" "may or may not have been applied"
kill -CONT "$DAEMON"
# The daemon resumes, reads the request it was sent and applies it: what 6 warned about.
applied=
for _ in $(seq 500); do
  "$PKGCTL" settings web 2>/dev/null | grep -q '"version":"3.0"' && { applied=1; break; }
  sleep 0.01
done
[ -n "$applied" ] || fail "the write sent to the stopped daemon was not applied after SIGCONT"
# And a daemon that is simply gone is unreachable (4): nothing was sent.
kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=
run 4 "$PKGCTL" update web 4.0
has "$ERR" "is pkgctxd running? try --socket"

echo "pkgctl_outcomes: all passed"
