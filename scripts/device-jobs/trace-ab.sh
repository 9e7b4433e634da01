#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B, L and OLD come from there): the GPU suite
# (SUITE=0 skips it), then a kernel timeline of the serving loop's last step on each side
# (this tree's library, then $OLD preloaded when one was packed), summarized per kernel by
# scripts/timeline_summary.py. Pack twl_gpu_tests and twl_serve_bench. TRACE_ARGS: the
# twl_serve_bench flags (default 32 x 8, B = 8, peaked, the HBM backend); T_SUITE, T_CONFIG.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
if [ "${SUITE:-1}" = 1 ]; then
  run_gtests "GPU suite" "$B/twl_gpu_tests" "$L/suite.log" "${T_SUITE:-240}" --gtest_shuffle
fi
args=${TRACE_ARGS:-"--shapes=32x8 --batches=8 --workloads=peaked --methods=hbm"}
common="--context=131072 --layers=8 --len_spread=0 --churn_every=0 --steps=4 --warmup=6"
common+=" --telemetry_steps=1 --full_offload_steps=0 --profile_last_step"
here=$(dirname "$0")
for side in new old; do
  pre=""
  if [ $side = old ]; then
    [ -n "${OLD:-}" ] || continue
    pre=$OLD
  fi
  el "trace ($side): $args"
  # shellcheck disable=SC2086
  LD_PRELOAD=$pre CUDA_INJECTION64_PATH=$(dirname "$B")/lib/libcupti_trace.so \
    TWL_TRACE_OUT=$L/trace_$side.csv timeout "${T_CONFIG:-90}" "$B/twl_serve_bench" $common \
    $args --out="$L/t_$side" >"$L/t_$side.log" 2>&1
  echo "rc=$?"; grep -E '^[0-9]+x[0-9]+ ' "$L/t_$side.log" | cut -c1-120
  python3 "$here/../timeline_summary.py" "$L/trace_$side.csv" 2>&1 | head -40
done
el done
