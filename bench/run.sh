#!/usr/bin/env bash
# The one benchmark command (docs/performance.md): installs what is needed, starts libvirtd,
# builds in build-bench/, runs the engine micro-benchmarks and the harness (every configuration,
# 1 and 2 vCPUs), and writes bench-results/{results.md,results.json,cycles.svg,micro.json}.
#   bash bench/run.sh [tprd_bench options, e.g. --rounds 5 --only unpatched,mmio]
# Run as root on a quiet machine; one run takes about 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || {
  echo "bench/run.sh: run as root (qemu:///system)" >&2
  exit 1
}
build=${TPRD_BENCH_BUILD:-build-bench}
out=${TPRD_BENCH_OUT:-bench-results}
if [[ ${TPRD_BENCH_SKIP_SETUP:-0} != 1 ]]; then
  bash tests/install-deps.sh
  bash tests/setup-libvirt.sh
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target tprd tprctl tpr-test-guest tprd_bench tprd_micro_bench
mkdir -p "$out"
"$build/bench/tprd_micro_bench" --benchmark_out="$out/micro.json" --benchmark_out_format=json \
  --benchmark_min_time=0.2 | tee "$out/micro.txt"
# The harness destroys its domains itself (also when interrupted); this catches a harness that
# was killed outright. Only the bench uses the tprd-bench- prefix.
destroy_leftovers() {
  local status=$?  # the harness's; grep finding no leftover must not replace it
  virsh -q -c qemu:///system list --name 2>/dev/null | { grep '^tprd-bench-' || true; } |
    while read -r name; do virsh -q -c qemu:///system destroy "$name" >/dev/null 2>&1 || true; done
  exit "$status"
}
trap destroy_leftovers EXIT
"$build/bench/tprd_bench" --out "$out" "$@"
