#!/usr/bin/env bash
# Builds everything and runs the whole test suite (CPU tests; GPU tests skip without a GPU).
# Usage: scripts/run-tests.sh            (build dir: build/)
# CI=true turns warnings into errors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTWL_WERROR=$werror
cmake --build build -j "$(nproc)"
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 600
