#!/usr/bin/env bash
# Builds the CPU-only tree with clang under the sanitizers and runs its tests; any finding fails.
#   build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer), no recovery
#   build-tsan/  ThreadSanitizer, each test pinned to one CPU so that oneTBB runs parallel_for
#                inline (scripts/one-cpu.sh explains why; scripts/tsan.supp holds no entry)
# Only what ctest runs is built, at -O1 with assertions on.
#
# The ASan tree also carries libFuzzer's coverage instrumentation (-fsanitize=fuzzer-no-link)
# and the fuzz target, so that scripts/run-fuzz.sh reuses it instead of building a third tree.
#
# Usage: scripts/run-sanitizers.sh [asan|tsan|all] [--build-only]   (default: all)
# Env:   TWL_SAN_JOBS       parallel jobs (default: nproc)
#        TWL_STRESS_SECONDS duration of each concurrency stress test (default 4)
#        TWL_SAN_PREFIX     build directory prefix (default: build -> build-asan, build-tsan)
#        TWL_SAN_TARGETS    targets to build instead of the test executables (space separated)
# CI calls it from .ci/run after the main build (2 cores: about 25 minutes for both trees).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
which_san=${1:-all}
build_only=0
[ "${2:-}" = "--build-only" ] && build_only=1
jobs=${TWL_SAN_JOBS:-$(nproc)}

# ---- Set-up: the project's dependencies, then clang and its sanitizer runtimes -----------------
scripts/setup.sh
pkgs=(clang libclang-rt-14-dev llvm-14)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "sanitizers: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)

# What is built: the executables ctest runs, read from the generated CTestTestfile.cmake files
# (add_test commands, and gtest_discover_tests' <target>[1]_include.cmake), so that a test added
# anywhere is built and nothing else is (no benchmarks without a test). Plus the fuzz target.
# Every quoted word of an add_test line is a candidate (the command may follow a launcher);
# run_tree keeps those that name a target.
test_targets() {  # build dir -> candidate target names, one per line
  local files
  mapfile -t files < <(find "$1" -name CTestTestfile.cmake)
  # xargs -d: a word may hold quotes or backslashes (a shell command line), which xargs
  # would otherwise parse and fail on, and errexit would then drop every later candidate.
  { grep -h '^add_test(' "${files[@]}" | grep -oE '"[^"]+"' | tr -d '"' | grep -v '^-' |
      xargs -r -n1 -d '\n' basename
    grep -hoE '[A-Za-z0-9_]+\[1\]_include\.cmake' "${files[@]}" | sed 's/\[1\]_include\.cmake$//'
    echo twl_api_fuzz
  } | sort -u
}
# Not run under the sanitizers, each for a stated reason:
#   api_install_consumer  installs the library and links outside C projects against it without
#                         the sanitizer runtime, which cannot link an instrumented library; it is
#                         a packaging test (the main CI build runs it), not a memory/thread check.
#   python_*              load the instrumented library into /usr/bin/python3, which does not
#                         start with the sanitizer runtime (ASan refuses to run so); the C API
#                         they drive is covered here by the api tests and the fuzzer.
#   tools_flags           runs the tools, which only the main build builds (this tree builds
#                         test executables only).
#   twl_serve_bench_no_fit  limits the address space (ulimit -v), where ASan and TSan reserve
#                         terabytes of shadow memory at start.
exclude='^(api_install_consumer|python_.*|tools_flags|twl_serve_bench_no_fit)$'

run_tree() {  # name, compile flags, executable link flags, extra cmake arguments...
  local name=$1 flags=$2 link=$3 dir=$root/${TWL_SAN_PREFIX:-build}-$1
  shift 3
  echo "=== sanitizers: $name: configure + build ($dir)"
  CC=clang CXX=clang++ cmake -S "$root" -B "$dir" -G Ninja -DTWL_WITH_CUDA=OFF -DTWL_WERROR=ON "$@" \
    -DTWL_BUILD_TESTS=ON -DTWL_BUILD_BENCH=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags" \
    "-DCMAKE_EXE_LINKER_FLAGS=$link" \
    "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" >/dev/null
  local targets=() present=()
  if [ -n "${TWL_SAN_TARGETS:-}" ]; then
    read -r -a targets <<<"$TWL_SAN_TARGETS"
  else
    mapfile -t targets < <(test_targets "$dir")
  fi
  for t in "${targets[@]}"; do
    if ninja -C "$dir" -t query "$t" >/dev/null 2>&1; then present+=("$t"); fi
  done
  echo "=== sanitizers: $name: building ${present[*]}"
  ninja -C "$dir" -j "$jobs" "${present[@]}"
  [ "$build_only" = 1 ] && return
  echo "=== sanitizers: $name: ctest"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 900 -E "$exclude"
}

common="-fno-omit-frame-pointer -fno-sanitize-recover=all"
if [ "$which_san" = all ] || [ "$which_san" = asan ]; then
  export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_string_checks=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
  [ -n "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH=$symbolizer
  # C programs (the example) link UBSan's C++ part (the C++ library's vptr checks need it)
  # and libstdc++, which it needs in turn.
  run_tree asan "-fsanitize=address,undefined,fuzzer-no-link $common" \
    "-fsanitize-link-c++-runtime -Wl,--push-state,--no-as-needed,-lstdc++,--pop-state" \
    -DTWL_FUZZ=ON
  unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
fi
if [ "$which_san" = all ] || [ "$which_san" = tsan ]; then
  export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1:suppressions=$root/scripts/tsan.supp:print_suppressions=0"
  [ -n "$symbolizer" ] && export TSAN_OPTIONS="$TSAN_OPTIONS:external_symbolizer_path=$symbolizer"
  # Every test runs on one CPU (scripts/one-cpu.sh says why: TBB is not instrumented).
  run_tree tsan "-fsanitize=thread $common" "" \
    "-DCMAKE_CROSSCOMPILING_EMULATOR=$root/scripts/one-cpu.sh"
  unset TSAN_OPTIONS
fi
echo "=== sanitizers: $which_san clean"
