#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B, L and OLD come from there), for the two
# score-pass patches of docs/pending (thirty-third session), most important first, so that a
# short lease still says whether they may land: racecheck of the page-channel score tests
# (the d = 64 record-copy race); the score, prune and page-channel GPU tests on this tree;
# kernel traces of B = 8 (HBM) for this tree, this tree with runs of 1024 pages
# (TWL_SCORE_MAX_RUN, the partition before score-one-wave.patch) and $OLD; the graph step at
# B = 8 against $OLD, with SDPA; then the C API tests and the rest of the GPU suite. Build
# with both patches applied, copy the library before them to .device/gpu/old/, pack
# twl_gpu_tests, twl_api_tests and twl_serve_bench. ~450 s on an H100.
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
sides="TWL_UNUSED=0;TWL_SCORE_MAX_RUN=1024;LD_PRELOAD=$O/libtwilight.so.0.2"
SUITE=0 T_CONFIG=60 TRACE_SIDES="$sides" bash "$here/trace-ab.sh"
SDPA_BATCHES=8 T_CONFIG=80 ENV_SIDES="TWL_UNUSED=0;LD_PRELOAD=$O/libtwilight.so.0.2" SERVE_CONFIGS="--shapes=32x8 --batches=8 --workloads=peaked --methods=offload-graph,hbm-graph" \
  bash "$here/env-ab.sh"
run_gtests "C API tests" "$B/twl_api_tests" "$L/api.log" 60
run_gtests "GPU suite minus the focus" "$B/twl_gpu_tests" "$L/suite.log" 240 --gtest_filter="-$focus"
