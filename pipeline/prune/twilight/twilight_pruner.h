// Stage 2 of the decode step, PRUNE (Twilight top-p): scores the selected tokens on the
// estimation store (INT4 K), softmax, and keeps per query head the smallest set reaching
// mass p; the KV head keeps the union of its query heads' sets (KeptView), with per-head
// telemetry (HeadStatsView). Device methods enqueue cuda/prune_launch.h LaunchPrune; host methods
// run pipeline/prune/twilight/cpu/twilight_prune_cpu. Stateless: one instance serves every
// executor.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

class TwilightPruner {
 public:
  size_t DeviceWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads,
                              int32_t max_select) const;
  // `kv` is read only when g.k_bits == 16 (estimation with the FP16 K itself).
  absl::Status PruneOnDevice(const PageGeometry& g, const PrunerParams& params,
                             const BatchView& batch, const QueryView& q, const QuantKView& qk,
                             const FpKvView& kv, const SelectionView& selection,
                             const KeptView& out, const HeadStatsView& stats, void* workspace,
                             size_t workspace_bytes, void* stream) const;
  absl::Status PruneOnHost(const PageGeometry& g, const PrunerParams& params,
                           const BatchView& batch, const QueryView& q, const QuantKView& qk,
                           const FpKvView& kv, const SelectionView& selection,
                           const KeptView& out, const HeadStatsView& stats) const;
};

}  // namespace twl
