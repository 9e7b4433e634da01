#!/usr/bin/env bash
# GPU check: build here, run on the device machine (issue 4).
#
#   scripts/gpu-check.sh build    Here (no GPU needed): configure build-gpu with CUDA on, sm_90,
#                                 static cudart; build the GPU tests and kernel benchmarks;
#                                 stage binaries + the non-system shared libraries they need
#                                 into .device/gpu/ (git-ignored) for the device's `carry`.
#   scripts/gpu-check.sh remote   On the device (run tool, carry [".device/gpu"]): GPU test
#                                 suite (kernels, HBM and offload backends vs the CPU reference)
#                                 and the C API tests (their GPU-runtime cases),
#                                 compute-sanitizer memcheck + racecheck + synccheck, PyTorch SDPA
#                                 baseline, twl_kernels, twl_offload, twl_demo on the GPU; logs,
#                                 CSVs and plots go to $OUT; a short summary is printed last.
#   Default build stages twl_gpu_tests twl_api_tests twl_kernels twl_offload twl_demo twl_accuracy
#   (ACCURACY="--full" runs the accuracy harness at full size in remote mode).
#
#   scripts/gpu-check.sh pack [bins]  Here: the staged binaries a job needs, packed under the
#                                 carry limit into .device/run/gpu.tgz (see pack() below).
#   scripts/gpu-check.sh job FILE  On the device (carry [".device/run"]): unpack and run a job
#                                 script, e.g. scripts/device-jobs/serve-ab.sh.
# Environment: GPU_BUILD_DIR (default build-gpu), GPU_CHECK_TARGETS (extra ninja targets to stage), BENCH_ARGS (extra
# twl_kernels flags, e.g. "--contexts 32768,131072"), SKIP_SANITIZER=1, SKIP_BENCH=1,
# T_TESTS/T_MEMCHECK/T_RACE/T_SDPA/T_BENCH (seconds; defaults keep a run under 8 minutes),
# PYBIND_ARGS (flags of bench/python_binding_bench.py; runs it when set).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE=$ROOT/.device/gpu
BUILD=${GPU_BUILD_DIR:-build-gpu}

build() {
  set -e
  local launcher=()
  if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache
              -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTWL_WITH_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DTWL_WERROR=ON "${launcher[@]}" >/dev/null
  local targets="twl_gpu_tests twl_api_tests twl_kernels twl_offload twl_demo twl_accuracy twl_serve_bench twl_prefill_bench ${GPU_CHECK_TARGETS:-}"
  # shellcheck disable=SC2086
  ninja -C "$BUILD" -j2 $targets
  rm -rf "$STAGE"
  mkdir -p "$STAGE/bin" "$STAGE/lib"
  for t in $targets; do
    local f
    f=$(find "$BUILD" -maxdepth 3 -type f -name "$t" -perm -u+x | head -1)
    [ -n "$f" ] || { echo "gpu-check: target $t not found" >&2; exit 1; }
    cp "$f" "$STAGE/bin/"
    # Copy every resolved shared library except the C/C++ runtime the device already has.
    ldd "$f" | awk '/=> \//{print $3}' | while read -r lib; do
      case "$(basename "$lib")" in
        libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libgcc_s.so*|libstdc++.so*|libcuda.so*) ;;
        *) cp -Ln "$lib" "$STAGE/lib/" 2>/dev/null || true ;;
      esac
    done
  done
  # The kernel timeline (scripts/cupti_trace.cc, for machines without Nsight Systems): on the
  # device, CUDA_INJECTION64_PATH=$STAGE/lib/libcupti_trace.so TWL_TRACE_OUT=$OUT/t.csv
  # twl_serve_bench ... --profile_last_step, then scripts/timeline_summary.py $OUT/t.csv.
  local cuda_root
  cuda_root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  if [ -f "$cuda_root/include/cupti.h" ]; then
    g++ -O2 -shared -fPIC -o "$STAGE/lib/libcupti_trace.so" scripts/cupti_trace.cc \
      -I"$cuda_root/include" -L"$cuda_root/lib" -L"$cuda_root/lib64" -lcupti
    cp -Ln "$cuda_root"/lib*/libcupti.so.[0-9]* "$STAGE/lib/" 2>/dev/null || true
  fi
  # Standalone diagnostics (scripts/probes/*.cu: one file each, no library), e.g.
  # row_gather_probe: pack them by name like any binary.
  for probe in scripts/probes/*.cu; do
    nvcc -O3 -arch=sm_90 -o "$STAGE/bin/$(basename "$probe" .cu)" "$probe"
  done
  du -sh "$STAGE"
  echo "gpu-check: staged $(ls "$STAGE/bin" | tr '\n' ' ')into .device/gpu (carry it)"
}

remote() {
  local out=${OUT:-/tmp/gpu-check-out}
  mkdir -p "$out"
  export LD_LIBRARY_PATH=$STAGE/lib:${LD_LIBRARY_PATH:-}
  local bin=$STAGE/bin
  local summary=$out/summary.txt
  : >"$summary"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    | tee -a "$summary"

  # 1. GPU test suite.
  if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${T_TESTS:-300}" "$bin/twl_gpu_tests" --gtest_color=no >"$out/gpu_tests.log" 2>&1
  local rc=$?
  local passed failed skipped
  passed=$(grep -c '^\[       OK \]' "$out/gpu_tests.log")
  failed=$(grep -c '^\[  FAILED  \]' "$out/gpu_tests.log")
  skipped=$(grep -c '^\[  SKIPPED \]' "$out/gpu_tests.log")
  echo "gpu tests: rc=$rc passed=$passed failed_lines=$failed skipped=$skipped" | tee -a "$summary"
  grep -E '^\[  FAILED  \]|Failure|error:' "$out/gpu_tests.log" | head -40
  # The C API tests create GPU runtimes where a GPU is visible (they skip those cases here).
  timeout "${T_API_TESTS:-60}" "$bin/twl_api_tests" --gtest_color=no >"$out/api_tests.log" 2>&1
  rc=$?
  echo "api tests: rc=$rc passed=$(grep -c '^\[       OK \]' "$out/api_tests.log")" \
    | tee -a "$summary"
  grep -E '^\[  FAILED  \]|Failure' "$out/api_tests.log" | head -20
  fi

  # 2. compute-sanitizer on the kernel tests (small sizes; the CPU reference dominates).
  if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
    local cs
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    # DecodeNeverWaits is left out: the sanitizer serializes launches, so its gate kernel holds
    # the host and the test's time limit trips.
    local filt='*AppendGpu*:*AppendSegmentsGpu*:*SelectGpu*:*SelectBounds*:*PruneGpu*:*PageChannel*:*AttendGpu*:OffloadTransport*:OffloadCachePlan*:*CachePlan*:OffloadBackendTest.RepeatedStep*-*DecodeNeverWaits*'
    # One or two cheap instances per kernel family (each 2-15 s under racecheck on an H100;
    # scripts/device-jobs/race-sweep.sh races more of them, one filter at a time).
    local race='*AppendGpuTest*/0:*SelectGpuTest*/0:*PruneGpuTest*/0:*PruneGpuTest*/3:Shapes/PruneGpuTest.*/16:*AttendGpuTest*/0:*AttendGpuTest*/5:*AttendGpuTest*/12:Shapes/PageChannelScoreGpuTest.*/0:Shapes/PageChannelScoreGpuTest.*/4:Cases/GrowGpuTest.*/0:*SelectBounds*:*CachePlan*:*DsSelect*:PruneGpuNonFiniteTest.*'
    {
      echo "== memcheck"
      timeout "${T_MEMCHECK:-100}" "$cs" --tool memcheck --leak-check no --error-exitcode 9 \
        "$bin/twl_gpu_tests" --gtest_filter="$filt" --gtest_brief=1 2>&1
      echo "memcheck rc=$?"
      echo "== racecheck"
      timeout "${T_RACE:-90}" "$cs" --tool racecheck --racecheck-report all --error-exitcode 9 \
        "$bin/twl_gpu_tests" --gtest_filter="$race" --gtest_brief=1 2>&1
      echo "racecheck rc=$?"
      echo "== synccheck"
      timeout "${T_SYNC:-90}" "$cs" --tool synccheck --error-exitcode 9 \
        "$bin/twl_gpu_tests" --gtest_filter="$race" --gtest_brief=1 2>&1
      echo "synccheck rc=$?"
      echo "== memcheck: offload benchmark, small size"
      timeout "${T_MEMCHECK_OFFLOAD:-120}" "$cs" --tool memcheck --leak-check no --error-exitcode 9 \
        "$bin/twl_offload" --out="$out/offload_memcheck" --batches=2 --contexts=8192 \
        --workloads=peaked --steps=2 --warmup=1 2>&1 | tail -n 5
      echo "memcheck-offload rc=${PIPESTATUS[0]}"
    } >"$out/sanitizer.log" 2>&1
    grep -E '^(memcheck|racecheck|synccheck|memcheck-offload) rc=|ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer.log" \
      | tee -a "$summary"
  fi

  # 3. Benchmarks: SDPA baseline first (it frees its memory), then the kernels.
  if [ "${SKIP_BENCH:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 timeout "${T_SDPA:-50}" python3 bench/sdpa_baseline.py "$out/sdpa.csv" \
      $(echo "${BENCH_ARGS:-}" | sed -n 's/.*--contexts \([0-9,]*\).*/--contexts \1/p') \
      >"$out/bench.log" 2>&1
    echo "sdpa baseline rc=$?" | tee -a "$summary"
    # shellcheck disable=SC2086
    timeout "${T_BENCH:-130}" "$bin/twl_kernels" --out "$out" --sdpa_csv "$out/sdpa.csv" ${BENCH_ARGS:-} \
      >>"$out/bench.log" 2>&1
    echo "twl_kernels rc=$?" | tee -a "$summary"
    # 4. Offload path (issue 8): Twilight offload vs dense in HBM, full offload, Quest.
    # shellcheck disable=SC2086
    timeout "${T_OFFLOAD:-200}" "$bin/twl_offload" --out="$out" ${OFFLOAD_ARGS:-} \
      >"$out/offload_bench.log" 2>&1
    echo "twl_offload rc=$?" | tee -a "$summary"
  fi
  # Prefill through twl_append_batch: append GB/s vs the measured D2H link, TTFT vs HBM.
  if [ "${SKIP_PREFILL:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    timeout "${T_PREFILL:-240}" "$bin/twl_prefill_bench" --csv "$out/prefill.csv" ${PREFILL_ARGS:-} \
      >"$out/prefill_bench.log" 2>&1
    echo "twl_prefill_bench rc=$?" | tee -a "$summary"
  fi
  # 4b. The serving-loop benchmark (issue 11), the acceptance benchmark for speed: the dense
  # SDPA baseline of the same loop first (it frees its memory), then twl_serve_bench.
  if [ "${SKIP_SERVE:-0}" != 1 ]; then
    local sa=${SERVE_ARGS:-"--batches=1,8 --context=131072 --layers=8 --steps=8"}
    local sb sc sl ss
    sb=$(echo "$sa" | sed -n 's/.*--batches=\([0-9,]*\).*/\1/p')
    sc=$(echo "$sa" | sed -n 's/.*--context=\([0-9]*\).*/\1/p')
    sl=$(echo "$sa" | sed -n 's/.*--layers=\([0-9]*\).*/\1/p')
    ss=$(echo "$sa" | sed -n 's/.*--shapes=\([0-9x,]*\).*/\1/p')
    PYTHONUNBUFFERED=1 timeout "${T_SDPA_SERVE:-120}" python3 bench/sdpa_serving.py \
      "$out/sdpa_serving.csv" --batches "${sb:-1,8,16}" --context "${sc:-131072}" \
      --layers "${sl:-8}" --shapes "${ss:-32x8,64x8}" >"$out/serve.log" 2>&1
    echo "sdpa_serving rc=$?" | tee -a "$summary"
    # shellcheck disable=SC2086
    timeout "${T_SERVE:-300}" "$bin/twl_serve_bench" --sdpa_csv="$out/sdpa_serving.csv" \
      --out="$out/serve" $sa >>"$out/serve.log" 2>&1
    echo "twl_serve_bench rc=$?" | tee -a "$summary"
    cp "$out/serve/serve.csv" "$out/serve.csv" 2>/dev/null
    cp "$out/serve/serve.png" "$out/serve.png" 2>/dev/null
  fi
  # 5. Optional: the accuracy harness at full size (CPU reference; the device's 16 cores).
  if [ -n "${ACCURACY:-}" ] && [ -x "$bin/twl_accuracy" ]; then
    # shellcheck disable=SC2086
    timeout "${T_ACCURACY:-400}" "$bin/twl_accuracy" $ACCURACY --out "$out/accuracy" \
      >"$out/accuracy.log" 2>&1
    echo "twl_accuracy $ACCURACY rc=$?" | tee -a "$summary"
    sed -n '/Goals of issue 7/,$p' "$out/accuracy.log" | cut -c1-200
  fi
  # 5b. Optional: the Python package's cost on the hot path vs direct C API calls (issue 14).
  if [ -n "${PYBIND_ARGS:-}" ]; then
    local libtw
    libtw=$(ls "$STAGE"/lib/libtwilight.so* 2>/dev/null | head -1)
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 TWILIGHT_LIB=$libtw timeout "${T_PYBIND:-150}" \
      python3 bench/python_binding_bench.py $PYBIND_ARGS --json "$out/python_binding.json" \
      >"$out/python_binding.log" 2>&1
    echo "python_binding_bench rc=$?" | tee -a "$summary"
    grep -v '^step' "$out/python_binding.log" | tail -n 8 | tee -a "$summary"
  fi
  # 6. The README's main job on the GPU (offload backend).
  if [ "${SKIP_DEMO:-0}" != 1 ]; then
    timeout "${T_DEMO:-60}" "$bin/twl_demo" >"$out/demo.log" 2>&1
    echo "twl_demo rc=$?" | tee -a "$summary"
  fi

  echo "==== summary"
  cat "$summary"
  if [ -f "$out/bench.log" ]; then
    sed -n '/^twl_kernels: /,$p' "$out/bench.log" | cut -c1-170
  fi
  [ -f "$out/offload_bench.log" ] && tail -n 40 "$out/offload_bench.log" | cut -c1-170
  [ -f "$out/prefill_bench.log" ] && tail -n 16 "$out/prefill_bench.log" | cut -c1-170
  [ -f "$out/demo.log" ] && tail -n 12 "$out/demo.log" | cut -c1-170
  [ -f "$out/serve.log" ] && grep -v '^\[' "$out/serve.log" | tail -n 60 | cut -c1-260
  bundle "$out" summary.txt
}

# The staged folder is larger than the device's carry limit (64 MiB with the tree): `pack`
# puts the binaries a job needs, the libraries and .device/gpu/old/ (an earlier
# libtwilight.so.* for A/B runs through LD_PRELOAD) into .device/run/gpu.tgz; on the device,
# `job FILE` unpacks it and runs FILE (bash) with B = the binaries, L = $OUT, OLD = the old
# library if any, under a limit (JOB_LIMIT, default 570 s) so that its log's tail is printed
# even when a step runs long; what it wrote under $OUT comes back as results.tgz (bundle). Carry [".device/run"]; scripts/device-jobs/ has examples.
pack() {
  set -e
  local bins=("$@")
  ((${#bins[@]})) || bins=(twl_gpu_tests twl_api_tests twl_serve_bench)
  local paths=(gpu/lib)
  for b in "${bins[@]}"; do paths+=("gpu/bin/$b"); done
  [ -d "$STAGE/old" ] && paths+=(gpu/old)
  mkdir -p "$ROOT/.device/run"
  tar -C "$ROOT/.device" -cf - "${paths[@]}" | gzip -5 >"$ROOT/.device/run/gpu.tgz"
  ls -la "$ROOT/.device/run/gpu.tgz"
}

job() {
  local file=${1:?usage: $0 job FILE}
  tar -C "$ROOT/.device" -xzf "$ROOT/.device/run/gpu.tgz"
  export LD_LIBRARY_PATH=$STAGE/lib:${LD_LIBRARY_PATH:-}
  export B=$STAGE/bin L=${OUT:-/tmp/gpu-check-out}
  OLD=$(ls "$STAGE"/old/libtwilight.so* 2>/dev/null | head -1)
  export OLD
  mkdir -p "$L"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
  timeout "${JOB_LIMIT:-570}" bash "$file" >"$L/job.log" 2>&1
  echo "job rc=$?"
  bundle "$L" job.log
  grep -v '^\[ *\(RUN\|OK\) ' "$L/job.log" | tail -c 11000
}

# The device returns at most 8 files from $OUT, two folders deep: a job's logs, traces and
# per-side CSV / JSON / PNG are more than that (the thirty-fourth session lost its traces).
# bundle DIR MAIN: everything but the log MAIN goes into DIR/results.tgz; the 6 smallest
# top-level files also stay beside it, readable without unpacking.
bundle() {
  local dir=$1 main=$2
  (cd "$dir" && find . -type f ! -name "$main" ! -name results.tgz | sort |
     tar -czf results.tgz -T - 2>/dev/null) || return 0
  local keep
  keep=$(cd "$dir" && find . -maxdepth 1 -type f ! -name "$main" ! -name results.tgz \
           -printf '%s %f\n' | sort -n | head -6 | cut -d' ' -f2-)
  (cd "$dir" && for f in * .[!.]*; do
     [ -e "$f" ] || continue
     [ "$f" = "$main" ] || [ "$f" = results.tgz ] && continue
     grep -qxF "$f" <<<"$keep" || rm -rf "$f"
   done)
  echo "gpu-check: $(tar -tzf "$dir/results.tgz" | wc -l) files in $dir/results.tgz"
}

case "${1:-}" in
  build) build ;;
  remote) remote ;;
  pack) shift; pack "$@" ;;
  job) shift; job "$@" ;;
  *) echo "usage: $0 build|remote|pack [binaries...]|job FILE" >&2; exit 2 ;;
esac
