// What the growing-Quest kernels share (prune_grow.cuh has the two stages): block sizes,
// GrowWork, page keys and masses, the per-pair view both searches take (GrowPair), the
// radix cut by page counts and the seed list's cap.
#pragma once

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "pipeline/prune/twilight/cuda/prune.cuh"

namespace twl::cuda {

// >= 256 (a thread per radix digit); 512: one block per (sequence, KV head) is all the
// search has, so more warps per block hide more of its load latency.
constexpr int kGrowThreads = 512;
static_assert(kGrowThreads / 32 >= kMaxGroup, "a warp per head for the cumulative sums");
constexpr int kMassThreads = 256;

struct GrowWork {
  float* page_mass = nullptr;   // [num_seqs * num_q_heads][max_select] by list entry
  float* page_max = nullptr;    // [num_seqs * num_q_heads][max_select] by list entry
  uint8_t* in_set = nullptr;    // [num_seqs * num_kv_heads][max_select] by list entry
  float* head_p = nullptr;      // [num_seqs * num_q_heads]
  float* head_ratio = nullptr;  // [num_seqs * num_q_heads]
  // The list the pruner scores: ascending page indices (the seed, or every page).
  int32_t* list_pages = nullptr;  // [num_seqs * num_kv_heads][max_select]
  int32_t* list_count = nullptr;  // [num_seqs * num_kv_heads]
  int32_t* list_pos = nullptr;    // [num_seqs * num_kv_heads][max_select] page -> entry or -1
  int32_t* need = nullptr;        // [num_seqs * num_kv_heads] 1: stage 2 scores every page
  // Written by GrowPrepKernel before each search, by page: the page's key (GrowKey), and per
  // query head its A (listed pages, relative to the head's max; 0 when unlisted) and its
  // bound term b = rows * exp(bound - max). The searches then read one word per value
  // (no list indirection, no exp) in each of their passes.
  uint32_t* key = nullptr;  // [num_seqs * num_kv_heads][max_select]
  float* pa = nullptr;      // [num_seqs * num_q_heads][max_select]
  float* pb = nullptr;      // [num_seqs * num_q_heads][max_select]
  // Profiling only (ProfilePrune; null otherwise): per pair, how many of its searches the
  // radix passes decided (the sorted search could not), so tests can tell the paths apart.
  int32_t* radix_searches = nullptr;  // [num_seqs * num_kv_heads]
};

__device__ __forceinline__ float HeadShift(const uint32_t* head_max, int32_t sq) {
  return head_max[sq] ? KeyFloat(head_max[sq]) : 0.0f;
}

// A of list entry e of query head sq, relative to the head's softmax shift mx: the page's
// sum relative to its own max, rescaled (0 for a page without valid rows).
__device__ __forceinline__ float PageA(const GrowWork& work, int64_t at, float mx) {
  const float m = work.page_mass[at];
  return m == 0.0f ? 0.0f : m * expf(work.page_max[at] - mx);
}

// The digit histograms of A and R are turned into their cumulative sums in place (up to 16
// query heads per KV head: separate arrays would pass the 48 KB of static shared memory).
struct GrowSmem {
  int hc[256];
  float cum_a[257][kMaxGroup];  // per digit, then cum_a[d] = sum over digits >= d
  float cum_b[257][kMaxGroup];  // per digit, then cum_b[d] = sum over digits < d
  int cum_c[257];               // cum_c[d] = count over digits >= d
  float a_hi[kMaxGroup], b_lo[kMaxGroup];
  float fin_a[kMaxGroup], fin_b[kMaxGroup];
  uint32_t fin_max[kMaxGroup];
  int fin_rows, fin_cnt;
  int best;
};

// What CountCut needs of shared memory (GrowSmem has these fields; the sorted search keeps
// them in a union with its sort's storage).
struct CountSmem {
  int hc[256];
  int cum_c[257];
  int best;
};

// Set membership of a ranked page's key after a search: the bucket prefix under mask, and
// whether the final bucket itself is in (>=) or out (>).
struct KeyCut {
  uint32_t prefix = 0, mask = 0;
  bool strict = false;
  __device__ __forceinline__ bool In(uint32_t key) const {
    return strict ? (key & mask) > prefix : (key & mask) >= prefix;
  }
};

// Key of page i of (s, KV head h): max of its query heads' bounds; +inf = forced.
// A NaN bound (NaN q or K) bounds nothing: such a page is forced, as in the reference.
__device__ __forceinline__ uint32_t GrowKey(const SelectionView& sel, int32_t sq0, int32_t G,
                                            int32_t i, bool* forced) {
  // All G loads issued before the first use (a loop to G would wait on each in turn).
  float b[kMaxGroup];
#pragma unroll
  for (int j = 0; j < kMaxGroup; ++j) {
    b[j] = j < G ? sel.bound[int64_t(sq0 + j) * sel.max_select + i] : -INFINITY;
  }
  float k = -INFINITY;
#pragma unroll
  for (int j = 0; j < kMaxGroup; ++j) k = isnan(b[j]) ? INFINITY : fmaxf(k, b[j]);
  *forced = k == INFINITY;
  return FloatKey(k);
}

// FloatKey(+inf): the key of a forced page.
constexpr uint32_t kForcedKey = 0xFF800000u;

// A page's key as GrowPrepKernel stored it (forced: kForcedKey, as GrowKey's).
__device__ __forceinline__ uint32_t PrepKey(const GrowWork& work, int32_t pair,
                                            int32_t max_select, int32_t i, bool* forced) {
  const uint32_t k = work.key[int64_t(pair) * max_select + i];
  *forced = k == kForcedKey;
  return k;
}

// What both growth searches know of their (sequence, KV head) pair. a / b: the values
// GrowPrepKernel stored by page (a of listed pages, 0 otherwise; b of every page).
struct GrowPair {
  int32_t pair, s, G, n, listed, len, sq0, cap;
  const int32_t* pos;  // page -> list entry or -1
  float p, c;          // the sequence's p and the rule's ratio
  const GrowWork* work;
  int32_t max_select, page_size;
  __device__ __forceinline__ int32_t rows_of(int32_t i) const {
    return min(page_size, len - i * page_size);
  }
  __device__ __forceinline__ float a_of(int j, int32_t i) const {
    return work->pa[int64_t(sq0 + j) * max_select + i];
  }
  __device__ __forceinline__ float b_of(int j, int32_t i) const {
    return work->pb[int64_t(sq0 + j) * max_select + i];
  }
  // The fixed part of the rule's sums, page i: a forced page (always listed, always in) adds
  // its A to la, an unlisted page (always out) its R to lb. Returns whether page i is ranked
  // (listed, not forced): the pages the searches decide on. listed: pos[i] >= 0.
  __device__ __forceinline__ bool AddFixed(int32_t i, bool forced, bool listed,
                                           float (&la)[kMaxGroup],
                                           float (&lb)[kMaxGroup]) const {
    if (forced) {
#pragma unroll
      for (int j = 0; j < kMaxGroup; ++j) la[j] += j < G ? a_of(j, i) : 0.0f;
      return false;
    }
    if (!listed) {
#pragma unroll
      for (int j = 0; j < kMaxGroup; ++j) lb[j] += j < G ? b_of(j, i) : 0.0f;
      return false;
    }
    return true;
  }
  // Zeroes the shared sums FlushFixed adds to (the caller synchronizes before they add).
  __device__ __forceinline__ static void ZeroFixed(float* a, float* b) {
    const int t = threadIdx.x;
    if (t < kMaxGroup) {
      a[t] = 0.0f;
      b[t] = 0.0f;
    }
  }
  // AddFixed's per-thread sums into the shared a[j], b[j]: one atomic per warp and head
  // (every page adds to the same G addresses: per-page shared atomics would serialize).
  // Every lane of the warp calls it.
  __device__ __forceinline__ void FlushFixed(float (&la)[kMaxGroup], float (&lb)[kMaxGroup],
                                             float* a, float* b) const {
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) {
      la[j] = WarpSum(la[j]);
      lb[j] = WarpSum(lb[j]);
      if ((int(threadIdx.x) & 31) == 0 && j < G) {
        atomicAdd(&a[j], la[j]);
        atomicAdd(&b[j], lb[j]);
      }
    }
  }
};

__device__ __forceinline__ GrowPair MakeGrowPair(const PageGeometry& g, const PrunerParams& params,
                                                 const BatchView& batch,
                                                 const SelectionView& sel,
                                                 const PruneShape& shape, const GrowWork& work,
                                                 int32_t pair) {
  GrowPair gp;
  gp.pair = pair;
  gp.s = pair / g.num_kv_heads;
  gp.G = shape.group;
  gp.n = sel.count[pair];  // every page of the sequence (the selector lists all)
  gp.listed = work.list_count[pair];
  gp.pos = work.list_pos + int64_t(pair) * sel.max_select;
  gp.len = batch.seq_len[gp.s];
  gp.sq0 = gp.s * batch.num_q_heads + (pair % g.num_kv_heads) * gp.G;
  gp.p = params.seq_p ? params.seq_p[gp.s] : params.p;
  gp.c = GrowRemainderRatio(gp.p, params.remainder_share);
  gp.cap = sel.limit[pair];
  gp.work = &work;
  gp.max_select = sel.max_select;
  gp.page_size = g.page_size;
  return gp;
}

// Stage 1, the rule not met with every listed page in: the pair's list becomes every page,
// its head_max is cleared for the rescoring, and stage 2 takes it (every thread calls it).
__device__ __forceinline__ void HandToStage2(const GrowPair& gp, const GrowWork& work,
                                             uint32_t* head_max) {
  int32_t* list = work.list_pages + int64_t(gp.pair) * gp.max_select;
  int32_t* wpos = work.list_pos + int64_t(gp.pair) * gp.max_select;
  for (int32_t i = threadIdx.x; i < gp.n; i += blockDim.x) {
    list[i] = i;
    wpos[i] = i;
  }
  if (int(threadIdx.x) < gp.G) head_max[gp.sq0 + threadIdx.x] = 0u;
  if (threadIdx.x == 0) {
    work.list_count[gp.pair] = gp.n;
    work.need[gp.pair] = 1;
  }
}

// The search's result for head t < G: A and R of the final set, its max estimate (FloatKey,
// 0: none) and candidate rows: the share of A the top-p takes (p (A + R) / A, or p at the
// cap), A / (A + R), the softmax shift, and the telemetry.
__device__ __forceinline__ void WriteGrowHead(const GrowPair& gp, const GrowWork& work,
                                              uint32_t* head_max, const HeadStatsView& stats,
                                              int t, float A, float R, uint32_t max_key,
                                              int32_t rows, bool cap_hit) {
  const int32_t sq = gp.sq0 + t;
  float target = gp.p;  // share of A the head's top-p set must take
  // A NaN A (a NaN estimate among the candidates) keeps p: the histogram pass marks the head
  // bad and it keeps nothing, as without growth (target 1 would keep every candidate).
  if (!cap_hit && gp.p < 1.0f && !isnan(A)) {
    target = A > 0.0f ? fminf(1.0f, gp.p * ((A + R) / A)) : 1.0f;
  }
  work.head_p[sq] = target;
  work.head_ratio[sq] = A > 0.0f ? A / (A + R) : 0.0f;
  if (max_key) head_max[sq] = max_key;
  if (stats.selected) stats.selected[sq] = rows;
  if (stats.cap_hit) stats.cap_hit[sq] = cap_hit ? 1 : 0;
}

// Radix search by page counts over the ranked pages: the largest whole-level set with at
// most `cap` pages. ranked_key(i, &key) gives page i's key and whether it takes part (a
// ranked page the caller counts). Smem: hc, cum_c and best (GrowSmem or CountSmem). Every
// thread returns the same cut.
template <typename Smem, typename RankedKey>
__device__ KeyCut CountCut(Smem& sm, int32_t n, int32_t cap, RankedKey ranked_key) {
  const int t = threadIdx.x;
  KeyCut cc;
  int cnt_hi = 0;
  bool whole = false;
  for (int shift = 24; shift >= 0 && !whole; shift -= 8) {
    for (int d = t; d < 256; d += blockDim.x) sm.hc[d] = 0;
    __syncthreads();
    // Four pages per thread and step, their loads issued before the first add.
    const int32_t nt = blockDim.x;
    for (int32_t c0 = 0; c0 < n; c0 += 4 * nt) {
      uint32_t key[4];
      bool ranked[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int32_t i = c0 + u * nt + t;
        ranked[u] = i < n && ranked_key(i, &key[u]);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (ranked[u] && (key[u] & cc.mask) == cc.prefix) {
          atomicAdd(&sm.hc[(key[u] >> shift) & 255u], 1);
        }
      }
    }
    __syncthreads();
    // Counts of digits >= d by one warp, lane l owning digits [8 l, 8 l + 8) (one thread
    // walking the 256 digits was a chain of 256 dependent shared-memory steps, ~4 us a pass).
    if (t < 32) {
      int v[8], sum = 0;
#pragma unroll
      for (int k = 0; k < 8; ++k) sum += (v[k] = sm.hc[t * 8 + k]);
      int above = 0;  // lanes > t
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int x = __shfl_down_sync(0xffffffffu, sum + above, o);
        if (t + o < 32) above += x;
      }
#pragma unroll
      for (int k = 7; k >= 0; --k) sm.cum_c[t * 8 + k] = (above += v[k]);
      if (t == 0) sm.cum_c[256] = 0;
    }
    if (t == 64) sm.best = 256;
    __syncthreads();
    if (t < 256 && cnt_hi + sm.cum_c[t] <= cap) atomicMin(&sm.best, t);
    __syncthreads();
    const int d = sm.best;
    if (d == 0) {
      whole = true;  // the whole bucket fits
    } else {
      cnt_hi += sm.cum_c[d];
      cc.prefix |= uint32_t(d - 1) << shift;  // digit d - 1 does not fit whole: look inside
      cc.mask |= 255u << shift;
    }
    __syncthreads();
  }
  cc.strict = !whole;
  return cc;
}

// Pages per thread in one chunk of GrowFinish (bits of a 32-bit mask).
constexpr int kFinishItems = 16;

// Both searches' last sweep, over every page of the pair: a page is in when forced or when
// listed, ranked and inside `cut`. Writes the flags by list entry, and per head A and R of
// the final set, its max estimate over the candidates and its rows (WriteGrowHead). Smem:
// fin_a, fin_b, fin_max, fin_rows (GrowSmem or the sorted search's). In chunks of
// kFinishItems pages per thread: the keys and entries first, then one head at a time with
// all of the chunk's loads of that head issued together. (A page at a time, with every
// head's loads behind the page's key, it was a third of the sorted search's stall samples
// at 8193 pages; in chunks with the loads behind branches, still 30%: bench/RESULTS.md,
// thirty-seventh session, runs 5, 6 and 8.)
template <typename Smem>
__device__ __forceinline__ void GrowFinish(Smem& sm, const GrowPair& gp, const SelectionView& sel,
                                           uint32_t* __restrict__ head_max, const GrowWork& work,
                                           const HeadStatsView& stats, const KeyCut& cut,
                                           bool cap_hit) {
  const int t = threadIdx.x;
  const int32_t G = gp.G, n = gp.n, sq0 = gp.sq0;
  const int32_t nt = blockDim.x;
  if (t < kMaxGroup) {
    sm.fin_a[t] = sm.fin_b[t] = 0.0f;
    sm.fin_max[t] = 0u;
  }
  if (t == 0) sm.fin_rows = 0;
  __syncthreads();
  int rows_in = 0;
  for (int32_t c0 = 0; c0 < n; c0 += nt * kFinishItems) {  // the same trip count everywhere
    uint32_t key[kFinishItems];
    int32_t ent[kFinishItems];
#pragma unroll
    for (int k = 0; k < kFinishItems; ++k) {
      const int32_t i = min(c0 + k * nt + t, n - 1);  // past n: any valid address, unused
      bool forced;
      key[k] = PrepKey(work, gp.pair, sel.max_select, i, &forced);
      ent[k] = gp.pos[i];
    }
    uint32_t valid = 0, in_mask = 0;
#pragma unroll
    for (int k = 0; k < kFinishItems; ++k) {
      const int32_t i = c0 + k * nt + t;
      if (i >= n) continue;
      valid |= 1u << k;
      const bool in = key[k] == kForcedKey || (ent[k] >= 0 && cut.In(key[k]));
      if (ent[k] >= 0) work.in_set[int64_t(gp.pair) * sel.max_select + ent[k]] = in ? 1 : 0;
      if (in) {
        in_mask |= 1u << k;
        rows_in += gp.rows_of(i);
      }
    }
    for (int j = 0; j < G; ++j) {
      const int64_t row = int64_t(sq0 + j) * sel.max_select;
      const float* pm = work.page_max + row;
      float fa = 0.0f, fb = 0.0f, fm = -INFINITY;
      // Every load unconditional, from a valid address (a load behind a branch is issued
      // only when its branch is taken, each waited for before the next: run 8).
      float v[kFinishItems], mx[kFinishItems];
#pragma unroll
      for (int k = 0; k < kFinishItems; ++k) {
        const int32_t i = min(c0 + k * nt + t, n - 1);
        v[k] = (((in_mask >> k) & 1u) ? work.pa : work.pb)[row + i];  // A in, R out
        mx[k] = pm[max(ent[k], 0)];
      }
#pragma unroll
      for (int k = 0; k < kFinishItems; ++k) {
        if ((in_mask >> k) & 1u) {
          fa += v[k];
          fm = fmaxf(fm, mx[k]);
        } else if ((valid >> k) & 1u) {
          fb += v[k];
        }
      }
      // One atomic per warp and head (every page adds to the same G addresses).
      fa = WarpSum(fa);
      fb = WarpSum(fb);
      fm = WarpMax(fm);
      if ((t & 31) == 0) {
        atomicAdd(&sm.fin_a[j], fa);
        atomicAdd(&sm.fin_b[j], fb);
        if (fm > -INFINITY) atomicMax(&sm.fin_max[j], FloatKey(fm));
      }
    }
  }
  atomicAdd(&sm.fin_rows, rows_in);
  __syncthreads();
  if (t < G) {
    WriteGrowHead(gp, work, head_max, stats, t, sm.fin_a[t], sm.fin_b[t], sm.fin_max[t],
                  sm.fin_rows, cap_hit);
  }
}

// The seed list's cap of ranked pages for `pair` of n pages, within the selector's limit:
// seed < 0: auto (1/16 of the pages, at least 64); 0: every page (one stage).
__device__ __forceinline__ int32_t SeedCap(int32_t seed, int32_t n, const SelectionView& sel,
                                           int32_t pair) {
  const int32_t want = seed < 0 ? max(64, (n + 15) / 16) : (seed == 0 ? 0x7fffffff : seed);
  return min(want, sel.limit[pair]);
}

}  // namespace twl::cuda
