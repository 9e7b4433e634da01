#include "pipeline/prune/twilight/twilight_pruner.h"

#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"

namespace twl {

size_t TwilightPruner::DeviceWorkspaceBytes(const PageGeometry& g, int32_t num_seqs,
                                            int32_t num_q_heads, int32_t max_select) const {
  return PruneWorkspaceBytes(g, num_seqs, num_q_heads, max_select);
}

absl::Status TwilightPruner::PruneOnDevice(const PageGeometry& g, const PrunerParams& params,
                                           const BatchView& batch, const QueryView& q,
                                           const QuantKView& qk, const FpKvView& kv,
                                           const SelectionView& selection, const KeptView& out,
                                           const HeadStatsView& stats, void* workspace,
                                           size_t workspace_bytes, void* stream) const {
  return LaunchPrune(g, params, batch, q, qk, kv, selection, out, stats, workspace,
                     workspace_bytes, stream);
}

absl::Status TwilightPruner::PruneOnHost(const PageGeometry& g, const PrunerParams& params,
                                         const BatchView& batch, const QueryView& q,
                                         const QuantKView& qk, const FpKvView& kv,
                                         const SelectionView& selection, const KeptView& out,
                                         const HeadStatsView& stats) const {
  return PruneRef(g, params, batch, q, qk, kv, selection, out, stats);
}

}  // namespace twl
