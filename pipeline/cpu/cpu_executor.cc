#include "pipeline/cpu/cpu_executor.h"

#include <chrono>

#include "pipeline/attend/sparse/sparse_attention.h"
#include "pipeline/prune/twilight/twilight_pruner.h"

namespace twl {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
      .count();
}

}  // namespace

absl::Status RunCpuStep(const CpuStep& st, HostFetch& fetch, CpuStageTimes* times) {
  const bool grow = st.selector_params.grow && st.selector_params.kind == SelectorKind::kQuest;
  auto t0 = std::chrono::steady_clock::now();
  if (absl::Status s = st.selector->SelectOnHost(st.g, st.selector_params, st.batch, st.q,
                                                 st.qk, st.sel, st.pruner.softmax_scale);
      !s.ok()) {
    return s;
  }
  times->ms_select = MsSince(t0);
  if (st.g.k_bits >= 16) {
    if (absl::Status s = fetch.CandidatesBeforePrune(st.batch, st.sel, grow); !s.ok()) return s;
  }
  t0 = std::chrono::steady_clock::now();
  if (absl::Status s = TwilightPruner().PruneOnHost(st.g, st.pruner, st.batch, st.q, st.qk,
                                                    st.kv, st.sel, st.kept, st.stats);
      !s.ok()) {
    return s;
  }
  times->ms_prune = MsSince(t0);
  if (absl::Status s = fetch.KeptBeforeAttend(st.batch, st.kept); !s.ok()) return s;
  t0 = std::chrono::steady_clock::now();
  if (absl::Status s = SparseAttention().AttendOnHost(st.g, st.batch, st.q, st.kv, st.kept,
                                                      st.out, st.pruner.softmax_scale);
      !s.ok()) {
    return s;
  }
  times->ms_attend = MsSince(t0);
  return absl::OkStatus();
}

}  // namespace twl
