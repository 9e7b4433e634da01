// Growth search over the sorted page keys (prune_grow.cuh, step 2), for pairs of at most
// kSortPages pages.
#pragma once

#include "pipeline/prune/twilight/cuda/grow_sort.cuh"

namespace twl::cuda {

// GrowSearchSorted, for pairs of at most kSortPages pages: the same rule and outputs as
// GrowSearchRadix, but instead of 4+ radix passes over the pages (each a sweep by one
// block), the listed ranked pages are sorted
// once by key (descending, in registers: 16 per thread) and the rule is evaluated at every
// key boundary from prefix sums of A and R per head: the smallest passing prefix is the
// smallest whole-level set, the largest boundary within the cap the capped set. Float sums
// are taken in another order than the radix search's (deterministic here: no float
// atomics in the prefix), so a page whose level sits on the rule's boundary may differ, as
// between the GPU and the CPU reference already.
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

__device__ __noinline__ void GrowSearchSorted(
    SortedSmem& S, const GrowPair gp, const SelectionView& sel,
    uint32_t* __restrict__ head_max, const GrowWork& work, const HeadStatsView& stats,
    int stage) {
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

}  // namespace twl::cuda
