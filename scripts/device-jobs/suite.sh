#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B and L come from there): the GPU suite
# (shuffled) and the C API tests, nothing timed. For a verdict on the final code when the
# lease has little time left. Pack twl_gpu_tests and twl_api_tests.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
run_gtests "GPU suite" "$B/twl_gpu_tests" "$L/suite.log" "${T_SUITE:-240}" --gtest_shuffle
run_gtests "C API tests" "$B/twl_api_tests" "$L/api.log" 120
el done
