#!/usr/bin/env bash
# Prints, for each test a ctest run in BUILD_DIR failed, the lines that say why (gtest's failure
# messages, sanitizer reports, timeouts), a bounded number per test. run-all.sh calls it last, so
# that the end of a CI log, which is often all that is kept, names the cause and not only the
# failing test.
set -uo pipefail
build=${1:?usage: summarize-failures.sh BUILD_DIR}
failed="$build/Testing/Temporary/LastTestsFailed.log"
log="$build/Testing/Temporary/LastTest.log"
[[ -s $failed && -f $log ]] || exit 0
echo "== why the tests in $build failed"
while IFS=: read -r _ name; do
  [[ -n $name ]] || continue
  echo "-- $name"
  # The test's own section of the log: from its "Testing: NAME" line to its result line.
  awk -v name="$name" '
    $0 ~ "Testing: " name "$" { inside = 1; next }
    inside && /^Test (Passed|Failed)|^Test time|Timeout/ { if (/Timeout/) print; inside = 0 }
    inside { print }
  ' "$log" |
    grep -E -A8 ': Failure$|ERROR: AddressSanitizer|runtime error:|^\[  FAILED  \]|Timeout|FAIL ' |
    grep -v -E '^\[ RUN|^\[       OK' | head -n 60
done <"$failed"
