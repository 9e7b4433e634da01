// Growing Quest on the GPU (see GrowCandidatesRef), in two stages so that the pruner's work
// follows its candidates. Stage 1 scores a seed list per (sequence, KV head): the forced pages
// and the largest whole-level set of at most `seed` top-bound pages (SeedListKernel). If the
// growth rule already holds with every seed page in, the rule's smallest level set lies
// inside the seed (the rule is monotone), so the search below over the seed gives exactly the
// reference's set; otherwise the pair is flagged, its list becomes every page and stage 2
// scores and searches it again (only flagged pairs do work). Each stage, after the score
// kernel has estimated every row of the listed pages:
//  1. per (query head, listed page) the max m of the page's estimates and the sum of
//     exp(est - m) over its rows: written by the page-16 estimator in its own pass
//     (ScorePage16Kernel), else by PageMassKernel; GrowPrepKernel then turns them into
//     A = sum * exp(m - M) (M: the head's max estimate over the listed pages), together with
//     each page's key and bound term R, by page (one word per value for the searches);
//  2. GrowSearchKernel, one block per (sequence, KV head): the smallest whole-level set of
//     pages by key = max over the group of the page bounds that satisfies the growth rule
//     R_j <= c * A_j for every query head j, found by a 4-pass radix search on the 32-bit
//     order-preserving keys: each pass histograms the pages of the current bucket by the next
//     8 bits, with per digit and head the sums of A and of R, and picks the largest digit whose
//     "this digit and above in" set satisfies the rule (the rule is monotone in the set). The
//     same search by page counts gives the largest level set within the cap when the rule's set
//     is too large. Then per head: the share of A the top-p must take (p * (A + R) / A, or p at
//     the cap), A / (A + R) for the full-context mass, the max estimate over the candidates
//     (the softmax shift of the top-p kernel), candidate rows and the cap flag;
//  3. The top-p kernels (prune_hist.cuh) skip rows outside the candidates (in_set by list
//     entry), so they see only candidates.
// With an automatic seed below kOneStageBytes of INT4 (see RunPrune: in practice always),
// ListAllKernel replaces the seed list: one stage over every page.
// GrowSearchKernel sorts each pair of up to 8192 pages (GrowSearchSorted) instead of the
// radix passes (GrowSearchRadix, for longer pairs), both in one launch (one block-wide sort by key, then prefix sums of A and R per head), and
// SeedListSortedKernel SeedListKernel's CountCut passes (the same list).
// Floats are summed in a different order than the reference (double there), so a page whose
// inclusion is decided by a near-tie can differ (tests/gpu compare with a tolerance).
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
};

__device__ __forceinline__ float HeadShift(const uint32_t* head_max, int32_t sq) {
  return head_max[sq] ? KeyFloat(head_max[sq]) : 0.0f;
}

// Grid: x = page chunks, y = (sequence, query head). Per listed page and query head: the
// max estimate m of its rows and the sum of exp(est - m) (relative to the page's own max,
// as ScorePage16Kernel writes them in its pass; PageA rescales by the head's max).
__global__ void __launch_bounds__(kMassThreads)
    PageMassKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                   const fp16_t* __restrict__ scores, GrowWork work) {
  const int32_t sq = blockIdx.y;
  const int32_t s = sq / batch.num_q_heads, qh = sq % batch.num_q_heads;
  const int32_t pair = s * g.num_kv_heads + qh / shape.group;
  if (shape.only && !shape.only[pair]) return;
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= sel.count[pair]) return;
  const fp16_t* row = scores + int64_t(sq) * shape.cand_stride + int64_t(i) * g.page_size;
  float best = -INFINITY;
  for (int32_t r = 0; r < g.page_size; ++r) best = fmaxf(best, H2F(row[r]));
  float mass = 0.0f;
  for (int32_t r = 0; r < g.page_size; ++r) {
    const float x = H2F(row[r]);
    if (x != -INFINITY) mass += expf(x - best);  // -inf: past the sequence end
  }
  work.page_mass[int64_t(sq) * sel.max_select + i] = mass;
  work.page_max[int64_t(sq) * sel.max_select + i] = best;
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

// Grid: x = page chunks of kMassThreads, y = (sequence, KV head); stage 2: flagged pairs
// only. Every page of the pair (the selector lists all): key, and per query head pa / pb
// (see GrowWork), the values both searches computed per pass before.
__global__ void __launch_bounds__(kMassThreads)
    GrowPrepKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                   const uint32_t* __restrict__ head_max, GrowWork work, int stage) {
  const int32_t pair = blockIdx.y;
  if (stage == 2 && !work.need[pair]) return;
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= sel.count[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t G = shape.group;
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  bool forced;
  work.key[int64_t(pair) * sel.max_select + i] = GrowKey(sel, sq0, G, i, &forced);
  const int32_t e = work.list_pos[int64_t(pair) * sel.max_select + i];
  const float rows = float(min(g.page_size, batch.seq_len[s] - i * g.page_size));
  for (int j = 0; j < G; ++j) {
    const int64_t sq = sq0 + j;
    const float mx = HeadShift(head_max, int32_t(sq));
    work.pa[sq * sel.max_select + i] =
        e >= 0 ? PageA(work, sq * sel.max_select + e, mx) : 0.0f;
    work.pb[sq * sel.max_select + i] = rows * expf(sel.bound[sq * sel.max_select + i] - mx);
  }
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
  // (listed, not forced): the pages the searches decide on.
  __device__ __forceinline__ bool AddFixed(int32_t i, bool forced, float (&la)[kMaxGroup],
                                           float (&lb)[kMaxGroup]) const {
    if (forced) {
#pragma unroll
      for (int j = 0; j < kMaxGroup; ++j) la[j] += j < G ? a_of(j, i) : 0.0f;
      return false;
    }
    if (pos[i] < 0) {
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
  if (!cap_hit && gp.p < 1.0f) target = A > 0.0f ? fminf(1.0f, gp.p * ((A + R) / A)) : 1.0f;
  work.head_p[sq] = target;
  work.head_ratio[sq] = A > 0.0f ? A / (A + R) : 0.0f;
  if (max_key) head_max[sq] = max_key;
  if (stats.selected) stats.selected[sq] = rows;
  if (stats.cap_hit) stats.cap_hit[sq] = cap_hit ? 1 : 0;
}

// Radix search by page counts over the ranked pages (those with `eligible`): the largest
// whole-level set with at most `cap` pages. Every thread returns the same cut.
template <typename Eligible>
__device__ KeyCut CountCut(GrowSmem& sm, const SelectionView& sel, int32_t sq0, int32_t G,
                           int32_t n, int32_t cap, Eligible eligible) {
  const int t = threadIdx.x;
  KeyCut cc;
  int cnt_hi = 0;
  bool whole = false;
  for (int shift = 24; shift >= 0 && !whole; shift -= 8) {
    for (int d = t; d < 256; d += blockDim.x) sm.hc[d] = 0;
    __syncthreads();
    for (int32_t i = t; i < n; i += blockDim.x) {
      bool forced;
      const uint32_t key = GrowKey(sel, sq0, G, i, &forced);
      if (forced || !eligible(i) || (key & cc.mask) != cc.prefix) continue;
      atomicAdd(&sm.hc[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    if (t == 64) {
      int acc = 0;
      sm.cum_c[256] = 0;
      for (int d = 255; d >= 0; --d) sm.cum_c[d] = (acc += sm.hc[d]);
    }
    if (t == 0) sm.best = 256;
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

// The seed list's cap of ranked pages for `pair` of n pages, within the selector's limit:
// seed < 0: auto (1/16 of the pages, at least 64); 0: every page (one stage).
__device__ __forceinline__ int32_t SeedCap(int32_t seed, int32_t n, const SelectionView& sel,
                                           int32_t pair) {
  const int32_t want = seed < 0 ? max(64, (n + 15) / 16) : (seed == 0 ? 0x7fffffff : seed);
  return min(want, sel.limit[pair]);
}

// One stage (the launcher's choice when scoring every page costs less than the seed
// stage's fixed latency, e.g. few pairs): the list is every page, need = 0. Grid: x = page
// chunks of kMassThreads, y = (sequence, KV head).
__global__ void __launch_bounds__(kMassThreads)
    ListAllKernel(SelectionView sel, GrowWork work) {
  const int32_t pair = blockIdx.y;
  const int32_t n = sel.count[pair];
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    work.list_pages[int64_t(pair) * sel.max_select + i] = i;
    work.list_pos[int64_t(pair) * sel.max_select + i] = i;
  }
  if (i == 0) {
    work.list_count[pair] = n;
    work.need[pair] = 0;
  }
}

// One block per (sequence, KV head): the stage-1 list (forced pages + the largest level set
// of at most `seed` ranked pages, ascending), list_pos, need = 0.
__global__ void __launch_bounds__(kGrowThreads)
    SeedListKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                   int32_t seed, GrowWork work) {
  __shared__ GrowSmem sm;
  __shared__ int scan[33];
  const int32_t pair = blockIdx.x;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t G = shape.group;
  const int32_t n = sel.count[pair];
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  const int32_t cap = SeedCap(seed, n, sel, pair);
  const KeyCut cut = CountCut(sm, sel, sq0, G, n, cap, [](int32_t) { return true; });
  int32_t* list = work.list_pages + int64_t(pair) * sel.max_select;
  int32_t* pos = work.list_pos + int64_t(pair) * sel.max_select;
  int base = 0;
  for (int32_t b0 = 0; b0 < n; b0 += blockDim.x) {
    const int32_t i = b0 + threadIdx.x;
    bool in = false;
    if (i < n) {
      bool forced;
      const uint32_t key = GrowKey(sel, sq0, G, i, &forced);
      in = forced || cut.In(key);
    }
    int total;
    const int at = base + BlockExclusiveSum(in ? 1 : 0, scan, &total);
    if (i < n) {
      pos[i] = in ? at : -1;
      if (in) list[at] = i;
    }
    base += total;
  }
  if (threadIdx.x == 0) {
    work.list_count[pair] = base;
    work.need[pair] = 0;
  }
}

// One block per (sequence, KV head) over its list (work.list_*; stage 2: flagged pairs only).
// Stage 1 flags a pair whose rule fails with every listed page in (or p >= 1 with pages left
// out): its list becomes every page and its head_max is cleared for the rescoring.
// head_max is rewritten to the max over the candidates.
// (The radix passes, for pairs past kSortPages pages; GrowSearchKernel below dispatches.)
__device__ __noinline__ void GrowSearchRadix(GrowSmem& sm, const PageGeometry& g,
                                                const PrunerParams& params,
                                                const BatchView& batch,
                                                const SelectionView& sel,
                                                const PruneShape& shape,
                                                uint32_t* __restrict__ head_max,
                                                const GrowWork& work,
                                                const HeadStatsView& stats, int stage) {
  const int32_t pair = blockIdx.x;
  const GrowPair gp = MakeGrowPair(g, params, batch, sel, shape, work, pair);
  const int32_t G = gp.G, n = gp.n, listed = gp.listed, sq0 = gp.sq0, cap = gp.cap;
  const int32_t* pos = gp.pos;
  const float p = gp.p, c = gp.c;
  const int t = threadIdx.x;

  // A of the forced pages (always listed, always in); R of the unlisted pages (always out).
  GrowPair::ZeroFixed(sm.a_hi, sm.b_lo);
  __syncthreads();
  {
    float la[kMaxGroup], lb[kMaxGroup];
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) la[j] = lb[j] = 0.0f;
    for (int32_t i = t; i < n; i += blockDim.x) {
      bool forced;
      PrepKey(work, pair, sel.max_select, i, &forced);
      gp.AddFixed(i, forced, la, lb);
    }
    gp.FlushFixed(la, lb, sm.a_hi, sm.b_lo);
  }
  __syncthreads();

  // Histogram of the listed ranked pages of the bucket (key & mask) == prefix by the digit at
  // shift, with per digit and head the sums of A and R, then cumulative sums.
  auto histogram = [&](const KeyCut& cut, int shift) {
    for (int d = t; d < 257; d += blockDim.x) {
      if (d < 256) sm.hc[d] = 0;
      for (int j = 0; j < kMaxGroup; ++j) sm.cum_a[d][j] = sm.cum_b[d][j] = 0.0f;
    }
    __syncthreads();
    const int lane = t & 31;
    for (int32_t base = 0; base < n; base += blockDim.x) {  // same trip count for every lane
      const int32_t i = base + t;
      bool valid = false;
      int d = 0;
      if (i < n) {
        bool forced;
        const uint32_t key = PrepKey(work, pair, sel.max_select, i, &forced);
        valid = !forced && pos[i] >= 0 && (key & cut.mask) == cut.prefix;
        d = int((key >> shift) & 255u);
      }
      float va[kMaxGroup], vb[kMaxGroup];
#pragma unroll
      for (int j = 0; j < kMaxGroup; ++j) {
        va[j] = valid && j < G ? gp.a_of(j, i) : 0.0f;
        vb[j] = valid && j < G ? gp.b_of(j, i) : 0.0f;
      }
      // Pages of a bucket share their leading key bits: when a warp's pages fall into few
      // digits, sum each digit over the warp and add once (else one atomic per page).
      const unsigned peers = __match_any_sync(0xffffffffu, valid ? d : 256 + lane);
      const unsigned leaders = __ballot_sync(0xffffffffu, valid && lane == __ffs(peers) - 1);
      if (__popc(leaders) <= 4) {
        for (unsigned todo = leaders; todo; todo &= todo - 1) {  // warp-uniform
          const int l = __ffs(todo) - 1;
          const int dl = __shfl_sync(0xffffffffu, d, l);
          const bool mine = valid && d == dl;
          const int cnt = __popc(__ballot_sync(0xffffffffu, mine));
#pragma unroll
          for (int j = 0; j < kMaxGroup; ++j) {
            const float sa = WarpSum(mine ? va[j] : 0.0f);
            const float sb = WarpSum(mine ? vb[j] : 0.0f);
            if (lane == l && j < G) {
              atomicAdd(&sm.cum_a[dl][j], sa);
              atomicAdd(&sm.cum_b[dl][j], sb);
            }
          }
          if (lane == l) atomicAdd(&sm.hc[dl], cnt);
        }
      } else if (valid) {
        atomicAdd(&sm.hc[d], 1);
        for (int j = 0; j < G; ++j) {
          atomicAdd(&sm.cum_a[d][j], va[j]);
          atomicAdd(&sm.cum_b[d][j], vb[j]);
        }
      }
    }
    __syncthreads();
    // Cumulative sums, a warp per head (kGrowThreads / 32 >= kMaxGroup), lane l owning
    // digits [8 l, 8 l + 8): A from the top down (digits >= d), R from the bottom up (< d).
    if ((t >> 5) < G) {
      const int j = t >> 5;
      float va[8], vb[8], sa = 0.0f, sb = 0.0f;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        va[k] = sm.cum_a[lane * 8 + k][j];
        vb[k] = sm.cum_b[lane * 8 + k][j];
        sa += va[k];
        sb += vb[k];
      }
      float above = 0.0f, below = 0.0f;  // lanes > l (A), lanes < l (R)
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const float xa = __shfl_down_sync(0xffffffffu, sa + above, o);
        const float xb = __shfl_up_sync(0xffffffffu, sb + below, o);
        if (lane + o < 32) above += xa;
        if (lane >= o) below += xb;
      }
      float acc = above;
#pragma unroll
      for (int k = 7; k >= 0; --k) sm.cum_a[lane * 8 + k][j] = (acc += va[k]);
      acc = below;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        sm.cum_b[lane * 8 + k][j] = acc;
        acc += vb[k];
      }
      if (lane == 0) sm.cum_a[256][j] = 0.0f;
      if (lane == 31) sm.cum_b[256][j] = acc;
    }
    __syncthreads();
  };
  // The rule for "listed pages of digits >= d in" (d = 256: none of the bucket).
  auto rule = [&](int d) {
    for (int j = 0; j < G; ++j) {
      const float A = sm.a_hi[j] + sm.cum_a[d][j];
      const float R = sm.b_lo[j] + sm.cum_b[d][j];
      if (!(R <= c * A)) return false;
    }
    return true;
  };
  // Stage 1 with pages left out of the list: does every listed page in satisfy the rule?
  // (p >= 1 needs every page.) If not, hand the pair to stage 2 with every page listed.
  if (stage == 1 && listed < n) {
    bool enough = false;
    if (p < 1.0f) {
      histogram(KeyCut{}, 24);
      if (t == 0) sm.best = rule(0) ? 1 : 0;
      __syncthreads();
      enough = sm.best != 0;
      __syncthreads();
    }
    if (!enough) {
      HandToStage2(gp, work, head_max);
      return;
    }
  }

  // Mass search: the smallest level set satisfying the rule (p >= 1: every page).
  KeyCut mass_cut;
  if (p < 1.0f) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      histogram(mass_cut, shift);
      if (t == 0) sm.best = -1;
      __syncthreads();
      if (t < 256 && rule(t)) atomicMax(&sm.best, t);
      if (shift == 24 && t == 0 && rule(256)) atomicMax(&sm.best, 256);
      __syncthreads();
      int d0 = sm.best;
      if (d0 < 0) d0 = 0;  // float rounding only: the whole bucket satisfied it a pass ago
      if (d0 == 256) {     // the forced pages alone
        mass_cut.strict = true;
        break;
      }
      if (t < G) {
        sm.a_hi[t] += sm.cum_a[d0 + 1][t];
        sm.b_lo[t] += sm.cum_b[d0][t];
      }
      mass_cut.prefix |= uint32_t(d0) << shift;
      mass_cut.mask |= 255u << shift;
      __syncthreads();
    }
  }
  // Ranked pages it takes; over the cap: the largest level set within the cap.
  if (t == 0) sm.fin_cnt = 0;
  __syncthreads();
  {
    int cnt = 0;
    for (int32_t i = t; i < n; i += blockDim.x) {
      bool forced;
      const uint32_t key = PrepKey(work, pair, sel.max_select, i, &forced);
      cnt += !forced && pos[i] >= 0 && mass_cut.In(key);
    }
    atomicAdd(&sm.fin_cnt, cnt);
  }
  __syncthreads();
  const bool cap_hit = sm.fin_cnt > cap;
  KeyCut cut = mass_cut;
  if (cap_hit) {
    cut = CountCut(sm, sel, sq0, G, n, cap, [&](int32_t i) { return pos[i] >= 0; });
  }

  // Final set: flags by list entry, per head A, R and the max estimate over the candidates.
  if (t < kMaxGroup) {
    sm.fin_a[t] = sm.fin_b[t] = 0.0f;
    sm.fin_max[t] = 0u;
  }
  if (t == 0) sm.fin_rows = 0;
  __syncthreads();
  int rows_in = 0;
  {
    float fa[kMaxGroup], fb[kMaxGroup], fm[kMaxGroup];
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) {
      fa[j] = fb[j] = 0.0f;
      fm[j] = -INFINITY;
    }
    for (int32_t i = t; i < n; i += blockDim.x) {
      bool forced;
      const uint32_t key = PrepKey(work, pair, sel.max_select, i, &forced);
      const int32_t e = pos[i];
      const bool in = forced || (e >= 0 && cut.In(key));
      if (e >= 0) work.in_set[int64_t(pair) * sel.max_select + e] = in ? 1 : 0;
      if (in) rows_in += gp.rows_of(i);
#pragma unroll
      for (int j = 0; j < kMaxGroup; ++j) {
        if (j >= G) continue;
        if (in) {
          fa[j] += gp.a_of(j, i);
          fm[j] = fmaxf(fm[j], work.page_max[int64_t(sq0 + j) * sel.max_select + e]);
        } else {
          fb[j] += gp.b_of(j, i);
        }
      }
    }
    // One atomic per warp and head (see above).
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) {
      fa[j] = WarpSum(fa[j]);
      fb[j] = WarpSum(fb[j]);
      fm[j] = WarpMax(fm[j]);
      if ((t & 31) == 0 && j < G) {
        atomicAdd(&sm.fin_a[j], fa[j]);
        atomicAdd(&sm.fin_b[j], fb[j]);
        if (fm[j] > -INFINITY) atomicMax(&sm.fin_max[j], FloatKey(fm[j]));
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

// GrowSearchSorted, for pairs of at most kSortPages pages: the same rule and outputs as
// GrowSearchRadix, but instead of 4+ radix passes over the pages (each a sweep by one
// block), the listed ranked pages are sorted
// once by key (descending, in registers: 16 per thread) and the rule is evaluated at every
// key boundary from prefix sums of A and R per head: the smallest passing prefix is the
// smallest whole-level set, the largest boundary within the cap the capped set. Float sums
// are taken in another order than the radix search's (deterministic here: no float
// atomics in the prefix), so a page whose level sits on the rule's boundary may differ, as
// between the GPU and the CPU reference already.
constexpr int kSortThreads = 512;
constexpr int kSortItems = 16;
constexpr int kSortPages = kSortThreads * kSortItems;

struct Double2Sum {
  __device__ __forceinline__ double2 operator()(const double2& a, const double2& b) const {
    return make_double2(a.x + b.x, a.y + b.y);
  }
};

// Block-wide, for the sorted kernels: counts the ranked items (m), sorts (key, page)
// descending (blocked: thread t holds ranks kSortItems t ..; unranked items carry key 0,
// below every ranked key) and returns this thread's level ends: bit k when rank
// t * kSortItems + k < m is the last of its key (a whole-level prefix ends there).
// Tmp: a shared union with BlockRadixSort's .sort and an int BlockScan's .iscan.
// Keys are sorted relative to the smallest ranked key (key - min + 1, unranked 0), on only
// the bits that span them: a pair's bounds share their leading bits, so the sort takes 6-7
// passes of 4 bits instead of 8. `range`: two shared words.
template <typename Tmp>
__device__ __forceinline__ uint32_t SortLevels(uint32_t (&key)[kSortItems],
                                               int32_t (&page)[kSortItems], int ranked,
                                               Tmp& tmp, uint32_t* first_key, uint32_t* range,
                                               int* m_out) {
  using Sort = cub::BlockRadixSort<uint32_t, kSortThreads, kSortItems, int32_t>;
  using ScanI = cub::BlockScan<int, kSortThreads>;
  const int t = threadIdx.x;
  if (t == 0) {
    range[0] = 0xffffffffu;  // min ranked key
    range[1] = 0u;           // max ranked key
  }
  __syncthreads();
  {
    uint32_t lo = 0xffffffffu, hi = 0u;
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      if (key[k]) {
        lo = min(lo, key[k]);
        hi = max(hi, key[k]);
      }
    }
    if (hi) {
      atomicMin(&range[0], lo);
      atomicMax(&range[1], hi);
    }
  }
  int m = 0;
  {
    int unused;
    ScanI(tmp.iscan).ExclusiveSum(ranked, unused, m);  // its barriers publish range
  }
  __syncthreads();
  const uint32_t kmin = range[0];
  const uint32_t span = range[1] >= kmin ? range[1] - kmin + 1u : 1u;  // no ranked key: 1
  const int bits = span == 0u ? 32 : 32 - __clz(span);  // span wraps only for the full range
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) key[k] = key[k] ? key[k] - kmin + 1u : 0u;
  Sort(tmp.sort).SortDescending(key, page, 0, bits);
  first_key[t] = key[0];
  __syncthreads();
  uint32_t ends = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int r = t * kSortItems + k;
    const uint32_t next =
        k + 1 < kSortItems ? key[k + 1] : (t + 1 < kSortThreads ? first_key[t + 1] : 0u);
    if (r < m && (r + 1 == m || next != key[k])) ends |= 1u << k;
  }
  *m_out = m;
  return ends;
}

// For the sorted kernels, from SortLevels' level ends: the largest whole-level prefix of at
// most `cap` ranked pages (K = 0 always qualifies). cap_k: a shared word the caller zeroed
// (and synchronized) before; every thread calls it and gets the same K.
__device__ __forceinline__ int LevelsWithin(uint32_t ends, int32_t cap, int* cap_k) {
  const int t = threadIdx.x;
  uint32_t fits = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    if (((ends >> k) & 1u) && t * kSortItems + k + 1 <= cap) fits |= 1u << k;
  }
  if (fits) atomicMax(cap_k, t * kSortItems + 32 - __clz(fits));
  __syncthreads();
  return *cap_k;
}

// Flags (by page) the pages of the first K sorted ranks (blocked, as SortLevels leaves them).
__device__ __forceinline__ void FlagSortedPrefix(const int32_t (&page)[kSortItems], int K,
                                                 uint8_t* in_flag) {
  const int t = threadIdx.x;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    if (t * kSortItems + k < K) in_flag[page[k]] = 1;
  }
}

using SortKeys = cub::BlockRadixSort<uint32_t, kSortThreads, kSortItems, int32_t>;
using SortScanF = cub::BlockScan<double2, kSortThreads>;
using SortScanI = cub::BlockScan<int, kSortThreads>;

// Shared memory of the sorted search (a union member of GrowSearchKernel's, with GrowSmem).
struct SortedSmem {
  union {
    SortKeys::TempStorage sort;
    SortScanF::TempStorage scan;
    SortScanI::TempStorage iscan;
  } tmp;
  uint8_t in_flag[kSortPages];     // by page: a ranked page of the final set
  uint32_t first_key[kSortThreads];  // each thread's first sorted key
  uint32_t key_range[2];
  float a_fix[kMaxGroup], b_fix[kMaxGroup];  // A of forced, R of unlisted pages
  float fin_a[kMaxGroup], fin_b[kMaxGroup];
  uint32_t fin_max[kMaxGroup];
  int fin_rows, best_k, cap_k, ok_all;
};

__device__ __noinline__ void GrowSearchSorted(SortedSmem& S, const PageGeometry& g,
                                                 const PrunerParams& params,
                                                 const BatchView& batch,
                                                 const SelectionView& sel,
                                                 const PruneShape& shape,
                                                 uint32_t* __restrict__ head_max,
                                                 const GrowWork& work,
                                                 const HeadStatsView& stats, int stage) {
  using Sort = SortKeys;
  using ScanF = SortScanF;
  using ScanI = SortScanI;
  auto& tmp = S.tmp;
  auto& in_flag = S.in_flag;
  auto& first_key = S.first_key;
  auto& key_range = S.key_range;
  auto& a_fix = S.a_fix;
  auto& b_fix = S.b_fix;
  auto& fin_a = S.fin_a;
  auto& fin_b = S.fin_b;
  auto& fin_max = S.fin_max;
  auto& fin_rows = S.fin_rows;
  auto& best_k = S.best_k;
  auto& cap_k = S.cap_k;
  auto& ok_all = S.ok_all;
  const int32_t pair = blockIdx.x;
  const GrowPair gp = MakeGrowPair(g, params, batch, sel, shape, work, pair);
  const int32_t G = gp.G, n = gp.n, listed = gp.listed, sq0 = gp.sq0, cap = gp.cap;
  const int32_t* pos = gp.pos;
  const float p = gp.p, c = gp.c;
  const int t = threadIdx.x;

  // A of the forced pages, R of the unlisted ones; sort items: the listed ranked pages.
  GrowPair::ZeroFixed(a_fix, b_fix);
  if (t == 0) {
    best_k = 0x7fffffff;
    cap_k = 0;
    ok_all = 0;
    fin_rows = 0;
  }
  for (int32_t i = t; i < kSortPages; i += blockDim.x) in_flag[i] = 0;
  __syncthreads();
  uint32_t key[kSortItems];
  int32_t page[kSortItems];
  int ranked = 0;
  uint32_t forced_mask = 0, listed_mask = 0;  // bit k: page t * kSortItems + k
  {
    float la[kMaxGroup], lb[kMaxGroup];
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) la[j] = lb[j] = 0.0f;
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int32_t i = t * kSortItems + k;
      key[k] = 0u;  // below every ranked key (a ranked key is >= FloatKey(-inf) > 0)
      page[k] = -1;
      if (i >= n) continue;
      bool forced;
      const uint32_t kk = PrepKey(work, pair, sel.max_select, i, &forced);
      if (forced) forced_mask |= 1u << k;
      if (pos[i] >= 0) listed_mask |= 1u << k;
      if (gp.AddFixed(i, forced, la, lb)) {
        key[k] = kk;
        page[k] = i;
        ++ranked;
      }
    }
    gp.FlushFixed(la, lb, a_fix, b_fix);
  }
  // Cut positions: K = r + 1 after rank r, a whole level when the next key differs.
  int m = 0;  // listed ranked pages
  const uint32_t cut_mask = SortLevels(key, page, ranked, tmp, first_key, key_range, &m);
  // The rule R_j <= c A_j for every head at each cut (ok_mask), and at K = 0 (ok_zero).
  uint32_t ok_mask = cut_mask;
  bool ok_zero = true;
  for (int j = 0; j < G; ++j) {
    float av[kSortItems], bv[kSortItems];
    double sa = 0.0, sb = 0.0;
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const bool real = t * kSortItems + k < m;
      av[k] = real ? gp.a_of(j, page[k]) : 0.0f;
      bv[k] = real ? gp.b_of(j, page[k]) : 0.0f;
      sa += av[k];
      sb += bv[k];
    }
    // A and R in one scan (pairs of doubles: one pass of shuffles and barriers per head). R
    // after a cut is the total less the prefix: in float that difference lost the tail's
    // digits (a float total carries ~2^-24 of itself, R at the cut is a few percent of it),
    // which put 5 of 20 peaked 8192-page pairs one page off the reference in a CPU
    // emulation; in double the total's error is ~2^-53 of it, as the reference's sums.
    double2 before, total;
    __syncthreads();  // tmp reuse
    ScanF(tmp.scan).ExclusiveScan(make_double2(sa, sb), before, make_double2(0.0, 0.0),
                                  Double2Sum(), total);
    double pa = before.x, pb = before.y;
    const double total_b = total.y;
    const double af = a_fix[j], bf = b_fix[j];
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      pa += av[k];
      pb += bv[k];
      if (!((ok_mask >> k) & 1u)) continue;
      const int r = t * kSortItems + k;
      const double A = af + pa;
      const double R = r + 1 == m ? bf : bf + fmax(0.0, total_b - pb);
      if (!(R <= double(c) * A)) ok_mask &= ~(1u << k);
    }
    if (!(bf + total_b <= double(c) * af)) ok_zero = false;
  }
  // The smallest passing cut (none: every listed page, as the radix search's fallback).
  if (p < 1.0f) {
    if (t == 0 && ok_zero) atomicMin(&best_k, 0);
    if (ok_mask) atomicMin(&best_k, t * kSortItems + __ffs(ok_mask));  // K = r + 1
  }
  if (m > 0 && t == (m - 1) / kSortItems) ok_all = (ok_mask >> ((m - 1) % kSortItems)) & 1u;
  if (m == 0 && t == 0) ok_all = ok_zero ? 1 : 0;
  __syncthreads();
  // Stage 1 with pages left out of the list: does every listed page in satisfy the rule?
  // (p >= 1 needs every page.) If not, hand the pair to stage 2 with every page listed.
  if (stage == 1 && listed < n && (p >= 1.0f || !ok_all)) {
    HandToStage2(gp, work, head_max);
    return;
  }
  int K = p < 1.0f ? min(best_k, m) : m;
  const bool cap_hit = K > cap;
  if (cap_hit) K = LevelsWithin(cut_mask, cap, &cap_k);
  FlagSortedPrefix(page, K, in_flag);
  if (t < kMaxGroup) {
    fin_a[t] = fin_b[t] = 0.0f;
    fin_max[t] = 0u;
  }
  __syncthreads();

  // Final set over this thread's pages (blocked, as the init pass): flags by list entry and
  // rows, then per head A, R and the max estimate over the candidates, each head's loads
  // issued together.
  uint32_t in_mask = 0;
  int rows_in = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int32_t i = t * kSortItems + k;
    if (i >= n) continue;
    const bool listed_k = (listed_mask >> k) & 1u;
    const bool in = ((forced_mask >> k) & 1u) || (listed_k && in_flag[i]);
    if (listed_k) work.in_set[int64_t(pair) * sel.max_select + pos[i]] = in ? 1 : 0;
    if (in) {
      in_mask |= 1u << k;
      rows_in += gp.rows_of(i);
    }
  }
  for (int j = 0; j < G; ++j) {
    float fa = 0.0f, fb = 0.0f, fm = -INFINITY;
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int32_t i = t * kSortItems + k;
      if (i >= n) continue;
      if ((in_mask >> k) & 1u) {
        const int32_t e = pos[i];
        fa += gp.a_of(j, i);
        fm = fmaxf(fm, work.page_max[int64_t(sq0 + j) * sel.max_select + e]);
      } else {
        fb += gp.b_of(j, i);
      }
    }
    fa = WarpSum(fa);
    fb = WarpSum(fb);
    fm = WarpMax(fm);
    if ((t & 31) == 0) {
      atomicAdd(&fin_a[j], fa);
      atomicAdd(&fin_b[j], fb);
      if (fm > -INFINITY) atomicMax(&fin_max[j], FloatKey(fm));
    }
  }
  atomicAdd(&fin_rows, rows_in);
  __syncthreads();
  if (t < G) {
    WriteGrowHead(gp, work, head_max, stats, t, fin_a[t], fin_b[t], fin_max[t], fin_rows,
                  cap_hit);
  }
}

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
  if (sel.count[pair] <= kSortPages) {
    GrowSearchSorted(sm.sorted, g, params, batch, sel, shape, head_max, work, stats, stage);
  } else {
    GrowSearchRadix(sm.radix, g, params, batch, sel, shape, head_max, work, stats, stage);
  }
}

// SeedListKernel for pairs of at most kSortPages pages: one sort of the ranked pages by key
// instead of CountCut's radix passes; the cut is the largest key boundary within the cap,
// an integer decision, so the list is the same as SeedListKernel's. One scan writes it.
__global__ void __launch_bounds__(kSortThreads, 1)
    SeedListSortedKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                         int32_t seed, GrowWork work) {
  using Sort = cub::BlockRadixSort<uint32_t, kSortThreads, kSortItems, int32_t>;
  using ScanI = cub::BlockScan<int, kSortThreads>;
  __shared__ union {
    typename Sort::TempStorage sort;
    typename ScanI::TempStorage iscan;
  } tmp;
  __shared__ uint8_t in_flag[kSortPages];  // by page: listed
  __shared__ uint32_t first_key[kSortThreads];
  __shared__ uint32_t key_range[2];
  __shared__ int cap_k;
  const int32_t pair = blockIdx.x;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t G = shape.group;
  const int32_t n = sel.count[pair];  // <= kSortPages
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  const int t = threadIdx.x;
  const int32_t cap = SeedCap(seed, n, sel, pair);
  for (int32_t i = t; i < kSortPages; i += blockDim.x) in_flag[i] = 0;
  if (t == 0) cap_k = 0;
  __syncthreads();
  uint32_t key[kSortItems];
  int32_t page[kSortItems];
  int ranked = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int32_t i = t * kSortItems + k;
    key[k] = 0u;  // below every ranked key
    page[k] = -1;
    if (i >= n) continue;
    bool forced;
    const uint32_t kk = GrowKey(sel, sq0, G, i, &forced);
    if (forced) {
      in_flag[i] = 1;
    } else {
      key[k] = kk;
      page[k] = i;
      ++ranked;
    }
  }
  int m = 0;
  const uint32_t ends = SortLevels(key, page, ranked, tmp, first_key, key_range, &m);
  FlagSortedPrefix(page, LevelsWithin(ends, cap, &cap_k), in_flag);
  __syncthreads();
  // Ascending list: thread t lists pages [16 t, 16 t + 16).
  int cnt = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int32_t i = t * kSortItems + k;
    cnt += i < n && in_flag[i] ? 1 : 0;
  }
  int at = 0, total = 0;
  __syncthreads();  // tmp reuse after the sort
  ScanI(tmp.iscan).ExclusiveSum(cnt, at, total);
  int32_t* list = work.list_pages + int64_t(pair) * sel.max_select;
  int32_t* pos = work.list_pos + int64_t(pair) * sel.max_select;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int32_t i = t * kSortItems + k;
    if (i >= n) continue;
    if (in_flag[i]) {
      pos[i] = at;
      list[at++] = i;
    } else {
      pos[i] = -1;
    }
  }
  if (t == 0) {
    work.list_count[pair] = total;
    work.need[pair] = 0;
  }
}

}  // namespace twl::cuda
