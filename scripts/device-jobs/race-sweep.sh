#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B and L come from there): compute-sanitizer
# racecheck over GPU tests, one gtest filter at a time under its own limit (RACE_LIMIT, default
# 40 s), so that one slow filter cannot take the lease. RACE_FILTERS (space-separated gtest
# filters) picks them; the default is one filter per kernel family. A family whose whole run
# takes longer than the limit under racecheck needs single instances instead (e.g.
# 'Shapes/AttendGpuTest.*/12'). Per filter: exit code, tests passed, hazard reports.
# FOCUS (a gtest filter) runs first, without the sanitizer; the job stops if it fails.
# Racecheck needs a machine where compute-sanitizer works (Firecracker; not gVisor).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
run_focus
[ -n "$cs" ] || { echo "no compute-sanitizer"; exit 1; }
limit=${RACE_LIMIT:-40}
# The backends' tests as single tests: each of these took 2-15 s under racecheck on an H100
# (thirty-sixth session); their families as a whole do not finish within a limit.
default="*PruneGpu* *PruneTopP* *TopPOne* *Grow* *AttendGpu* *SelectGpu* *SelectBounds*
 *CachePlan* *AppendBatch* *AppendGpu* *AppendSegments* *DsSelect* *DsMetadata* *DecodeEx*
 OffloadRowCacheTest.ReusedPagesReadNewRows OffloadRowCacheTest.RepeatedStepHitsEverything
 OffloadRowCacheTest.MatchesCpuReferenceWithFullSelection
 OffloadRowCacheTest.RuntimeForkAndFreeMatchHbm
 OffloadBackendTest.RepeatedStepHitsEverything OffloadBackendTest.ReusedPagesAndCopyEnginePath
 GpuHbmBackend.MatchesCpuBackend GpuHbmBackend.SixteenQueryHeadsPerKvHeadMatchCpuBackend"
n=0
for f in ${RACE_FILTERS:-$default}; do
  n=$((n + 1))
  log="$L/race_$n.log"
  timeout "$limit" "$cs" --tool racecheck --racecheck-report all --error-exitcode 9 \
    "$B/twl_gpu_tests" --gtest_color=no --gtest_filter="$f" >"$log" 2>&1
  rc=$?
  ok=$(grep -c '^\[       OK \]' "$log")
  hz=$(grep -cE '^========= (Error|Warning)' "$log")
  el "race $f rc=$rc passed=$ok hazard_reports=$hz$([ "$rc" = 124 ] && echo " (timed out: ran only partly)")"
  [ "$hz" = 0 ] || grep -E '^========= (Error|Warning)' "$log" | sort | uniq -c | head -5
  grep -E '^\[  FAILED  \]' "$log" | head -3
done
