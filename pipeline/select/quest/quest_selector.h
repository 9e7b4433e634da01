// Quest (Tang et al. 2024): a page's score is an upper bound of q.k over its tokens,
// sum_c max(q_c * min_c, q_c * max_c), from the per-channel min/max of K over the block's
// filled rows (QuantKView::kmin/kmax, written by the append kernels). Fixed Quest keeps the
// top budget pages; growing Quest hands every page with its bound to the pruner.
#pragma once

#include "pipeline/select/selector.h"

namespace twl {

// Per block: kmin and kmax, head_dim FP16 values each.
inline int64_t QuestMetadataBytesPerBlock(const PageGeometry& g) {
  return 2 * int64_t(g.head_dim) * int64_t(sizeof(fp16_t));
}

const Selector& QuestSelector();

}  // namespace twl
