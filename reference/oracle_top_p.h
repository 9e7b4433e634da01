// Oracle top-p: exact scores on FP16 K, sort + cumulative sum. The truth the pruner is
// measured against (it needs no estimation and no bisection).
#pragma once

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// Per query head the smallest prefix of tokens sorted by exact weight (descending, ties by
// position) whose mass reaches p; per KV head the union over its group, ascending.
absl::Status OracleTopPRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                           const FpKvView& kv, float p, const KeptView& out,
                           const HeadStatsView& stats);

// Exact attention mass (normalized) that a kept set covers for each query head:
// mass[s][h] = sum over kept tokens of softmax weight. [num_seqs][num_q_heads].
absl::Status TrueKeptMassRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                             const FpKvView& kv, const KeptView& kept, float* mass);

}  // namespace twl
