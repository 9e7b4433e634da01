#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B and L come from there), for a session that
# starts from CPU-only changes: first what no CPU run can check, then the serving rows the
# target tables still lack. Pack twl_gpu_tests and twl_serve_bench.
#   suite  The whole GPU suite, shuffled (bit casts and kernels compiled since the last
#          device run; the GPU backends against the CPU backend, whose attention sums in a
#          new order).
#   rows   Through serve-ab.sh (no tests there, no old side unless one was packed): the
#          dense SDPA baseline at B = 1, 8 and 16; B = 1 peaked eager, unbound (twl_decode)
#          against bound (twl_decode_batch, no graph: what the eager B = 1 gap is without the
#          page-table upload and telemetry copies); B = 16 peaked (issue 11's B = 16-32
#          target) and drifting at B = 8 (issue 12's drifting row), offload and HBM, replayed
#          from CUDA graphs.
# PHASES picks them (default "suite rows"; both need ~9.5 minutes, so a 570 s JOB_LIMIT
# wants two calls: PHASES=suite, then PHASES=rows); ROWS overrides the rows (';'-separated
# twl_serve_bench flag sets); T_SUITE, T_CONFIG: seconds.
t0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - t0 ))s] $*"; }
phases=" ${PHASES:-suite rows} "
if [[ $phases == *" suite "* ]]; then
  el "GPU suite"
  timeout "${T_SUITE:-240}" "$B/twl_gpu_tests" --gtest_color=no --gtest_shuffle \
    >"$L/suite.log" 2>&1
  echo "rc=$?"; grep -E '^\[  (PASSED|FAILED) |Failure|tests ran' "$L/suite.log" | head -30
fi
if [[ $phases == *" rows "* ]]; then
  GT_FILTER=none SDPA_BATCHES=1,8,16 T_CONFIG=${T_CONFIG:-150} \
    SERVE_CONFIGS=${ROWS:-"--shapes=32x8 --batches=1 --workloads=peaked --methods=twilight,offload-bound,hbm,hbm-bound;--shapes=32x8 --batches=16 --workloads=peaked --methods=offload-graph,hbm-graph;--shapes=32x8 --batches=8 --workloads=drifting --drift_every=4 --methods=offload-graph,hbm-graph"} \
    bash "$(dirname "$0")/serve-ab.sh"
fi
el done
