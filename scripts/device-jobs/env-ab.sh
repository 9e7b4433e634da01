#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B and L come from there): optionally the GPU
# suite and the C API tests (SUITE=1, API=1), the dense SDPA baseline, then each serving
# configuration once per environment side, all on one lease, so that a switch read from the
# environment (e.g. TWL_PRUNE_PARTS) is compared against itself on the same machine.
# ENV_SIDES: ';'-separated sides, each a space-separated list of VAR=value, e.g.
# "TWL_ATTN_TC=1;TWL_ATTN_TC=0" (default: one side, the environment as it is); SERVE_CONFIGS: ';'-separated twl_serve_bench flag
# sets (default: 32 x 8 peaked, B = 8, twilight and hbm); SDPA_BATCHES (default 8; none
# skips the baseline);
# T_SUITE, T_CONFIG seconds. FOCUS: a gtest filter of twl_gpu_tests run first; the job stops
# there when it fails (a new test's verdict before the lease is spent on timings). Pack
# twl_gpu_tests, twl_api_tests and twl_serve_bench.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
run_focus
if [ "${SUITE:-0}" = 1 ]; then
  run_gtests "GPU suite" "$B/twl_gpu_tests" "$L/suite.log" "${T_SUITE:-240}" --gtest_shuffle
fi
if [ "${API:-0}" = 1 ]; then
  run_gtests "C API tests" "$B/twl_api_tests" "$L/api.log" 120
fi
common=""
if [ "${SDPA_BATCHES:-8}" != none ]; then
  el "sdpa"
  PYTHONUNBUFFERED=1 timeout 90 python3 bench/sdpa_serving.py "$L/sdpa.csv" \
    --batches "${SDPA_BATCHES:-8}" --context 131072 --layers 8 --shapes 32x8 \
    >"$L/sdpa.log" 2>&1
  echo "rc=$?"; grep flash "$L/sdpa.log"
  common="--sdpa_csv=$L/sdpa.csv"
fi
common+=" --context=131072 --layers=8 --len_spread=0 --churn_every=0 --steps=6 --warmup=8 --telemetry_steps=1 --full_offload_steps=0"
configs=${SERVE_CONFIGS:-"--shapes=32x8 --batches=8 --workloads=peaked --methods=twilight,hbm"}
sides=${ENV_SIDES:-"TWL_UNUSED=0"}
IFS=';' read -ra clist <<<"$configs"
IFS=';' read -ra slist <<<"$sides"
i=0
for cfg in "${clist[@]}"; do
  i=$((i + 1))
  j=0
  for side in "${slist[@]}"; do
    j=$((j + 1))
    read -ra envs <<<"$side"
    el "config $i side $j ($side): $cfg"
    # shellcheck disable=SC2086
    env "${envs[@]}" timeout "${T_CONFIG:-120}" "$B/twl_serve_bench" $common $cfg \
      --out="$L/c${i}_s$j" >"$L/c${i}_s$j.log" 2>&1
    echo "rc=$?"; grep -E '^[0-9]+x[0-9]+ ' "$L/c${i}_s$j.log" | cut -c1-330
  done
done
el done
