// The Quest selector on the host (the CPU executor's, and the GPU tests' reference): per page an
// upper bound of q.k from the block's per-channel min/max, then the top budget pages per
// (sequence, KV head), always keeping the first sink pages and the last (partial) page; or,
// growing, the ranking data the pruner grows its candidates from.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// Upper bound of q.k over every token of the block: sum_c max(q_c*min_c, q_c*max_c).
float PageUpperBoundRef(const PageGeometry& g, const float* q, const fp16_t* kmin,
                        const fp16_t* kmax);

// Fixed top-budget selection of one (sequence, KV head), shared by the CPU selectors: the
// `budget` pages of [first, last) with the highest score[p] (ties to the lower page), plus
// the sink pages [0, first) and page `last`, ascending into dst. Returns how many.
int32_t KeepTopPagesRef(const std::vector<float>& score, int32_t first, int32_t last,
                        int32_t budget, int32_t* dst);

// GQA: a KV head's page score is the max of its query heads' bounds. Ties broken by the
// lower page index. Output pages ascending.
// Growing Quest (params.grow): every page, ascending, with per query head bounds of
// q.k * softmax_scale (0: 1/sqrt(head_dim)) in out.bound and the cap in out.limit (see
// SelectionView); the pruner picks the candidates.
absl::Status SelectPagesRef(const PageGeometry& g, const SelectorParams& params,
                            const BatchView& batch, const QueryView& q, const QuantKView& qk,
                            const SelectionView& out, float softmax_scale = 0.0f);

}  // namespace twl
