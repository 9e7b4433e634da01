// The CPU stages' loop over the units of a batch: every (sequence, KV head), in parallel
// with oneTBB.
#pragma once

#include <cstdint>

#include "core/stage_views.h"
#include "oneapi/tbb/parallel_for.h"

namespace twl {

// Calls fn(item, s, h) for every (sequence s, KV head h) of the batch, in parallel; item =
// s * num_kv_heads + h indexes the unit's selection, kept list and counts.
template <typename Fn>
void ForEachUnit(const PageGeometry& g, const BatchView& batch, const Fn& fn) {
  tbb::parallel_for(0, batch.num_seqs * g.num_kv_heads, [&](int32_t item) {
    fn(item, item / g.num_kv_heads, item % g.num_kv_heads);
  });
}

}  // namespace twl
