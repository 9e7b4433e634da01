// The pruner's score estimate on the host under the per-page-channel K scheme
// (core/page_layout.h, kKSchemePageChannel): q . k~ with k~_j = FP16(kmin_j + code_j * step_j).
#pragma once

#include <cstdint>

#include "core/stage_views.h"

namespace twl {

// Estimated score of row `row` of `block` for the scaled query row q [head_dim] (FP32, as
// QueryRow gives it: the FP16 query times the softmax scale): the FP32 sum, in channel order,
//   sum_j q_j * k~_j,   k~_j = PageChannelDequantValue(code_j, PageChannelStepValue(...), kmin_j)
// (core/quantize.h): K dequantized to FP16 with one rounding per element. The GPU estimators
// (pipeline/prune/twilight/cuda/prune.cuh) form the same k~ with FP16 tensor-core operands
// (HSUB2 / HMUL2 / HFMA2 on the block's bounds) and multiply it by the FP16 query in one MMA,
// scaled in FP32 after: only the order and the place of the FP32 roundings differ.
float EstimatePageChannelScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                  int64_t block, int32_t row);

// EstimatePageChannelScoreRef for rows [0, rows) of `block` into out[rows], bit for bit: the
// steps and each channel's dequantized values are formed once for the block instead of once
// per row (the same operations in the same order, so the same FP32 results).
void EstimatePageChannelBlockRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                 int64_t block, int32_t rows, float* out);
// The same for `heads` query rows q[i] into out[i][rows], bit for bit: the block is
// dequantized once for all of them (a GQA group's heads read the same page).
void EstimatePageChannelBlockMultiRef(const PageGeometry& g, const float* const* q,
                                      int32_t heads, const QuantKView& qk, int64_t block,
                                      int32_t rows, float* const* out);

}  // namespace twl
