#!/usr/bin/env bash
# Runs every libFuzzer target built in BUILD_DIR for SECONDS each, seeded from
# tests/fuzz/corpus/<target>/. Fails on the first finding (crash, sanitizer report, leak, timeout
# or out-of-memory); the reproducer lands in BUILD_DIR/tests/fuzz/artifacts/.
# Usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]
set -euo pipefail
BUILD_DIR=$(cd "${1:?usage: $0 BUILD_DIR [SECONDS]}" && pwd)
SECONDS_EACH=${2:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="$BUILD_DIR/tests/fuzz"
mkdir -p "$OUT/artifacts"

targets=()
for bin in "$OUT"/fuzz_*; do
  [ -x "$bin" ] && [ -f "$bin" ] && targets+=("$bin")
done
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets in $OUT (configure with -DPKGCTX_FUZZ=ON)" >&2; exit 1; }

summary=()
status=0
for bin in "${targets[@]}"; do
  name=$(basename "$bin")
  target=${name#fuzz_}
  seeds="$HERE/corpus/$target"
  work="$OUT/corpus/$target"  # grows across runs; the repository's seeds stay untouched
  mkdir -p "$work"
  dict=()
  case "$target" in settings|protocol) dict=(-dict="$HERE/json.dict") ;; esac
  log="$OUT/$target.log"
  echo "==> fuzzing $target for ${SECONDS_EACH}s" >&2
  rc=0
  "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$OUT/artifacts/$target-" "${dict[@]}" "$work" "$seeds" >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  rate=$(( ${runs:-0} / ( ${secs:-1} > 0 ? ${secs:-1} : 1 ) ))
  if [ "$rc" -ne 0 ]; then
    status=1
    summary+=("$(printf '%-10s FAILED (exit %s): see %s and %s/artifacts/' "$target" "$rc" "$log" "$OUT")")
    grep -E 'ERROR|SUMMARY|fuzz_[a-z]*:|==[0-9]+==' "$log" | head -20 >&2 || true
  else
    summary+=("$(printf '%-10s ok: %s runs, %s exec/s, coverage %s edges, corpus %s files' "$target" "${runs:-?}" "$rate" "${cov:-?}" "$(ls "$work" | wc -l)")")
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
