// CPU reference of the Twilight pruner: estimated scores q.k~ / sqrt(d) on the quantized K
// of the candidate tokens, softmax in FP32, and the top-p threshold by binary search.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gpu/stage_views.h"

namespace twl {

struct TopPResult {
  float threshold = 0.0f;  // kept = { i : w_i > threshold }
  float mass = 0.0f;       // normalized mass of the kept set
  int32_t kept = 0;
  int32_t iterations = 0;
};

// Smallest set { w > t } with mass >= p * sum(w), by bisection on t: invariant
// mass(>low) >= p > mass(>high), low = 0, high = max w; each step snaps low/high to the
// nearest actual weights around mid; stops when no weight lies strictly between them or
// high - low <= stop_gap * sum(w) / n (a fraction of the mean weight: an absolute gap would
// stop far from the threshold when n is large). p >= 1 keeps every weight, zeros included
// (dense: threshold -1, mass 1). w need not be normalized.
TopPResult TopPThresholdRef(absl::Span<const float> w, float p, float stop_gap = 1e-4f,
                            int32_t max_iterations = 64);

// Estimated score of token `row` of `block` against q (already scaled by softmax_scale):
// dequantized codes, or the FP16 K itself when g.k_bits == 16.
float EstimateScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                       const FpKvView& kv, int64_t block, int32_t row);

// For each (sequence, KV head): each query head of the group keeps its top-p set of the
// selected tokens; the KV head keeps their union (ascending positions).
// `kv` is read only when g.k_bits == 16.
absl::Status PruneRef(const PageGeometry& g, const PrunerParams& params, const BatchView& batch,
                      const QueryView& q, const QuantKView& qk, const FpKvView& kv,
                      const SelectionView& selection, const KeptView& out,
                      const HeadStatsView& stats);

}  // namespace twl
