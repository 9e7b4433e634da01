// Quest selector kernels: (1) page upper bounds of q.k from each block's per-channel
// min/max, max over the query heads of the GQA group, for every ranked page of the batch
// (tensor cores, coalesced 16-byte loads, see PageBoundKernel); growing Quest ends here;
// (2) fixed Quest: per (sequence, KV head) the top `budget` pages by a block-wide 4-pass
// radix select on order-preserving float keys staged in shared memory (no sort), ties to
// the lower page index, plus sink pages and the last page, written ascending with a
// block-wide scan.
#pragma once

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

constexpr int kBoundWarps = 8;
constexpr int kBoundMaxTilesPerWarp = 8;  // 16 pages per tile
constexpr int kSelectThreads = 1024;  // one block per (sequence, KV head): all its pages

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
// up to 8 query heads of the GQA group at once (n = 8: one read of kmin/kmax serves every head),
// FP32 accumulation: exact products, only the order of the sum differs from the reference.
//
// Memory layout of the loads (the point of this kernel: it is bound by the metadata read).
// The MMA's k-order is free (A and B permuted alike), and the only constraint is that the
// k-slots a thread holds depend on its t4 = lane % 4 alone (B is shared by all 16 rows). So
// chunk c of thread t4 is the 16 bytes at channel 32 * (c % (kCh/2)) + 8 * t4 of kmax (first
// kCh/2 chunks, paired with q+) or kmin (last kCh/2, paired with q-): the 4 lanes of a row
// read 64 contiguous bytes, and one warp-wide 16-byte load touches 8 pages x 64 bytes
// (2 full sectors each, 8 L1 wavefronts) instead of 32 scattered half-used sectors.
// Every load of a tile is issued before any of its MMAs (kCh * 2 x 16 bytes in flight per
// thread), with the next tile's lines prefetched into L2 and the page-table lookups of the
// tile after that, so a warp's tiles do not each wait a full HBM round trip.
//
// One warp per (sequence, run of pages_per_warp pages, KV head) and head tile: kNT tiles of
// 8 query heads (1 up to group 8; 2 up to 16, the MMA's n being 8). The kNT warps of a task
// are adjacent in one block and read the same metadata at the same time (the second read is
// an L1/L2 hit), each with only its own tile's B in registers, so a 16-head group costs the
// registers of an 8-head one. Fixed Quest writes the max over the group to scores[pair][page]
// (two tiles: combined through shared memory by the warp pair). Growing Quest (params.grow)
// writes the whole selector output itself (no second kernel): every page index ascending,
// each query head's bound * scale (+inf for the sinks and the last page), and the count and
// cap.
template <int kHeadDim, int kNT>
__global__ void __launch_bounds__(kBoundWarps * 32, 2)  // <= 128 registers: 16 warps per SM
    PageBoundKernel(PageGeometry g, SelectorParams params, BatchView batch, QueryView q,
                    QuantKView qk, float* __restrict__ scores, int32_t runs_per_seq_head,
                    int32_t pages_per_warp, SelectionView grow_out, float scale) {
  constexpr int kCh = kHeadDim / 16;  // 16-byte chunks per thread and page (both halves)
  constexpr int kHalf = kCh / 2;      // of them in kmax (then as many in kmin)
  static_assert(kNT == 1 || (kNT == 2 && kBoundWarps % 2 == 0), "warp pairs share a task");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t pairs = int64_t(batch.num_seqs) * g.num_kv_heads;
  const int64_t task_all = int64_t(blockIdx.x) * kBoundWarps + warp;
  if (task_all >= pairs * runs_per_seq_head * kNT) return;  // whole warp pairs
  const int64_t task = kNT == 1 ? task_all : task_all / kNT;
  const int ht = kNT == 1 ? 0 : int(task_all % kNT);  // head tile: warp & 1 with two tiles
  // KV head fastest, then run, then sequence: the warps of a block read the same pages of
  // neighbouring heads, whose blocks are adjacent in memory (block = page * H + head).
  const int64_t per_seq = int64_t(runs_per_seq_head) * g.num_kv_heads;
  const int32_t s = int32_t(task / per_seq);
  const int32_t run = int32_t((task % per_seq) / g.num_kv_heads);
  const int32_t h = int32_t(task % g.num_kv_heads);
  const int32_t pair = s * g.num_kv_heads + h;
  const int32_t num_pages = batch.NumPages(g, s);
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  const bool grow = params.grow;
  const int32_t r0 = run * pages_per_warp;
  const int32_t r1 = min(num_pages, r0 + pages_per_warp);
  if (r0 >= r1) return;
  const int32_t j0 = 8 * ht, j1 = min(group, j0 + 8);  // this warp's heads of the group
  if (grow) {
    // The selector's page list, count, cap (tile 0) and the +inf bounds of the forced pages
    // (each tile its heads).
    int32_t* dst = grow_out.pages + int64_t(pair) * grow_out.max_select;
    if (ht == 0) {
      for (int32_t p = r0 + lane; p < r1; p += 32) dst[p] = p;
    }
    for (int32_t j = j0; j < j1; ++j) {
      float* row = grow_out.bound +
                   (int64_t(s) * batch.num_q_heads + h * group + j) * grow_out.max_select;
      for (int32_t p = r0 + lane; p < r1; p += 32) {
        if (p < params.sink_pages || p == num_pages - 1) row[p] = INFINITY;
      }
    }
    if (run == 0 && lane == 0 && ht == 0) {
      grow_out.count[pair] = num_pages;
      grow_out.limit[pair] = GrowCapPages(params, num_pages);
    }
  }
  int32_t first, last;
  if (!RankedRange(params, num_pages, &first, &last)) return;
  const int32_t p0 = max(first, r0);
  const int32_t p1 = min(last, r1);
  if (p0 >= p1) return;
  const int r = lane >> 2, t4 = lane & 3;

  // B: head j0 + r of the group (zero past it); chunk c holds q+ (c < kHalf) or q- of the
  // thread's channels of that chunk, in the thread's element order.
  uint32_t bf[kCh][2][2];
  {
    const bool real = j0 + r < group;
    const fp16_t* qh = q.q + (int64_t(s) * batch.num_q_heads + h * group + (real ? j0 + r : 0)) *
                                 kHeadDim + 8 * t4;
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      const bool plus = c < kHalf;
      fp16_t e[8];
      *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(qh + 32 * (c % kHalf));
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
  const uint4* vmax = reinterpret_cast<const uint4*>(qk.kmax + 8 * t4);
  const uint4* vmin = reinterpret_cast<const uint4*>(qk.kmin + 8 * t4);
  constexpr int kVecPerBlock = kHeadDim / 8;  // 16-byte vectors per block row of kmin/kmax
  float* out = grow ? nullptr : scores + int64_t(pair) * batch.max_pages;  // grow: none
  const int32_t tile0 = (p0 / 16) * 16;
  auto block_of = [&](int32_t page) -> int64_t {
    return (page >= p0 && page < p1) ? g.BlockId(batch.PageId(s, page), h) : -1;
  };
  // 128-byte line t4 of a block's [kmax | kmin] metadata (d = 64 has 2 lines: t4 & 1).
  auto prefetch_line = [&](int64_t block) {
    if (block < 0) return;
    constexpr int kLines = kHeadDim / 64;  // lines per half
    const int line = t4 % (2 * kLines);
    const fp16_t* half = line < kLines ? qk.kmax : qk.kmin;
    const fp16_t* at = half + block * kHeadDim + (line % kLines) * 64;
    asm volatile("prefetch.global.L2 [%0];" ::"l"(at));
  };
  // Pipeline: this tile's metadata into registers, the next tile's into L2 (prefetch: no
  // registers held), the page table of the tile after it.
  int64_t next_a = block_of(tile0 + r), next_b = block_of(tile0 + r + 8);
  int64_t far_a = block_of(tile0 + 16 + r), far_b = block_of(tile0 + 16 + r + 8);
#pragma unroll 1
  for (int32_t tb = tile0; tb < p1; tb += 16) {
    const int64_t ba = next_a, bb = next_b;
    // Out-of-range rows read block 0 (valid memory) and are never stored.
    const int64_t va = (ba < 0 ? 0 : ba) * kVecPerBlock, vb = (bb < 0 ? 0 : bb) * kVecPerBlock;
    // Loads in slabs of at most 8 chunks (one slab up to d = 128; d = 256 takes two, so the
    // kmax and kmin halves are not both held in registers at once).
    constexpr int kSlab = kCh < 8 ? kCh : 8;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int c0 = 0; c0 < kCh; c0 += kSlab) {
      uint4 ca[kSlab], cb[kSlab];
#pragma unroll
      for (int i = 0; i < kSlab; ++i) {
        const int c = c0 + i;
        const uint4* base = c < kHalf ? vmax : vmin;
        ca[i] = __ldg(base + va + 4 * (c % kHalf));
        cb[i] = __ldg(base + vb + 4 * (c % kHalf));
      }
      if (c0 == 0) {
        prefetch_line(far_a);
        prefetch_line(far_b);
        next_a = far_a;
        next_b = far_b;
        far_a = block_of(tb + 32 + r);  // consumed two iterations from now
        far_b = block_of(tb + 32 + r + 8);
      }
#pragma unroll
      for (int i = 0; i < kSlab; ++i) {
        const int c = c0 + i;
        Mma16816(acc, ca[i].x, cb[i].x, ca[i].y, cb[i].y, bf[c][0][0], bf[c][0][1]);
        Mma16816(acc, ca[i].z, cb[i].z, ca[i].w, cb[i].w, bf[c][1][0], bf[c][1][1]);
      }
    }
    // acc: (page r, heads j0+2t4, j0+2t4+1), (page r + 8, the same heads); max over the group.
    const bool h0 = j0 + 2 * t4 < group, h1 = j0 + 2 * t4 + 1 < group;
    if (grow) {
      // Every query head's own bound, scaled to logits (the pruner's growth rule needs them).
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        if (j0 + 2 * t4 + kk >= group) continue;
        float* row = grow_out.bound + (int64_t(s) * batch.num_q_heads + h * group + j0 +
                                       2 * t4 + kk) * grow_out.max_select;
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
    if constexpr (kNT > 1) {
      // Tile 1 hands its maxima to tile 0 (the other warp of the pair, same pages and loop
      // trip count) through shared memory, between two barriers of the pair's 64 threads.
      __shared__ float s_best[kBoundWarps / 2][16];
      const int slot = warp >> 1;
      if (ht == 1 && t4 == 0) {
        s_best[slot][r] = best_a;
        s_best[slot][r + 8] = best_b;
      }
      asm volatile("bar.sync %0, 64;" ::"r"(1 + slot) : "memory");
      if (ht == 0) {
        best_a = fmaxf(best_a, s_best[slot][r]);
        best_b = fmaxf(best_b, s_best[slot][r + 8]);
      }
      asm volatile("bar.sync %0, 64;" ::"r"(1 + slot) : "memory");  // s_best is reused
    }
    if (t4 == 0 && ht == 0) {
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

// One block per (sequence, KV head), fixed Quest and FULL (growing Quest: PageBoundKernel
// writes the output). The ranked pages' keys are staged once in shared memory when they fit
// (smem_keys: capacity in keys, the dynamic shared memory of the launch), so the 4 radix
// passes and the compaction read shared memory instead of re-reading the scores 5 times
// from L2 with a dependent pass structure; larger sequences read the scores directly.
__global__ void __launch_bounds__(kSelectThreads)
    TopPagesKernel(PageGeometry g, SelectorParams params, BatchView batch,
                   const float* __restrict__ scores, SelectionView out, int32_t smem_keys) {
  extern __shared__ uint32_t s_keys[];
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
  const bool staged = last - first <= smem_keys;
  if (staged) {
    for (int32_t p = first + threadIdx.x; p < last; p += blockDim.x) {
      s_keys[p - first] = OrderedKey(sc[p]);
    }
    __syncthreads();
  }
  auto key_at = [&](int32_t p) -> uint32_t {
    return staged ? s_keys[p - first] : OrderedKey(sc[p]);
  };

  // Radix select of the budget-th largest key among the ranked pages, 8 bits per pass.
  uint32_t prefix = 0, mask = 0;
  int remaining = params.budget_pages;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int32_t base = first; base < last; base += blockDim.x) {
      const int32_t p = base + threadIdx.x;
      const uint32_t key = p < last ? key_at(p) : 0u;
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

  // Ascending compaction: sinks, ranked winners, last page. One block scan per chunk of
  // pages on a packed pair (pages tied with the k-th key << 16 | pages surely kept): a tied
  // page's output slot is (sure pages before it) + min(tied pages before it, remaining).
  int sure_base = 0, eq_base = 0;
  for (int32_t base = 0; base < num_pages; base += blockDim.x) {
    const int32_t p = base + threadIdx.x;
    const bool valid = p < num_pages;
    const bool ranked = valid && p >= first && p < last;
    const uint32_t key = ranked ? key_at(p) : 0u;
    const bool eq = ranked && key == kth;
    const bool sure = valid && (p < first || p == last || (ranked && key > kth));
    int total;
    const int before = BlockExclusiveSum((eq ? 1 << 16 : 0) | (sure ? 1 : 0), scan_scratch, &total);
    const int eq_rank = eq_base + (before >> 16);
    const int at = sure_base + (before & 0xffff) + min(eq_rank, remaining);
    if (sure || (eq && eq_rank < remaining)) dst[at] = p;
    sure_base += total & 0xffff;
    eq_base += total >> 16;
  }
  const int out_base = sure_base + min(eq_base, remaining);
  if (threadIdx.x == 0) out.count[pair] = out_base;
}

}  // namespace twl::cuda
