#!/usr/bin/env bash
# Builds and runs the main job: a Twilight decode demo through the runtime. Uses the GPU
# offload backend when a GPU is present, otherwise the CPU backend (and says so).
# Extra arguments go to twl_demo (see twl_demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)" --target twl_demo
./build/bench/twl_demo "$@"
