// Reference sparse attention on the host, one query head at a time (the GPU kernels' and the
// host executor's grouped_attend_cpu's tests compare with it): exact softmax(q.K/sqrt(d)).V
// with FP32 accumulation on FP16 K/V, FP16 output. Sparse over a kept token set per
// (sequence, KV head), or dense over all.
#pragma once

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// The checks every host attention runs first: geometry, batch, null pointers, and each kept
// list's count and positions (kept == nullptr: dense).
absl::Status CheckAttentionInputs(const PageGeometry& g, const BatchView& batch,
                                  const QueryView& q, const FpKvView& kv, const KeptView* kept,
                                  const void* out);

absl::Status SparseAttentionRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                                const FpKvView& kv, const KeptView& kept, const OutputView& out,
                                float softmax_scale = 0.0f);

absl::Status DenseAttentionRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                               const FpKvView& kv, const OutputView& out,
                               float softmax_scale = 0.0f);

// Same as SparseAttentionRef but FP32 output [num_seqs][num_q_heads][head_dim] (for error
// measurement without the FP16 rounding of the output).
absl::Status SparseAttentionRefF32(const PageGeometry& g, const BatchView& batch,
                                   const QueryView& q, const FpKvView& kv, const KeptView& kept,
                                   float* out, float softmax_scale = 0.0f);

}  // namespace twl
