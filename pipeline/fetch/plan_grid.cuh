// Launch shape, list places and grid-wide completion shared by the fetch stage's plan kernels
// (the block cache's cache/cuda/cache_plan.cu and the row cache's row_cache/cuda/row_plan.cu):
// both run warp-per-item scans of the kept lists that are latency-bound, both append to
// device lists one atomic per warp, and both finish a group's plan in whichever thread block
// arrives last.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "gpu/device.h"

namespace twl::fetch_plan {

// Blocks of `warps_per_block` warps for `warp_items` warp work items, at most
// `blocks_per_sm` blocks per SM (the rest of the items loop inside the blocks).
inline int32_t GridForWarpItems(int64_t warp_items, int32_t warps_per_block,
                                int32_t blocks_per_sm) {
  const int64_t blocks = (warp_items + warps_per_block - 1) / warps_per_block;
  return int32_t(std::clamp<int64_t>(blocks, 1, int64_t(gpu::SmCount()) * blocks_per_sm));
}

// Places in a list for the lanes set in `mask` (this warp's ballot, not 0) with one atomicAdd
// on `counter` per warp: each set lane gets the counter's old value plus its rank among the
// set lanes. Every lane of the warp calls it (warp-uniform branch).
__device__ __forceinline__ int32_t WarpClaim(int32_t* counter, unsigned mask) {
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(mask) - 1;
  int32_t base = 0;
  if (lane == leader) base = atomicAdd(counter, __popc(mask));
  base = __shfl_sync(~0u, base, leader);
  return base + __popc(mask & ((1u << lane) - 1u));
}

// True in exactly one thread block: the last one of the grid to get here. Every block's
// global writes before the call are visible to that block afterwards. The ticket resets
// itself, ready for the next kernel that uses it.
__device__ inline bool LastBlockDone(int32_t* ticket) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(ticket, 1) == int32_t(gridDim.x) - 1;
    if (last) *ticket = 0;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

}  // namespace twl::fetch_plan
