// The pruner's score estimate on the host under the per-page-channel K scheme
// (core/page_layout.h, kKSchemePageChannel): q . k~ with k~_j = kmin_j + code_j * step_j.
#pragma once

#include <cstdint>

#include "core/stage_views.h"

namespace twl {

// Estimated score of row `row` of `block` for the scaled query row q [head_dim]: the FP32 sum
//   sum_j q_j * kmin_j  +  sum_j (q_j * step_j) * code_j,   step_j = PageChannelStep(...)
// (two per-block terms and one per-token dot product over the codes, in channel order).
float EstimatePageChannelScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                  int64_t block, int32_t row);

}  // namespace twl
