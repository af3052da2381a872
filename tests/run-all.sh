#!/usr/bin/env bash
# The README test command: installs what is needed, builds tprd twice (normal, and clang with
# ASan+UBSan for the unit tests and fuzzers) and runs every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)

bash tests/install-deps.sh
if [[ -x tests/setup-libvirt.sh ]]; then
  bash tests/setup-libvirt.sh
fi

echo "== build (release, all targets)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTPRD_WERROR=ON
cmake --build build -j"$jobs"

echo "== build (clang, ASan+UBSan, unit tests and fuzzers)"
CC=clang CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DTPRD_UNIT_ONLY=ON -DTPRD_SANITIZE=ON -DTPRD_FUZZ=ON -DTPRD_WERROR=ON
cmake --build build-asan -j"$jobs"

# The test command owns this machine's libvirtd: let the integration test restart it mid-session
# (running domains survive that). Set TPRD_IT_RESTART_LIBVIRTD= (empty) to skip it elsewhere.
export TPRD_IT_RESTART_LIBVIRTD="${TPRD_IT_RESTART_LIBVIRTD-1}"

status=0
# Every label, systemd included: tprd_systemd_test boots Debian 12's systemd in a container
# (systemd-nspawn) and builds its tree from deb.debian.org the first time (cached in /var/tmp).
echo "== tests (release build: every label)"
release_status=0
(cd build && ctest --output-on-failure --timeout 900 -LE bench) || release_status=1
echo "== tests (sanitizer build: unit and fuzz)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure --timeout 900 -L 'unit|fuzz') || status=1
# Last, so that the end of the log says why (ctest keeps its list of failures from an earlier run
# that passed, so each build is summarised only when its own run failed).
if [[ $release_status -ne 0 ]]; then bash tests/summarize-failures.sh build; fi
if [[ $status -ne 0 ]]; then bash tests/summarize-failures.sh build-asan; fi
[[ $release_status -eq 0 ]] || status=1
exit $status
