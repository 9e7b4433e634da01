// What the pruner's kernels share (prune.cuh has the step's passes): launch constants, the
// prune shape, order-preserving score keys, slot -> block lookup, the INT4 code and channel-
// range decoding into FP16, and the queries as MMA B fragments.
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

}  // namespace twl::cuda
