// Twilight pruner kernels. A decode step runs (+ one memset of the per-head accumulators):
//  1. ScoreInt4Kernel: estimated scores q.k~ of every candidate slot (selected page x row)
//     for all query heads of the GQA group at once: a tensor-core SpGEMV where A = INT4 codes
//     of 16 tokens (two 16-byte loads per thread, nibbles turned into FP16 in registers with
//     the 0x6400 exponent trick, exact for 0..15, see NibbleWordToHalf2x4), B = the group's queries (n = 8 heads),
//     FP32 accumulation; scale/zero applied once per token: s = scale*(q.c) + zero*sum(q).
//     The k-order of the MMA is permuted so that each thread's fragment is exactly the
//     nibbles it loaded (a dot product does not care about the order of its terms).
//     Each block owns a contiguous run of tiles of one (sequence, KV head): it resolves the
//     physical pages of the run once into shared memory, then every warp streams groups of
//     kTilesPerWarp tiles through a per-thread cp.async landing buffer two groups deep.
//     Scores are stored as FP16 (2 B per token and head: a quarter of the INT4 bytes at
//     G = 4 instead of as many), and the per-head maximum of the stored (rounded) scores is
//     folded in with one atomicMax per warp and head (order-preserving integer keys).
//     ScorePage16Kernel does the same for the common geometry (INT4 per token or per page
//     channel, pages of 16, d 64/128, up to 16 heads per KV head) with a page per tile and
//     fixed lane offsets (about half the instructions per byte), and, growing, each page's
//     max estimate per head and its sum of exp below that max. ScoreScalarKernel is the fallback for
//     k_bits 2/8, FP16 K (k_bits 16) and groups past 8 outside ScorePage16Kernel.
//  2. The top-p threshold by histogram selection, many blocks per head (prune_hist.cuh):
//     HistKernel (level 1), KeptKernel (level 2 + union bit words above the boundary bin +
//     per-head kept counters), BoundaryKernel (the boundary bin's bits).
//  3. CompactKeptKernel, blocks of kCompactWords bit words per (sequence, KV head): union
//     bits -> ascending tokens, and the per-query-head telemetry.
#pragma once

#include "gpu/cuda/common.cuh"
#include "gpu/cuda/cp_async.cuh"

namespace twl::cuda {

constexpr int kScoreWarps = 8;
constexpr int kTilesPerWarp = 4;       // 16-token MMA tiles per warp group
constexpr int kScoreMaxPages = 1024;   // pages of a block's tile run resolved in smem
constexpr int kCompactThreads = 256;
constexpr int kCompactWords = 256;   // bit words (8192 slots) of a pair per compaction block

struct PruneShape {
  int32_t group = 1;
  int32_t cand_stride = 0;  // max_select * page_size: candidate slots per (seq, KV head)
  int32_t bit_words = 0;    // ceil(cand_stride / 32)
  float scale = 0.0f;       // softmax scale
  // Growing Quest (see prune_grow.cuh), null otherwise: per query head the share of the
  // candidates' mass to keep, A / (A + R), and per (sequence, KV head) the candidate pages.
  const float* head_p = nullptr;
  const float* head_ratio = nullptr;
  const uint8_t* in_set = nullptr;
  // Growing, second stage: only the (sequence, KV head) pairs flagged here are scored.
  const int32_t* only = nullptr;
};

// Order-preserving float <-> uint32 keys (0 is below every float; atomicMax on keys).
__device__ __forceinline__ uint32_t FloatKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float KeyFloat(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Candidate slot i of a (sequence, KV head): selected page i / page_size, row i % page_size.
// Returns the block id, or -1 when the row lies past the end of the sequence.
__device__ __forceinline__ int64_t SlotBlock(const PageGeometry& g, const BatchView& batch,
                                            const SelectionView& sel, int32_t pair, int32_t s,
                                            int32_t h, int32_t slot, int32_t* pos) {
  const int32_t page_idx = sel.pages[int64_t(pair) * sel.max_select + slot / g.page_size];
  const int32_t row = slot % g.page_size;
  *pos = page_idx * g.page_size + row;
  if (*pos >= batch.seq_len[s]) return -1;
  return g.BlockId(batch.PageId(s, page_idx), h);
}

// (a & mask) | bits in one LOP3. Written as C++, ptxas emits an AND and an OR: a SASS LOP3
// takes one immediate, and it kept both constants as immediates (sm_90 SASS of the score
// pass: 64 LOP3 per page where 32 do; scripts/sass-count.sh). As a PTX lop3 it keeps the
// mask as the immediate and the exponent bits in a register set once.
__device__ __forceinline__ uint32_t AndOr(uint32_t a, uint32_t mask, uint32_t bits) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(bits));
  return d;
}

// The 8 nibbles of a code word as four FP16 pairs (e0,e4), (e1,e5), (e2,e6), (e3,e7): low
// nibbles by the 0x6400 trick (1024 + n, minus 1024), high nibbles in place as 1024 + 16 n
// and scaled back with one FMA (n = x / 16 - 64); every step is exact in FP16.
__device__ __forceinline__ void NibbleWordToHalf2x4(uint32_t w, uint32_t* out) {
  const __half2 k1024 = __halves2half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400));
  const __half2 k1_16 = __halves2half2(__ushort_as_half(0x2C00), __ushort_as_half(0x2C00));
  const __half2 km64 = __halves2half2(__ushort_as_half(0xD400), __ushort_as_half(0xD400));
  const uint32_t w8 = w >> 8, exp = 0x64006400u;
  uint32_t lo0 = AndOr(w, 0x000F000Fu, exp), hi0 = AndOr(w, 0x00F000F0u, exp);
  uint32_t lo1 = AndOr(w8, 0x000F000Fu, exp), hi1 = AndOr(w8, 0x00F000F0u, exp);
  const __half2 a = __hsub2(*reinterpret_cast<__half2*>(&lo0), k1024);
  const __half2 b = __hfma2(*reinterpret_cast<__half2*>(&hi0), k1_16, km64);
  const __half2 c = __hsub2(*reinterpret_cast<__half2*>(&lo1), k1024);
  const __half2 d = __hfma2(*reinterpret_cast<__half2*>(&hi1), k1_16, km64);
  out[0] = *reinterpret_cast<const uint32_t*>(&a);
  out[1] = *reinterpret_cast<const uint32_t*>(&b);
  out[2] = *reinterpret_cast<const uint32_t*>(&c);
  out[3] = *reinterpret_cast<const uint32_t*>(&d);
}

// INT4 per page channel (k_scheme 1): the estimator reads K dequantized to FP16,
// k~ = FP16(code * step16 + kmin) with step16 = FP16(FP16(kmax - kmin) * FP16(1 / 15)),
// where kmin / kmax are the channel's range [lo_j, hi_j] decoded from the block's 8-bit
// record (core/channel_range.h; RangeWords8, PcPageBoundsInPlace)
// (PageChannelStepValue / PageChannelDequantValue, core/quantize.h; one rounding per FP16
// operation, as HSUB2 / HMUL2 / HFMA2 round), so the tensor cores multiply it by the
// unchanged FP16 queries: the B fragments are built once per block, not once per page.
// Channel pairs in the code words' order: from the words holding channels (c, c + 1) and
// (c + 4, c + 5), the pairs (c, c + 4) and (c + 1, c + 5).
__device__ __forceinline__ uint32_t PairFirst(uint32_t lo, uint32_t hi) {
  return __byte_perm(lo, hi, 0x5410);
}
__device__ __forceinline__ uint32_t PairSecond(uint32_t lo, uint32_t hi) {
  return __byte_perm(lo, hi, 0x7632);
}
// step16 of a channel pair from its kmax and kmin pairs (inv: PcInverse15).
__device__ __forceinline__ uint32_t PcStepPair(uint32_t kmax, uint32_t kmin, __half2 inv) {
  return Half2U32(__hmul2(__hsub2(U32Half2(kmax), U32Half2(kmin)), inv));
}
// PcWordBounds: the steps and kmins of the 8 channels of one code word (kmin / kmax as
// 16-byte words, channels c0..c7), paired (c_i, c_i+4) as NibbleWordToHalf2x4 pairs codes.
__device__ __forceinline__ void PcWordBounds(const uint4& mn, const uint4& mx, __half2 inv,
                                             uint32_t step[4], uint32_t kmin[4]) {
  const uint32_t n[4] = {PairFirst(mn.x, mn.z), PairSecond(mn.x, mn.z), PairFirst(mn.y, mn.w),
                         PairSecond(mn.y, mn.w)};
  const uint32_t x[4] = {PairFirst(mx.x, mx.z), PairSecond(mx.x, mx.z), PairFirst(mx.y, mx.w),
                         PairSecond(mx.y, mx.w)};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    kmin[i] = n[i];
    step[i] = PcStepPair(x[i], n[i], inv);
  }
}
// Codes (NibbleWordToHalf2x4's half2 words) -> k~ in place.
__device__ __forceinline__ void PcDequantWord(uint32_t x[4], const uint32_t step[4],
                                              const uint32_t kmin[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[i] = Half2U32(__hfma2(U32Half2(x[i]), U32Half2(step[i]), U32Half2(kmin[i])));
  }
}
// FP16(1 / 15), both halves (PageChannelInverseMaxCodeHalf at k_bits 4).
__device__ __forceinline__ __half2 PcInverse15() { return __float2half2_rn(1.0f / 15.0f); }

__device__ __forceinline__ uint32_t PackHalves(fp16_t lo, fp16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// Channel ranges from a block's record (core/channel_range.h): G(c) = FP16(c D + A), one
// rounding, as HFMA2 rounds. Two 8-bit codes become the halves 1024 + c (their bytes under
// the exponent bits 0x64), 1024 is taken off exactly, and one HFMA2 gives both values.
// `codes` holds the two codes in bytes 0 and 2 (the other bytes are ignored).
__device__ __forceinline__ uint32_t RangeGridPair(uint32_t codes, __half2 a2, __half2 d2) {
  const uint32_t biased = __byte_perm(codes, 0x64646464u, 0x4240);  // (1024 + c0, 1024 + c2)
  const __half2 c = __hsub2(U32Half2(biased), __float2half2_rn(1024.0f));
  return Half2U32(__hfma2(c, d2, a2));
}
// The record's grid (A, D) as half2 pairs.
__device__ __forceinline__ void RangeGrid(uint32_t ad, __half2* a2, __half2* d2) {
  *a2 = U32Half2(__byte_perm(ad, 0, 0x1010));
  *d2 = U32Half2(__byte_perm(ad, 0, 0x3232));
}
// Channels j0 .. j0 + 7 (j0 a multiple of 8) of a record in global memory as the 16-byte
// words of their FP16 lo and hi, in channel order (what the Quest bounds' words looked like).
template <int kHeadDim>
__device__ __forceinline__ void RangeWords8(const uint8_t* record, int j0, uint4* lo, uint4* hi) {
  __half2 a2, d2;
  RangeGrid(*reinterpret_cast<const uint32_t*>(record + 2 * kHeadDim), &a2, &d2);
  const uint2 ca = *reinterpret_cast<const uint2*>(record + j0);
  const uint2 cb = *reinterpret_cast<const uint2*>(record + kHeadDim + j0);
  *lo = make_uint4(RangeGridPair(__byte_perm(ca.x, 0, 0x3120), a2, d2),
                   RangeGridPair(__byte_perm(ca.x, 0, 0x1312), a2, d2),
                   RangeGridPair(__byte_perm(ca.y, 0, 0x3120), a2, d2),
                   RangeGridPair(__byte_perm(ca.y, 0, 0x1312), a2, d2));
  *hi = make_uint4(RangeGridPair(__byte_perm(cb.x, 0, 0x3120), a2, d2),
                   RangeGridPair(__byte_perm(cb.x, 0, 0x1312), a2, d2),
                   RangeGridPair(__byte_perm(cb.y, 0, 0x3120), a2, d2),
                   RangeGridPair(__byte_perm(cb.y, 0, 0x1312), a2, d2));
}

// A landed page's channel-range record (core/channel_range.h, ChannelRangeBytes(kHeadDim)
// bytes at `bounds` in shared memory, in a region of 4 kHeadDim bytes) rewritten by the
// whole warp as what PcWordBounds would give every lane from the decoded ranges: lo pairs
// (c_i, c_i+4) then step pairs, 4 words per 8-channel group (word 4 g + i: channels
// 8 g + i and 8 g + i + 4). Each range and step is formed once per page, not once per lane
// that reads it (8 lanes share every channel); the record is 272 B against 512 B of FP16
// bounds at d = 128, which is what the score pass saves.
// The caller __syncwarp()s before the lanes read the result.
// At d = 128 the 8-channel groups are stored swizzled (PcBoundsGroup): the score pass's
// lanes read 16 bytes of group 4 t4 + m at once for t4 = 0..3, 64 bytes apart, so t4 and
// t4 + 2 hit the same banks and every read took two wavefronts (ncu on the H100: 45% of the
// pass's shared wavefronts excessive, bench/RESULTS.md, twenty-ninth session).
__device__ __forceinline__ int PcBoundsGroup(int g) { return g ^ ((g >> 2) & 2); }
template <int kHeadDim>
__device__ __forceinline__ void PcPageBoundsInPlace(fp16_t* bounds, __half2 inv, int lane) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "two or one pairs per lane");
  const uint8_t* record = reinterpret_cast<const uint8_t*>(bounds);
  uint32_t* kmin_w = reinterpret_cast<uint32_t*>(bounds);
  uint32_t* step_w = reinterpret_cast<uint32_t*>(bounds + kHeadDim);
  __half2 a2, d2;
  RangeGrid(*reinterpret_cast<const uint32_t*>(record + 2 * kHeadDim), &a2, &d2);
  if constexpr (kHeadDim == 128) {
    // Lane l: pairs 2l, 2l + 1 = group l / 2, i = 2 (l & 1) + {0, 1}: channels c, c + 1 and
    // c + 4, c + 5, whose codes are bytes o, o + 1 of the group's two code words.
    const uint2 ca = reinterpret_cast<const uint2*>(record)[lane >> 1];
    const uint2 cb = reinterpret_cast<const uint2*>(record + kHeadDim)[lane >> 1];
    __syncwarp();  // every lane has read the record
    const uint32_t o = 2 * (lane & 1);
    const uint32_t sel_first = o | ((o + 4) << 8), sel_second = (o + 1) | ((o + 5) << 8);
    const uint32_t na = RangeGridPair(__byte_perm(ca.x, ca.y, sel_first), a2, d2);
    const uint32_t nb = RangeGridPair(__byte_perm(ca.x, ca.y, sel_second), a2, d2);
    const uint32_t xa = RangeGridPair(__byte_perm(cb.x, cb.y, sel_first), a2, d2);
    const uint32_t xb = RangeGridPair(__byte_perm(cb.x, cb.y, sel_second), a2, d2);
    // Group lane / 2 at PcBoundsGroup(lane / 2), half (lane & 1) of it.
    const int at = 2 * PcBoundsGroup(lane >> 1) + (lane & 1);
    reinterpret_cast<uint2*>(kmin_w)[at] = make_uint2(na, nb);
    reinterpret_cast<uint2*>(step_w)[at] =
        make_uint2(PcStepPair(xa, na, inv), PcStepPair(xb, nb, inv));
  } else {
    // Lane l: pair l = group l / 4, i = l % 4: channels c and c + 4.
    const uint2 ca = reinterpret_cast<const uint2*>(record)[lane >> 2];
    const uint2 cb = reinterpret_cast<const uint2*>(record + kHeadDim)[lane >> 2];
    __syncwarp();
    const uint32_t o = lane & 3;
    const uint32_t sel = o | ((o + 4) << 8);
    const uint32_t na = RangeGridPair(__byte_perm(ca.x, ca.y, sel), a2, d2);
    const uint32_t xa = RangeGridPair(__byte_perm(cb.x, cb.y, sel), a2, d2);
    kmin_w[lane] = na;
    step_w[lane] = PcStepPair(xa, na, inv);
  }
}

// B fragments of one MMA n-tile: query head n of the group at q_row (zero when !real),
// channels permuted to match the nibble order of A (see NibbleWordToHalf2x4): thread t4
// holds channels [t4 * D / 4, (t4 + 1) * D / 4) as the pairs (e0, e4), (e1, e5), ...
template <int kHeadDim>
__device__ __forceinline__ void LoadQueryFragment(const fp16_t* q_row, bool real, int t4,
                                                  uint32_t (*bfrag)[2][2]) {
  constexpr int kWords = kHeadDim / 32;
  const fp16_t* qh = q_row + t4 * (kHeadDim / 4);
#pragma unroll
  for (int m = 0; m < kWords; ++m) {
    fp16_t e[8];
    *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(qh + m * 8);
    if (!real) {
#pragma unroll
      for (int i = 0; i < 8; ++i) e[i] = 0;
    }
    bfrag[m][0][0] = PackHalves(e[0], e[4]);
    bfrag[m][0][1] = PackHalves(e[1], e[5]);
    bfrag[m][1][0] = PackHalves(e[2], e[6]);
    bfrag[m][1][1] = PackHalves(e[3], e[7]);
  }
}

// sum(q) of query head j of the group (rows from q_group), for every j < G, handed to the
// lanes whose accumulators hold it: qsum[nt][kk] for head nt * 8 + 2 t4 + kk. Every lane
// of the warp must call it.
template <int kHeadDim, int kNT>
__device__ __forceinline__ void GroupQuerySums(const fp16_t* q_group, int G, int lane,
                                               float (*qsum)[2]) {
  const int t4 = lane & 3;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) qsum[nt][0] = qsum[nt][1] = 0.0f;
  // Every head's channels loaded first (all in flight together: a loop to G paid a round
  // trip per head in every block's prologue), then summed in the same order as before.
  constexpr int kPer = (kHeadDim + 31) / 32;
  float v[kNT * 8][kPer];
#pragma unroll
  for (int j = 0; j < kNT * 8; ++j) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = lane + 32 * i;
      v[j][i] = j < G && c < kHeadDim ? H2F(q_group[int64_t(j) * kHeadDim + c]) : 0.0f;
    }
  }
#pragma unroll
  for (int j = 0; j < kNT * 8; ++j) {
    if (j >= G) break;
    float part = 0.0f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) part += v[j][i];
    part = WarpSum(part);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      if (j == nt * 8 + 2 * t4) qsum[nt][0] = part;
      if (j == nt * 8 + 2 * t4 + 1) qsum[nt][1] = part;
    }
  }
}

// Landing buffer of the score kernel: every thread stages its own code chunks (the bytes of
// its MMA fragments) with cp.async kScoreStages - 1 groups ahead, so loads stay in flight
// while the warp computes, without registers. Chunks are interleaved across threads (chunk
// slot k of thread t at [k][t]) so that a warp's 16-byte accesses hit distinct banks.
constexpr int kScoreStages = 3;
constexpr int kScoreSlots = kScoreStages * kTilesPerWarp * 2;  // chunks per thread
template <int kHeadDim>
constexpr size_t ScoreSmemBytes() {
  return size_t(kScoreSlots) * kScoreWarps * 32 * (kHeadDim / 8);
}

// Grid: x = blocks per (sequence, KV head), each owning tiles [x * tiles_per_block, ...);
// y = (sequence, KV head). scores: [num_seqs * num_q_heads][cand_stride] FP16, -inf for
// slots past the sequence end; head_max: [num_seqs * num_q_heads] FloatKey of the max stored
// (FP16-rounded) score, zeroed before.
// kPageChannel (k_scheme 1, page_size a multiple of 16 other than 16, which
// ScorePage16Kernel takes: a tile lies in one block): the A fragments are the codes
// dequantized to FP16 against the tile's block bounds (PcWordBounds / PcDequantWord), the B
// fragments the FP16 queries as for per-token codes, and est = scale * acc: the terms of
// EstimatePageChannelScoreRef, whose FP32 sums run in another order.
template <int kHeadDim, bool kPageChannel = false>
__global__ void __launch_bounds__(kScoreWarps * 32, 2)
    ScoreInt4Kernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk,
                    SelectionView sel, PruneShape shape, int32_t tiles_per_block,
                    fp16_t* __restrict__ scores, uint32_t* __restrict__ head_max) {
  constexpr int kWords = kHeadDim / 32;  // 32-bit code words per thread per token
  constexpr int kChunk = kHeadDim / 8;   // code bytes per thread per token (16 or 8)
  constexpr int kChanPerThread = kHeadDim / 4;
  constexpr int kThreads = kScoreWarps * 32;
  using Chunk = typename std::conditional<kWords == 4, uint4, uint2>::type;
  extern __shared__ __align__(16) unsigned char score_smem[];
  Chunk* landing = reinterpret_cast<Chunk*>(score_smem);  // [kScoreSlots][kThreads]
  __shared__ int32_t run_page[kScoreMaxPages];  // physical page id of run page i
  __shared__ int32_t run_rows[kScoreMaxPages];  // rows of run page i inside the sequence
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
  if (shape.only && !shape.only[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const int32_t t_begin = blockIdx.x * tiles_per_block;
  const int32_t t_end = min((slots + 15) / 16, t_begin + tiles_per_block);
  if (t_begin >= t_end) return;
  // Pages of the run, resolved once: selected index -> page table -> physical page.
  const int32_t p_begin = t_begin * 16 / g.page_size;
  const int32_t p_end = min(sel.count[pair], (t_end * 16 + g.page_size - 1) / g.page_size);
  const int32_t len = batch.seq_len[s];
  for (int32_t i = threadIdx.x; i < p_end - p_begin; i += blockDim.x) {
    const int32_t page_idx = sel.pages[int64_t(pair) * sel.max_select + p_begin + i];
    run_page[i] = batch.PageId(s, page_idx);
    run_rows[i] = min(g.page_size, len - page_idx * g.page_size);
  }
  const int r = lane >> 2, t4 = lane & 3;

  // B fragments: query head n = r of the group (zero past the group).
  const int32_t qbase = s * batch.num_q_heads + h * shape.group;
  uint32_t bfrag[kWords][2][2];
  LoadQueryFragment<kHeadDim>(q.q + int64_t(qbase + (r < shape.group ? r : 0)) * kHeadDim,
                              r < shape.group, t4, bfrag);
  // sum(q) for the two heads this thread's accumulators hold (2*t4, 2*t4+1).
  float qsum[1][2] = {{0.0f, 0.0f}};
  if constexpr (!kPageChannel) {
    GroupQuerySums<kHeadDim, 1>(q.q + int64_t(qbase) * kHeadDim, shape.group, lane, qsum);
  }
  __syncthreads();  // run_page / run_rows ready

  // Row (t, half) of group `grp` of this warp: slot, block, row, validity.
  const bool page16 = g.page_size == 16;  // tile == page: no division
  auto row_of = [&](int32_t tile, int half, int64_t* block, int32_t* row) -> bool {
    const int32_t slot = tile * 16 + r + half * 8;
    const int32_t local = page16 ? tile - p_begin : slot / g.page_size - p_begin;
    *row = page16 ? r + half * 8 : slot % g.page_size;
    const bool valid = tile < t_end && slot < slots && *row < run_rows[min(local, p_end - p_begin - 1)];
    *block = valid ? g.BlockId(run_page[local], h) : 0;
    if (!valid) *row = 0;
    return valid;
  };
  const int32_t stride = kScoreWarps * kTilesPerWarp;  // tiles between a warp's groups
  const int32_t first_tile = t_begin + warp * kTilesPerWarp;
  const int32_t groups = first_tile < t_end ? (t_end - first_tile + stride - 1) / stride : 0;
  // Copies of group k into landing stage k % kScoreStages (rows past the end: row 0 of
  // block 0, never used).
  // fn(t, half, valid, block, row) for the two rows of each tile of group k.
  auto each_row = [&](int32_t k, auto&& fn) {
    const int32_t tile0 = first_tile + k * stride;
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        int64_t block;
        int32_t row;
        const bool valid = row_of(tile0 + t, half, &block, &row);
        fn(t, half, valid, block, row);
      }
    }
  };
  auto issue = [&](int32_t k) {
    if (k < groups) {
      const int stage = k % kScoreStages;
      each_row(k, [&](int t, int half, bool, int64_t block, int32_t row) {
        const uint8_t* src = qk.Codes(g, block, row) + t4 * kChunk;
        Chunk* dst = &landing[((stage * kTilesPerWarp + t) * 2 + half) * kThreads + threadIdx.x];
        if constexpr (kChunk == 16) CpAsync16(dst, src);
        else CpAsync8(dst, src);
      });
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int k = 0; k < kScoreStages - 1; ++k) issue(k);

  float run_max[2] = {-INFINITY, -INFINITY};
  fp16_t* out_row[2];
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const int j = min(2 * t4 + kk, shape.group - 1);
    out_row[kk] = scores + (int64_t(s) * batch.num_q_heads + h * shape.group + j) * shape.cand_stride;
  }
  // Scale / zero of a group's rows, loaded one group ahead: their latency overlaps the
  // previous group's MMAs instead of stalling the warp after each landing wait.
  fp16_t nscale[kTilesPerWarp][2], nzero[kTilesPerWarp][2];
  bool nvalid[kTilesPerWarp][2];
  auto load_meta = [&](int32_t k) {
    each_row(k, [&](int t, int half, bool valid, int64_t block, int32_t row) {
      nvalid[t][half] = valid;
      if constexpr (!kPageChannel) {  // k_scheme 1 stores no per-token scale/zero
        nscale[t][half] = qk.scale[block * g.page_size + row];
        nzero[t][half] = qk.zero[block * g.page_size + row];
      } else {
        nscale[t][half] = nzero[t][half] = fp16_t(0);
      }
    });
  };
  if (groups > 0) load_meta(0);
  for (int32_t k = 0; k < groups; ++k) {
    CpAsyncWait<kScoreStages - 2>();  // this thread's copies of group k have landed
    issue(k + kScoreStages - 1);
    const int stage = k % kScoreStages;
    const int32_t tile0 = first_tile + k * stride;
    float tscale[kTilesPerWarp][2], tzero[kTilesPerWarp][2];
    bool valid[kTilesPerWarp][2];
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        valid[t][half] = nvalid[t][half];
        tscale[t][half] = H2F(nscale[t][half]);
        tzero[t][half] = H2F(nzero[t][half]);
      }
    }
    if (k + 1 < groups) load_meta(k + 1);
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
      if (tile0 + t >= t_end) break;
      const Chunk ca = landing[((stage * kTilesPerWarp + t) * 2 + 0) * kThreads + threadIdx.x];
      const Chunk cb = landing[((stage * kTilesPerWarp + t) * 2 + 1) * kThreads + threadIdx.x];
      const uint32_t* wa = reinterpret_cast<const uint32_t*>(&ca);
      const uint32_t* wb = reinterpret_cast<const uint32_t*>(&cb);
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if constexpr (kPageChannel) {
        // The tile's block (a tile lies in one page: page_size % 16 == 0).
        const int32_t local = (tile0 + t) * 16 / g.page_size - p_begin;
        const int64_t tb = g.BlockId(run_page[local], h);
        const uint8_t* record = qk.range + tb * ChannelRangeBytes(kHeadDim);
        const __half2 inv = PcInverse15();
#pragma unroll
        for (int m = 0; m < kWords; ++m) {
          uint32_t step[4], kmin[4];
          uint4 mn, mx;
          RangeWords8<kHeadDim>(record, t4 * kChanPerThread + m * 8, &mn, &mx);
          PcWordBounds(mn, mx, inv, step, kmin);
          uint32_t xa[4], xb[4];
          NibbleWordToHalf2x4(wa[m], xa);
          NibbleWordToHalf2x4(wb[m], xb);
          PcDequantWord(xa, step, kmin);
          PcDequantWord(xb, step, kmin);
          Mma16816(acc, xa[0], xb[0], xa[1], xb[1], bfrag[m][0][0], bfrag[m][0][1]);
          Mma16816(acc, xa[2], xb[2], xa[3], xb[3], bfrag[m][1][0], bfrag[m][1][1]);
        }
      } else {
#pragma unroll
        for (int m = 0; m < kWords; ++m) {
          uint32_t xa[4], xb[4];
          NibbleWordToHalf2x4(wa[m], xa);
          NibbleWordToHalf2x4(wb[m], xb);
          Mma16816(acc, xa[0], xb[0], xa[1], xb[1], bfrag[m][0][0], bfrag[m][0][1]);
          Mma16816(acc, xa[2], xb[2], xa[3], xb[3], bfrag[m][1][0], bfrag[m][1][1]);
        }
      }
      // acc[0], acc[1]: token r, heads 2t4, 2t4+1; acc[2], acc[3]: token r + 8.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int32_t slot = (tile0 + t) * 16 + r + half * 8;
        if (slot >= slots) continue;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const int j = 2 * t4 + kk;
          if (j >= shape.group) continue;
          fp16_t est;
          if constexpr (kPageChannel) {
            est = F2H(valid[t][half] ? shape.scale * acc[half * 2 + kk] : -INFINITY);
          } else {
            est = F2H(valid[t][half] ? shape.scale * (tscale[t][half] * acc[half * 2 + kk] +
                                                      tzero[t][half] * qsum[0][kk])
                                     : -INFINITY);
          }
          run_max[kk] = fmaxf(run_max[kk], H2F(est));  // the max of what is stored
          out_row[kk][slot] = est;
        }
      }
    }
  }
  CpAsyncWait<0>();
  // Per-head maximum: lanes with the same t4 hold the same heads.
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
      run_max[kk] = fmaxf(run_max[kk], __shfl_xor_sync(0xffffffffu, run_max[kk], o));
    }
    const int j = 2 * t4 + kk;
    if (r == 0 && j < shape.group && run_max[kk] > -INFINITY) {
      atomicMax(&head_max[s * batch.num_q_heads + h * shape.group + j], FloatKey(run_max[kk]));
    }
  }
}

// The per-token INT4 estimator for the common geometry (k_scheme 0, page_size 16, head dim
// 64/128): a 16-token MMA tile is exactly one block, so a lane's code bytes sit at a fixed
// offset inside the block's contiguous codes (row r and r + 8, chunk t4) and a page costs one
// block id (resolved once per block into shared memory) and one address per lane, where the
// general ScoreInt4Kernel resolves slot -> page -> block -> row four times per tile. What is
// left per page and lane: two cp.async, four 2-byte scale/zero loads (one step ahead), the
// nibble conversion, the MMAs and four stores (measured reasoning: the general kernel spent
// ~300 instructions per 1 KB tile, more than the SM can issue at HBM rate; this one ~140).
// Warps take pages round robin (warp w: local pages kP16Pages * (w + kP16Warps * k) + ...), so
// a block's warps stream adjacent blocks. kNT: MMA n-tiles of 8 query heads (groups of 9-16
// heads: two). kMass (growing): each page's max estimate per query head (NaN when the page
// holds one) and the sum of exp(est - that max) by list entry (GrowWork::page_max /
// page_mass; the search rescales by the head's max), so no page-sum pass re-reads scores.
// exp(x) for x <= 0 as ex2.approx(x * log2 e): one multiply and one MUFU op (expf's
// accurate range reduction costs ~10 instructions, four times per page and lane). Relative
// error ~1e-6 at x = -20 (the argument's rounding), far below the float sums' own; results
// below 2^-126 flush to 0.
// kPageChannel (k_scheme 1, same geometry): no per-token scale/zero; per page the block's
// channel-range record (272 B at d = 128; the FP16 Quest bounds were 512 B) lands with its
// codes, the warp decodes it in place into lo and FP16 step pairs (PcPageBoundsInPlace: each
// channel's range and step formed once per page), and
// each lane dequantizes its A fragments with one HFMA2 per pair (PcDequantWord); the B
// fragments are the FP16 queries, loaded once per block, and est = scale * acc
// (EstimatePageChannelScoreRef's terms). Until the seventeenth session the B fragments were
// rebuilt per page as FP16(q_j step_j) with a per-head base sum_j q_j kmin_j (the pass at
// B = 8 went from ~0.33 to ~0.27 ms, H200). SASS per page and main loop (d = 128, G <= 8,
// scripts/sass-count.sh): 318.5 with each lane forming its own steps, 232.0 now
// (docs/PRUNE_PASSES.md, "SASS counts").
// max that propagates NaN (fmaxf drops it).
__device__ __forceinline__ float MaxNan(float a, float b) {
  float y;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
  return y;
}

constexpr int kP16Warps = 8;
constexpr int kP16Pages = 2;     // pages per warp per pipeline step
constexpr int kP16Stages = 4;    // steps: kP16Stages - 1 in flight while one is computed
constexpr int kP16MaxPages = 2048;  // pages of a block's run resolved in shared memory

// Shared memory of ScorePage16Kernel (2 blocks per SM: at most ~113 KB each). Per token: the
// code landing buffer. Per page channel also the bounds landing buffer (each page's
// channel-range record, in the codes' cp.async groups, then its lo and step pairs)
// [stage][page][warp][4 * kHeadDim bytes]; to fit,
// it resolves runs of up to 1024 pages. (3 blocks per SM with 2 stages measured the same on
// the H200, 346.75 vs 346.98 us at B = 8: the pass is issue-bound, not latency-bound.)
template <int kHeadDim, int kNT, bool kPageChannel>
struct P16Smem {
  static constexpr int kStages = kP16Stages;
  static constexpr int kMaxPages = kPageChannel ? kP16MaxPages / 2 : kP16MaxPages;
  static constexpr size_t kLanding =
      size_t(kStages) * kP16Pages * 2 * kP16Warps * 32 * (kHeadDim / 8);
  static constexpr size_t kBoundsPage = 4 * kHeadDim;  // lo + step pairs, FP16
  static constexpr size_t kBounds =
      kPageChannel ? size_t(kStages) * kP16Pages * kP16Warps * kBoundsPage : 0;
  static constexpr size_t kBytes = kLanding + kBounds;
  static __device__ __forceinline__ fp16_t* Bounds(unsigned char* smem, int stage, int page,
                                                   int warp) {
    return reinterpret_cast<fp16_t*>(
        smem + kLanding + ((size_t(stage) * kP16Pages + page) * kP16Warps + warp) * kBoundsPage);
  }
};
static_assert(P16Smem<128, 2, true>::kBytes + P16Smem<128, 2, true>::kMaxPages * 5 <= 110 * 1024,
              "two blocks per SM");
template <int kHeadDim, int kNT = 1, bool kPageChannel = false>
constexpr size_t ScorePage16SmemBytes() {
  return P16Smem<kHeadDim, kNT, kPageChannel>::kBytes;
}

template <int kHeadDim, int kNT, bool kMass, bool kPageChannel = false>
__global__ void __launch_bounds__(kP16Warps * 32, 2)
    ScorePage16Kernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk,
                      SelectionView sel, PruneShape shape, int32_t pages_per_block,
                      fp16_t* __restrict__ scores, uint32_t* __restrict__ head_max,
                      float* __restrict__ page_mass, float* __restrict__ page_max) {
  using Smem = P16Smem<kHeadDim, kNT, kPageChannel>;
  constexpr int kStages = Smem::kStages;
  constexpr int kWords = kHeadDim / 32;  // 32-bit code words per thread per token
  constexpr int kChunk = kHeadDim / 8;   // code bytes per thread per token (16 or 8)
  constexpr int kRowBytes = kHeadDim / 2;
  constexpr int kBlockBytes = 16 * kRowBytes;
  constexpr int kThreads = kP16Warps * 32;
  using Chunk = typename std::conditional<kWords == 4, uint4, uint2>::type;
  extern __shared__ __align__(16) unsigned char p16_smem[];
  Chunk* landing = reinterpret_cast<Chunk*>(p16_smem);  // [stage][page][half][kThreads]
  // Block id of run page i, in 32 bits: the ids index the INT4 codes in device memory at
  // >= 256 B per block (2-bit K, d = 64), so they stay below 2^32 on any GPU under 1 TiB.
  // One IMAD.WIDE.U32 per address instead of a 64-bit multiply and add.
  __shared__ uint32_t run_blk[Smem::kMaxPages];
  __shared__ uint8_t run_rows[Smem::kMaxPages];  // its rows inside the sequence (0..16)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
  if (shape.only && !shape.only[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t p_begin = blockIdx.x * pages_per_block;
  const int r = lane >> 2, t4 = lane & 3;
  const int G = shape.group;
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  // The block's first loads go out together: the selection's count, the run's page entries
  // (bounded by the selection's capacity, as the count is not known yet), the sequence's
  // length and the queries. Loaded after the count's test, they were a chain: count, then
  // entries, then the page table, then the first copies; with 8 waves of blocks at B = 8,
  // each block's start leaves its share of the SM's streaming idle.
  const int32_t n_pages = sel.count[pair];
  constexpr int kEntriesPerThread = Smem::kMaxPages / kThreads;
  static_assert(Smem::kMaxPages % kThreads == 0, "whole entries per thread");
  const int32_t entries = min(sel.max_select - p_begin, pages_per_block);
  int32_t page_idx[kEntriesPerThread];
#pragma unroll
  for (int u = 0; u < kEntriesPerThread; ++u) {
    const int32_t i = int32_t(threadIdx.x) + u * kThreads;
    page_idx[u] = i < entries ? sel.pages[int64_t(pair) * sel.max_select + p_begin + i] : 0;
  }
  const int32_t len = batch.seq_len[s];
  // B fragments per n-tile: query head nt * 8 + r (zero past the group), the FP16 queries
  // under either scheme (per page channel the A side is dequantized instead).
  uint32_t bfrag[kNT][kWords][2][2];
  // sum(q) of the heads this thread's accumulators hold (nt * 8 + 2 t4 + kk).
  float qsum[kNT][2];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int n = nt * 8 + r;
    LoadQueryFragment<kHeadDim>(q.q + int64_t(sq0 + (n < G ? n : 0)) * kHeadDim, n < G, t4,
                                bfrag[nt]);
  }
  if constexpr (!kPageChannel) GroupQuerySums<kHeadDim, kNT>(q.q + int64_t(sq0) * kHeadDim, G, lane, qsum);
  // An empty asm statement taking the entries keeps their loads ahead of the test below
  // (the compiler otherwise moves loads past a test that comes before their only use).
#pragma unroll
  for (int u = 0; u < kEntriesPerThread; ++u) asm volatile("" ::"r"(page_idx[u]));
  const int32_t run = min(n_pages, p_begin + pages_per_block) - p_begin;
  if (run <= 0) return;
#pragma unroll
  for (int u = 0; u < kEntriesPerThread; ++u) {
    const int32_t i = int32_t(threadIdx.x) + u * kThreads;
    if (i < run) {
      run_blk[i] = uint32_t(g.BlockId(batch.PageId(s, page_idx[u]), h));
      run_rows[i] = uint8_t(max(0, min(16, len - page_idx[u] * 16)));
    }
  }
  __syncthreads();  // run_blk / run_rows ready

  constexpr int kStride = kP16Warps * kP16Pages;  // run pages between a warp's steps
  const int32_t first = warp * kP16Pages;
  const int32_t steps = first < run ? (run - first + kStride - 1) / kStride : 0;
  // This lane's sources (block 0) and shared destinations (stage 0, page 0), formed once:
  // per copy one IMAD.WIDE.U32 for the source and a constant offset for the destination.
  const uint8_t* lane_codes = qk.codes + r * kRowBytes + t4 * kChunk;
  const uint32_t land_s = SharedAddress(&landing[threadIdx.x]);
  constexpr uint32_t kLandPage = 2 * kThreads * sizeof(Chunk);  // one page's two halves
  // Per page channel: the block's channel-range record, 16-byte pieces (17 at d = 128). Every
  // lane of a stage's pieces copies one, without a branch: lanes past the record repeat its
  // last piece into the stage's spare bytes (the same source sectors: no more bytes read).
  // At d = 64 the stage has 16 pieces and lanes 16-31 copy nothing: copying lanes 0-15's
  // pieces again wrote the same bytes from two unordered async copies (compute-sanitizer
  // racecheck: a WAW hazard, benign in value but a race all the same).
  constexpr int kRecordBytes = int(ChannelRangeBytes(kHeadDim));
  constexpr int kRecordPieces = kRecordBytes / 16;
  constexpr int kStagePieces = 4 * kHeadDim / 16;  // the page's bounds stage, in pieces
  static_assert(kRecordPieces <= kStagePieces, "the record fits the bounds stage");
  const int lane_piece = lane % kStagePieces;
  const bool lane_copies_piece = kStagePieces >= 32 || lane < kStagePieces;
  const uint8_t* lane_record = qk.range + min(lane_piece, kRecordPieces - 1) * 16;
  const uint32_t bounds_s = kPageChannel ? SharedAddress(Smem::Bounds(p16_smem, 0, 0, warp)) + lane_piece * 16 : 0;
  constexpr uint32_t kBoundsStep = kP16Warps * Smem::kBoundsPage;  // between (stage, page)s
  auto issue = [&](int32_t k) {
    if (k < steps) {
      const int stage = k % kStages;
#pragma unroll
      for (int pp = 0; pp < kP16Pages; ++pp) {
        const int32_t lp = first + k * kStride + pp;
        if (lp < run) {
          const uint32_t blk = run_blk[lp];
          const uint8_t* src = lane_codes + size_t(blk) * kBlockBytes;
          const uint32_t dst = land_s + uint32_t(stage * kP16Pages + pp) * kLandPage;
          if constexpr (kChunk == 16) {
            CpAsync16(dst, src);
            CpAsync16(dst + kThreads * sizeof(Chunk), src + 8 * kRowBytes);
          } else {
            CpAsync8(dst, src);
            CpAsync8(dst + kThreads * sizeof(Chunk), src + 8 * kRowBytes);
          }
          if constexpr (kPageChannel) {
            if (lane_copies_piece) {
              CpAsync16(bounds_s + uint32_t(stage * kP16Pages + pp) * kBoundsStep,
                        lane_record + size_t(blk) * kRecordBytes);
            }
          }
        }
      }
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int k = 0; k < kStages - 1; ++k) issue(k);

  // Scale / zero of rows r, r + 8 of a step's pages, loaded one step ahead.
  fp16_t nscale[kP16Pages][2], nzero[kP16Pages][2];
  int nrows[kP16Pages];
  auto load_meta = [&](int32_t k) {
#pragma unroll
    for (int pp = 0; pp < kP16Pages; ++pp) {
      const int32_t lp = min(first + k * kStride + pp, run - 1);
      const int64_t at = int64_t(run_blk[lp]) * 16 + r;
      nrows[pp] = run_rows[lp];
      nscale[pp][0] = qk.scale[at];
      nscale[pp][1] = qk.scale[at + 8];
      nzero[pp][0] = qk.zero[at];
      nzero[pp][1] = qk.zero[at + 8];
    }
  };
  // The running max of this lane's estimates per held head, over rows r and r + 8 as the
  // halves of one FP16 pair: the estimates are FP16 already, so the max is the same value
  // as over their floats, and packing and comparing them in pairs costs 2 F2FP and 2 HMNMX2
  // per page where floats cost 4 F2FP, 4 conversions back and 4 FMNMX.
  __half2 run_max[kNT][2];
  fp16_t* out_row[kNT][2];
  float* mass_row[kNT][2];
  float* max_row[kNT][2];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      run_max[nt][kk] = __float2half2_rn(-INFINITY);
      const int j = min(nt * 8 + 2 * t4 + kk, G - 1);
      out_row[nt][kk] = scores + int64_t(sq0 + j) * shape.cand_stride + int64_t(p_begin) * 16 + r;
      mass_row[nt][kk] = kMass ? page_mass + int64_t(sq0 + j) * sel.max_select + p_begin : nullptr;
      max_row[nt][kk] = kMass ? page_max + int64_t(sq0 + j) * sel.max_select + p_begin : nullptr;
    }
  }
  if constexpr (!kPageChannel) {
    if (steps > 0) load_meta(0);
  }
  for (int32_t k = 0; k < steps; ++k) {
    CpAsyncWait<kStages - 2>();  // this thread's copies of step k have landed
    if constexpr (kPageChannel) {
      // Every lane's bounds of step k have landed and are visible to the warp, and every
      // lane is done with step k - 1's, whose stage the next issue overwrites.
      __syncwarp();
    }
    issue(k + kStages - 1);
    const int stage = k % kStages;
    if constexpr (kPageChannel) {
      // Every page of the step, without a test: a page past the run decodes what its stage
      // holds from an earlier step (or nothing written yet), which nothing reads. The test
      // made the compiler wrap each page's decode in a divergence check and reconvergence:
      // 13 of 246.5 SASS instructions per page at d = 128 (scripts/sass-count.sh).
#pragma unroll
      for (int pp = 0; pp < kP16Pages; ++pp) {
        PcPageBoundsInPlace<kHeadDim>(Smem::Bounds(p16_smem, stage, pp, warp), PcInverse15(), lane);
      }
      __syncwarp();  // the steps are visible to every lane
    }
    float tscale[kP16Pages][2], tzero[kP16Pages][2];
    int rows[kP16Pages];
    if constexpr (!kPageChannel) {
#pragma unroll
      for (int pp = 0; pp < kP16Pages; ++pp) {
        rows[pp] = nrows[pp];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          tscale[pp][half] = H2F(nscale[pp][half]);
          tzero[pp][half] = H2F(nzero[pp][half]);
        }
      }
      if (k + 1 < steps) load_meta(k + 1);
    }
    // Per page channel at 9-16 heads one page at a time: unrolled, the two pages' dequantized
    // codes and bounds next to two n-tiles' fragments risk passing 128 registers.
#pragma unroll(kPageChannel && kNT == 2 ? 1 : kP16Pages)
    for (int pp = 0; pp < kP16Pages; ++pp) {
      const int32_t lp = first + k * kStride + pp;
      if (lp >= run) break;  // warp-uniform
      int page_rows;  // rows of the page inside the sequence
      if constexpr (kPageChannel) {
        page_rows = run_rows[lp];
      } else {
        page_rows = rows[pp];
      }
      const Chunk ca = landing[((stage * kP16Pages + pp) * 2) * kThreads + threadIdx.x];
      const Chunk cb = landing[((stage * kP16Pages + pp) * 2 + 1) * kThreads + threadIdx.x];
      const uint32_t* wa = reinterpret_cast<const uint32_t*>(&ca);
      const uint32_t* wb = reinterpret_cast<const uint32_t*>(&cb);
      float acc[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
      // Per page channel: the page's kmin pairs then step pairs (PcPageBoundsInPlace), this
      // lane's channels [t4 * kHeadDim / 4, ...), 8 per code word.
      const fp16_t* bounds = kPageChannel ? Smem::Bounds(p16_smem, stage, pp, warp) + t4 * (kHeadDim / 4)
                                          : nullptr;
#pragma unroll
      for (int m = 0; m < kWords; ++m) {
        uint32_t xa[4], xb[4];
        NibbleWordToHalf2x4(wa[m], xa);
        NibbleWordToHalf2x4(wb[m], xb);
        if constexpr (kPageChannel) {
          // Group 4 t4 + m, swizzled at d = 128 (PcBoundsGroup).
          const int mg = kHeadDim == 128 ? (m ^ (t4 & 2)) : m;
          const uint4 kmin4 = *reinterpret_cast<const uint4*>(bounds + mg * 8);
          const uint4 step4 = *reinterpret_cast<const uint4*>(bounds + kHeadDim + mg * 8);
          const uint32_t kmin[4] = {kmin4.x, kmin4.y, kmin4.z, kmin4.w};
          const uint32_t step[4] = {step4.x, step4.y, step4.z, step4.w};
          PcDequantWord(xa, step, kmin);
          PcDequantWord(xb, step, kmin);
        }
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          Mma16816(acc[nt], xa[0], xb[0], xa[1], xb[1], bfrag[nt][m][0][0], bfrag[nt][m][0][1]);
          Mma16816(acc[nt], xa[2], xb[2], xa[3], xb[3], bfrag[nt][m][1][0], bfrag[nt][m][1][1]);
        }
      }
      // acc[nt][0..1]: token r, heads nt*8 + 2t4 + {0,1}; acc[nt][2..3]: token r + 8.
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const bool head = nt * 8 + 2 * t4 + kk < G;
          float v[2];
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const bool valid = r + half * 8 < page_rows;
            if constexpr (kPageChannel) {
              v[half] = valid ? shape.scale * acc[nt][half * 2 + kk] : -INFINITY;
            } else {
              v[half] = valid ? shape.scale * (tscale[pp][half] * acc[nt][half * 2 + kk] +
                                               tzero[pp][half] * qsum[nt][kk])
                              : -INFINITY;
            }
          }
          // Rows r and r + 8, each rounded to nearest once (as F2H rounds one).
          const __half2 est = __floats2half2_rn(v[0], v[1]);
          if (head) {
            out_row[nt][kk][lp * 16] = __half_as_ushort(__low2half(est));
            out_row[nt][kk][lp * 16 + 8] = __half_as_ushort(__high2half(est));
          }
          run_max[nt][kk] = __hmax2(run_max[nt][kk], est);
          if constexpr (kMass) {
            const float x[2] = {__low2float(est), __high2float(est)};
            // The page's max over its 16 rows (lanes of equal t4), NaN if any row is, and the
            // sum of exp(x - max) (a NaN page: NaN, as its sum of exp(x - M) was).
            float pm = MaxNan(x[0], x[1]);
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) {
              pm = MaxNan(pm, __shfl_xor_sync(0xffffffffu, pm, o));
            }
            if (r == 0 && head) max_row[nt][kk][lp] = pm;
            float sum = (x[0] == -INFINITY ? 0.0f : Exp2Approx((x[0] - pm) * kLog2e)) +
                        (x[1] == -INFINITY ? 0.0f : Exp2Approx((x[1] - pm) * kLog2e));
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (r == 0 && head) mass_row[nt][kk][lp] = sum;
          }
        }
      }
    }
  }
  CpAsyncWait<0>();
  // Per-head maximum: lanes with the same t4 hold the same heads.
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      float v = fmaxf(__low2float(run_max[nt][kk]), __high2float(run_max[nt][kk]));
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
      const int j = nt * 8 + 2 * t4 + kk;
      if (r == 0 && j < G && v > -INFINITY) atomicMax(&head_max[sq0 + j], FloatKey(v));
    }
  }
}

// Scalar estimator (k_bits 2/8, any k_bits < 16 under the per-page-channel scheme, or the
// FP16 K itself when k_bits == 16): one warp per slot.
__global__ void __launch_bounds__(kScoreWarps * 32)
    ScoreScalarKernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk, FpKvView kv,
                      SelectionView sel, PruneShape shape, fp16_t* __restrict__ scores,
                      uint32_t* __restrict__ head_max) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
  if (shape.only && !shape.only[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slot = blockIdx.x * kScoreWarps + warp;
  if (slot >= sel.count[pair] * g.page_size) return;
  int32_t pos;
  const int64_t block = SlotBlock(g, batch, sel, pair, s, h, slot, &pos);
  for (int j = 0; j < shape.group; ++j) {
    const int32_t qh = h * shape.group + j;
    float est = -INFINITY;
    if (block >= 0) {
      const fp16_t* qr = q.q + (int64_t(s) * batch.num_q_heads + qh) * g.head_dim;
      const int32_t row = slot % g.page_size;
      float dot = 0.0f, qsum = 0.0f;
      if (g.k_bits >= 16) {
        const fp16_t* k = kv.K(g, block, row);
        for (int c = lane; c < g.head_dim; c += 32) dot += H2F(qr[c]) * shape.scale * H2F(k[c]);
        est = WarpSum(dot);
      } else if (g.k_scheme == kKSchemePageChannel) {
        // EstimatePageChannelScoreRef: sum_j q_j k~_j, k~_j = FP16(code_j step16_j + kmin_j).
        const uint8_t* codes = qk.Codes(g, block, row);
        const uint8_t* record = qk.Range(g, block);
        const __half inv = __float2half_rn(__fdiv_rn(1.0f, float(g.MaxCode())));
        for (int c = lane; c < g.head_dim; c += 32) {
          fp16_t mn, mx;  // the channel's range
          DecodeChannelRange(record, g.head_dim, c, &mn, &mx);
          const __half lo = __ushort_as_half(mn);
          const __half step = __hmul(__hsub(__ushort_as_half(mx), lo), inv);
          const __half code = __int2half_rn(int(UnpackCode(codes, c, g.k_bits)));
          dot += H2F(qr[c]) * shape.scale * __half2float(__hfma(code, step, lo));
        }
        est = WarpSum(dot);
      } else {
        const uint8_t* codes = qk.Codes(g, block, row);
        for (int c = lane; c < g.head_dim; c += 32) {
          const float qv = H2F(qr[c]) * shape.scale;
          dot += qv * float(UnpackCode(codes, c, g.k_bits));
          qsum += qv;
        }
        dot = WarpSum(dot);
        qsum = WarpSum(qsum);
        const int64_t at = block * g.page_size + row;
        est = H2F(qk.scale[at]) * dot + H2F(qk.zero[at]) * qsum;
      }
    }
    if (lane == 0) {
      const fp16_t e = F2H(est);
      scores[(int64_t(s) * batch.num_q_heads + qh) * shape.cand_stride + slot] = e;
      if (block >= 0) atomicMax(&head_max[s * batch.num_q_heads + qh], FloatKey(H2F(e)));
    }
  }
}

}  // namespace twl::cuda
