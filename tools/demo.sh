#!/usr/bin/env bash
# tools/demo.sh BUILD_DIR — pkgctx end to end, narrated (run it with `./build.sh demo`).
#
# Starts pkgctxd on a private segment and socket, starts worker processes (BUILD_DIR/tools/
# pkgctx-demo-worker, written against the worker SDK) that run tasks under contexts, drives the
# daemon with pkgctl — version updates, a settings-only update, enable/disable through
# `schedule`, remove, delete — and shows each worker stopping with its cause and the latency from
# pkgctl sending the change to the worker waking (both stamped with CLOCK_REALTIME).
#
# Ends by itself in a few seconds and leaves no segment, socket or process behind (checked on
# exit). Environment: PKGCTX_DEMO_SEGMENT overrides the private segment name (tests use it).
set -euo pipefail

BUILD=${1:?usage: tools/demo.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
PKGCTXD=$BUILD/daemon/pkgctxd
PKGCTL=$BUILD/tools/pkgctl
WORKER=$BUILD/tools/pkgctx-demo-worker
for bin in "$PKGCTXD" "$PKGCTL" "$WORKER"; do
  [ -x "$bin" ] || { echo "demo: $bin is missing: build first (./build.sh)" >&2; exit 1; }
done

SEG=${PKGCTX_DEMO_SEGMENT:-pkgctx-demo-$$}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/pkgctx-demo.XXXXXX")
SOCK=$DIR/pkgctxd.sock
# The segment's runtime directory (DESIGN §4.1): a private one, made by pkgctxd.
export PKGCTX_SEGMENT=$SEG PKGCTX_SOCKET=$SOCK PKGCTX_RUNTIME_DIR=$DIR/run

if [ -t 1 ]; then B=$'\e[1m' D=$'\e[2m' G=$'\e[32m' Y=$'\e[33m' R=$'\e[0m'; else B='' D='' G='' Y='' R=''; fi

DAEMON_PID=
declare -A WPID=() SHOWN=()
LATENCIES=()

# --- cleanup: every exit path stops what we started and removes what we created -------------
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${WPID[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${WPID[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  # pkgctxd leaves its segment for workers and the next daemon; this one was private (in $DIR).
  rm -rf "$DIR"
  local left=()
  for p in "$DAEMON_PID" "${WPID[@]}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && left+=("process $p"); done
  for p in "$PKGCTX_RUNTIME_DIR" "$SOCK"; do [ -e "$p" ] && left+=("$p"); done
  if [ ${#left[@]} -gt 0 ]; then
    echo "demo: left behind: ${left[*]}" >&2
    [ "$rc" -eq 0 ] && rc=1
  elif [ "$rc" -eq 0 ]; then
    echo
    echo "${G}Cleaned up: daemon and workers stopped; segment $SEG and socket removed.${R}"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "demo: $*" >&2; exit 1; }

# --- narration helpers ------------------------------------------------------------------------
scene() { echo; echo "${B}== $*${R}"; }
say() { echo "$*"; }

# Shell-quotes an argument only when it needs it (for display).
shown() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9._:/=-]+$ ]]; then out+=("$a"); else out+=("'$a'"); fi
  done
  echo "${out[*]}"
}

# ctl ARGS… — runs pkgctl, shows the command and its output. Sets OUT, RC and SENT (when pkgctl
# sent the request, CLOCK_REALTIME ns; writes only). A failure other than the expected exit
# codes of `check` ends the demo. ANSWERED: when pkgctl had the daemon's answer.
ctl() {
  echo "  ${D}\$${R} pkgctl $(shown "$@")"
  RC=0
  OUT=$("$PKGCTL" --timing "$@" 2>"$DIR/ctl.err") || RC=$?
  SENT=$(sed -n 's/.*sent_realtime_ns=\([0-9]*\).*/\1/p' "$DIR/ctl.err")
  ANSWERED=$(sed -n 's/.*answered_realtime_ns=\([0-9]*\).*/\1/p' "$DIR/ctl.err")
  [ -z "$OUT" ] || printf '%s\n' "$OUT" | sed 's/^/    /'
  grep -v '^pkgctl: timing' "$DIR/ctl.err" | sed 's/^/    /' >&2 || true
  if [ "$RC" -ne 0 ] && ! { [ "$1" = check ] && [ "$RC" -eq 1 ]; }; then die "pkgctl $1 failed with exit $RC"; fi
  [ "$1" = check ] && echo "    ${D}(exit $RC: $([ "$RC" -eq 0 ] && echo live || echo cancelled))${R}"
  return 0
}

# The "context" field of the last pkgctl output.
context() { sed -n 's/.*"context":"\([^"]*\)".*/\1/p' <<<"$OUT"; }

# Prints the lines of worker ID's log that were not shown yet (without RESULT lines).
show_log() {
  local id=$1 n
  n=$(wc -l <"$DIR/$id.log")
  sed -n "$((${SHOWN[$id]:-0} + 1)),${n}p" "$DIR/$id.log" | grep -v '^RESULT' | sed "s/^/    ${Y}/; s/\$/${R}/" || true
  SHOWN[$id]=$n
}

# wait_line FILE REGEX SECONDS — a real condition, bounded.
wait_line() {
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.01
  done
}

# exited PID: the process has ended (gone, or a zombie its new parent has yet to reap).
exited() {
  local st
  st=$(ps -o stat= -p "$1") || return 0
  [[ $st == Z* ]]
}

# worker ID LABEL NAME (--token T | --event E) [--work S] — starts a worker and returns once it
# holds its token and works.
worker() {
  local id=$1 label=$2 name=$3
  shift 3
  "$WORKER" --segment "$SEG" --label "$label" --name "$name" "$@" >"$DIR/$id.log" 2>&1 &
  WPID[$id]=$!
  wait_line "$DIR/$id.log" '\] working\|^RESULT' 5 || die "worker '$label' did not start: $(cat "$DIR/$id.log")"
  show_log "$id"
}

# stopped ID — waits (≤ 5 s) for worker ID to stop after the last change, shows its cause and
# the latency from pkgctl sending the change (SENT) to the worker waking.
stopped() {
  local id=$1 result cause woke us
  wait_line "$DIR/$id.log" '^RESULT' 5 || die "worker $id did not stop within 5 s"
  wait "${WPID[$id]}" 2>/dev/null || true
  unset "WPID[$id]"
  show_log "$id"
  result=$(grep '^RESULT' "$DIR/$id.log")
  read -r _ _ cause woke <<<"$result"
  [ -n "$woke" ] || die "worker $id: $result"
  us=$(awk -v a="$woke" -v b="$SENT" 'BEGIN { printf "%.1f", (a - b) / 1000 }')
  rt=$(awk -v a="$ANSWERED" -v b="$SENT" 'BEGIN { printf "%.1f", (a - b) / 1000 }')
  LATENCIES+=("$us")
  echo "    ${G}-> stopped: cause ${B}$cause${R}${G}, woke $us µs after pkgctl sent the change (its answer: $rt µs)${R}"
}

# finished ID — waits for worker ID to complete its task normally.
finished() {
  local id=$1
  wait_line "$DIR/$id.log" '^RESULT' 10 || die "worker $id did not finish"
  wait "${WPID[$id]}" 2>/dev/null || true
  unset "WPID[$id]"
  show_log "$id"
}

still_running() {
  local id=$1
  kill -0 "${WPID[$id]}" 2>/dev/null || die "worker $id stopped unexpectedly: $(cat "$DIR/$id.log")"
  grep -q '^RESULT' "$DIR/$id.log" && die "worker $id stopped unexpectedly: $(cat "$DIR/$id.log")"
  echo "    ${G}-> $(sed -n 's/^\[\([^]]*\)\].*/\1/p' "$DIR/$id.log" | head -1): still working${R}"
}

# --- the demo ---------------------------------------------------------------------------------
scene "Start pkgctxd on a private segment"
say "segment $SEG, socket $SOCK"
: >"$DIR/pkgctxd.conf"   # an empty config: only defaults and flags, whatever /etc holds
"$PKGCTXD" --config "$DIR/pkgctxd.conf" --segment "$SEG" --socket "$SOCK" --heartbeat-ms 250 \
  >"$DIR/pkgctxd.log" 2>&1 &
DAEMON_PID=$!
# Ready when the segment says the daemon runs (it marks itself after the socket listens).
deadline=$((SECONDS + 10))
until [ -S "$SOCK" ] && "$PKGCTL" dump --json 2>/dev/null | grep -q '"liveness":"alive"'; do
  kill -0 "$DAEMON_PID" 2>/dev/null || die "pkgctxd exited: $(cat "$DIR/pkgctxd.log")"
  [ $SECONDS -lt $deadline ] || die "pkgctxd not ready after 10 s: $(cat "$DIR/pkgctxd.log")"
  sleep 0.02
done
say "pkgctxd is up (pid $DAEMON_PID)."

scene "1. Deploy, and a newer version cancels it"
say "The controller creates two packages; each Update returns the root context of its deploy task."
ctl update web 1.0 --settings '{"image":"web:1.0","replicas":2}'
worker deploy1 "deploy web 1.0" web --token "$(context)" --work 30
ctl update db 14.2 --settings '{"pool":10}'
worker deploydb "deploy db 14.2" db --token "$(context)" --work 1
say "web 1.1 is released while web 1.0 is still deploying:"
ctl update web 1.1 --settings '{"image":"web:1.1","replicas":2}'
stopped deploy1
worker deploy2 "deploy web 1.1" web --token "$(context)" --work 30
say "db's deploy was left alone and completes:"
finished deploydb

scene "2. A settings-only update: no cancellation, settings read late"
ctl update web 1.1 --settings '{"image":"web:1.1","replicas":3}'
say "Same version: no new context (\"context\":null), the deploy goes on."
still_running deploy2
say "The controller reschedules: enable runs under a child context (key schedule)."
ctl event schedule web
ENABLE_TOKEN=$(context)
say "Before the enable task starts, replicas changes again:"
ctl update web 1.1 --settings '{"image":"web:1.1","replicas":4}'
worker enable1 "enable web" web --token "$ENABLE_TOKEN" --work 30
say "The task read the settings when it started: replicas 4, the latest (late binding)."

scene "3. Disable while enabling: both go through \"schedule\""
ctl event schedule web
stopped enable1
worker disable1 "disable web" web --token "$(context)" --work 30
say "The root context (the deploy) is untouched by child events:"
still_running deploy2

scene "4. Remove: the whole tree is cancelled"
ctl event remove web
REMOVE_SENT=$SENT REMOVE_ANSWERED=$ANSWERED CLEANUP_TOKEN=$(context)
stopped deploy2
SENT=$REMOVE_SENT ANSWERED=$REMOVE_ANSWERED
stopped disable1
say "A child cancelled through its root reports the root's cause. The removed package:"
ctl settings web
say "Remove returned the root context of the clean-up task:"
worker cleanup "clean up web" web --token "$CLEANUP_TOKEN" --work 30

say "The table now: web removed; root generation 2 (new version, remove), schedule key 2 at 2 (enable, disable):"
ctl dump

scene "5. Delete the removed package"
ctl delete web
stopped cleanup

scene "6. Acknowledged drain: update --drain returns once the old deploy task let go"
say "api 1.0 deploys under \`pkgctl run\` (a registered worker: its task holds a lease). On"
say "cancellation it gets SIGTERM and needs a moment to finish cleanly:"
ctl update api 1.0
"$PKGCTL" run api --grace 5 -- sh -c 'trap "echo \"[deploy api 1.0] SIGTERM: finishing the step\"; sleep 0.3; echo \"[deploy api 1.0] done\"; exit 0" TERM
  echo "[deploy api 1.0] working"; while :; do sleep 0.05; done' >"$DIR/run1.log" 2>&1 &
WPID[run1]=$!
wait_line "$DIR/run1.log" 'working' 5 || die "pkgctl run did not start: $(cat "$DIR/run1.log")"
show_log run1
ctl clients
T0=$(date +%s%N)
ctl update api 1.1 --drain 5
say "    ${G}-> update --drain answered after $(( ($(date +%s%N) - T0) / 1000000 )) ms, once the old task ended:${R}"
wait "${WPID[run1]}" || true
unset "WPID[run1]"
show_log run1

scene "7. A worker killed with kill -9 mid-task: its lease goes with it"
"$PKGCTL" run api -- sh -c 'echo $$ >'"$DIR/run2.sh.pid"'; echo "[deploy api 1.1] working"; trap "" TERM; while :; do sleep 0.05; done' \
  >"$DIR/run2.log" 2>&1 &
WPID[run2]=$!
wait_line "$DIR/run2.log" 'working' 5 || die "pkgctl run did not start: $(cat "$DIR/run2.log")"
WPID[run2sh]=$(cat "$DIR/run2.sh.pid")
show_log run2
"$PKGCTL" event update api >/dev/null
say "  ${D}\$${R} pkgctl drain api --timeout 0.2   ${D}(the task ignores SIGTERM and holds on)${R}"
"$PKGCTL" drain api --timeout 0.2 2>/dev/null | sed 's/^/    /' || true
say "kill -9 the worker (pid ${WPID[run2]}) mid-task; its command (pid ${WPID[run2sh]}) is killed with it:"
{ kill -KILL "${WPID[run2]}"; wait "${WPID[run2]}"; } 2>/dev/null || true
T0=$(date +%s%N)
ctl drain api --timeout 5
say "    ${G}-> drained $(( ($(date +%s%N) - T0) / 1000000 )) ms after the kill (heartbeat: 250 ms)${R}"
for _ in $(seq 500); do exited "${WPID[run2sh]}" && break; sleep 0.01; done
exited "${WPID[run2sh]}" || die "pkgctl run's command ${WPID[run2sh]} outlived it"
unset "WPID[run2]" "WPID[run2sh]"

scene "8. The daemon stops; reads still work"
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" || die "pkgctxd exited with $? on SIGTERM"
DAEMON_PID=
ctl dump
ctl need-update db 14.2 "$("$PKGCTL" checksum '{"pool":10}')"

scene "Wake latency, pkgctl send -> worker awake (socket round trip + daemon + futex wake)"
printf '%s\n' "${LATENCIES[@]}" | sort -n | awk '
  { v[NR] = $1 }
  END { printf "  %d cancellations: min %.1f µs, median %.1f µs, max %.1f µs\n", NR, v[1], v[int((NR + 1) / 2)], v[NR] }'
