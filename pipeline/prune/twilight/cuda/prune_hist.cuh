// Top-p threshold of the Twilight pruner by histogram selection (replaces the per-head
// bisection: many blocks per query head, work proportional to the candidates, no barrier
// loop). Input: FP16 estimated scores per (query head, candidate slot) from the score pass
// (-inf for rows past the sequence end) and the head's max M (FloatKey of the FP16-rounded
// maximum, so every stored score is <= M).
//
// Definition (the rule; the CPU tests state it against TopPThresholdRef): a candidate's
// offset below the max is d = M - s >= 0 and its weight w = exp(-d). Level 1 bins offsets by
// 1/8 logit, bin b1 = floor(8 d) for d < 32 (bin 255 holds every d >= 31.875); level 2
// splits the boundary bin into 256 sub-bins of 1/2048 logit, b2 = floor(2048 (d - b1/8))
// clamped to 255. Masses are fixed-point integers (w * 2^40, rounded to nearest),
// so every sum is exact and order-free: the result does not depend on the block split or
// on the batch the head is in, and repeats bit for bit. With T = ceil(p * total):
//   B  = the first level-1 bin where the cumulative mass (from the max down) reaches T,
//   B2 = the first sub-bin of B where the cumulative mass reaches T - mass(bins < B),
//   kept = { b1 < B } u { b1 = B, b2 <= B2 }, restricted to w > 0 (float).
// This is the smallest level set {s >= t} with mass >= p, except that every candidate in
// the threshold's 1/2048-logit sub-bin is kept (ties at the resolution: their weights are
// within a factor exp(1/2048) = 1.0005 of the threshold weight). p >= 1 keeps every valid
// candidate (estimated weight 0 included); a head whose max is not finite (NaN/inf
// estimates) or that holds a NaN estimate keeps nothing, as TopPThresholdRef does for a
// NaN or zero total. FP16 scores: |s| < 65504 (beyond, the estimate overflows to inf and
// the NaN/inf rule applies); rounding moves a score by <= |s| * 2^-11.
//
// Launches (after the score pass; one memset clears head_max and all accumulators):
//  1. HistKernel: grid (query heads, slot chunks): every thread loads its 32 slots
//     (four 16-byte loads in flight) and adds each slot's mass, without branches, to its
//     warp's own 256-bin sub-histogram in shared memory (32-bit partial sums, no
//     shuffles, no contention between warps); the block merges the warps into 64-bit sums
//     and flushes them with one global atomic per non-empty bin.
//  2. KeptKernel: grid (runs of slot chunks, (sequence, KV head)); each thread 8 slots per
//     step for all heads of the GQA group (one 16-byte load per head); blocks find B per
//     head, write the union bit words of the candidates above the boundary bin with plain
//     stores (four lanes a word: no memset, no atomics) and count them per head; the
//     boundary bin's candidates (a few percent of a peaked head) add their mass to the
//     level-2 histogram and are listed (chunk offset + sub-bin) in a per-(head, chunk)
//     segment.
//  3. BoundaryKernel: grid (runs of slot chunks, (sequence, KV head)); finds B2 per head and ORs in
//     the bits of the listed candidates with sub-bin <= B2 (a segment that overflowed: its
//     chunk's scores are rescanned). The kept mass comes from the histograms (the same
//     integer masses).
// Runs of chunks in pass 2 (PrunerParams::topp_chunks_per_block, default 1): a block pays
// its chain of dependent loads (sequence length, head max, histogram rows) once for its run
// and prefetches its next chunk into L2 while it works on one. One-wave runs by default
// (with the same in pass 1) measured slower on the H200 at B = 8; see docs/PRUNE_PASSES.md.
// So the scores are read twice (level 1, then level 2 + kept bits), not three times, and
// the kept pass computes no exp outside the boundary bin. Both passes skip the work of what
// cannot count (exactly: rounding margins, NaN never skipped): a load of 8 scores all below
// the threshold costs one max and one compare (AllBelow). Level 1's threshold is 28.5
// logits under the max (weights that round to 0 in fixed point), the kept pass's the lower
// edge of the boundary bin. (Skipping the loads of far pages by the score pass's page maxima
// cost a dependent round trip per block and step: both passes are latency-bound at B = 1.)
// CompactKeptKernel (below) then lists the tokens and writes the per-head telemetry.
//
// Bytes (INT4, d = 128, group G): the score pass reads 68 B per (token, KV head) and writes
// 2G B; the two passes read 2G B each; with G = 4 that is 92 B moved per 68 B of INT4
// (docs/PRUNE_PASSES.md: every pass of the FULL selector's step, bytes and launches).
#pragma once

#include "pipeline/prune/twilight/cuda/pdl.cuh"
#include "pipeline/prune/twilight/cuda/prune.cuh"
#include "pipeline/prune/twilight/cuda/topp_bins.cuh"

namespace twl::cuda {

constexpr int kHistThreads = 256;
constexpr int kHistChunk = 8192;        // slots of one query-head row per block
constexpr int kKeptThreads = 256;
constexpr int kKeptChunk = 4096;        // slots of a (sequence, KV head) per block (2 steps)

using u64 = unsigned long long;

// Fixed-point scale of a weight w <= 1: w * 2^40 rounded. The same for every batch (so a
// head's result never depends on its batch-mates); sums of up to kMaxPruneCandidates
// weights stay below 2^64. A weight below 2^-41 (about 28.4 logits under the max) adds 0.
constexpr float kFixedScale = 1099511627776.0f;  // 2^40
constexpr int64_t kMaxPruneCandidates = int64_t(1) << 23;

// Per query head accumulators, zeroed by the launcher's memset.
struct HistWork {
  u64* hist1 = nullptr;         // [heads][256] level-1 fixed-point mass
  u64* hist2 = nullptr;         // [heads][256] level-2 (boundary bin) mass
  u64* kept_mass = nullptr;     // [heads] fixed-point mass of the head's own kept set
  int32_t* kept_count = nullptr;  // [heads]
  int32_t* bad = nullptr;         // [heads] 1: a NaN estimate (the head keeps nothing)
  // Boundary-bin candidates per (query head, kept chunk), see KeptKernel (not cleared:
  // KeptKernel writes every count BoundaryKernel reads).
  int32_t* bnd = nullptr;         // [heads][bnd_chunks][kBndCap]
  int32_t* bnd_count = nullptr;   // [heads][bnd_chunks]
  int32_t bnd_chunks = 0;         // ceil(cand_stride / kKeptChunk)
};


// What a head does: every valid candidate (p >= 1), nothing (no finite max, NaN, zero
// mass), or the top-p level set.
enum : int { kModeNone = 0, kModeAll = 1, kModeTopP = 2 };

// Both p's loaded before either is tested (one round trip).
__device__ __forceinline__ float HeadP(const PrunerParams& params, const PruneShape& shape,
                                       int32_t s, int32_t sq) {
  const float user = params.seq_p ? params.seq_p[s] : params.p;
  if (shape.head_p) {
    const float head = shape.head_p[sq];
    return user >= 1.0f ? 1.0f : head;
  }
  return user;
}

// p >= 1 (the sequence's p, or a growing head whose share of the candidates' mass is 1)
// keeps every valid candidate, as TopPThresholdRef does for p >= 1.
// Every input is loaded before any is tested (every head has them): a block of the kept
// and boundary passes starts with this, and tested in turn they were a chain of up to
// three round trips (p, max, NaN flag).
__device__ __forceinline__ int HeadMode(const PrunerParams& params, const PruneShape& shape,
                                        const uint32_t* head_max, const HistWork& hw, int32_t s,
                                        int32_t sq, float* mx) {
  const float p = HeadP(params, shape, s, sq);
  const uint32_t key = head_max[sq];
  const int32_t bad = hw.bad[sq];
  // Selects and bitwise tests, not early returns or &&: with those the compiler moved each
  // load below the test before it.
  const bool all = p >= 1.0f;
  const float m = key ? KeyFloat(key) : 0.0f;
  *mx = all ? 0.0f : m;
  const bool topp = (key != 0u) & bool(isfinite(m)) & (bad == 0);
  return all ? kModeAll : (topp ? kModeTopP : kModeNone);
}

__device__ __forceinline__ u64 Fixed(float w, float scale) {
  return __float2ull_rn(w * scale);
}

// A 256-bin histogram row held by one warp in registers: lane l has bins [8 l, 8 l + 8).
// Each lane's eight loads are independent, so the row costs one round trip to L2.
__device__ __forceinline__ void WarpLoadHist(const u64* hist, u64 v[8]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = hist[lane * 8 + k];
}

// One warp, a row in registers (WarpLoadHist): the first bin where the cumulative sum
// reaches target (>= 1), and the sum of the bins before it; bin 255 when the total falls
// short. Every lane returns the same result.
__device__ __forceinline__ int WarpFindBin(const u64 v[8], u64 target, u64* before) {
  const int lane = threadIdx.x & 31;
  u64 local = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) local += v[k];
  u64 inc = local;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  const unsigned hit = __ballot_sync(0xffffffffu, inc >= target);
  const int L = hit ? __ffs(hit) - 1 : 31;
  int bin = kHistBins - 1;
  u64 bef = 0;
  if (lane == L) {
    u64 c = inc - local;
    bin = -1;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (bin < 0 && c + v[k] >= target) {
        bin = lane * 8 + k;
        bef = c;
      }
      if (bin < 0) c += v[k];
    }
    if (bin < 0) {
      bin = kHistBins - 1;
      bef = c - v[7];
    }
  }
  bin = __shfl_sync(0xffffffffu, bin, L);
  bef = __shfl_sync(0xffffffffu, bef, L);
  *before = bef;
  return bin;
}

// Inclusive prefix sum over the lanes of a warp (every lane calls it).
__device__ __forceinline__ int WarpInclusiveSum(int v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  return v;
}

__device__ __forceinline__ u64 WarpSumU64(u64 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp, the level-1 row in registers: the head's total and target T = ceil(p * total)
// (0: nothing to keep).
__device__ __forceinline__ u64 WarpTarget(const u64 v[8], float p, u64* total) {
  u64 t = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) t += v[k];
  t = WarpSumU64(t);
  *total = t;
  return u64(ceil(double(p) * double(t)));
}

// 64-bit add to shared memory as two native 32-bit atomics (a 64-bit shared atomic add may
// be a compare-and-swap loop): the low word's wrap-around is carried into the high word by
// the thread that caused it, so the pair holds the exact sum mod 2^64 (little endian).
__device__ __forceinline__ void SharedAddU64(u64* addr, u64 v) {
  uint32_t* w = reinterpret_cast<uint32_t*>(addr);
  const uint32_t lo = uint32_t(v);
  uint32_t hi = uint32_t(v >> 32);
  if (lo) {
    const uint32_t old = atomicAdd(&w[0], lo);
    hi += old + lo < old ? 1u : 0u;
  }
  if (hi) atomicAdd(&w[1], hi);
}

// Eight FP16 scores of a row from slot i0 as raw halves (one 16-byte load when aligned and
// inside [0, n)); -inf (0xFC00) past n.
__device__ __forceinline__ uint4 LoadRaw8(const fp16_t* row, int32_t i0, int32_t n, bool vec) {
  if (vec && i0 + 8 <= n) return *reinterpret_cast<const uint4*>(row + i0);
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t a = i0 + 2 * k < n ? uint32_t(row[i0 + 2 * k]) : 0xFC00u;
    const uint32_t b = i0 + 2 * k + 1 < n ? uint32_t(row[i0 + 2 * k + 1]) : 0xFC00u;
    w[k] = a | (b << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
// The first n of 8 raw FP16 scores (all for n >= 8), the rest -inf (0xFC00), as LoadRaw8
// bounded at n gives them.
__device__ __forceinline__ uint4 Raw8Below(uint4 r, int32_t n) {
  if (n >= 8) return r;
  uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (2 * k >= n) w[k] = (w[k] & 0xFFFF0000u) | 0xFC00u;
    if (2 * k + 1 >= n) w[k] = (w[k] & 0x0000FFFFu) | 0xFC000000u;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
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

// Whether candidate slot i of a chunk ending at c1 is a valid row of the pair: inside the
// sequence and (growing) on a candidate page.
__device__ __forceinline__ bool SlotIsCandidate(const int32_t* pages, const uint8_t* in_set,
                                                int32_t ps, int32_t len, int32_t c1,
                                                int32_t i) {
  if (i >= c1 || pages[i / ps] * ps + i % ps >= len) return false;
  return !in_set || in_set[i / ps] != 0;
}

// Bit k: candidate slot i0 + k (i0 a multiple of 8) is a valid row of the pair (see
// SlotIsCandidate); pages of a multiple of 8 rows hold the 8 slots in one page.
__device__ __forceinline__ uint32_t CandidateMask8(const int32_t* pages, const uint8_t* in_set,
                                                   int32_t ps, int32_t len, int32_t c1,
                                                   int32_t i0) {
  uint32_t vmask = 0;
  if (i0 >= c1) return 0;
  if ((ps & 7) == 0) {
    const int32_t pg = i0 / ps;
    const int32_t pos0 = pages[pg] * ps + i0 % ps;
    if (!in_set || in_set[pg] != 0) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (i0 + k < c1 && pos0 + k < len) vmask |= 1u << k;
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (SlotIsCandidate(pages, in_set, ps, len, c1, i0 + k)) vmask |= 1u << k;
    }
  }
  return vmask;
}

// Warp j < G of a block of (sequence, KV head): head j's mode and level-1 boundary bin B1
// (and, with v2 given, the level-2 sub-bin B2 and the head's kept mass). Lane 0 returns
// the results; every lane runs the shuffles.
__device__ __forceinline__ int WarpHeadThreshold(const PrunerParams& params,
                                                 const PruneShape& shape,
                                                 const uint32_t* head_max, const HistWork& hw,
                                                 int32_t s, int32_t sq, bool level2, float* mx,
                                                 int* b1, int* b2, u64* kept_mass) {
  // The histogram rows first (every head has them), so that their round trip overlaps the
  // head max's and the NaN flag's instead of following it: the kept and boundary passes'
  // blocks start with this chain.
  u64 v1[8], v2[8], total, before, before2;
  WarpLoadHist(hw.hist1 + int64_t(sq) * kHistBins, v1);
  if (level2) WarpLoadHist(hw.hist2 + int64_t(sq) * kHistBins, v2);
  const int mode = HeadMode(params, shape, head_max, hw, s, sq, mx);
  // The target and both bins before the mode's test (unused unless top-p): their shuffles
  // cannot move into the test's branch, so the rows' loads stay ahead of it. With the
  // shuffles behind the test, the compiler moved the loads there too.
  // hist2 splits bin B1 exactly (the same fixed-point masses), so the level-2 target
  // target - before <= hist1[B1] is always reached (and 0 <= before <= target in any case).
  const u64 target = WarpTarget(v1, HeadP(params, shape, s, sq), &total);
  const int bin1 = WarpFindBin(v1, target, &before);
  const int bin2 = level2 ? WarpFindBin(v2, target - before, &before2) : 0;
  *b1 = 0;
  *b2 = 0;
  *kept_mass = 0;
  if (mode != kModeTopP) return mode;
  if (!target) return kModeNone;
  *b1 = bin1;
  if (level2) {
    // Kept mass: the bins above B1 and the sub-bins up to B2 (sums of the same Fixed(w) the
    // old kept pass added per candidate).
    *b2 = bin2;
    const int lane = threadIdx.x & 31;
    u64 at_b2 = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) at_b2 = (lane * 8 + k == *b2) ? v2[k] : at_b2;
    at_b2 = WarpSumU64(at_b2);
    *kept_mass = before + before2 + at_b2;
  }
  return mode;
}

// Per query head of a (sequence, KV head) block, in shared memory: what the head does and
// its thresholds (WarpHeadThreshold), the scores the kept pass may skip (below `skip`, half2
// bits: past the boundary bin, see AllBelow), and the block's counters.
struct ChunkHeads {
  int mode[kMaxGroup], b1[kMaxGroup], b2[kMaxGroup];
  float mx[kMaxGroup];
  uint32_t skip[kMaxGroup], keep[kMaxGroup];  // BoundaryBinEdges
  int count[kMaxGroup], bnd[kMaxGroup];
};

// Fills `ch` for the G heads from sq0 (a warp per head; level2: B2 too, and block x = 0
// writes each top-p head's kept mass). The caller synchronizes before reading it.
__device__ __forceinline__ void LoadChunkHeads(ChunkHeads& ch, const PrunerParams& params,
                                               const PruneShape& shape,
                                               const uint32_t* head_max, const HistWork& hw,
                                               int32_t s, int32_t sq0, int G, bool level2) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int jw = warp; jw < G; jw += int(blockDim.x >> 5)) {  // warp-uniform
    float mx = 0.0f;
    int b1 = 0, b2 = 0;
    u64 kept_mass = 0;
    const int mode =
        WarpHeadThreshold(params, shape, head_max, hw, s, sq0 + jw, level2, &mx, &b1, &b2,
                          &kept_mass);
    if (lane == 0) {
      ch.mode[jw] = mode;
      ch.b1[jw] = b1;
      ch.b2[jw] = b2;
      ch.mx[jw] = mx;
      const BinEdges edges = BoundaryBinEdges(mx, b1);
      ch.skip[jw] = edges.skip;
      ch.keep[jw] = edges.keep;
      ch.count[jw] = 0;
      ch.bnd[jw] = 0;
      if (level2 && blockIdx.x == 0 && mode == kModeTopP) hw.kept_mass[sq0 + jw] = kept_mass;
    }
  }
}

// Every thread of a block: prefetches into L2 the 128-byte lines of slots [c0, c1) of the
// score rows of heads sq0 .. sq0 + G - 1 (64 FP16 scores a line) and of the page entries of
// those slots, so that the block's loads after its dependent prologue (head max, histogram
// rows) wait on L2 rather than DRAM.
__device__ __forceinline__ void PrefetchChunk(const fp16_t* scores, int32_t cand_stride,
                                              int32_t sq0, int G, const int32_t* pages,
                                              int32_t ps, int32_t c0, int32_t c1) {
  const int32_t lines = (c1 - c0 + 63) / 64;
  for (int32_t e = threadIdx.x; e < G * lines; e += blockDim.x) {
    const int32_t j = e / lines, l = e % lines;
    PrefetchL2(scores + int64_t(sq0 + j) * cand_stride + c0 + l * 64);
  }
  const int32_t p0 = c0 / ps, p1 = (c1 - 1) / ps;  // 32 page entries a line
  for (int32_t p = p0 + 32 * int32_t(threadIdx.x); p <= p1; p += 32 * int32_t(blockDim.x)) {
    PrefetchL2(pages + p);
  }
}

// Boundary entries of a (query head, kept chunk): the chunk offset (< 2^16) and the level-2
// sub-bin (<< 16) of each candidate in the boundary bin B1. A chunk with more than kBndCap
// of them (a flat head) records only the count; BoundaryKernel then rescans its scores.
constexpr int kBndCap = 512;
static_assert(kKeptChunk <= 65536, "chunk offsets fit 16 bits");

// Grid: x = chunks of kKeptChunk slots, y = (sequence, KV head). Level 2 and the kept bits
// in one pass over the scores (after HistKernel, which fixed B1 per head): a candidate above
// the boundary bin (b1 < B1) is kept at once (union bit words, [0, ceil(slots / 32)) all
// written, and per-head kept counts); a boundary candidate (b1 == B1) adds its mass to the
// head's level-2 histogram and is listed for BoundaryKernel, which sets its bit once B2 is
// known. Each thread takes 8 consecutive slots per step (one 16-byte load per head); four
// lanes make a bit word (two shuffles), written with a plain store. kMaxG (4, 8 or 16): the
// group sizes it takes (registers and level-2 sums sized for them; smaller groups keep the
// occupancy of their size when the GPU build allows 16).
// Occupancy: 4 blocks per SM for groups of up to 8 (64 registers: with fewer resident
// blocks each block's prologue and two steps are pure latency; at 1 block per SM the H200
// took 2x as long for the whole top-p).
// Grid: x = runs of `chunks` chunks (the launcher sizes them so that the grid is about one
// wave of resident blocks), y = (sequence, KV head), z = head splits (PrunerParams::
// topp_head_splits: at a small batch, each of z blocks takes 1/z of the group's heads). A block resolves its heads' thresholds
// once for its chunks (LoadChunkHeads: a chain of dependent loads) and, while it works on
// one chunk, prefetches the next into L2 (the first while that chain runs); the level-2
// sums and the kept counts of its chunks are flushed once.
// Resident blocks per SM the kept pass asks of ptxas, by its largest group: groups of up to 4
// (the serving shape's 32 x 8, and every split group of 8) fit 48 registers without spills,
// five blocks instead of four (62.5% occupancy instead of 50%) for a pass whose blocks wait
// on their loads (H100 ncu, B = 8: issue 0.60 per scheduler, DRAM 33%; bench/RESULTS.md,
// thirty-first session); six would spill. Measured (H100, B = 8, thirty-second session):
// the pass 60.7 -> 52.5 us.
constexpr int KeptMinBlocks(int max_group) { return max_group <= 4 ? 5 : max_group <= 8 ? 4 : 1; }
template <int kMaxG>
__global__ void __launch_bounds__(kKeptThreads, KeptMinBlocks(kMaxG))
    KeptKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
               PruneShape shape, const fp16_t* __restrict__ scores,
               const uint32_t* __restrict__ head_max, HistWork hw, uint32_t* __restrict__ bits,
               int32_t chunks) {
  __shared__ ChunkHeads ch;
  __shared__ u64 s_h2[kMaxG][kHistBins];  // level-2 partial sums of this block's chunks
  constexpr int kLoadHeads = kMaxG < 8 ? kMaxG : 8;  // heads whose scores load together
  PdlLetNextLaunch();
  const int32_t pair = blockIdx.y;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const int32_t first_chunk = blockIdx.x * chunks;
  const int32_t first = first_chunk * kKeptChunk;
  const int32_t last = min(slots, first + chunks * kKeptChunk);  // the block's slots end
  // Head splits (gridDim.z > 1): block z takes heads [z G, z G + G) of the group, with
  // G = group / splits; the splits of a chunk then share its union bit words (atomicOr into
  // words the launcher cleared).
  const int G = shape.group / int(gridDim.z);
  const int32_t sq0 = s * batch.num_q_heads + h * shape.group + int(blockIdx.z) * G;
  const int lane = threadIdx.x & 31;
  const int32_t* pages = sel.pages + int64_t(pair) * sel.max_select;
  const int32_t ps = g.page_size;
  // The selection and the scores were complete before HistKernel began: prefetched while
  // HistKernel may still run (pdl.cuh); its histograms only after the wait.
  if (first < slots) {
    PrefetchChunk(scores, shape.cand_stride, sq0, G, pages, ps, first,
                  min(last, first + kKeptChunk));
  }
  PdlWaitForPrevious();
  if (first >= slots) return;
  LoadChunkHeads(ch, params, shape, head_max, hw, s, sq0, G, /*level2=*/false);
  for (int i = threadIdx.x; i < G * kHistBins; i += blockDim.x) (&s_h2[0][0])[i] = 0;
  __syncthreads();
  const int32_t len = batch.seq_len[s];
  const uint8_t* in_set = shape.in_set ? shape.in_set + int64_t(pair) * sel.max_select : nullptr;
  uint32_t* pair_bits = bits + int64_t(pair) * shape.bit_words;
  const bool vec = (shape.cand_stride & 7) == 0;
  int cnt[kMaxG];
#pragma unroll
  for (int j = 0; j < kMaxG; ++j) cnt[j] = 0;
  for (int32_t chunk = first_chunk, c0 = first; c0 < last; ++chunk, c0 += kKeptChunk) {
    const int32_t c1 = min(last, c0 + kKeptChunk);
    if (c1 < last) {
      PrefetchChunk(scores, shape.cand_stride, sq0, G, pages, ps, c1, min(last, c1 + kKeptChunk));
    }
    // The same trip count for every thread (the shuffles); c0 and the step: multiples of 32.
    for (int32_t base = c0; base < c1; base += 8 * blockDim.x) {
      const int32_t i0 = base + 8 * int32_t(threadIdx.x);
      // bit k: slot i0 + k is a valid candidate
      const uint32_t vmask = CandidateMask8(pages, in_set, ps, len, c1, i0);
      // The heads' 8 scores loaded at once, 8 heads at a time (one round trip per step and 8
      // heads; groups of up to 16 keep the registers of 8).
      uint32_t byte = 0;
#pragma unroll
      for (int jb = 0; jb < kMaxG; jb += kLoadHeads) {
        if (jb >= G) break;
        uint4 raws[kLoadHeads];
#pragma unroll
        for (int jj = 0; jj < kLoadHeads; ++jj) {
          const int j = jb + jj;
          raws[jj] = make_uint4(0u, 0u, 0u, 0u);
          // Not gated by vmask: the loads need not wait for the page entries behind it (a
          // slot past the sequence holds -inf, and vmask masks every use below).
          if (j < G && i0 < c1 && ch.mode[j] == kModeTopP) {
            raws[jj] = LoadRaw8(scores + int64_t(sq0 + j) * shape.cand_stride, i0, c1, vec);
          }
        }
#pragma unroll
        for (int jj = 0; jj < kLoadHeads; ++jj) {
          const int j = jb + jj;
          if (j >= G) break;
          const int mode = ch.mode[j];  // block-uniform
          if (mode == kModeAll) {
            byte |= vmask;
            cnt[j] += __popc(vmask);
          } else if (mode == kModeTopP) {
            uint32_t bmask = 0;  // bit k: slot i0 + k lies in the boundary bin
            uint64_t b2s = 0;    // its sub-bin in byte k
            const uint32_t skip = ch.skip[j];
            if (vmask && !AllBelow(raws[jj], U32Half2(skip))) {
              const uint32_t above = SplitAtBoundary8(
                  raws[jj], vmask, ch.mx[j], ch.b1[j], ch.keep[j], skip,
                  [&](int k, int b2, float w) {
                    bmask |= 1u << k;
                    b2s |= uint64_t(b2) << (8 * k);
                    const u64 m = Fixed(w, kFixedScale);
                    if (m) SharedAddU64(&s_h2[j][b2], m);
                  });
              byte |= above;
              cnt[j] += __popc(above);
            }
            // List the boundary candidates: one shared atomic per warp (mode is block-uniform,
            // so every lane of the warp is here).
            const unsigned any = __ballot_sync(0xffffffffu, bmask != 0);
            if (any) {
              const int n = __popc(bmask);
              const int incl = WarpInclusiveSum(n);
              int at = 0;
              if (lane == 31) at = atomicAdd(&ch.bnd[j], incl);
              at = __shfl_sync(0xffffffffu, at, 31) + incl - n;
              int32_t* list =
                  hw.bnd + (int64_t(sq0 + j) * hw.bnd_chunks + chunk) * int64_t(kBndCap);
#pragma unroll
              for (int k = 0; k < 8; ++k) {
                if (!((bmask >> k) & 1u)) continue;
                if (at < kBndCap) {
                  list[at] = (i0 + k - c0) | (int32_t((b2s >> (8 * k)) & 255u) << 16);
                }
                ++at;
              }
            }
          }
        }
      }
      uint32_t word = byte << (8 * (lane & 3));  // slots i0..i0+7 are bits 8 (lane & 3) + k
      word |= __shfl_xor_sync(0xffffffffu, word, 1);
      word |= __shfl_xor_sync(0xffffffffu, word, 2);
      if ((lane & 3) == 0 && i0 < c1) {
        if (gridDim.z == 1) {
          pair_bits[i0 >> 5] = word;
        } else if (word) {
          atomicOr(&pair_bits[i0 >> 5], word);
        }
      }
    }
    __syncthreads();  // the chunk's boundary lists complete
    if (threadIdx.x < G) {  // every count BoundaryKernel reads, then the next chunk's from 0
      hw.bnd_count[int64_t(sq0 + threadIdx.x) * hw.bnd_chunks + chunk] = ch.bnd[threadIdx.x];
      ch.bnd[threadIdx.x] = 0;
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kMaxG; ++j) {
    if (j >= G) break;
    const int c = __reduce_add_sync(0xffffffffu, unsigned(cnt[j]));
    if (lane == 0 && c) atomicAdd(&ch.count[j], c);
  }
  __syncthreads();
  if (threadIdx.x < G && ch.count[threadIdx.x]) {
    atomicAdd(&hw.kept_count[sq0 + threadIdx.x], ch.count[threadIdx.x]);
  }
  for (int i = threadIdx.x; i < G * kHistBins; i += blockDim.x) {
    const u64 v = (&s_h2[0][0])[i];
    if (v) atomicAdd(&hw.hist2[int64_t(sq0 + i / kHistBins) * kHistBins + i % kHistBins], v);
  }
}

// Grid: x = runs of `run` kept chunks (at most kBndRunMax), y = (sequence, KV head). Finds
// B2 per head (level-2 histogram complete) and sets the bits of the run's listed boundary
// candidates with sub-bin <= B2 (staged per chunk word in shared memory, then one atomic OR
// per word, which waits for nothing), adding them to the head's kept count; a chunk whose
// list overflowed rescans its scores. Block 0 of a pair writes each top-p head's kept mass
// from the histograms.
// Latency: a block first reads its run's list lengths alone (one round trip); a run that
// lists nothing for any head (most chunks of a peaked head) ends there unless it is block 0;
// the others prefetch their lists (and an overflowed chunk's scores) into L2 while they wait
// for the head max and both histogram rows, then walk every list of the run together. Runs:
// at B = 8, 128k one block per chunk made 2048 blocks of this chain, four waves of them at
// four blocks per SM (H100: 21.7 us, 3.6% DRAM); the heads' thresholds are loaded once per
// run instead. H100, B = 8, runs of 1 / 2 / 4 / 8 chunks: 23.2 / 19.9 / 18.7 / 27.6 us
// (bench/RESULTS.md, thirty-first session): longer runs walk more entries per thread. The
// walk now keeps kBndWalk loads in flight per thread, which gained less than predicted
// (18.9 -> 18.3 us at runs of 4; predicted ~10): the walk was not the block's critical path.
constexpr int kBndRunMax = 8;
constexpr int kBndWalk = 4;  // listed entries per thread whose loads are in flight together
static_assert(kBndRunMax * kMaxGroup <= kKeptThreads, "a thread per (chunk, head) list");
__global__ void __launch_bounds__(kKeptThreads)
    BoundaryKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
                   PruneShape shape, const fp16_t* __restrict__ scores,
                   const uint32_t* __restrict__ head_max, HistWork hw,
                   uint32_t* __restrict__ bits, int32_t run) {
  constexpr int kWords = kKeptChunk / 32;  // bit words of a chunk
  __shared__ ChunkHeads ch;
  __shared__ uint32_t s_bits[kBndRunMax][kWords];
  __shared__ int s_n[kBndRunMax * kMaxGroup];      // list length per (chunk, head); 0: none
  __shared__ int s_at[kBndRunMax * kMaxGroup + 1];  // first entry of each list in the walk
  __shared__ int scan[33];
  PdlLetNextLaunch();
  PdlWaitForPrevious();  // KeptKernel's lists, counts and bits (pdl.cuh)
  const int32_t pair = blockIdx.y;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const int32_t chunk0 = int32_t(blockIdx.x) * run;
  const int32_t c0 = chunk0 * kKeptChunk;
  if (c0 >= slots) return;
  const int nch = min(run, (slots - c0 + kKeptChunk - 1) / kKeptChunk);  // chunks of the run
  const int G = shape.group;
  const int lists = nch * G;  // entry e = k * G + j: chunk chunk0 + k, head j
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  const int lane = threadIdx.x & 31;
  auto seg_of = [&](int e) {  // (head, chunk) index of list e in hw.bnd / hw.bnd_count
    return int64_t(sq0 + e % G) * hw.bnd_chunks + chunk0 + e / G;
  };
  // KeptKernel wrote every count of a chunk below `slots` (0 for a head not in top-p mode).
  if (int(threadIdx.x) < lists) s_n[threadIdx.x] = hw.bnd_count[seg_of(int(threadIdx.x))];
  __syncthreads();
  bool listed = false;
  for (int e = 0; e < lists; ++e) listed |= s_n[e] > 0;
  if (!listed && blockIdx.x != 0) return;  // block-uniform
  const int32_t* pages = sel.pages + int64_t(pair) * sel.max_select;
  for (int e = 0; e < lists; ++e) {
    const int n = s_n[e];
    if (n > kBndCap) {
      const int32_t k0 = c0 + (e / G) * kKeptChunk;
      PrefetchChunk(scores, shape.cand_stride, sq0 + e % G, 1, pages, g.page_size, k0,
                    min(slots, k0 + kKeptChunk));
    } else {
      const int32_t* list = hw.bnd + seg_of(e) * kBndCap;
      for (int i = 32 * int(threadIdx.x); i < n; i += 32 * int(blockDim.x)) PrefetchL2(list + i);
    }
  }
  LoadChunkHeads(ch, params, shape, head_max, hw, s, sq0, G, /*level2=*/true);
  for (int i = threadIdx.x; i < nch * kWords; i += blockDim.x) (&s_bits[0][0])[i] = 0;
  __syncthreads();
  if (!listed) return;  // block 0 with nothing listed: the kept masses are written
  // The walk over every listed candidate of the run: list e's entries are [s_at[e],
  // s_at[e + 1]) (lists of heads not in top-p mode, and overflowed ones, count 0).
  {
    const int e = int(threadIdx.x);
    const int n = e < lists ? s_n[e] : 0;
    const bool walk = n > 0 && n <= kBndCap && ch.mode[e % G] == kModeTopP;
    int total;
    const int at = BlockExclusiveSum(walk ? n : 0, scan, &total);
    if (e < lists) s_at[e] = at;
    if (e == 0) s_at[lists] = total;
    __syncthreads();
    // kBndWalk entries per thread and step, their loads issued together: a peaked head's
    // boundary bin lists ~100-200 candidates per chunk, so a run of 4 chunks and 4 heads
    // gives a thread ~10 entries, one dependent round trip each when walked one at a time.
    for (int base = threadIdx.x; base < total; base += kBndWalk * blockDim.x) {
      int list_of[kBndWalk];
      int32_t v[kBndWalk];
#pragma unroll
      for (int u = 0; u < kBndWalk; ++u) {
        const int i = base + u * int(blockDim.x);
        int lo = 0, hi = lists - 1;  // the list holding entry i: the last e with s_at[e] <= i
        while (lo < hi) {
          const int mid = (lo + hi + 1) >> 1;
          if (s_at[mid] <= i) lo = mid; else hi = mid - 1;
        }
        list_of[u] = lo;
        v[u] = i < total ? hw.bnd[seg_of(lo) * kBndCap + (i - s_at[lo])] : INT32_MAX;
      }
#pragma unroll
      for (int u = 0; u < kBndWalk; ++u) {
        const int e = list_of[u], j = e % G;
        if ((v[u] >> 16) > ch.b2[j]) continue;  // and every entry past the walk (INT32_MAX)
        const int32_t off = v[u] & 0xFFFF;
        atomicOr(&s_bits[e / G][off >> 5], 1u << (off & 31));
        atomicAdd(&ch.count[j], 1);
      }
    }
  }
  // Overflowed lists: KeptKernel's test over the chunk's scores, 8 slots per thread and load
  // (the chunk's start and i0 multiples of 8: the 8 bits lie in one word).
  const int32_t len = batch.seq_len[s];
  const uint8_t* in_set = shape.in_set ? shape.in_set + int64_t(pair) * sel.max_select : nullptr;
  for (int e = 0; e < lists; ++e) {
    const int j = e % G;
    if (s_n[e] <= kBndCap || ch.mode[j] != kModeTopP) continue;  // block-uniform
    const int32_t k0 = c0 + (e / G) * kKeptChunk, k1 = min(slots, k0 + kKeptChunk);
    const int B1 = ch.b1[j], B2 = ch.b2[j];
    const fp16_t* row = scores + int64_t(sq0 + j) * shape.cand_stride;
    const float mxj = ch.mx[j];
    const bool vec = (shape.cand_stride & 7) == 0;
    int cnt = 0;
    for (int32_t i0 = k0 + 8 * int32_t(threadIdx.x); i0 < k1; i0 += 8 * int32_t(blockDim.x)) {
      const uint32_t vmask = CandidateMask8(pages, in_set, g.page_size, len, k1, i0);
      if (!vmask) continue;
      uint32_t byte = 0;
      SplitAtBoundary8(LoadRaw8(row, i0, k1, vec), vmask, mxj, B1, ch.keep[j], ch.skip[j],
                       [&](int k, int b2, float) {
                         if (b2 <= B2) byte |= 1u << k;
                       });
      if (byte) {
        atomicOr(&s_bits[e / G][(i0 - k0) >> 5], byte << ((i0 - k0) & 31));
        cnt += __popc(byte);
      }
    }
    cnt = int(__reduce_add_sync(0xffffffffu, unsigned(cnt)));
    if (lane == 0 && cnt) atomicAdd(&ch.count[j], cnt);
  }
  __syncthreads();
  uint32_t* run_bits = bits + int64_t(pair) * shape.bit_words + (c0 >> 5);
  const int32_t words = (min(slots, c0 + nch * kKeptChunk) - c0 + 31) / 32;
  for (int w = threadIdx.x; w < words; w += blockDim.x) {
    const uint32_t b = s_bits[w / kWords][w % kWords];
    if (b) atomicOr(&run_bits[w], b);
  }
  if (threadIdx.x < G && ch.count[threadIdx.x]) {
    atomicAdd(&hw.kept_count[sq0 + threadIdx.x], ch.count[threadIdx.x]);
  }
}

}  // namespace twl::cuda


namespace twl::cuda {

// Grid: x = chunks of kCompactWords bit words, y = (sequence, KV head). Union bit words (or
// every valid slot when dense) -> ascending token positions: a block counts the set bits
// before its chunk (popcounts of the earlier words, or the earlier pages' valid rows when
// dense: at most a pair's 16 KB of bits, read from L2), each warp scans the popcounts of
// its 32 words, then writes word by word with lane k taking bit k (consecutive lanes write
// consecutive positions). The last chunk's block writes the pair's count; block 0 then
// writes per query head of the group the telemetry (selected: valid candidate rows; kept /
// est_mass: the head's own top-p set; full_mass; cap_hit), except selected / cap_hit when
// growing (GrowSearchKernel writes them).
__global__ void __launch_bounds__(kCompactThreads)
    CompactKeptKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
                      PruneShape shape, const uint32_t* __restrict__ bits,
                      const uint32_t* __restrict__ head_max, HistWork hw, KeptView out,
                      HeadStatsView stats) {
  constexpr int kWarps = kCompactThreads / 32;
  static_assert(kCompactWords == kWarps * 32, "one word per thread");
  __shared__ int scan[33];
  __shared__ int warp_total[kWarps];
  PdlWaitForPrevious();  // the top-p chain's bits and counters (pdl.cuh; dense: no-op)
  const int32_t pair = blockIdx.y;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t n_pages = sel.count[pair];
  const int32_t slots = n_pages * g.page_size;
  const int32_t* pages = sel.pages + int64_t(pair) * sel.max_select;
  const uint32_t* pb = bits + int64_t(pair) * shape.bit_words;
  int32_t* dst = out.tokens + int64_t(pair) * out.max_kept;
  const int32_t len = batch.seq_len[s];
  const bool dense = params.dense;
  const int32_t words = (slots + 31) / 32;
  const int32_t chunks = max(1, (words + kCompactWords - 1) / kCompactWords);
  if (int32_t(blockIdx.x) >= chunks) return;  // block-uniform
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  auto pos_of = [&](int32_t i) { return pages[i / g.page_size] * g.page_size + i % g.page_size; };
  const int32_t w0 = int32_t(blockIdx.x) * kCompactWords;
  // This lane's word of the warp's 32, loaded first: in flight with the prefix's loads.
  const int32_t wbase = w0 + warp * 32;
  uint32_t m = 0;
  if (!dense && wbase + lane < words) {
    const int32_t w = wbase + lane;
    m = pb[w];
    const int32_t rest = slots - w * 32;
    if (rest < 32) m &= (1u << rest) - 1u;
  }
  // The page entries of the warp's 1024 slots, two per lane, also in flight with the prefix
  // (pages of >= 16 rows: at most 64 entries). The writes below take them by shuffles; loaded
  // there, slot by slot, they were a chain of up to 32 round trips per warp.
  const int32_t ps = g.page_size;
  const bool hoisted = !dense && ps >= 16;
  const int32_t pfirst = wbase * 32 / ps;
  int32_t pe0 = 0, pe1 = 0;
  if (hoisted) {
    if (pfirst + lane < n_pages) pe0 = pages[pfirst + lane];
    if (pfirst + 32 + lane < n_pages) pe1 = pages[pfirst + 32 + lane];
  }
  // Set bits before the chunk (all in whole words < slots).
  int before = 0;
  if (dense) {
    const int32_t first = w0 * 32;  // rows [0, r) of page P and every page before it
    const int32_t P = first / g.page_size, r = first % g.page_size;
    for (int32_t p = threadIdx.x; p <= P && p < n_pages; p += blockDim.x) {
      before += min(p < P ? g.page_size : r, max(0, len - pages[p] * g.page_size));
    }
  } else {
#pragma unroll 8
    for (int32_t w = threadIdx.x; w < w0; w += blockDim.x) before += __popc(pb[w]);
  }
  int prefix;
  BlockExclusiveSum(before, scan, &prefix);
  if (dense) {  // the lane's word: every valid slot
    for (int j = 0; j < 32; ++j) {
      const int32_t i = (wbase + j) * 32 + lane;
      const uint32_t mj = __ballot_sync(0xffffffffu, i < slots && pos_of(i) < len);
      if (lane == j) m = mj;
    }
  }
  const int c = __popc(m);
  const int incl = WarpInclusiveSum(c);
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  int at = prefix + incl - c;  // output position of this lane's word
  int block_total = 0;
#pragma unroll
  for (int k = 0; k < kWarps; ++k) {
    if (k < warp) at += warp_total[k];
    block_total += warp_total[k];
  }
  for (int j = 0; j < 32; ++j) {  // warp-uniform
    const uint32_t mj = __shfl_sync(0xffffffffu, m, j);
    if (!mj) continue;
    const int aj = __shfl_sync(0xffffffffu, at, j);
    const int32_t i = (wbase + j) * 32 + lane;
    int32_t pos = 0;
    if (hoisted) {
      const int32_t local = i / ps - pfirst;  // < 64 (ps >= 16)
      const int32_t lo = __shfl_sync(0xffffffffu, pe0, local & 31);
      const int32_t hi = __shfl_sync(0xffffffffu, pe1, local & 31);
      pos = (local < 32 ? lo : hi) * ps + i % ps;
    } else if ((mj >> lane) & 1u) {
      pos = pos_of(i);
    }
    if ((mj >> lane) & 1u) dst[aj + __popc(mj & ((1u << lane) - 1u))] = pos;
  }
  if (int32_t(blockIdx.x) == chunks - 1 && threadIdx.x == 0) out.count[pair] = prefix + block_total;
  if (blockIdx.x != 0) return;  // block-uniform
  // Valid candidate rows (the rows of the listed pages inside the sequence; growing: the
  // search wrote `selected`, nothing here needs them). A selection of every page (FULL; the
  // selectors list distinct pages, as full_mass below assumes too) holds the sequence's
  // rows: no pass over its page list (at 128k 32 loads per thread, a chain of round trips
  // that made block 0 the compaction's longest). Otherwise loads unrolled.
  const bool grow = shape.head_p != nullptr;
  const bool all_pages = !grow && n_pages == batch.NumPages(g, s);
  int rows = 0;
  if (!grow && !all_pages) {
#pragma unroll 8
    for (int32_t i = threadIdx.x; i < n_pages; i += blockDim.x) {
      rows += min(g.page_size, len - pages[i] * g.page_size);
    }
  }
  int nvalid;
  BlockExclusiveSum(rows, scan, &nvalid);
  if (all_pages) nvalid = len;
  const int G = shape.group;
  for (int jw = warp; jw < G; jw += kWarps) {  // a warp per head (warp-uniform)
    const int32_t sq = s * batch.num_q_heads + h * G + jw;
    int32_t kept = 0;
    float est = 0.0f;
    if (dense) {
      kept = nvalid;
      est = 1.0f;
    } else {
      float mx;
      const int mode = HeadMode(params, shape, head_max, hw, s, sq, &mx);
      kept = hw.kept_count[sq];
      if (mode == kModeAll) {
        est = kept > 0 ? 1.0f : 0.0f;
      } else if (mode == kModeTopP) {
        u64 total = 0;
#pragma unroll
        for (int k = 0; k < 8; ++k) total += hw.hist1[int64_t(sq) * kHistBins + lane * 8 + k];
        total = WarpSumU64(total);
        est = total ? float(double(hw.kept_mass[sq]) / double(total)) : 0.0f;
      }
    }
    if (lane != 0) continue;
    if (stats.kept) stats.kept[sq] = kept;
    if (stats.est_mass) stats.est_mass[sq] = est;
    if (dense) {
      if (stats.selected) stats.selected[sq] = nvalid;
      if (stats.full_mass) stats.full_mass[sq] = 1.0f;
      if (stats.cap_hit) stats.cap_hit[sq] = 0;
    } else if (grow) {
      if (stats.full_mass) stats.full_mass[sq] = est * shape.head_ratio[sq];
    } else {
      if (stats.selected) stats.selected[sq] = nvalid;
      if (stats.full_mass) stats.full_mass[sq] = all_pages ? est : -1.0f;
      if (stats.cap_hit) stats.cap_hit[sq] = 0;
    }
  }
}

}  // namespace twl::cuda
