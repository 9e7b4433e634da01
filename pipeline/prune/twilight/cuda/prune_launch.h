// Host launchers of the Twilight pruner's kernels (prune.cu); the contract of every launcher
// is gpu/kernels.h's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/stage_views.h"
#include "gpu/kernels.h"

namespace twl {

size_t PruneWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads,
                           int32_t max_select);

// Test and benchmark aid: where LaunchPrune leaves its estimates in `workspace` (device
// pointers, valid until the workspace is reused): scores [num_seqs * num_q_heads]
// [max_select * page_size] FP16 by candidate slot of the pruner's page list (-inf past the
// sequence end), and, growing, per query head and list entry the page's max estimate and
// its sum of exp(est - that max) [num_seqs * num_q_heads][max_select]. Growing in one stage
// the list is the selection itself.
struct PruneEstimates {
  const fp16_t* scores = nullptr;
  const float* page_max = nullptr;
  const float* page_mass = nullptr;
};
PruneEstimates PruneWorkspaceEstimates(const PageGeometry& g, int32_t num_seqs,
                                       int32_t num_q_heads, int32_t max_select,
                                       const void* workspace);

// PruneRef on the GPU: estimated scores of the selected tokens (INT4 codes, tensor cores),
// stored as FP16; per query head the smallest level set of estimated softmax weights with
// mass >= p, found by a two-level histogram (1/8 then 1/2048 logit bins, integer mass
// sums: deterministic and independent of batch-mates; the rule is TopPBinnedRef,
// reference/top_p_bins.h, equal to PruneRef's bisection up to the threshold's
// 1/2048-logit sub-bin and FP16 rounding of the scores); union over the GQA group ->
// ascending kept tokens + counts, and per-head telemetry (stats pointers nullable).
// max_select * page_size <= 2^23. params.stop_gap / max_iterations (bisection) are unused.
// params.seq_p is a device array or null. kv is read only when g.k_bits == 16.
// Growing Quest (selection from LaunchSelectPages with params.grow): the candidates of
// GrowCandidatesRef (same set up to float near-ties of the growth rule), found in two stages
// (a seed of top-bound pages, then every page only where the seed is not enough; see
// pipeline/prune/twilight/cuda/prune_grow.cuh), and per-head full_mass / cap_hit telemetry.
absl::Status LaunchPrune(const PageGeometry& g, const PrunerParams& params,
                         const BatchView& batch, const QueryView& q, const QuantKView& qk,
                         const FpKvView& kv, const SelectionView& selection,
                         const KeptView& out, const HeadStatsView& stats, void* workspace,
                         size_t workspace_bytes, void* stream);

// Benchmark aid, not for the decode path: LaunchPrune with each phase timed by events
// (estimated scores incl. the growing search / histogram top-p + kept bits / kept-list
// compaction + telemetry). Synchronizes the stream.
struct PruneProfile {
  float ms_score = 0.0f, ms_topp = 0.0f, ms_compact = 0.0f;
  float ms_grow = 0.0f;  // growing Quest: the part of ms_score in the seed/mass/search kernels
  // Growing Quest, per (sequence, KV head): how many of its searches (one per stage) the
  // radix passes decided because the sorted search could not (empty when not growing).
  std::vector<int32_t> radix_searches;
};
absl::Status ProfilePrune(const PageGeometry& g, const PrunerParams& params,
                          const BatchView& batch, const QueryView& q, const QuantKView& qk,
                          const FpKvView& kv, const SelectionView& selection,
                          const KeptView& out, const HeadStatsView& stats, void* workspace,
                          size_t workspace_bytes, void* stream, PruneProfile* profile);

}  // namespace twl
