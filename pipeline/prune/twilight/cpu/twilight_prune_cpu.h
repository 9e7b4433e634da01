// The Twilight pruner on the host (the CPU executor's, and the GPU tests' reference): estimated
// scores q.k~ / sqrt(d) on the quantized K of the candidate tokens, rounded to FP16 (the GPU's
// score pass stores them so), softmax in FP32, and the top-p threshold by binary search.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/stage_views.h"

namespace twl {

struct TopPResult {
  float threshold = 0.0f;  // kept = { i : w_i > threshold }
  float mass = 0.0f;       // normalized mass of the kept set
  int32_t kept = 0;
  int32_t iterations = 0;
};

// Smallest set { w > t } with mass >= p * sum(w), by bisection on t: invariant
// mass(>low) >= p > mass(>high), low = 0, high = max w; each step snaps low/high to the
// nearest actual weights around mid; stops when no weight lies strictly between them (the
// smallest level set: stop_gap 0, PrunerParams' default) or, with stop_gap > 0, when
// high - low <= stop_gap * sum(w) / n (a fraction of the mean weight: an absolute gap would
// stop far from the threshold when n is large; it keeps the weights in (low, high] too).
// p >= 1 keeps every weight, zeros included (dense: threshold -1, mass 1). w need not be
// normalized; a NaN or infinite total keeps nothing (threshold +inf: no weight passes it).
TopPResult TopPThresholdRef(absl::Span<const float> w, float p, float stop_gap = 0.0f,
                            int32_t max_iterations = 64);

// Estimated score of token `row` of `block` against q (already scaled by softmax_scale):
// dequantized codes, or the FP16 K itself when g.k_bits == 16.
float EstimateScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                       const FpKvView& kv, int64_t block, int32_t row);

// EstimateScoreRef of rows [0, rows) of `block` into out[rows], the same values bit for bit
// (the per-block part of a per-page-channel estimate is formed once).
void EstimateBlockScoresRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                            const FpKvView& kv, int64_t block, int32_t rows, float* out);
// EstimateBlockScoresRef for `heads` query rows q[i] into out[i][rows], bit for bit (a
// page-channel block is dequantized once for all of them).
void EstimateBlockScoresMultiRef(const PageGeometry& g, const float* const* q, int32_t heads,
                                 const QuantKView& qk, const FpKvView& kv, int64_t block,
                                 int32_t rows, float* const* out);

// Asks the cache for the bytes EstimateBlockScoresMultiRef will read of `block` (its codes and
// their scale/zero or channel bounds; nothing at k_bits 16), without waiting for them. A
// KV head's blocks lie num_kv_heads blocks apart in the pool, so each is a new 4 KB page that
// the hardware prefetcher does not follow: asked one block ahead, the estimate no longer waits
// on memory for each block (2-core build machine, 8 KV heads: 1.29 -> 0.93 us per block).
void PrefetchEstimateBlock(const PageGeometry& g, const QuantKView& qk, int64_t block);

// Growing Quest (selection.bound set): the candidates of (sequence s, KV head h).
// Pages are ranked by key = max over the group of their bounds; levels of equal key are taken
// whole, from the top, until for every query head j of the group R_j <= c * A_j, where A_j is
// the estimated mass (sum of exp(score), each score rounded to FP16 as the GPU stores it) of
// the candidate rows, R_j = sum over the other pages of rows * exp(bound_j) (every row's score is <= its page's bound, so R_j bounds the mass
// outside) and c = GrowRemainderRatio(p, remainder_share); p >= 1: every page. Stops before
// a level that would take more ranked pages than selection.limit (cap_hit). The result is the
// smallest level set that satisfies the rule (the rule is monotone), whatever the order of
// work, so a GPU may score more pages first and get the same set.
struct GrowResult {
  std::vector<uint8_t> candidate;  // per listed page
  // Per query head of the group: A / (A + R); NaN where A is (a NaN estimate among the
  // candidates: the rule then never holds and the pair grows to every page or its cap).
  std::vector<double> inside;
  bool cap_hit = false;
};
GrowResult GrowCandidatesRef(const PageGeometry& g, const PrunerParams& params,
                             const BatchView& batch, const QueryView& q, const QuantKView& qk,
                             const FpKvView& kv, const SelectionView& selection, int32_t s,
                             int32_t h);

// For each (sequence, KV head): each query head of the group keeps its top-p set of the
// selected tokens; the KV head keeps their union (ascending positions). Growing: the
// candidates come from GrowCandidatesRef, and each head keeps its top-p set for the target
// p * (A + R) (so its estimated full-context mass is >= p, reported as full_mass), or p * A
// when the cap stopped the growth.
// `kv` is read only when g.k_bits == 16.
absl::Status PruneRef(const PageGeometry& g, const PrunerParams& params, const BatchView& batch,
                      const QueryView& q, const QuantKView& qk, const FpKvView& kv,
                      const SelectionView& selection, const KeptView& out,
                      const HeadStatsView& stats);

}  // namespace twl
