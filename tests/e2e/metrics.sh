#!/usr/bin/env bash
# `pkgctl metrics` and the metrics op against a real pkgctxd (DESIGN §6): writes, a task, drains
# and a sleeping waiter, then the exposition is parsed by python3-prometheus-client's OpenMetrics
# parser (strict: TYPE/UNIT/HELP, counters' _total, histogram buckets, # EOF) and every value
# checked against what was done. With the daemon stopped, pkgctl still prints the segment's
# families (its liveness: stopped).
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}"
PKGCTL=$PKGCTX_BIN/tools/pkgctl
PKGCTXD=$PKGCTX_BIN/daemon/pkgctxd
# Debian's python3-prometheus-client lives in the system interpreter, which a python3 earlier on
# PATH (a virtualenv, pyenv) may not see.
PY=
for p in python3 /usr/bin/python3; do
  "$p" -c 'import prometheus_client.openmetrics.parser' 2>/dev/null && { PY=$p; break; }
done
[ -n "$PY" ] || { echo "metrics: python3-prometheus-client missing (./build.sh deps)" >&2; exit 77; }

TMP=$(mktemp -d)
export PKGCTX_SEGMENT=metrics-e2e-$$ PKGCTX_SOCKET=$TMP/s.sock PKGCTX_RUNTIME_DIR=$TMP/run
DAEMON=
BG=()
cleanup() {
  for p in "${BG[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -n "$DAEMON" ] && { kill -TERM "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "metrics: FAIL: $*" >&2; exit 1; }

. "$(dirname "$0")/../support/e2e_daemon.sh"
start_pkgctxd --config /dev/null --heartbeat-ms 100 --capacity 64

# The checker: `value NAME [LABEL=VALUE…]` prints the sample's value from an exposition on stdin,
# after parsing the whole text with the OpenMetrics parser (any format error fails here).
cat >"$TMP/om.py" <<'PY'
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
families = {f.name: f for f in text_string_to_metric_families(text)}
if sys.argv[1] == "families":
    print(" ".join(sorted(families)))
    sys.exit(0)
name, want = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
for f in families.values():
    for s in f.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in want.items()):
            v = s.value
            print(int(v) if v == int(v) else v)
            sys.exit(0)
sys.exit("no sample %s %s" % (name, want))
PY
scrape() { "$PKGCTL" metrics >"$TMP/m.txt" || fail "pkgctl metrics exited $?"; }
value() { "$PY" "$TMP/om.py" "$@" <"$TMP/m.txt"; }
expect() {  # expect WANT NAME [LABELS…]
  local want=$1 got
  shift
  got=$(value "$@") || fail "$(cat "$TMP/m.txt")"
  [ "$got" = "$want" ] || fail "$* is $got, want $want"
}

# Writes: 5 packages created (one with settings), a version change, a reschedule, an event
# with a caller-named cause, an event on a missing package (cancels nothing), a refused write.
for i in 1 2 3 4; do "$PKGCTL" update "pkg$i" 1 >/dev/null; done
"$PKGCTL" update app 1 --settings '{"threads":4}' >/dev/null
"$PKGCTL" update app 2 --settings '{"threads":4}' >/dev/null
"$PKGCTL" event schedule app >/dev/null
"$PKGCTL" event update pkg1 --cause operator_restart >/dev/null
"$PKGCTL" event update missing >/dev/null
rc=0; "$PKGCTL" update 'bad name' 1 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 5 ] || fail "a refused update exited $rc, want 5"

scrape
grep -qx '# EOF' "$TMP/m.txt" || fail "no '# EOF' line"
expect 5 pkgctx_packages
expect 64 pkgctx_segment_capacity
[ "$(value pkgctx_segment_settings_used_bytes)" -gt 0 ] || fail "settings bytes used is 0 after settings were stored"
[ "$(value pkgctx_segment_settings_bytes)" -ge "$(value pkgctx_segment_settings_used_bytes)" ] || fail "settings used > total"
expect 8 pkgctx_segment_commits_total   # 5 creations, a version change, two events
expect 0 pkgctx_segment_repairs_total
expect 0 pkgctx_segment_wakes_total   # nobody waited: no writer made a wake syscall
expect 1 pkgctx_segment_info segment="$PKGCTX_SEGMENT" state=live
expect 1 pkgctx_daemon_liveness pkgctx_daemon_liveness=alive
expect 0 pkgctx_daemon_liveness pkgctx_daemon_liveness=stopped
expect 6 pkgctx_requests_total op=update result=ok
expect 1 pkgctx_requests_total op=update result=invalid_name
expect 3 pkgctx_requests_total op=event result=ok
expect 1 pkgctx_cancellations_total cause=version_changed
expect 1 pkgctx_cancellations_total cause=rescheduled
expect 1 pkgctx_cancellations_total cause=operator_restart
value pkgctx_cancellations_total cause=update_event >/dev/null 2>&1 && fail "an event on a missing package was counted"
expect 0 pkgctx_workers
expect 0 pkgctx_waiters
age=$(value pkgctx_daemon_heartbeat_age_seconds)
python3 -c "import sys; sys.exit(not 0 <= $age < 5)" || fail "heartbeat age $age s"
python3 -c "import sys; sys.exit(not 0 < $(value pkgctx_daemon_uptime_seconds) < 300)" || fail "uptime"
[ "$(value pkgctx_connections_accepted_total)" -ge 12 ] || fail "fewer connections accepted than requests sent"

# A task holding app's context, cancelled by a version change: a lease, a timed-out drain, then a
# drain that ends when the task does.
mkfifo "$TMP/started"
# The command ignores SIGTERM (an ignored signal stays ignored across exec), so its task holds
# the cancelled context until it is killed.
"$PKGCTL" run app --grace 30 -- sh -c 'trap "" TERM; echo $$ > '"$TMP/started"'; exec sleep 60' 2>/dev/null &
RUN=$!
BG+=("$RUN")
read -r task_pid <"$TMP/started"
BG+=("$task_pid")
scrape
expect 1 pkgctx_workers
expect 1 pkgctx_leases state=live
expect 0 pkgctx_leases state=cancelled
"$PKGCTL" update app 3 >/dev/null
scrape
expect 1 pkgctx_leases state=cancelled
rc=0; "$PKGCTL" drain app --timeout 0.05 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 124 ] || fail "drain of a held context exited $rc, want 124"
kill -KILL "$task_pid"  # the command ends, and with it the task
"$PKGCTL" drain app --timeout 10 >/dev/null || fail "drain after the task ended"
wait "$RUN" || true
scrape
expect 1 pkgctx_drains_total outcome=timed_out
expect 1 pkgctx_drains_total outcome=drained
expect 2 pkgctx_drain_duration_seconds_count
expect 2 pkgctx_drain_duration_seconds_bucket le=+Inf
# The timed-out drain waited its 50 ms: it is in no bucket up to 10 ms, and in the sum.
[ "$(value pkgctx_drain_duration_seconds_bucket le=0.01)" -le 1 ] || fail "a 50 ms drain counted up to 10 ms"
"$PY" -c "import sys; sys.exit(not $(value pkgctx_drain_duration_seconds_sum) >= 0.05)" || fail "drain duration sum"
expect 0 pkgctx_drains_pending
expect 2 pkgctx_cancellations_total cause=version_changed

# A sleeping waiter is counted by the daemon until its token is cancelled.
token=$("$PKGCTL" token pkg2)
"$PKGCTL" wait "$token" --timeout 60 >/dev/null &
WAITER=$!
BG+=("$WAITER")
for _ in $(seq 500); do scrape; [ "$(value pkgctx_waiters)" = 1 ] && break; sleep 0.02; done
expect 1 pkgctx_waiters
"$PKGCTL" event update pkg2 >/dev/null
wait "$WAITER" || fail "the waiter did not wake"
for _ in $(seq 500); do scrape; [ "$(value pkgctx_waiters)" = 0 ] && break; sleep 0.02; done
expect 0 pkgctx_waiters

# The op itself: one JSON line, the same text format.
python3 - "$PKGCTX_SOCKET" >"$TMP/op.txt" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"op":"metrics","id":7}\n')
line = s.makefile("rb").readline()
a = json.loads(line)
assert a["ok"] and a["id"] == 7, a
assert a["content_type"].startswith("application/openmetrics-text"), a["content_type"]
sys.stdout.write(a["text"])
PY
cp "$TMP/op.txt" "$TMP/m.txt"
expect 2 pkgctx_cancellations_total cause=version_changed
expect 1 pkgctx_cancellations_total cause=update_event
expect 5 pkgctx_packages

# Daemon stopped: the segment's families only, liveness stopped, a note on stderr, exit 0.
kill -TERM "$DAEMON"
wait "$DAEMON" || fail "pkgctxd exited $? on SIGTERM"
DAEMON=
"$PKGCTL" metrics >"$TMP/m.txt" 2>"$TMP/err" || fail "pkgctl metrics without a daemon exited $?"
grep -q "only the segment's metrics" "$TMP/err" || fail "no note on stderr: $(cat "$TMP/err")"
expect 1 pkgctx_daemon_liveness pkgctx_daemon_liveness=stopped
expect 5 pkgctx_packages
value pkgctx_requests_total op=update result=ok >/dev/null 2>&1 && fail "daemon families printed without a daemon"
echo "metrics: ok"
