#!/usr/bin/env bash
# Runs a command pinned to one CPU, chosen by process id so that parallel ctest jobs spread
# over the CPUs. The TSan tree runs every test through it (CMAKE_CROSSCOMPILING_EMULATOR):
# oneTBB sizes its worker pool from the CPU affinity mask, so with one CPU it starts no worker
# and parallel_for runs inline in the calling thread. Debian's libtbb is not built with TSan,
# so the hand-off of tasks between TBB threads is invisible to TSan and every parallel_for
# would be reported as racing with the thread that started it. The project's own threads
# (concurrent callers of one runtime, the disk tier's I/O threads) are unaffected and checked.
set -euo pipefail
cpus=($(taskset -pc $$ | sed -E 's/.*: //' | tr ',' ' '))
list=()
for c in "${cpus[@]}"; do
  if [[ $c == *-* ]]; then list+=($(seq "${c%-*}" "${c#*-}")); else list+=("$c"); fi
done
exec taskset -c "${list[$(($$ % ${#list[@]}))]}" "$@"
