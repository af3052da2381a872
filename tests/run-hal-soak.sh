#!/usr/bin/env bash
# The HAL-shaped guest's seed soak (not part of the README test command): boots it with COUNT
# random seeds (2 vCPUs each, about 6 s a seed) and checks every CPU's counters, as
# hal_guest_boot_test's RandomSeed case does. A failing seed is printed; replay it with
# TPRD_HAL_SEED=N build/tests/hal-guest/hal_guest_boot_test --gtest_filter='*RandomSeed*'.
#   bash tests/run-hal-soak.sh [COUNT] [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-50}
build=${2:-build}
test_binary=$build/tests/hal-guest/hal_guest_boot_test
[[ -x $test_binary ]] || cmake --build "$build" --target hal_guest_boot_test
failed=()
for ((i = 0; i < count; i++)); do
  seed=$(((RANDOM << 15 | RANDOM) % 1000000 + 4))
  if ! TPRD_HAL_SEED=$seed "$test_binary" --gtest_filter='*RandomSeed*' >"/tmp/hal-soak-$seed.log" 2>&1; then
    echo "seed $seed FAILED (log: /tmp/hal-soak-$seed.log)"
    failed+=("$seed")
  else
    rm -f "/tmp/hal-soak-$seed.log"
  fi
done
echo "$((count - ${#failed[@]})) passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
