// The CPU executor's attention (AttendOnHost): the same softmax(q.K/sqrt(d)).V as
// SparseAttentionRef, computed per (sequence, KV head) for its whole GQA group, so that each
// kept K/V row is read and converted to float once rather than once per query head, with
// branch-free row conversion and dot products that vectorize. Long kept sets are split into
// chunks whose partial softmax states merge by their maxima (flash-decoding style), so a
// batch of one still fills every core. FP32 accumulation, FP16 output; sums run in another
// order than the reference's, so results agree with it to FP32 rounding, not bit for bit.
#pragma once

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// kept == nullptr: dense over every token of each sequence.
absl::Status GroupedAttentionCpu(const PageGeometry& g, const BatchView& batch,
                                 const QueryView& q, const FpKvView& kv, const KeptView* kept,
                                 const OutputView& out, float softmax_scale = 0.0f);

}  // namespace twl
