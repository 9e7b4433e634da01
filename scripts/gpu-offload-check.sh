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
    ldd "$bin" | awk '/=> \// {print $3}' | grep -v -E '/(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
      while read -r so; do cp -L "$so" "$dest/lib/"; done
  done
  du -sh "$dest"
  exit 0
fi
out=${OUT:-out}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/$dest/lib:${LD_LIBRARY_PATH:-}
set +e
{ nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv
  "$dest/twl_gpu_tests" --gtest_filter='Offload*'; } 2>&1 | tee "$out/offload_tests.log"
tests_rc=${PIPESTATUS[0]}
if [[ ${TWL_SANITIZE:-0} == 1 ]] && command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 "$dest/twl_gpu_tests" \
    --gtest_filter='OffloadTransport*:OffloadCachePlan*:OffloadBackendTest.RepeatedStep*' \
    > "$out/offload_memcheck.log" 2>&1
  echo "memcheck rc=$?" | tee -a "$out/offload_memcheck.log"; tail -3 "$out/offload_memcheck.log"
fi
"$dest/twl_offload" --out="$out" "$@" 2>&1 | tee "$out/offload_bench.log"
bench_rc=${PIPESTATUS[0]}
# PyTorch SDPA on the same GPU (gpuk's script), for the dense baseline's comparison.
if [[ ${TWL_SDPA:-1} == 1 ]] && python3 -c 'import torch' 2>/dev/null; then
  python3 bench/sdpa_baseline.py "$out/sdpa.csv" ${SDPA_ARGS:-} 2>&1 | tail -20
fi
echo "offload tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
