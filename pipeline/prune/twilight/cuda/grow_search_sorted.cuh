// Growth search over the sorted page keys (prune_grow.cuh, step 2): every pair of at most
// kSortPages pages, and longer pairs whose answer lies among their top kSortPages.
#pragma once

#include "pipeline/prune/twilight/cuda/grow_sort.cuh"

namespace twl::cuda {

// GrowSearchSorted: the same rule and outputs as GrowSearchRadix, but instead of 4+ radix
// passes over the pages (each a sweep by one block, with float sums per digit), the listed
// ranked pages are sorted once by key (descending, in registers: 16 per thread) and the rule
// is evaluated at every key boundary from prefix sums of A and R per head: the smallest
// passing prefix is the smallest whole-level set, the largest boundary within the cap the
// capped set. Float sums are taken in another order than the radix search's, so a page
// whose level sits on the rule's boundary may differ, as between the GPU and the CPU
// reference already.
//
// A pair of more pages than the sort holds (a 128k serving sequence has 8193+) sorts its top
// ones: the largest whole-level set of at most kSortPages ranked pages (CountCut: integer
// histograms only), compacted into shared memory; the ranked pages below it count as out
// (their R joins the fixed part). The rule at each cut inside that set is then exactly the
// rule over all pages, so a passing cut there is the answer. When none passes (a flat pair
// needs pages below the set, or p >= 1) the set needed is over the cap if the top set holds
// the cap's pages, and the cap's cut is a prefix of this sort. Otherwise, or in a stage 1
// whose list does not fit (stage 1 must know the rule with every listed page in), it returns
// false and the radix search decides. At 128k, B = 1 the radix search took 416-446 us of a
// 0.61-0.65 ms growing-Quest step, the top set's sort takes 107-118 us of 0.31 ms (H100,
// bench/RESULTS.md, thirty-sixth to thirty-eighth sessions).

// Shared memory of the sorted search (a union member of GrowSearchKernel's, with GrowSmem).
struct SortedSmem {
  union {
    SortKeys::TempStorage sort;
    SortScanF::TempStorage scan;
    SortScanI::TempStorage iscan;
    CountSmem count;               // the top set's cut (before the compaction)
    int32_t top_pages[kSortPages];  // the top set's pages (until they are in registers)
  } tmp;
  uint32_t first_key[kSortThreads];  // each thread's first sorted key
  uint32_t key_range[2];
  float a_fix[kMaxGroup], b_fix[kMaxGroup];  // A of forced pages, R of pages always out
  float fin_a[kMaxGroup], fin_b[kMaxGroup];
  uint32_t fin_max[kMaxGroup];
  int fin_rows, best_k, cap_k, ok_all, top_count, below_count;
  uint32_t last_key;  // the final set's lowest ranked key (0xffffffff: no ranked page)
};

// Returns false, having decided nothing, when the radix search must decide (see above).
__device__ __noinline__ bool GrowSearchSorted(
    SortedSmem& S, const GrowPair gp, const SelectionView& sel,
    uint32_t* __restrict__ head_max, const GrowWork& work, const HeadStatsView& stats,
    int stage) {
  using ScanF = SortScanF;
  auto& tmp = S.tmp;
  auto& a_fix = S.a_fix;
  auto& b_fix = S.b_fix;
  const int32_t pair = blockIdx.x;
  const int32_t G = gp.G, n = gp.n, listed = gp.listed, cap = gp.cap;
  const int32_t* pos = gp.pos;
  const float p = gp.p, c = gp.c;
  const int t = threadIdx.x;
  const bool top = n > kSortPages;

  GrowPair::ZeroFixed(a_fix, b_fix);
  if (t == 0) {
    S.best_k = 0x7fffffff;
    S.cap_k = 0;
    S.ok_all = 0;
    S.top_count = 0;
    S.below_count = 0;
    S.last_key = 0xffffffffu;
  }
  __syncthreads();
  uint32_t key[kSortItems];
  int32_t page[kSortItems];
  int ranked = 0;
  if (!top) {
    // Items blocked by page (thread t: pages kSortItems t ..); A of the forced pages, R of
    // the unlisted ones; sort items: the listed ranked pages.
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
      if (gp.AddFixed(i, forced, pos[i] >= 0, la, lb)) {
        key[k] = kk;
        page[k] = i;
        ++ranked;
      }
    }
    gp.FlushFixed(la, lb, a_fix, b_fix);
  } else {
    auto ranked_key = [&](int32_t i, uint32_t* k) {
      bool forced;
      *k = PrepKey(work, pair, sel.max_select, i, &forced);
      return !forced && pos[i] >= 0;
    };
    const KeyCut top_cut = CountCut(tmp.count, n, kSortPages, ranked_key);
    // One sweep: the fixed sums (a ranked page below the top set is out: its R joins them)
    // and the top set's pages, a slot per page from one shared atomic per warp (the sort
    // orders them; their order here changes nothing but float rounding in the double sums).
    float la[kMaxGroup], lb[kMaxGroup];
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) la[j] = lb[j] = 0.0f;
    int below = 0;
    // Four pages per thread and step, their keys and entries loaded before the first use.
    const int32_t nt = blockDim.x;
    for (int32_t c0 = 0; c0 < n; c0 += 4 * nt) {  // the same trip count for every lane
      uint32_t kk[4];
      bool listed[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int32_t i = c0 + u * nt + t;
        bool forced;
        kk[u] = i < n ? PrepKey(work, pair, sel.max_select, i, &forced) : 0u;
        listed[u] = i < n && pos[i] >= 0;
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int32_t i = c0 + u * nt + t;
        bool in_top = false;
        if (i < n && gp.AddFixed(i, kk[u] == kForcedKey, listed[u], la, lb)) {
          if (top_cut.In(kk[u])) {
            in_top = true;
          } else {
            ++below;
#pragma unroll
            for (int j = 0; j < kMaxGroup; ++j) lb[j] += j < G ? gp.b_of(j, i) : 0.0f;
          }
        }
        const unsigned mask = __ballot_sync(0xffffffffu, in_top);
        int slot = 0;
        if ((t & 31) == 0 && mask) slot = atomicAdd(&S.top_count, __popc(mask));
        slot = __shfl_sync(0xffffffffu, slot, 0) + __popc(mask & ((1u << (t & 31)) - 1u));
        if (in_top) tmp.top_pages[slot] = i;
      }
    }
    gp.FlushFixed(la, lb, a_fix, b_fix);
    if (below) atomicAdd(&S.below_count, below);
    __syncthreads();
    const int m_top = S.top_count;  // <= kSortPages (CountCut's cap)
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int e = t * kSortItems + k;
      key[k] = 0u;
      page[k] = -1;
      if (e < m_top) {
        page[k] = tmp.top_pages[e];
        bool forced;
        key[k] = PrepKey(work, pair, sel.max_select, page[k], &forced);
        ++ranked;
      }
    }
    __syncthreads();  // the sort below reuses tmp
  }
  // Cut positions: K = r + 1 after rank r, a whole level when the next key differs.
  int m = 0;  // sorted ranked pages
  const uint32_t cut_mask = SortLevels(key, page, ranked, tmp, S.first_key,
                                       S.key_range, &m);
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
    if (t == 0 && ok_zero) atomicMin(&S.best_k, 0);
    if (ok_mask) atomicMin(&S.best_k, t * kSortItems + __ffs(ok_mask));  // K = r + 1
  }
  if (m > 0 && t == (m - 1) / kSortItems) S.ok_all = (ok_mask >> ((m - 1) % kSortItems)) & 1u;
  if (m == 0 && t == 0) S.ok_all = ok_zero ? 1 : 0;
  __syncthreads();
  // A top set without every ranked page: the final set needs pages below it when no cut in
  // it passes (or p = 1). That set is over the cap when the top set holds the cap's pages
  // (m >= cap): the cap's cut, the largest whole-level set within it, is then a prefix of
  // this sort, so the sort decides; otherwise the radix search does. Never a stage 1 that
  // must know the rule with every listed page in.
  const bool beyond_top = top && S.below_count > 0 && (p >= 1.0f || S.best_k == 0x7fffffff);
  if ((beyond_top && m < cap) || (top && S.below_count > 0 && stage == 1 && listed < n)) {
    __syncthreads();  // the radix search's shared memory overlaps this one's
    return false;
  }
  // Stage 1 with pages left out of the list: does every listed page in satisfy the rule?
  // (p >= 1 needs every page.) If not, hand the pair to stage 2 with every page listed.
  if (stage == 1 && listed < n && (p >= 1.0f || !S.ok_all)) {
    HandToStage2(gp, work, head_max);
    return true;
  }
  int K = beyond_top ? m + 1 : (p < 1.0f ? min(S.best_k, m) : m);  // beyond_top: K > m >= cap
  const bool cap_hit = K > cap;
  if (cap_hit) K = LevelsWithin(cut_mask, cap, &S.cap_k);
  // The final set's ranked pages are the sorted ranks below K, whole levels: every ranked
  // page whose key is >= the key at rank K - 1 (keys here are relative to the lowest).
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    if (t * kSortItems + k == K - 1) S.last_key = key[k] + S.key_range[0] - 1u;
  }
  __syncthreads();
  KeyCut final_cut;
  final_cut.prefix = S.last_key;
  final_cut.mask = 0xffffffffu;
  GrowFinish(S, gp, sel, head_max, work, stats, final_cut, cap_hit);
  return true;
}

}  // namespace twl::cuda
