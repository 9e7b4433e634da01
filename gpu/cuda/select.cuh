// Quest selector kernels: (1) page upper bounds of q.k from each block's per-channel
// min/max, max over the query heads of the GQA group, for every ranked page of the batch;
// (2) per (sequence, KV head) the top `budget` pages by a block-wide 4-pass radix select
// on order-preserving float keys (no sort), ties to the lower page index, plus sink pages
// and the last page, written ascending with a block-wide scan.
#pragma once

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

constexpr int kBoundPagesPerWarp = 16;
constexpr int kBoundBatch = 4;  // pages whose loads are in flight together
constexpr int kBoundWarps = 8;
constexpr int kSelectThreads = 512;

// Pages ranked by bound: [sink, num_pages - 1) when the sequence has more pages than the
// selector keeps anyway; else none (every page is selected).
__device__ __forceinline__ bool RankedRange(const SelectorParams& p, int32_t num_pages,
                                            int32_t* first, int32_t* last) {
  if (p.kind == SelectorKind::kFull || num_pages <= p.budget_pages + p.sink_pages + 1) {
    return false;
  }
  *first = p.sink_pages;
  *last = num_pages - 1;
  return true;
}

// One warp per (sequence, KV head, run of kBoundPagesPerWarp pages); each lane owns
// kHeadDim/32 channels and keeps the group's query values for them in registers.
template <int kHeadDim>
__global__ void __launch_bounds__(kBoundWarps * 32)
    PageBoundKernel(PageGeometry g, SelectorParams params, BatchView batch, QueryView q,
                    QuantKView qk, float* __restrict__ scores, int32_t runs_per_seq_head) {
  constexpr int kE = kHeadDim / 32;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t task = int64_t(blockIdx.x) * kBoundWarps + warp;
  const int64_t pairs = int64_t(batch.num_seqs) * g.num_kv_heads;
  if (task >= pairs * runs_per_seq_head) return;
  const int32_t pair = int32_t(task / runs_per_seq_head);
  const int32_t run = int32_t(task % runs_per_seq_head);
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  int32_t first, last;
  if (!RankedRange(params, batch.NumPages(g, s), &first, &last)) return;
  const int32_t p0 = max(first, run * kBoundPagesPerWarp);
  const int32_t p1 = min(last, (run + 1) * kBoundPagesPerWarp);
  if (p0 >= p1) return;
  const int32_t group = batch.num_q_heads / g.num_kv_heads;

  float qv[kMaxGroup][kE];
#pragma unroll
  for (int j = 0; j < kMaxGroup; ++j) {
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      qv[j][e] = j < group ? H2F(q.q[(int64_t(s) * batch.num_q_heads + h * group + j) * kHeadDim +
                                     lane * kE + e])
                           : 0.0f;
    }
  }
  float* out = scores + int64_t(pair) * batch.max_pages;
  // Pages in groups of kBoundBatch with all their min/max loads in flight before the math.
  using Vec = typename std::conditional<kE == 4, uint2, uint32_t>::type;
  for (int32_t pb = p0; pb < p1; pb += kBoundBatch) {
    Vec mnv[kBoundBatch], mxv[kBoundBatch];
#pragma unroll
    for (int i = 0; i < kBoundBatch; ++i) {
      const int32_t p = min(pb + i, p1 - 1);
      const int64_t block = g.BlockId(batch.PageId(s, p), h);
      mnv[i] = *reinterpret_cast<const Vec*>(qk.kmin + block * kHeadDim + lane * kE);
      mxv[i] = *reinterpret_cast<const Vec*>(qk.kmax + block * kHeadDim + lane * kE);
    }
#pragma unroll
    for (int i = 0; i < kBoundBatch; ++i) {
      const fp16_t* mn = reinterpret_cast<const fp16_t*>(&mnv[i]);
      const fp16_t* mx = reinterpret_cast<const fp16_t*>(&mxv[i]);
      float b[kMaxGroup];
#pragma unroll
      for (int j = 0; j < kMaxGroup; ++j) {
        b[j] = 0.0f;
        if (j < group) {
#pragma unroll
          for (int e = 0; e < kE; ++e) {
            b[j] += fmaxf(__fmul_rn(qv[j][e], H2F(mn[e])), __fmul_rn(qv[j][e], H2F(mx[e])));
          }
        }
      }
      // Transposed warp reduction of the 8 head sums (9 shuffles instead of 40): each step
      // halves the values a lane holds; afterwards lane holds the sum of head HeadOf(lane).
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool up = lane & 16;
        const float send = up ? b[j] : b[j + 4];
        b[j] = (up ? b[j + 4] : b[j]) + __shfl_xor_sync(0xffffffffu, send, 16);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const bool up = lane & 8;
        const float send = up ? b[j] : b[j + 2];
        b[j] = (up ? b[j + 2] : b[j]) + __shfl_xor_sync(0xffffffffu, send, 8);
      }
      {
        const bool up = lane & 4;
        const float send = up ? b[0] : b[1];
        b[0] = (up ? b[1] : b[0]) + __shfl_xor_sync(0xffffffffu, send, 4);
      }
      b[0] += __shfl_xor_sync(0xffffffffu, b[0], 2);
      b[0] += __shfl_xor_sync(0xffffffffu, b[0], 1);
      const int head = ((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1);
      float best = head < group ? b[0] : -INFINITY;
      best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 4));
      best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 8));
      best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 16));
      if (lane == 0 && pb + i < p1) out[pb + i] = best;
    }
  }
}

// Order-preserving map of a float to uint32 (-0 and +0 equal).
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// One block per (sequence, KV head).
__global__ void __launch_bounds__(kSelectThreads)
    TopPagesKernel(PageGeometry g, SelectorParams params, BatchView batch,
                   const float* __restrict__ scores, SelectionView out) {
  __shared__ int hist[256];
  __shared__ int scan_scratch[33];
  __shared__ uint32_t s_digit;
  __shared__ int s_above;
  const int32_t pair = blockIdx.x;
  const int32_t s = pair / g.num_kv_heads;
  const int32_t num_pages = batch.NumPages(g, s);
  int32_t* dst = out.pages + int64_t(pair) * out.max_select;
  int32_t first = 0, last = 0;
  if (!RankedRange(params, num_pages, &first, &last)) {
    for (int32_t p = threadIdx.x; p < num_pages; p += blockDim.x) dst[p] = p;
    if (threadIdx.x == 0) out.count[pair] = num_pages;
    return;
  }
  const float* sc = scores + int64_t(pair) * batch.max_pages;

  // Radix select of the budget-th largest key among the ranked pages, 8 bits per pass.
  uint32_t prefix = 0, mask = 0;
  int remaining = params.budget_pages;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int32_t base = first; base < last; base += blockDim.x) {
      const int32_t p = base + threadIdx.x;
      const uint32_t key = p < last ? OrderedKey(sc[p]) : 0u;
      const bool counted = p < last && (key & mask) == prefix;
      const uint32_t bin = (key >> shift) & 255u;
      // Bounds of one sequence share their top bits: aggregate equal bins per warp so
      // that one lane adds for all (no 32-way shared-atomic serialization).
      const unsigned peers = __match_any_sync(0xffffffffu, counted ? bin : 256u + threadIdx.x % 32);
      if (counted && (threadIdx.x % 32) == unsigned(__ffs(peers) - 1)) {
        atomicAdd(&hist[bin], __popc(peers));
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns digits 255-8l .. 248-8l (descending); find the digit where the count
      // of larger keys first reaches `remaining`.
      const int lane = threadIdx.x;
      int mine = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) mine += hist[255 - (lane * 8 + i)];
      int incl = mine;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      int before = incl - mine;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int d = 255 - (lane * 8 + i);
        const int c = hist[d];
        if (before < remaining && before + c >= remaining) {
          s_digit = uint32_t(d);
          s_above = before;
        }
        before += c;
      }
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 255u << shift;
    remaining -= s_above;
    __syncthreads();  // s_digit/s_above are rewritten by the next pass
  }
  const uint32_t kth = prefix;  // `remaining` pages with this exact key are taken, lowest first

  // Ascending compaction: sinks, ranked winners, last page.
  int out_base = 0, eq_base = 0;
  for (int32_t base = 0; base < num_pages; base += blockDim.x) {
    const int32_t p = base + threadIdx.x;
    const bool valid = p < num_pages;
    const bool ranked = valid && p >= first && p < last;
    const uint32_t key = ranked ? OrderedKey(sc[p]) : 0u;
    const bool eq = ranked && key == kth;
    int eq_total;
    const int eq_rank = eq_base + BlockExclusiveSum(eq ? 1 : 0, scan_scratch, &eq_total);
    const bool keep = valid && (p < first || p == last || (ranked && key > kth) ||
                                (eq && eq_rank < remaining));
    int keep_total;
    const int at = out_base + BlockExclusiveSum(keep ? 1 : 0, scan_scratch, &keep_total);
    if (keep) dst[at] = p;
    out_base += keep_total;
    eq_base += eq_total;
  }
  if (threadIdx.x == 0) out.count[pair] = out_base;
}

}  // namespace twl::cuda
