#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B, L and OLD come from there): the GPU suite's
# attention cases, the dense SDPA baseline, then the serving loop twice per configuration,
# once with this tree's library and once with $OLD preloaded (when one was packed) or with
# AB_ENV set (e.g. AB_ENV=TWL_ATTN_TC=0), so both sides share one lease.
# SERVE_CONFIGS: ';'-separated twl_serve_bench flag sets (default: 64 x 8 mixed at a 16%
# cache, and 64 x 8 peaked at B = 1 and 8). GT_FILTER=none skips the tests; SDPA_BATCHES
# (default 1,8) the baseline's batch sizes; T_CONFIG seconds per configuration and side.
t0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - t0 ))s] $*"; }
if [ "${GT_FILTER:-}" != none ]; then
  el "attention tests"
  timeout 150 "$B/twl_gpu_tests" --gtest_color=no --gtest_filter="${GT_FILTER:-*AttendGpu*}" \
    >"$L/tests.log" 2>&1
  echo "rc=$?"; grep -E '^\[  (PASSED|FAILED) |Failure' "$L/tests.log" | head -20
fi
el "sdpa"
PYTHONUNBUFFERED=1 timeout 90 python3 bench/sdpa_serving.py "$L/sdpa.csv" \
  --batches "${SDPA_BATCHES:-1,8}" --context 131072 --layers 8 --shapes 32x8,64x8 \
  >"$L/sdpa.log" 2>&1
echo "rc=$?"; grep flash "$L/sdpa.log"
common="--sdpa_csv=$L/sdpa.csv --context=131072 --layers=8 --len_spread=0 --churn_every=0 --steps=6 --warmup=8 --telemetry_steps=1 --full_offload_steps=0"
configs=${SERVE_CONFIGS:-"--shapes=64x8 --batches=8 --workloads=mixed --cache_frac=0.16 --methods=twilight;--shapes=64x8 --batches=1,8 --workloads=peaked --methods=twilight,hbm"}
i=0
IFS=';' read -ra list <<<"$configs"
for cfg in "${list[@]}"; do
  i=$((i + 1))
  for side in new old; do
    pre="" envs=()
    if [ $side = old ]; then
      if [ -n "${OLD:-}" ]; then pre=$OLD
      elif [ -n "${AB_ENV:-}" ]; then read -ra envs <<<"$AB_ENV"
      else continue; fi
    fi
    el "config $i ($side): $cfg"
    # shellcheck disable=SC2086
    env "${envs[@]}" LD_PRELOAD=$pre timeout "${T_CONFIG:-120}" "$B/twl_serve_bench" $common $cfg \
      --out="$L/c${i}_$side" >"$L/c${i}_$side.log" 2>&1
    echo "rc=$?"; grep -E '^[0-9]+x[0-9]+ ' "$L/c${i}_$side.log" | cut -c1-330
  done
done
el done
