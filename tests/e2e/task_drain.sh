#!/usr/bin/env bash
# pkgctl's task commands against a real pkgctxd (DESIGN §2.2, §7): run holds a lease while its
# command runs; clients lists it; drain lists the holder (124) and then answers drained (0) once
# the task ended; update --drain waits for the old context's task; delete --drain reports
# in_flight; run's exit status and its stderr report; exit 3 for a missing package; a signal to
# pkgctl run stops CMD (and SIGKILL of pkgctl kills it) rather than leave it unleased; a pkgctl wait
# shows in clients' WAITS and, killed, leaves no waiter count (writes make no wake).
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}"
PKGCTL=$PKGCTX_BIN/tools/pkgctl
PKGCTXD=$PKGCTX_BIN/daemon/pkgctxd

TMP=$(mktemp -d)
export PKGCTX_SEGMENT=task-e2e-$$ PKGCTX_SOCKET=$TMP/s.sock PKGCTX_RUNTIME_DIR=$TMP/run
DAEMON=
BG=()
cleanup() {
  for p in "${BG[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -n "$DAEMON" ] && { kill -TERM "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "task_drain: FAIL: $*" >&2; exit 1; }
has() { [[ $1 == *"$2"* ]] || fail "${3:-output} lacks '$2': $1"; }

. "$(dirname "$0")/../support/e2e_daemon.sh"
start_pkgctxd --config /dev/null --heartbeat-ms 100

"$PKGCTL" update app 1 >/dev/null
rc=0; "$PKGCTL" run nope -- true 2>"$TMP/err" || rc=$?
[ "$rc" -eq 3 ] || fail "run on a missing package exited $rc, want 3"

# A command that ignores SIGTERM: its task holds the old context until the grace period ends.
# It says "started" on a FIFO once running (a real condition, no fixed sleep).
mkfifo "$TMP/started"
"$PKGCTL" run app --grace 1 -- sh -c 'trap "" TERM; echo "$PKGCTX_TOKEN" > '"$TMP/started"'; while :; do sleep 0.05; done' \
  2>"$TMP/run.err" &
RUN=$!
BG+=("$RUN")
read -r token <"$TMP/started"
has "$token" "pkgctx1:" "PKGCTX_TOKEN"

out=$("$PKGCTL" clients --json)
has "$out" "\"pid\":$RUN" "clients"
has "$out" '"name":"app"' "clients"
"$PKGCTL" clients | grep -q "^$RUN " || fail "clients table lacks pid $RUN"

rc=0; out=$("$PKGCTL" drain app --timeout 0.2) || rc=$?
[ "$rc" -eq 0 ] || fail "drain with only a live lease exited $rc: $out"
has "$out" '"drained":true'

"$PKGCTL" update app 2 >/dev/null
rc=0; out=$("$PKGCTL" drain app --timeout 0.2 2>/dev/null) || rc=$?
[ "$rc" -eq 124 ] || fail "drain of a held context exited $rc, want 124: $out"
has "$out" '"drained":false'
has "$out" "\"pid\":$RUN"
has "$out" '"cause":"version_changed"'
# The daemon says who held the rollout up (once: the drained drain above logged none).
timeouts=$(grep -c 'Drain timed out' "$TMP/daemon.log" || true)
[ "$timeouts" -eq 1 ] || fail "want one 'Drain timed out' line, got $timeouts: $(cat "$TMP/daemon.log")"
grep -q "^<5>pkgctxd: Drain timed out op=drain name=\"app\" holders=1 peer_uid=$(id -u) peer_pid=[0-9]*\$" "$TMP/daemon.log" ||
  fail "drain timeout line: $(grep 'Drain timed out' "$TMP/daemon.log")"

rc=0; out=$("$PKGCTL" drain app --timeout 10) || rc=$?
[ "$rc" -eq 0 ] || fail "drain after the grace period exited $rc: $out"
has "$out" '"drained":true,"holders":[]'
rc=0; wait "$RUN" || rc=$?
[ "$rc" -eq 137 ] || fail "run exited $rc, want 137 (SIGKILL after the grace)"
has "$(cat "$TMP/run.err")" '{"name":"app","cancelled":true,"cause":"version_changed","exit":137}' "run report"

# A command that ends on SIGTERM: update --drain answers once it did.
mkfifo "$TMP/started2"
"$PKGCTL" run app --grace 30 -- sh -c 'echo go > '"$TMP/started2"'; exec sleep 60' 2>"$TMP/run2.err" &
RUN=$!
BG+=("$RUN")
read -r _ <"$TMP/started2"
out=$("$PKGCTL" update app 3 --drain 10)
has "$out" '"change":"version","drained":true,"holders":[]'
rc=0; wait "$RUN" || rc=$?
[ "$rc" -eq 143 ] || fail "run exited $rc, want 143 (SIGTERM)"

# pkgctl run leaves no command behind (its lease is held while CMD runs). SIGTERM sent to pkgctl
# goes on to CMD, and the task stays until CMD has exited: this CMD, on TERM, says so on a FIFO,
# then exits 7 once $TMP/go3 exists.
mkfifo "$TMP/started3" "$TMP/term3"
"$PKGCTL" run app -- sh -c 'trap "echo term > '"$TMP/term3"'; until [ -e '"$TMP/go3"' ]; do sleep 0.01; done; exit 7" TERM
  echo go > '"$TMP/started3"'; while :; do sleep 0.05; done' 2>"$TMP/run3.err" &
RUN=$!
BG+=("$RUN")
read -r _ <"$TMP/started3"
kill -TERM "$RUN"
read -t 10 -r _ <>"$TMP/term3" || fail "CMD did not get the SIGTERM sent to pkgctl run"
out=$("$PKGCTL" clients --json)
has "$out" "\"pid\":$RUN" "clients while CMD finishes after pkgctl's SIGTERM"
has "$out" '"name":"app"' "clients while CMD finishes after pkgctl's SIGTERM"
touch "$TMP/go3"
rc=0; wait "$RUN" || rc=$?
[ "$rc" -eq 7 ] || fail "run sent SIGTERM exited $rc, want CMD's 7"
has "$(cat "$TMP/run3.err")" '{"name":"app","cancelled":false,"cause":null,"exit":7}' "run report"
# A CMD that ignores it gets SIGKILL after the grace.
mkfifo "$TMP/started4"
"$PKGCTL" run app --grace 0.2 -- sh -c 'trap "" TERM; echo go > '"$TMP/started4"'; while :; do sleep 0.05; done' \
  2>/dev/null &
RUN=$!
BG+=("$RUN")
read -r _ <"$TMP/started4"
kill -TERM "$RUN"
rc=0; wait "$RUN" || rc=$?
[ "$rc" -eq 137 ] || fail "run sent SIGTERM, CMD ignoring it: exited $rc, want 137 (SIGKILL after the grace)"
# pkgctl killed outright (its lease ends with it): CMD is killed too, not left to run unleased.
mkfifo "$TMP/started5"
"$PKGCTL" run app -- sh -c 'trap "" TERM; echo $$ > '"$TMP/started5"'; while :; do sleep 0.05; done' 2>/dev/null &
RUN=$!
BG+=("$RUN")
read -r cmd_pid <"$TMP/started5"
BG+=("$cmd_pid")
kill -KILL "$RUN"
wait "$RUN" 2>/dev/null || true
for _ in $(seq 500); do exited "$cmd_pid" && break; sleep 0.01; done
exited "$cmd_pid" || fail "pkgctl run killed with SIGKILL left its command (pid $cmd_pid) running"

# pkgctl wait is a registered worker: clients shows what it waits on (WAITS), and a wait killed
# with SIGKILL leaves no count behind: the next writes make no futex wake (the dump's "wakes").
wakes() { "$PKGCTL" dump --json | sed -n 's/.*"wakes":\([0-9]*\).*/\1/p'; }
"$PKGCTL" wait "$("$PKGCTL" token app)" --timeout 60 >/dev/null &
WAITER=$!
BG+=("$WAITER")
for _ in $(seq 500); do "$PKGCTL" clients | grep -q "^$WAITER .* app/0\$" && break; sleep 0.01; done
"$PKGCTL" clients | grep -q "^$WAITER .* app/0\$" || fail "clients lacks the wait of $WAITER: $("$PKGCTL" clients)"
has "$("$PKGCTL" clients)" "WAITS" "clients table"
kill -KILL "$WAITER"
wait "$WAITER" 2>/dev/null || true
for _ in $(seq 500); do "$PKGCTL" clients | grep -q "^$WAITER " || break; sleep 0.01; done
"$PKGCTL" clients | grep -q "^$WAITER " && fail "the killed waiter $WAITER is still a client"
before=$(wakes)
"$PKGCTL" update app 4 >/dev/null
[ "$(wakes)" = "$before" ] || fail "a write after the killed wait made a futex wake ($before -> $(wakes))"

"$PKGCTL" event remove app >/dev/null
out=$("$PKGCTL" delete app --drain 1)
has "$out" '"deleted":true,"in_flight":0,"drained":true'
echo "task_drain: ok"
