// Growth search by radix passes over the page keys (prune_grow.cuh, step 2), for pairs past
// kSortPages pages that the sorted search of their top pages cannot decide.
#pragma once

#include "pipeline/prune/twilight/cuda/grow_common.cuh"

namespace twl::cuda {

// One block per (sequence, KV head) over its list (work.list_*; stage 2: flagged pairs only).
// Stage 1 flags a pair whose rule fails with every listed page in (or p >= 1 with pages left
// out): its list becomes every page and its head_max is cleared for the rescoring.
// head_max is rewritten to the max over the candidates.
// (GrowSearchKernel, grow_search_pass.cuh, runs it when GrowSearchSorted returns false: p = 1,
// a pair that needs pages below its top kSortPages, a stage 1 whose list does not fit.)
__device__ __noinline__ void GrowSearchRadix(
    GrowSmem& sm, const GrowPair gp, const SelectionView& sel,
    uint32_t* __restrict__ head_max, const GrowWork& work, const HeadStatsView& stats,
    int stage) {
  const int32_t pair = blockIdx.x;
  const int32_t G = gp.G, n = gp.n, listed = gp.listed, cap = gp.cap;
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
      gp.AddFixed(i, forced, pos[i] >= 0, la, lb);
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
    // The warp's sums of one digit (cached_d, warp-uniform; -1: none) held in registers: lane
    // j < G has A of head j, lane 16 + j R of head j. Shared memory has no FP32 atomic add
    // (each is a compare-and-swap loop), and the pages of a peaked pair share their leading
    // key bits, so every warp's adds met on one or two digits (a third of the stall samples at
    // 8193 pages). Held here, a warp adds a digit's sums once per run of groups on that digit
    // instead of once per group: 5% off a 128k B = 1 growing-Quest step (bench/RESULTS.md,
    // thirty-sixth and thirty-seventh sessions).
    static_assert(kMaxGroup <= 16, "lanes 0-15 hold A, 16-31 R");
    int cached_d = -1;
    float cached = 0.0f;
    auto flush = [&]() {  // every lane; warp-uniform cached_d
      if (cached_d >= 0) {
        if (lane < G) atomicAdd(&sm.cum_a[cached_d][lane], cached);
        else if (lane >= 16 && lane - 16 < G) atomicAdd(&sm.cum_b[cached_d][lane - 16], cached);
      }
      cached = 0.0f;
    };
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
          if (dl != cached_d) {  // warp-uniform
            flush();
            cached_d = dl;
          }
#pragma unroll
          for (int j = 0; j < kMaxGroup; ++j) {
            if (j >= G) break;  // warp-uniform
            const float sa = WarpSum(mine ? va[j] : 0.0f);
            const float sb = WarpSum(mine ? vb[j] : 0.0f);
            if (lane == j) cached += sa;
            if (lane == 16 + j) cached += sb;
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
    flush();
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
    // The stored key (PrepKey): GrowKey's value, one load instead of G.
    cut = CountCut(sm, n, cap, [&](int32_t i, uint32_t* key) {
      bool forced;
      *key = PrepKey(work, pair, sel.max_select, i, &forced);
      return !forced && pos[i] >= 0;
    });
  }
  GrowFinish(sm, gp, sel, head_max, work, stats, cut, cap_hit);
}

}  // namespace twl::cuda
