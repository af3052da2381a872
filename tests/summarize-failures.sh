#!/usr/bin/env bash
# Prints, for each test a ctest run in BUILD_DIR failed, what says why: the end of each failed
# gtest case (its narrative lines, failure messages and guest FAIL lines), or, for a test that
# failed outside a case (a timeout, a crash, a sanitizer report), the end of its output. Bounded
# per test: run-all.sh calls it last, so that the end of a CI log, which is often all that is
# kept, names the cause and not only the failing test.
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
  section=$(awk -v name="$name" '
    $0 ~ "Testing: " name "$" { inside = 1; next }
    inside && /^Test (Passed|Failed)/ { inside = 0 }
    inside { print }
  ' "$log")
  # Each failed case: the last 15 lines up to its [ FAILED ] (a CI log keeps its last lines only).
  cases=$(awk '
    /^\[ RUN      \] / { n = 0 }
    { block[n++] = $0 }
    /^\[  FAILED  \] .*\([0-9]+ ms\)$/ { start = (n > 15) ? n - 15 : 0; for (i = start; i < n; i++) print block[i]; n = 0 }
  ' <<<"$section")
  if [[ -n $cases ]]; then
    head -n 30 <<<"$cases"
  else
    tail -n 20 <<<"$section"
  fi
done <"$failed"
