#!/usr/bin/env bash
# A device job for `scripts/gpu-check.sh job` (B, L and OLD come from there): why the sparse
# attention reads its kept rows at ~1.8 TB/s on both the H100 and the H200, and what the row
# cache's mark kernel waits on (bench/RESULTS.md, twenty-eighth session). Optionally FOCUS
# (lib.sh), then row_gather_probe (the kept rows' access pattern with nothing else in the way:
# its ceiling; PROBE=0 skips it), then Nsight Compute on one serving step's kernels (B = 8,
# 128k, 32 x 8, peaked): AttendChunkKernel on the HBM store, RowMarkKernel and
# AttendChunkKernel on the offload store (OFFLOAD=0 skips it); each once with this tree's
# library and once with $OLD preloaded when one was packed (NCU_AB=0: this tree's only).
# NCU_SOURCE=1 also saves the new side's HBM report and its per-instruction (SASS) table,
# sass_hbm.csv. NCU_KERNELS and NCU_SECTIONS override the filters, NCU_COUNT the kernels
# profiled on the HBM store (default 1), NCU_BATCH the batch (default 8), NCU_METHOD the HBM
# side's serving method (default hbm; e.g. hbm-quest). Pack twl_serve_bench and
# row_gather_probe (and twl_gpu_tests for FOCUS).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
run_focus
if [ "${PROBE:-1}" = 1 ]; then
  el "row gather probe"
  timeout 120 "$B/row_gather_probe" 64 6675 131072 20 >"$L/probe.txt" 2>&1
  echo "rc=$?"; cat "$L/probe.txt"
fi
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || { echo "no ncu on this machine"; exit 0; }
sections=${NCU_SECTIONS:-"SpeedOfLight MemoryWorkloadAnalysis WarpStateStats SchedulerStats Occupancy SourceCounters"}
sec=()
for s in $sections; do sec+=(--section "$s"); done
common="--context=131072 --layers=8 --len_spread=0 --churn_every=0 --steps=1 --warmup=4"
common+=" --telemetry_steps=1 --full_offload_steps=0 --profile_last_step --shapes=32x8"
common+=" --batches=${NCU_BATCH:-8} --workloads=peaked"
run_ncu() {  # NAME METHOD KERNEL_REGEX COUNT PRELOAD [ncu flags...]
  local name=$1 method=$2 kernels=$3 count=$4 pre=$5
  shift 5
  el "ncu $name: $method, kernels $kernels${pre:+ (old library)}"
  # shellcheck disable=SC2086
  LD_PRELOAD=$pre timeout 200 "$ncu" --profile-from-start off --clock-control none \
    -k "regex:$kernels" -c "$count" "${sec[@]}" --import-source no "$@" \
    "$B/twl_serve_bench" $common --methods="$method" --out="$L/n_$name" >"$L/ncu_$name.txt" 2>&1
  echo "rc=$?"
  grep -E '^  [A-Za-z].*(Kernel|kernel)|Duration|DRAM Throughput|Memory Throughput|L2 Hit|SM Active Cycles|Elapsed Cycles|Achieved Occupancy|Issued Warp|No Eligible|excessive|stalled' \
    "$L/ncu_$name.txt" | cut -c1-150 | head -40
}
for side in new old; do
  pre=""
  if [ $side = old ]; then
    [ -n "${OLD:-}" ] && [ "${NCU_AB:-1}" = 1 ] || continue
    pre=$OLD
  fi
  extra=()
  [ $side = new ] && [ "${NCU_SOURCE:-0}" = 1 ] && extra=(-o "$L/attend_hbm" -f)
  run_ncu "hbm_$side" "${NCU_METHOD:-hbm}" "${NCU_KERNELS:-AttendChunk}" "${NCU_COUNT:-1}" "$pre" "${extra[@]}"
  if [ "${OFFLOAD:-1}" = 1 ]; then
    run_ncu "offload_$side" twilight "${NCU_KERNELS:-RowMark|AttendChunk}" 2 "$pre"
  fi
done
if [ -f "$L/attend_hbm.ncu-rep" ]; then
  "$ncu" -i "$L/attend_hbm.ncu-rep" --page source --csv --print-source sass \
    >"$L/sass_hbm.csv" 2>&1
  echo "sass rows: $(wc -l <"$L/sass_hbm.csv")"
fi
el done
