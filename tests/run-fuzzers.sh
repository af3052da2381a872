#!/usr/bin/env bash
# The longer fuzz run of docs/reliability.md: every libFuzzer target of the sanitizer build
# (build-asan, as tests/run-all.sh makes it) for SECONDS each, PARALLEL at a time, each from an
# empty corpus of its own. Prints each target's final libFuzzer stats; exits non-zero if any
# target found a crash, a leak, a timeout or a sanitizer report (its reproducer is kept in
# OUT/<target>/).
#   tests/run-fuzzers.sh [SECONDS=300] [PARALLEL=2] [OUT=/tmp/tprd-fuzz]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
parallel=${2:-2}
out=${3:-/tmp/tprd-fuzz}
build=build-asan
if [[ ! -f $build/CTestTestfile.cmake ]]; then
  echo "run-fuzzers: no $build; run tests/run-all.sh (or its sanitizer build step) first" >&2
  exit 2
fi
mapfile -t targets < <(find "$build" -type f -executable -name '*_fuzz' | sort)
if ((${#targets[@]} == 0)); then
  echo "run-fuzzers: no *_fuzz targets in $build (configured without -DTPRD_FUZZ=ON?)" >&2
  exit 2
fi
mkdir -p "$out"
echo "run-fuzzers: ${#targets[@]} targets, ${seconds} s each, ${parallel} at a time, in $out"

run_one() {
  local binary=$1 name
  name=$(basename "$binary")
  mkdir -p "$out/$name/corpus"
  if (cd "$out/$name" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "$OLDPWD/$binary" corpus -max_total_time="$seconds" -rss_limit_mb=2048 \
      -print_final_stats=1 > log 2>&1); then
    echo "$name: ok, $(grep -m1 'stat::number_of_executed_units' "$out/$name/log" |
      awk '{print $2}') execs, corpus $(find "$out/$name/corpus" -type f | wc -l) inputs," \
      "$(grep -Eo 'cov: [0-9]+' "$out/$name/log" | tail -1)"
  else
    echo "$name: FAILED, see $out/$name/log"
    grep -E 'ERROR|SUMMARY|Test unit written' "$out/$name/log" | head -5
    return 1
  fi
}

status=0
running=0
pids=()
for binary in "${targets[@]}"; do
  run_one "$binary" &
  pids+=($!)
  running=$((running + 1))
  if ((running >= parallel)); then
    wait -n || status=1
    running=$((running - 1))
  fi
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done
exit $status
