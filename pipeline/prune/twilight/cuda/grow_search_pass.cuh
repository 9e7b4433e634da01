// Growing Quest, step 2 of a stage (prune_grow.cuh): GrowSearchKernel, one block per
// (sequence, KV head), the sorted or the radix search by the pair's length.
#pragma once

#include "pipeline/prune/twilight/cuda/grow_search_radix.cuh"
#include "pipeline/prune/twilight/cuda/grow_search_sorted.cuh"

namespace twl::cuda {

// One block per (sequence, KV head) (stage 2: flagged pairs only): the sorted search for
// pairs of up to kSortPages pages, the radix passes beyond, in one launch (mixed lengths
// around 128k have both; two launches would add their latencies).
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
  if (sel.count[pair] <= kSortPages) {
    GrowSearchSorted(sm.sorted, gp, sel, head_max, work, stats, stage);
  } else {
    GrowSearchRadix(sm.radix, gp, sel, head_max, work, stats, stage);
  }
}

}  // namespace twl::cuda
