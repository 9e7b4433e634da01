// Top-p pass 1 (prune_hist.cuh): HistKernel, every valid candidate's fixed-point mass into
// its head's level-1 histogram, through per-warp sub-histograms in shared memory.
#pragma once

#include "pipeline/prune/twilight/cuda/topp_common.cuh"

namespace twl::cuda {

// Per-warp sub-histograms of the histogram kernels. A block's mass per bin is accumulated
// without shuffles or cross-warp contention: each warp owns 256 bins of two 32-bit words,
// the low 20 bits and the rest (>> 20) of every fixed-point sum added, both plain 32-bit
// shared atomics with no returned value. No overflow: a warp adds at most
// kHistChunk / kHistWarps = 1024 masses of <= 2^40 (w <= 1: every stored score <= M), so
// its high words sum to <= 1024 * 2^20 = 2^30, and its low words take at most one add
// (< 2^20) per candidate, < 2^30. The block then merges the warps into exact 64-bit sums
// (hi << 20) + lo: integer sums, so the result is the same as any other order of adds.
constexpr int kHistWarps = kHistThreads / 32;
constexpr int kSplitBits = 20;
constexpr int kHistIters = kHistChunk / (8 * kHistThreads);  // 16-byte loads per thread
static_assert(kHistChunk % (8 * kHistThreads) == 0, "whole 16-byte loads per thread");
static_assert(int64_t(kHistChunk / kHistWarps) << (40 - kSplitBits) < (int64_t(1) << 32) &&
                  int64_t(kHistChunk / kHistWarps) << kSplitBits < (int64_t(1) << 32),
              "a warp's 32-bit partial sums cannot overflow");
static_assert(kHistThreads == kHistBins, "the merge gives each thread one bin");

// v added to the shared word at shared-window address addr (no value returned). Called for
// zeros too: ptxas turns a predicated RED (or `if (v) atomicAdd`) into a branch and a
// reconvergence, which cost more per slot than the add; and through a generic pointer each
// add re-derived the shared window (four instructions; sm_90 SASS, scripts/sass-count.sh).
__device__ __forceinline__ void SharedAdd(uint32_t addr, uint32_t v) {
  asm volatile("red.shared.add.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
// m (<= 2^40, one slot's mass) into a warp's sub-histogram at shared addresses lo_s / hi_s
// (SharedAddress of its two rows).
__device__ __forceinline__ void SubHistAdd(uint32_t lo_s, uint32_t hi_s, int bin, u64 m) {
  SharedAdd(lo_s + 4 * uint32_t(bin), uint32_t(m) & ((1u << kSplitBits) - 1u));
  SharedAdd(hi_s + 4 * uint32_t(bin), uint32_t(m >> kSplitBits));
}

// Grid: x = (sequence, query head), y = chunks of kHistChunk slots. Level 1: every valid
// candidate into hist1 (level 2 is KeptKernel's). Every thread loads its kHistIters x 8
// slots up front (loads in flight together), then adds each slot's mass into its warp's
// sub-histogram.
__global__ void __launch_bounds__(kHistThreads)
    HistKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
               PruneShape shape, const fp16_t* __restrict__ scores,
               const uint32_t* __restrict__ head_max, HistWork hw) {
  __shared__ uint32_t sub_lo[kHistWarps][kHistBins];
  __shared__ uint32_t sub_hi[kHistWarps][kHistBins];
  PdlLetNextLaunch();  // KeptKernel's blocks may take the SMs this grid frees (pdl.cuh)
  const int32_t sq = blockIdx.x;
  const int32_t s = sq / batch.num_q_heads, qh = sq % batch.num_q_heads;
  const int32_t pair = s * g.num_kv_heads + qh / shape.group;
  const int32_t c0 = blockIdx.y * kHistChunk;
  // Every load the block waits for is issued first, together: its chunk's scores (bounded by
  // the row's capacity, as the candidate count is not known yet), the count and the head's
  // mode inputs. Tested in turn they were three round trips per block (count, mode, then
  // scores), in a grid of several waves of blocks.
  const fp16_t* row = scores + int64_t(sq) * shape.cand_stride;
  const bool vec = (shape.cand_stride & 7) == 0;
  const int32_t cap = min(shape.cand_stride, c0 + kHistChunk);
  uint4 raw[kHistIters];
#pragma unroll
  for (int it = 0; it < kHistIters; ++it) {
    raw[it] = LoadRaw8(row, c0 + it * 8 * kHistThreads + 8 * int32_t(threadIdx.x), cap, vec);
  }
  // Growing, with pages of a multiple of 8 rows: each load's page flag (in_set), loaded with
  // the scores. Loaded in the loop below, after its load's test, each was a round trip of
  // its own, with a division by the page size before it.
  const int32_t ps = g.page_size;
  const bool page8 = (ps & 7) == 0;  // the 8 slots of a load lie in one page
  const uint8_t* in_set = shape.in_set ? shape.in_set + int64_t(pair) * sel.max_select : nullptr;
  uint32_t in_page = 0xFFu;  // bit it: the page of load it is a candidate (page8)
  if (in_set && page8) {
    in_page = 0;
    const int32_t first = c0 + 8 * int32_t(threadIdx.x);  // < cap <= cand_stride
    const bool pow2 = (ps & (ps - 1)) == 0;
    const int shift = __ffs(ps) - 1;
#pragma unroll
    for (int it = 0; it < kHistIters; ++it) {
      const int32_t i0 = first + it * 8 * kHistThreads;
      if (i0 < cap && in_set[pow2 ? i0 >> shift : i0 / ps]) in_page |= 1u << it;
    }
  }
  const int32_t slots = sel.count[pair] * g.page_size;
  float mx = 0.0f;
  const int mode = HeadMode(params, shape, head_max, hw, s, sq, &mx);
  // The loads stay ahead of the tests below (the compiler otherwise moves each one past the
  // test before it): an empty asm statement that takes their values cannot move into a
  // branch.
#pragma unroll
  for (int it = 0; it < kHistIters; ++it) {
    asm volatile("" ::"r"(raw[it].x), "r"(raw[it].y), "r"(raw[it].z), "r"(raw[it].w));
  }
  asm volatile("" ::"r"(in_page));
  if (c0 >= slots || mode != kModeTopP) return;  // block-uniform
  const int32_t c1 = min(slots, c0 + kHistChunk);
  // Slots past the candidates read as -inf, as LoadRaw8 bounded by c1 gives them.
#pragma unroll
  for (int it = 0; it < kHistIters; ++it) {
    raw[it] = Raw8Below(raw[it], c1 - (c0 + it * 8 * kHistThreads + 8 * int32_t(threadIdx.x)));
  }
  for (int i = threadIdx.x; i < kHistWarps * kHistBins; i += blockDim.x) {
    (&sub_lo[0][0])[i] = 0;
    (&sub_hi[0][0])[i] = 0;
  }
  __syncthreads();  // sub-histograms zeroed
  const int warp = threadIdx.x >> 5;
  const uint32_t lo = SharedAddress(sub_lo[warp]), hi = SharedAddress(sub_hi[warp]);
  bool nan_seen = false;
  // Scores more than 28.5 logits below the max weigh < 2^-41: Fixed() gives them 0.
  const __half2 skip_below = HalfThreshold(mx - 28.5f);
#pragma unroll
  for (int it = 0; it < kHistIters; ++it) {
    const int32_t i0 = c0 + it * 8 * kHistThreads + 8 * int32_t(threadIdx.x);
    if (i0 >= c1) break;
    const __half2 top = Max8Nan(raw[it]);
    if (__hblt2(top, skip_below)) continue;  // AllBelow
    // live bit k: slot i0 + k lies inside the chunk and its page is a candidate, and its
    // score is not below skip_below (-inf never is live; NaN always is, to be flagged).
    uint32_t live = ~Below8(raw[it], skip_below) & 0xFFu;
    if (i0 + 8 > c1) live &= (1u << (c1 - i0)) - 1u;
    if (in_set) {
      if (page8) {
        if (!((in_page >> it) & 1u)) live = 0;
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          if (!in_set[min(i0 + k, c1 - 1) / ps]) live &= ~(1u << k);
        }
      }
    }
    // A live NaN score makes the head keep nothing (hw.bad), so what its slots add to the
    // histogram does not matter: the test is one per load (the max propagates NaN), and a
    // NaN slot below adds the mass of d = 0 (fmaxf drops the NaN), within the bounds the
    // partial sums assume. Tested per slot it cost ~5 SASS instructions of ~27.
    if (__hisnan(__low2half(top)) | __hisnan(__high2half(top))) {
      nan_seen |= (Nan8(raw[it]) & live) != 0u;
    }
    // Every slot of the load, without branches: its mass (0 when not live) goes to its bin
    // with two shared adds. Summing runs of equal bins in registers first cost ~58 SASS
    // instructions per slot in branches and reconvergence, and a peaked head's neighbours
    // rarely share a 1/8-logit bin. The sums are integers: the same histogram in any order.
    // A slot with m = 0 (d >= 28.4, -inf past the sequence, not live) adds 0 to a clamped
    // bin (d = inf or past 2^20 would index past the shared rows).
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float x = RawHalf(raw[it], k);
      const float d = fmaxf(mx - x, 0.0f);  // x <= mx: the max is over these scores
      const u64 m = (live & (1u << k)) ? Fixed(TopPWeight(d), kFixedScale) : 0;
      // m > 0: d < 28.5, so the bin is in range (a zero mass adds nothing anywhere).
      SubHistAdd(lo, hi, min(Bin1Near(d), kHistBins - 1), m);
    }
  }
  if (nan_seen) hw.bad[sq] = 1;  // benign race: every writer stores 1
  __syncthreads();  // every warp's adds done
  const int b = threadIdx.x;
  u64 sum = 0;
#pragma unroll
  for (int w = 0; w < kHistWarps; ++w) sum += (u64(sub_hi[w][b]) << kSplitBits) + sub_lo[w][b];
  u64* out = hw.hist1 + int64_t(sq) * kHistBins;
  if (sum) atomicAdd(&out[b], sum);
}

}  // namespace twl::cuda
