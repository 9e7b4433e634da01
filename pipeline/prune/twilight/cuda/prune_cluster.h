// Host side of the fused cluster pruner (prune_cluster.cuh): whether a launch takes it, with
// which cluster, and its launcher. Used by RunPrune (prune.cu); no CUDA types here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// Auto mode takes the cluster from this many candidate slots per (sequence, KV head) on
// (the FULL selector's rows at long contexts; a Quest budget of a few thousand tokens keeps
// the passes, where a cluster's barriers would outweigh its few bytes).
constexpr int64_t kClusterAutoMinSlots = 32768;

struct ClusterPrunePlan {
  int32_t cluster = 0;  // blocks per (sequence, KV head); 0: the passes
  int32_t slots_per_block = 0;
  size_t smem_bytes = 0;  // dynamic shared memory per block
};

// The mode is the environment's TWL_PRUNE_CLUSTER: unset, auto (at least
// kClusterAutoMinSlots candidates and two blocks per SM); "0" never (the passes, for A/B
// runs); "1" whenever the shape fits a cluster at all. The shape: INT4 per token, pages of
// 16, head dim 64/128, group <= 8, not growing, not dense. Queries the device (cached per
// shape). The result does not depend on the choice.
ClusterPrunePlan PlanClusterPrune(const PageGeometry& g, const PrunerParams& params,
                                  int32_t group, int32_t max_select, bool grow);

// The fused pruner for plan.cluster > 0 (see prune_cluster.cuh): kept tokens, counts and
// telemetry, as LaunchPrune's passes; reads no workspace.
absl::Status LaunchClusterPrune(const ClusterPrunePlan& plan, const PageGeometry& g,
                                const PrunerParams& params, const BatchView& batch,
                                const QueryView& q, const QuantKView& qk,
                                const SelectionView& selection, const KeptView& out,
                                const HeadStatsView& stats, int32_t group, float scale,
                                void* stream);

}  // namespace twl
