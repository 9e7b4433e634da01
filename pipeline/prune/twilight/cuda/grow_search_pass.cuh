// Growing Quest, step 2 of a stage (prune_grow.cuh): GrowSearchKernel, one block per
// (sequence, KV head), the sorted search and, where it cannot decide, the radix search.
#pragma once

#include "pipeline/prune/twilight/cuda/grow_search_radix.cuh"
#include "pipeline/prune/twilight/cuda/grow_search_sorted.cuh"

namespace twl::cuda {

// One block per (sequence, KV head) (stage 2: flagged pairs only): the sorted search, over
// every page or (past kSortPages pages) over the top ones, and the radix passes where the
// top ones do not decide, in one launch (mixed lengths around 128k have both; two launches
// would add their latencies).
__global__ void __launch_bounds__(kSortThreads, 1)
    GrowSearchKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
                     PruneShape shape, uint32_t* __restrict__ head_max, GrowWork work,
                     HeadStatsView stats, int stage) {
  static_assert(kSortThreads == kGrowThreads, "one block size for both searches");
  __shared__ union {
    GrowSmem radix;
    SortedSmem sorted;
  } sm;
  const int32_t pair = blockIdx.x;
  if (stage == 2 && !work.need[pair]) return;
  const GrowPair gp = MakeGrowPair(g, params, batch, sel, shape, work, pair);
  if (!GrowSearchSorted(sm.sorted, gp, sel, head_max, work, stats, stage)) {
    if (work.radix_searches != nullptr && threadIdx.x == 0) ++work.radix_searches[pair];
    GrowSearchRadix(sm.radix, gp, sel, head_max, work, stats, stage);
  }
}

}  // namespace twl::cuda
