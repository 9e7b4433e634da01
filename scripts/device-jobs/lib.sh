# Sourced by the device jobs in this folder: elapsed-time lines and a gtest binary's run.
t0=$(date +%s)
el() { echo "[t=$(( $(date +%s) - t0 ))s] $*"; }
# run_gtests TITLE BINARY LOG SECONDS [gtest flags...]: runs the binary under a limit into LOG
# and prints its exit code and the verdict lines.
run_gtests() {
  local title=$1 bin=$2 log=$3 limit=$4
  shift 4
  el "$title"
  timeout "$limit" "$bin" --gtest_color=no "$@" >"$log" 2>&1
  echo "rc=$?"
  grep -E '^\[  (PASSED|FAILED) |Failure|tests ran' "$log" | head -30
}
# run_focus: when FOCUS (a gtest filter of twl_gpu_tests) is set, runs it first and stops the
# job on a failure, so that a new test's verdict comes before the lease is spent on timings.
run_focus() {
  [ -n "${FOCUS:-}" ] || return 0
  run_gtests "focus $FOCUS" "$B/twl_gpu_tests" "$L/focus.log" "${T_FOCUS:-120}" --gtest_filter="$FOCUS"
  # gtest prints a PASSED line also when some tests failed: both lines decide.
  if ! grep -q '^\[  PASSED ' "$L/focus.log" || grep -q '^\[  FAILED ' "$L/focus.log"; then
    grep -B5 -A20 Failure "$L/focus.log" | head -80
    exit 1
  fi
}
