#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B, L and OLD come from there), for docs/pending's
# `score-d64-record-copy-predicated.patch` (the d = 64 record-copy race fix as one predicated
# copy instead of a branch) and `kept-page-shift.patch` (the kept pass finds a slot's page by a
# shift for pages of a power of two; GPU tests with pages of 24 and 12), most important first:
# racecheck of the page-channel score tests; the score, prune and page-channel GPU tests;
# kernel traces of B = 8 (HBM) for this tree and $OLD; the rest of the GPU suite; then the
# graph step at B = 8 against $OLD, with SDPA. Apply both patches, build, copy the library of
# HEAD to .device/gpu/old/, pack twl_gpu_tests and twl_serve_bench. ~300 s on an H100.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
here=$(dirname "$0")
O=$(dirname "$OLD")
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
el racecheck
timeout 60 "$cs" --tool racecheck --racecheck-report all --error-exitcode 9 \
  "$B/twl_gpu_tests" --gtest_filter='Shapes/PageChannelScoreGpuTest.*' --gtest_brief=1 >"$L/race.log" 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|PASSED|FAILED|Error:" "$L/race.log" | sort | uniq -c | head
focus='*PageChannel*:*PruneGpu*:*Grow*:*PruneTopP*:*Score*'
run_gtests "focus" "$B/twl_gpu_tests" "$L/focus.log" 150 --gtest_filter="$focus"
SUITE=0 T_CONFIG=60 bash "$here/trace-ab.sh"
run_gtests "GPU suite minus the focus" "$B/twl_gpu_tests" "$L/suite.log" 200 --gtest_filter="-$focus"
SDPA_BATCHES=8 T_CONFIG=80 ENV_SIDES="TWL_UNUSED=0;LD_PRELOAD=$O/libtwilight.so.0.2" SERVE_CONFIGS="--shapes=32x8 --batches=8 --workloads=peaked --methods=offload-graph,hbm-graph" \
  bash "$here/env-ab.sh"
