// The CPU executor: the stage sequence of one decode step on the host, SELECT (the
// registered Selector) -> PRUNE (TwilightPruner) -> FETCH (the store's HostFetch) -> ATTEND
// (SparseAttention), each the stage's CPU implementation (also the reference its kernel is
// tested against), parallel with oneTBB, each timed. The
// store owns the memory: it hands in its views, the step's scratch views and its fetch.
#pragma once

#include "absl/status/status.h"
#include "core/stage_views.h"
#include "pipeline/fetch/host_fetch.h"
#include "pipeline/select/selector.h"

namespace twl {

struct CpuStep {
  PageGeometry g;
  const Selector* selector = nullptr;
  SelectorParams selector_params;
  PrunerParams pruner;  // seq_p: host array or null
  BatchView batch;      // host pointers
  QueryView q;
  OutputView out;
  QuantKView qk;        // estimation store
  FpKvView kv;          // FP16 blocks (through slot_of_block with a disk tier)
  // Step scratch (stride of sel: Selector::Stride; of kept: that * page_size) and telemetry.
  SelectionView sel;
  KeptView kept;
  HeadStatsView stats;
};

struct CpuStageTimes {
  double ms_select = 0, ms_prune = 0, ms_attend = 0;
};

// Runs the step; stops at the first failing stage (its status, unprefixed).
absl::Status RunCpuStep(const CpuStep& step, HostFetch& fetch, CpuStageTimes* times);

}  // namespace twl
