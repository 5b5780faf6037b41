#!/usr/bin/env bash
# Runs the benchmarks of DESIGN.md §8 and writes the report.
# Usage: bench/run.sh BUILD_DIR REPORT_DIR   (./build.sh bench: build-bench build/bench)
#
# Environment: BENCH_REPETITIONS (default 5), BENCH_WAKES (default 3000), BENCH_REQUESTS (20000
# sequential), BENCH_PIPELINED (200000), BENCH_FILTER (a Google Benchmark regex; default all),
# BENCH_SPAWNS (300 fresh pkgctl and C-client processes), BENCH_E2E_WAKES (1000 requests → wakes),
# BENCH_FANOUT_N (1000 blocked workers), BENCH_FANOUT_ROUNDS (15 cancels, and as many raw broadcasts),
# BENCH_COMPARE_ROUNDS (3 D-Bus and inotify broadcasts), BENCH_NOTIFY1_ROUNDS (200 single wakes per
# mechanism), BENCH_DAEMON_CHECKS (2000 need_update round trips), BENCH_INOTIFY_N (default a quarter
# of fs.inotify.max_user_instances).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run.sh BUILD_DIR REPORT_DIR}
out=${2:?usage: run.sh BUILD_DIR REPORT_DIR}
mkdir -p "$out"
build=$(cd "$build" && pwd)
out=$(cd "$out" && pwd)

micro=$build/bench/pkgctx_micro_bench
ipc=$build/bench/pkgctx_ipc_bench
flood=$build/bench/pkgctx_flood_bench
e2e=$build/bench/pkgctx_e2e_bench
task=$build/bench/pkgctx_task_bench
drain=$build/bench/pkgctx_drain_bench
fanout=$build/bench/pkgctx_fanout_bench
daemon=$build/daemon/pkgctxd
for exe in "$micro" "$ipc" "$flood" "$e2e" "$task" "$drain" "$fanout"; do
  [ -x "$exe" ] || { echo "run.sh: $exe is missing (is libbenchmark-dev installed?)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "run.sh: python3 is needed for the report" >&2; exit 1; }

# The segments live in a runtime directory only we can write (DESIGN §4.1); a private one here.
if [ -z "${PKGCTX_RUNTIME_DIR:-}" ]; then
  PKGCTX_RUNTIME_DIR=$(mktemp -d /dev/shm/pkgctx-bench.XXXXXX)
  chmod 0755 "$PKGCTX_RUNTIME_DIR"
  export PKGCTX_RUNTIME_DIR
  trap 'rm -rf "$PKGCTX_RUNTIME_DIR"' EXIT
fi

load=$(cat /proc/loadavg)
echo "==> load average before: $load ($(nproc) CPUs)" >&2

echo "==> in-process benchmarks (Google Benchmark, ${BENCH_REPETITIONS:-5} repetitions, medians)" >&2
"$micro" --benchmark_repetitions="${BENCH_REPETITIONS:-5}" --benchmark_report_aggregates_only=true \
  --benchmark_filter="${BENCH_FILTER:-.}" \
  --benchmark_out="$out/micro.json" --benchmark_out_format=json >"$out/micro.txt" 2>"$out/micro.err" || {
  cat "$out/micro.err" >&2
  exit 1
}
grep -E '_median|^Run on|^Load' "$out/micro.txt" >&2 || true

echo "==> cross-process benchmarks (wake, futex floor, socket echo, daemon socket)" >&2
"$ipc" --wakes "${BENCH_WAKES:-3000}" --requests "${BENCH_REQUESTS:-20000}" --pipelined "${BENCH_PIPELINED:-200000}" \
  --daemon "$daemon" --daemon-log "$out/pkgctxd.log" --out "$out/ipc.json"

echo "==> dump of 100k packages (pkgctl peak RSS, daemon RSS), write latency under dump flood (root's update vs 6 readers pipelining dumps)" >&2
PKGCTXD=$daemon PKGCTL=$build/tools/pkgctl "$flood" --benchmark_out="$out/flood.json" --benchmark_out_format=json >"$out/flood.txt" 2>"$out/flood.err" || {
  cat "$out/flood.err" >&2
  exit 1
}
grep -E '^update_' "$out/flood.txt" >&2 || true

echo "==> end to end (a fresh pkgctl update vs a minimal C client; request -> worker awake after 2 ms idle)" >&2
"$e2e" --daemon "$daemon" --pkgctl "$build/tools/pkgctl" --min-client "$build/bench/pkgctx_min_client" \
  --spawns "${BENCH_SPAWNS:-300}" --wakes "${BENCH_E2E_WAKES:-1000}" --daemon-log "$out/pkgctxd-e2e.log" --out "$out/e2e.json"

echo "==> tasks (begin+end against the acquire-load floor) and drain (last holder ends -> answer)" >&2
"$task" --benchmark_repetitions="${BENCH_REPETITIONS:-5}" --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/task.json" --benchmark_out_format=json >"$out/task.txt" 2>"$out/task.err" || {
  cat "$out/task.err" >&2
  exit 1
}
grep -E '_median' "$out/task.txt" >&2 || true
"$drain" --benchmark_out="$out/drain.json" --benchmark_out_format=json >"$out/drain.txt" 2>"$out/drain.err" || {
  cat "$out/drain.err" >&2
  exit 1
}
grep -E '^drain_' "$out/drain.txt" >&2 || true

echo "==> one cancel waking ${BENCH_FANOUT_N:-1000} workers vs a raw futex broadcast; the comparison (daemon per check, D-Bus, inotify)" >&2
inotify_n=()
[ -n "${BENCH_INOTIFY_N:-}" ] && inotify_n=(--inotify-n "$BENCH_INOTIFY_N")
"$fanout" --n "${BENCH_FANOUT_N:-1000}" --rounds "${BENCH_FANOUT_ROUNDS:-15}" --compare-rounds "${BENCH_COMPARE_ROUNDS:-3}" \
  --notify1-rounds "${BENCH_NOTIFY1_ROUNDS:-200}" --daemon-checks "${BENCH_DAEMON_CHECKS:-2000}" "${inotify_n[@]}" \
  --out "$out/fanout.json" 2>"$out/fanout.err" || echo "==> the fan-out bench failed: its rows show why" >&2
grep -vE '^  round ' "$out/fanout.err" >&2 || true

etcd_args=()
if [ -x "$build/bench/pkgctx_etcd_bench" ] && command -v etcd >/dev/null; then
  echo "==> etcd put -> blocked worker awake, beside etcd's own watch latency (same run)" >&2
  "$build/bench/pkgctx_etcd_bench" --samples "${BENCH_ETCD_SAMPLES:-300}" --out "$out/etcd.json" >&2
  etcd_args=(--etcd "$out/etcd.json")
fi

load_after=$(cat /proc/loadavg)
echo "==> load average after: $load_after" >&2
echo >&2
python3 "$here/report.py" --micro "$out/micro.json" --ipc "$out/ipc.json" --flood "$out/flood.json" --e2e "$out/e2e.json" \
  --task "$out/task.json" --drain "$out/drain.json" --fanout "$out/fanout.json" \
  "${etcd_args[@]}" --out "$out/report.json" \
  --svg "$out/wake_latency.svg" --load "before: $load; after: $load_after; $(nproc) CPUs"
