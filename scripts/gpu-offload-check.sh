#!/usr/bin/env bash
# Offload path on a GPU (issue 8): build here, run there.
#
#   scripts/gpu-offload-check.sh build [BUILD_DIR]   # on the build machine: builds the GPU
#       tests and twl_offload, copies them and their non-system shared libraries into
#       .device/off/ (git-ignored) so that the device tool can carry that folder.
#   scripts/gpu-offload-check.sh run [BENCH_FLAGS...]  # on the GPU machine, from the repo
#       root: offload GPU tests, then the benchmark; logs and results under $OUT (or out/).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-build}
shift || true
dest=.device/off
if [[ $mode == build ]]; then
  build=${1:-build-off}
  [[ -f $build/build.ninja ]] || cmake -S . -B "$build" -G Ninja -DTWL_WERROR=ON
  ninja -C "$build" -j2 twl_gpu_tests twl_offload
  rm -rf "$dest" && mkdir -p "$dest/lib"
  cp "$build/tests/twl_gpu_tests" "$build/bench/twl_offload" "$dest/"
  for bin in "$dest/twl_gpu_tests" "$dest/twl_offload"; do
    ldd "$bin" | awk '/=> \// {print $3}' | grep -v -E '^/lib|^/usr/lib/x86_64-linux-gnu/(libc|libm|libstdc|libgcc|libpthread|libdl|librt)' |
      while read -r so; do cp -L "$so" "$dest/lib/"; done
  done
  du -sh "$dest"
  exit 0
fi
out=${OUT:-out}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/$dest/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv | tee "$out/gpu.txt"
set +e
"$dest/twl_gpu_tests" --gtest_filter='Offload*' 2>&1 | tee "$out/offload_tests.log"
tests_rc=${PIPESTATUS[0]}
"$dest/twl_offload" --out="$out" "$@" 2>&1 | tee "$out/offload_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "offload tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
