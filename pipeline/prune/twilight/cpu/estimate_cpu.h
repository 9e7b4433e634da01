// The pruner's score estimate on the host under the per-page-channel K scheme
// (core/page_layout.h, kKSchemePageChannel): q . k~ with k~_j = kmin_j + code_j * step_j.
#pragma once

#include <cstdint>

#include "core/stage_views.h"

namespace twl {

// Estimated score of row `row` of `block` for the scaled query row q [head_dim] (FP32, as
// QueryRow gives it: the FP16 query times the softmax scale): the FP32 sum
//   sum_j q_j * kmin_j  +  sum_j float(qs_j) * code_j,
//   qs_j = FP16_rn(q_j * step_j),   step_j = PageChannelStep(...) (FP32 IEEE division),
// (a per-block term and a per-token dot product over the codes, in channel order). qs_j is
// rounded to FP16 so that one FP16 tensor-core MMA of the codes against qs computes the
// second sum exactly (FP16 x 4-bit products are exact in FP32; only the order of the FP32
// sums differs): the GPU estimators (pipeline/prune/twilight/cuda/prune.cuh) use this
// definition. The rounding moves each term by at most 2^-11 of it (2^-25 absolute below
// FP16's normal range), far below the INT4 error.
float EstimatePageChannelScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                  int64_t block, int32_t row);

// EstimatePageChannelScoreRef for rows [0, rows) of `block` into out[rows], bit for bit: the
// per-block term and the FP16 products qs_j are formed once for the block instead of once
// per row (the same operations in the same order, so the same FP32 results).
void EstimatePageChannelBlockRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                 int64_t block, int32_t rows, float* out);

}  // namespace twl
