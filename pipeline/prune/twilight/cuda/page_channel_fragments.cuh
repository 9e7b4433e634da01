// INT4 per page channel (k_scheme 1) in ScorePage16Kernel (prune.cuh): a page's MMA B
// fragments qs_j = FP16(q_j * step_j) and per-head base sum_j q_j kmin_j, built by the warp
// together from the block's Quest bounds (EstimatePageChannelScoreRef's definition: the one
// FP16 MMA of the codes against qs is exact up to the order of its FP32 sums).
//
// Work split: lane L owns kPairs = D / 64 fragment pairs (channels c, c + 4: the FP16 pair
// (e_i, e_i+4) that NibbleWordToHalf2x4 pairs) of one 16-byte fragment word W, i.e. D / 32
// channels. It computes their steps once (not once per head and lane), and for every query
// head of the group their qs (one packed store into the warp's exchange buffer) and its share
// of the base (a warp reduce-scatter then hands lane (r, t4) the bases of heads 2 t4, 2 t4 + 1).
// Lane (r, t4) then loads its B fragments (head r, words t4 * D / 32 + m) as 16-byte words.
// Exchange layout per head: D / 8 16-byte slots, word W = t4 * D / 32 + m at slot
// (4 m + t4) ^ (4 * (head & 1)): a reader quarter-warp (two heads, four t4) and a writer
// half-warp (eight slots of one head) hit 32 distinct banks.
// The scaled queries (FP16 q times the softmax scale, FP32, as QueryRow) sit in shared memory
// per head in the lanes' order, [head][lane][2 kPairs]: one 8- or 16-byte load per head.
#pragma once

#include "core/divide_by_15.h"
#include "gpu/cuda/common.cuh"

namespace twl::cuda {

template <int kHeadDim>
struct PcLaneMap {
  static constexpr int kPairs = kHeadDim / 64;        // fragment pairs per lane: 2 or 1
  static constexpr int kLanesPerSlot = 4 / kPairs;    // lanes writing one 16-byte word
  static constexpr int kSlots = kHeadDim / 8;         // 16-byte words per head
  static constexpr int kWords = kHeadDim / 32;        // words per t4 (the m index)
  // Slot (before the head swizzle) and first pair index of lane L's share.
  static __device__ __forceinline__ int Slot(int lane) { return lane / kLanesPerSlot; }
  static __device__ __forceinline__ int Pair0(int lane) { return (lane % kLanesPerSlot) * kPairs; }
  // Channel of the low element of lane L's pair p (the high element is 4 channels up):
  // slot s = 4 m + t4 holds word W = t4 * kWords + m, channels 8 W .. 8 W + 7.
  static __device__ __forceinline__ int Channel(int lane, int p) {
    const int s = Slot(lane);
    return 8 * ((s % 4) * kWords + s / 4) + Pair0(lane) + p;
  }
};

// Every thread of the block: the group's scaled queries into qv [kHeads][32][2 kPairs]
// (heads past G zero). The caller synchronizes before use.
template <int kHeadDim, int kHeads>
__device__ __forceinline__ void PcStageQueries(const fp16_t* q_group, int G, float scale,
                                               float* qv) {
  using Map = PcLaneMap<kHeadDim>;
  for (int e = threadIdx.x; e < kHeads * kHeadDim; e += blockDim.x) {
    const int hd = e / kHeadDim, rest = e % kHeadDim;
    const int lane = rest / (2 * Map::kPairs), k = rest % (2 * Map::kPairs);
    const int c = Map::Channel(lane, k / 2) + 4 * (k % 2);
    qv[e] = hd < G ? H2F(q_group[hd * kHeadDim + c]) * scale : 0.0f;
  }
}

// The scaled queries of this lane's channels for the 8 heads of one n-tile, held in
// registers across a block's pages (8 x 2 kPairs floats) instead of re-read from shared
// memory for every page (2 KB per page and warp at d = 128, G = 4).
template <int kHeadDim>
struct PcLaneQueries {
  static constexpr int kVals = 2 * PcLaneMap<kHeadDim>::kPairs;
  float x[8][kVals];
  // From PcStageQueries' layout (after the block's barrier), heads nt * 8 .. nt * 8 + 7.
  __device__ __forceinline__ void Load(const float* qv, int nt, int lane) {
#pragma unroll
    for (int hh = 0; hh < 8; ++hh) {
      const float* v = qv + ((nt * 8 + hh) * 32 + lane) * kVals;
#pragma unroll
      for (int e = 0; e < kVals; ++e) x[hh][e] = v[e];
    }
  }
};

// The bases of the heads this lane's accumulators hold: part[hh] is this lane's share of head
// hh's sum (hh < heads <= 8 of the n-tile); out[kk] becomes the warp's total for head
// 2 t4 + kk (lanes whose heads lie past `heads`: unused values). A reduce-scatter: xor 1 pairs
// the lanes of t4 bit 0 (head bit 1) and xor 2 those of t4 bit 1 (head bit 2), each keeping
// half of the heads; xor 4, 8, 16 then sum over the rows r. Every lane calls it.
__device__ __forceinline__ void PcHeadSums(const float (&part)[8], int heads, int lane,
                                           float (&out)[2]) {
  constexpr unsigned kAll = 0xffffffffu;
  const bool b0 = (lane & 1) != 0, b1 = (lane & 2) != 0;
  float c0, c1;
  if (heads > 4) {
    float a[4];  // a[q]: head (q & 1) + 4 (q >> 1) + 2 b0, over lanes L, L ^ 1
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int h0 = (q & 1) + (q >> 1) * 4;
      const float keep = b0 ? part[h0 + 2] : part[h0];
      const float give = b0 ? part[h0] : part[h0 + 2];
      a[q] = keep + __shfl_xor_sync(kAll, give, 1);
    }
    c0 = (b1 ? a[2] : a[0]) + __shfl_xor_sync(kAll, b1 ? a[0] : a[2], 2);
    c1 = (b1 ? a[3] : a[1]) + __shfl_xor_sync(kAll, b1 ? a[1] : a[3], 2);
  } else if (heads > 2) {
    c0 = (b0 ? part[2] : part[0]) + __shfl_xor_sync(kAll, b0 ? part[0] : part[2], 1);
    c1 = (b0 ? part[3] : part[1]) + __shfl_xor_sync(kAll, b0 ? part[1] : part[3], 1);
    c0 += __shfl_xor_sync(kAll, c0, 2);
    c1 += __shfl_xor_sync(kAll, c1, 2);
  } else {
    c0 = part[0] + __shfl_xor_sync(kAll, part[0], 1);
    c0 += __shfl_xor_sync(kAll, c0, 2);
    c1 = 0.0f;
    if (heads > 1) {
      c1 = part[1] + __shfl_xor_sync(kAll, part[1], 1);
      c1 += __shfl_xor_sync(kAll, c1, 2);
    }
  }
#pragma unroll
  for (int o = 4; o < 32; o <<= 1) {
    c0 += __shfl_xor_sync(kAll, c0, o);
    if (heads > 1) c1 += __shfl_xor_sync(kAll, c1, o);
  }
  out[0] = c0;
  out[1] = c1;
}

// One page: bfrag[nt] = lane (r, t4)'s B fragments of head nt * 8 + r (as LoadQueryFragment
// packs q), base[nt][kk] = sum_j q_j kmin_j of head nt * 8 + 2 t4 + kk. bounds: the block's
// kmin[kHeadDim] then kmax[kHeadDim] (FP16, landed and visible to the warp); qv: see
// PcStageQueries (kNT * 8 heads), or with kQueryRegs (one n-tile) qr, the same values in
// registers; xchg: this warp's exchange buffer (8 heads). Every lane of the warp calls it;
// it leaves xchg free for the next call.
template <int kHeadDim, int kNT, bool kQueryRegs = false>
__device__ __forceinline__ void PcPageFragments(const fp16_t* bounds, const float* qv,
                                                const PcLaneQueries<kHeadDim>& qr, uint4* xchg,
                                                int G, int lane,
                                                uint32_t (*bfrag)[kHeadDim / 32][2][2],
                                                float (*base)[2]) {
  static_assert(!kQueryRegs || kNT == 1, "queries in registers: one n-tile");
  using Map = PcLaneMap<kHeadDim>;
  constexpr int kPairs = Map::kPairs;
  constexpr int kVals = 2 * kPairs;  // this lane's channels: (c, c + 4) per pair
  const fp16_t* kmin = bounds;
  const fp16_t* kmax = bounds + kHeadDim;
  const int c0 = Map::Channel(lane, 0);
  // Bounds of this lane's channels in the order c0, c0 + 4, c0 + 1, c0 + 5.
  fp16_t lo[kVals], hi[kVals];
  if constexpr (kPairs == 2) {  // c0 even: (c0, c0 + 1) and (c0 + 4, c0 + 5) are 32-bit words
    const uint32_t n0 = *reinterpret_cast<const uint32_t*>(kmin + c0);
    const uint32_t n4 = *reinterpret_cast<const uint32_t*>(kmin + c0 + 4);
    const uint32_t x0 = *reinterpret_cast<const uint32_t*>(kmax + c0);
    const uint32_t x4 = *reinterpret_cast<const uint32_t*>(kmax + c0 + 4);
    lo[0] = fp16_t(n0), lo[1] = fp16_t(n4), lo[2] = fp16_t(n0 >> 16), lo[3] = fp16_t(n4 >> 16);
    hi[0] = fp16_t(x0), hi[1] = fp16_t(x4), hi[2] = fp16_t(x0 >> 16), hi[3] = fp16_t(x4 >> 16);
  } else {
    lo[0] = kmin[c0], lo[1] = kmin[c0 + 4];
    hi[0] = kmax[c0], hi[1] = kmax[c0 + 4];
  }
  float mn[kVals], step[kVals];
#pragma unroll
  for (int e = 0; e < kVals; ++e) {
    mn[e] = H2F(lo[e]);
    step[e] = DivideBy15(H2F(hi[e]) - mn[e]);  // PageChannelStep at k_bits 4, bit for bit
  }
  const int r = lane >> 2, t4 = lane & 3;
  const int slot = Map::Slot(lane), byte0 = Map::Pair0(lane) * 4;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    // kNT = 2 only for groups past 8; the clamp keeps any other call in bounds.
    const int heads = max(1, min(G - nt * 8, 8));
    float part[8];
#pragma unroll
    for (int hh = 0; hh < 8; ++hh) {
      part[hh] = 0.0f;
      if (hh >= heads) continue;  // warp-uniform
      const float* v = qv + ((nt * 8 + hh) * 32 + lane) * kVals;
      float x[kVals];
      if constexpr (kQueryRegs) {
#pragma unroll
        for (int e = 0; e < kVals; ++e) x[e] = qr.x[hh][e];
      } else if constexpr (kVals == 4) {
        const float4 w = *reinterpret_cast<const float4*>(v);
        x[0] = w.x, x[1] = w.y, x[2] = w.z, x[3] = w.w;
      } else {
        const float2 w = *reinterpret_cast<const float2*>(v);
        x[0] = w.x, x[1] = w.y;
      }
      uint32_t packed[kPairs];
#pragma unroll
      for (int p = 0; p < kPairs; ++p) {
        part[hh] += x[2 * p] * mn[2 * p] + x[2 * p + 1] * mn[2 * p + 1];
        const __half2 qs = __floats2half2_rn(x[2 * p] * step[2 * p], x[2 * p + 1] * step[2 * p + 1]);
        packed[p] = *reinterpret_cast<const uint32_t*>(&qs);
      }
      unsigned char* dst = reinterpret_cast<unsigned char*>(
                               xchg + hh * Map::kSlots + (slot ^ ((hh & 1) << 2))) + byte0;
      if constexpr (kPairs == 2) {
        *reinterpret_cast<uint2*>(dst) = make_uint2(packed[0], packed[1]);
      } else {
        *reinterpret_cast<uint32_t*>(dst) = packed[0];
      }
    }
    __syncwarp();
    // Rows r past the group read a real head: their MMA columns are dropped.
    const int rh = min(r, heads - 1);
    const uint4* src = xchg + rh * Map::kSlots;
#pragma unroll
    for (int m = 0; m < Map::kWords; ++m) {
      const uint4 w = src[(m * 4 + t4) ^ ((rh & 1) << 2)];
      bfrag[nt][m][0][0] = w.x;
      bfrag[nt][m][0][1] = w.y;
      bfrag[nt][m][1][0] = w.z;
      bfrag[nt][m][1][1] = w.w;
    }
    __syncwarp();  // every lane has its fragments: the buffer may be rewritten
    PcHeadSums(part, heads, lane, base[nt]);
  }
}

}  // namespace twl::cuda
