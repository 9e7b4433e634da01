// CPU reference of the Quest selector: per page an upper bound of q.k from the block's
// per-channel min/max, then the top budget pages per (sequence, KV head), always keeping
// the first sink pages and the last (partial) page.
#pragma once

#include "absl/status/status.h"
#include "gpu/stage_views.h"

namespace twl {

// Upper bound of q.k over every token of the block: sum_c max(q_c*min_c, q_c*max_c).
float PageUpperBoundRef(const PageGeometry& g, const float* q, const fp16_t* kmin,
                        const fp16_t* kmax);

// GQA: a KV head's page score is the max of its query heads' bounds. Ties broken by the
// lower page index. Output pages ascending.
absl::Status SelectPagesRef(const PageGeometry& g, const SelectorParams& params,
                            const BatchView& batch, const QueryView& q, const QuantKView& qk,
                            const SelectionView& out);

}  // namespace twl
