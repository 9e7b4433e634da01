// Host model of the GPU pruner's top-p rule (pipeline/prune/twilight/cuda/prune_hist.cuh), for
// the tests only: histogram selection over FP16-rounded estimated scores. It computes the same
// set as TopPThresholdRef (the smallest level set of weights with mass >= p) except at the
// resolution: scores are rounded to FP16 (as the GPU stores them) and every candidate in the
// threshold's 1/2048-logit sub-bin is kept (see prune_hist.cuh for the rule and its NaN/inf
// cases). Masses are summed as integers (weight * 2^40), so the result does not depend on the
// order of the candidates.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace twl {

struct BinnedTopP {
  std::vector<uint8_t> keep;  // per score
  int32_t kept = 0;
  double mass = 0.0;          // kept share of the total (fixed-point sums); 1 when p >= 1
  int32_t bin = -1, sub_bin = -1;  // threshold bins (-1: not a top-p head)
};

// scores: estimated scores (already scaled) of one query head's candidates; -inf marks a
// slot that is not a candidate (never kept). p >= 1 keeps every other slot.
BinnedTopP TopPBinnedRef(absl::Span<const float> scores, float p);

}  // namespace twl
