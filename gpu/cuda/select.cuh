// Quest selector kernels: (1) page upper bounds of q.k from each block's per-channel
// min/max, max over the query heads of the GQA group, for every ranked page of the batch
// (tensor cores, see PageBoundKernel);
// (2) per (sequence, KV head) the top `budget` pages by a block-wide 4-pass radix select
// on order-preserving float keys (no sort), ties to the lower page index, plus sink pages
// and the last page, written ascending with a block-wide scan.
#pragma once

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

constexpr int kBoundPagesPerWarp = 64;  // 4 tiles of 16 pages per warp
constexpr int kBoundWarps = 8;
constexpr int kSelectThreads = 512;

// Pages ranked by bound: [sink, num_pages - 1) when the sequence has more pages than the
// selector keeps anyway; else none (every page is selected).
// Growing Quest ranks every page but the sinks and the last page.
__device__ __forceinline__ bool RankedRange(const SelectorParams& p, int32_t num_pages,
                                            int32_t* first, int32_t* last) {
  if (p.kind == SelectorKind::kFull) return false;
  if (p.grow) {
    *first = p.sink_pages;
    *last = num_pages - 1;
    return *first < *last;
  }
  if (num_pages <= int64_t(p.budget_pages) + p.sink_pages + 1) return false;  // 64 bits
  *first = p.sink_pages;
  *last = num_pages - 1;
  return true;
}

// Page bounds as a tensor-core GEMV. The Quest bound sum_c max(q_c min_c, q_c max_c) equals
// q+ . max + q- . min with q+ = max(q, 0), q- = min(q, 0) (the same products), so for 16
// pages at a time A = [kmax | kmin] rows (FP16 as stored: no conversion), B = [q+ ; q-] for
// the group's query heads (n = 8), FP32 accumulation: exact products, only the order of the
// sum differs from the reference. As in the pruner, the MMA's k-order is permuted so that
// each thread's A fragments are the 16-byte chunks it loads itself (thread t4 of a row owns
// a quarter of [kmax | kmin]). One warp per (sequence, KV head, run of kBoundPagesPerWarp
// pages), kBoundPagesPerWarp / 16 tiles; the page-table lookups of the next tile are issued
// before the current tile's math.
template <int kHeadDim>
__global__ void __launch_bounds__(kBoundWarps * 32)
    PageBoundKernel(PageGeometry g, SelectorParams params, BatchView batch, QueryView q,
                    QuantKView qk, float* __restrict__ scores, int32_t runs_per_seq_head,
                    SelectionView grow_out, float scale) {
  constexpr int kPer = kHeadDim / 2;  // elements of [kmax | kmin] per thread and page
  constexpr int kCh = kPer / 8;       // 16-byte chunks per thread and page
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
  const int r = lane >> 2, t4 = lane & 3;

  // B: head r of the group (zero past it), q+ for threads t4 = 0, 1 (the kmax half of the
  // row), q- for t4 = 2, 3 (the kmin half), in the thread's element order.
  uint32_t bf[kCh][2][2];
  {
    const bool real = r < group;
    const fp16_t* qh = q.q + (int64_t(s) * batch.num_q_heads + h * group + (real ? r : 0)) *
                                 kHeadDim + (t4 & 1) * kPer;
    const bool plus = t4 < 2;
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      fp16_t e[8];
      *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(qh + c * 8);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const bool neg = (e[i] & 0x8000u) != 0;
        if (!real || (plus ? neg : !neg)) e[i] = 0;  // q+ keeps >= 0, q- keeps < 0
      }
      bf[c][0][0] = uint32_t(e[0]) | (uint32_t(e[1]) << 16);
      bf[c][0][1] = uint32_t(e[2]) | (uint32_t(e[3]) << 16);
      bf[c][1][0] = uint32_t(e[4]) | (uint32_t(e[5]) << 16);
      bf[c][1][1] = uint32_t(e[6]) | (uint32_t(e[7]) << 16);
    }
  }
  const fp16_t* meta = (t4 < 2 ? qk.kmax : qk.kmin) + (t4 & 1) * kPer;
  float* out = params.grow ? nullptr : scores + int64_t(pair) * batch.max_pages;  // grow: none
  const int32_t tile0 = (p0 / 16) * 16;
  auto block_of = [&](int32_t page) -> int64_t {
    return (page >= p0 && page < p1) ? g.BlockId(batch.PageId(s, page), h) : -1;
  };
  int64_t next_a = block_of(tile0 + r), next_b = block_of(tile0 + r + 8);
  for (int32_t tb = tile0; tb < p1; tb += 16) {
    const int64_t ba = next_a, bb = next_b;
    next_a = block_of(tb + 16 + r);  // lookups of the next tile, consumed next iteration
    next_b = block_of(tb + 16 + r + 8);
    uint4 ca[kCh], cb[kCh];
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      ca[c] = *reinterpret_cast<const uint4*>(meta + (ba < 0 ? 0 : ba) * kHeadDim + c * 8);
      cb[c] = *reinterpret_cast<const uint4*>(meta + (bb < 0 ? 0 : bb) * kHeadDim + c * 8);
    }
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      Mma16816(acc, ca[c].x, cb[c].x, ca[c].y, cb[c].y, bf[c][0][0], bf[c][0][1]);
      Mma16816(acc, ca[c].z, cb[c].z, ca[c].w, cb[c].w, bf[c][1][0], bf[c][1][1]);
    }
    // acc: (page r, heads 2t4, 2t4+1), (page r + 8, heads 2t4, 2t4+1); max over the group.
    const bool h0 = 2 * t4 < group, h1 = 2 * t4 + 1 < group;
    if (params.grow) {
      // Every query head's own bound, scaled to logits (the pruner's growth rule needs them).
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        if (2 * t4 + kk >= group) continue;
        float* row = grow_out.bound +
                     (int64_t(s) * batch.num_q_heads + h * group + 2 * t4 + kk) * grow_out.max_select;
        if (ba >= 0) row[tb + r] = scale * acc[kk];
        if (bb >= 0) row[tb + r + 8] = scale * acc[2 + kk];
      }
      continue;
    }
    float best_a = fmaxf(h0 ? acc[0] : -INFINITY, h1 ? acc[1] : -INFINITY);
    float best_b = fmaxf(h0 ? acc[2] : -INFINITY, h1 ? acc[3] : -INFINITY);
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
      best_a = fmaxf(best_a, __shfl_xor_sync(0xffffffffu, best_a, o));
      best_b = fmaxf(best_b, __shfl_xor_sync(0xffffffffu, best_b, o));
    }
    if (t4 == 0) {
      if (ba >= 0) out[tb + r] = best_a;
      if (bb >= 0) out[tb + r + 8] = best_b;
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
  if (params.grow && params.kind == SelectorKind::kQuest) {
    // Every page ascending; the sinks and the last page get +inf bounds (always candidates).
    const int32_t group = batch.num_q_heads / g.num_kv_heads;
    const int32_t h = pair % g.num_kv_heads;
    for (int32_t p = threadIdx.x; p < num_pages; p += blockDim.x) {
      dst[p] = p;
      if (p < params.sink_pages || p == num_pages - 1) {
        for (int32_t j = 0; j < group; ++j) {
          out.bound[(int64_t(s) * batch.num_q_heads + h * group + j) * out.max_select + p] =
              INFINITY;
        }
      }
    }
    if (threadIdx.x == 0) {
      out.count[pair] = num_pages;
      out.limit[pair] = GrowCapPages(params, num_pages);
    }
    return;
  }
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
