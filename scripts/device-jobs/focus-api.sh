#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B and L come from there): FOCUS (a gtest filter
# of twl_gpu_tests, lib.sh) and then the C API tests, nothing timed. For a verdict on the
# changed code when the lease has too little time left for the whole suite (API=0: the
# filter only). Pack twl_gpu_tests and twl_api_tests.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
run_focus
if [ "${API:-1}" = 1 ]; then
  run_gtests "C API tests" "$B/twl_api_tests" "$L/api.log" 120
fi
el done
