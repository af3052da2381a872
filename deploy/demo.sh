#!/usr/bin/env bash
# README command 1: the demo. Completed by the end-to-end work (issue 5); until then it builds
# everything and says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
echo "demo: the daemon and tprctl are not built yet; see docs/ and the open issues." >&2
exit 1
