#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B, L and OLD come from there): FOCUS (lib.sh),
# the GPU suite (SUITE=0 skips it), then a kernel timeline of the serving loop's last step on
# each side (this tree's library, then $OLD preloaded when one was packed), summarized per
# kernel by scripts/timeline_summary.py. Pack twl_gpu_tests and twl_serve_bench. TRACE_ARGS:
# the twl_serve_bench flags (default 32 x 8, B = 8, peaked, the HBM backend), several sets
# separated by '|' traced in turn; T_SUITE, T_CONFIG.
# TRACE_SIDES: ';'-separated sides instead of new/old, each a space-separated list of
# VAR=value for this tree's library, e.g. "TWL_ATTN_PIECE_COST=0;TWL_ATTN_PIECE_COST=128".
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
run_focus
if [ "${SUITE:-1}" = 1 ]; then
  run_gtests "GPU suite" "$B/twl_gpu_tests" "$L/suite.log" "${T_SUITE:-240}" --gtest_shuffle
fi
args=${TRACE_ARGS:-"--shapes=32x8 --batches=8 --workloads=peaked --methods=hbm"}
common="--context=131072 --layers=8 --len_spread=0 --churn_every=0 --steps=4 --warmup=6"
common+=" --telemetry_steps=1 --full_offload_steps=0 --profile_last_step"
here=$(dirname "$0")
trace() {  # NAME [VAR=value...]: one traced serving run with that environment
  local name=$1
  shift
  el "trace ($name${*:+: $*}): $args"
  # shellcheck disable=SC2086
  env "$@" CUDA_INJECTION64_PATH="$(dirname "$B")/lib/libcupti_trace.so" \
    TWL_TRACE_OUT="$L/trace_$name.csv" timeout "${T_CONFIG:-90}" "$B/twl_serve_bench" $common \
    $args --out="$L/t_$name" >"$L/t_$name.log" 2>&1
  echo "rc=$?"; grep -E '^[0-9]+x[0-9]+ ' "$L/t_$name.log" | cut -c1-120
  python3 "$here/../timeline_summary.py" "$L/trace_$name.csv" 2>&1 | head -40
}
IFS='|' read -r -a arg_sets <<<"$args"
for a in "${!arg_sets[@]}"; do
  args=${arg_sets[$a]}
  tag=$([ "${#arg_sets[@]}" -gt 1 ] && echo "a$((a + 1))_")
  if [ -n "${TRACE_SIDES:-}" ]; then
    IFS=';' read -r -a sides <<<"$TRACE_SIDES"
    for i in "${!sides[@]}"; do
      # shellcheck disable=SC2086
      trace "${tag}s$((i + 1))" ${sides[$i]}
    done
  else
    trace "${tag}new"
    [ -n "${OLD:-}" ] && trace "${tag}old" LD_PRELOAD="$OLD"
  fi
done
el done
