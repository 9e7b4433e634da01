#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job`: FOCUS (a twl_gpu_tests filter) first, stopping
# the job on a failure, then the C API tests, then serve-ab.sh's SDPA baseline and serving
# configurations (SERVE_CONFIGS, SDPA_BATCHES, T_CONFIG; its test step skipped). Pack
# twl_gpu_tests, twl_api_tests and twl_serve_bench.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
run_focus
run_gtests "C API tests" "$B/twl_api_tests" "$L/api.log" 120
GT_FILTER=none
# shellcheck source=serve-ab.sh
. "$(dirname "$0")/serve-ab.sh"
