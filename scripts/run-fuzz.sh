#!/usr/bin/env bash
# Fuzzes the public C API (tests/fuzz/api_fuzz.cc, libFuzzer + ASan + UBSan) for a bounded time,
# starting from the committed corpus tests/fuzz/corpus/. Any crash, leak, sanitizer finding or
# contract violation (the driver checks results against a model) fails the script and leaves
# the input in build-asan/fuzz-artifacts/: copy it into tests/fuzz/corpus/ so that ctest
# fuzz_corpus_replay replays it from then on (a regression test), then fix the bug.
#
# Usage: scripts/run-fuzz.sh [seconds] [--merge]     (default: 60 seconds)
#   --merge  afterwards, add the inputs that reached new code edges to tests/fuzz/corpus/
#            (fuzz-*), chosen by libFuzzer's merge, for committing.
# It reuses the ASan tree of scripts/run-sanitizers.sh (same directory, same flags), building
# only the fuzz target when the tree is not there yet.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
merge=0
[ "${2:-}" = "--merge" ] && merge=1
dir=$root/${TWL_SAN_PREFIX:-build}-asan

TWL_SAN_TARGETS=twl_api_fuzz scripts/run-sanitizers.sh asan --build-only
fuzzer=$dir/tests/fuzz/twl_api_fuzz
[ -x "$fuzzer" ] || { echo "run-fuzz: $fuzzer was not built" >&2; exit 1; }

work=$dir/fuzz-corpus        # grows while fuzzing; the committed corpus is only read
artifacts=$dir/fuzz-artifacts
mkdir -p "$work" "$artifacts"
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
[ -n "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH=$symbolizer
export TMPDIR=${TMPDIR:-/tmp}

echo "=== fuzz: ${seconds}s on $(ls tests/fuzz/corpus | wc -l) committed inputs"
# -timeout: one input may take at most 20 s (each input is at most 200 calls on small shapes).
# -rss_limit_mb / -malloc_limit_mb: above the library-chosen 1 GiB pool (lazily committed),
# which the driver asks for now and then; anything larger is a finding.
set +e
"$fuzzer" "$work" tests/fuzz/corpus -max_total_time="$seconds" -timeout=20 \
  -rss_limit_mb=2560 -malloc_limit_mb=1536 -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" >"$dir/fuzz.log" 2>&1
status=$?
set -e
tail -n 40 "$dir/fuzz.log"
if [ "$status" -ne 0 ]; then
  echo "run-fuzz: the fuzzer failed (exit $status); inputs in $artifacts/:" >&2
  ls -l "$artifacts" >&2
  exit "$status"
fi
if [ "$merge" = 1 ]; then
  new=$dir/fuzz-merged
  rm -rf "$new" && mkdir -p "$new"
  cp tests/fuzz/corpus/* "$new"/
  # Edges only (no hit counts, no comparison operands): a corpus small enough to commit and to
  # replay in every CI build, still covering every edge the run reached.
  "$fuzzer" -merge=1 -use_counters=0 -use_cmp=0 "$new" "$work" 2>&1 | tail -n 3
  for f in "$new"/*; do  # merge names what it adds by content hash
    name=$(basename "$f")
    [ -e "tests/fuzz/corpus/$name" ] || cp "$f" "tests/fuzz/corpus/fuzz-$name"
  done
  echo "=== fuzz: corpus now $(ls tests/fuzz/corpus | wc -l) inputs"
fi
echo "=== fuzz: no finding in ${seconds}s"
