// The top-p's bins and the FP16 score tests built on them (prune_hist.cuh's passes; device
// functions only, so that a test kernel can include them): level-1 bins of 1/8 logit below
// a head's max, level-2 sub-bins of 1/2048 logit inside the boundary bin, and the
// classification of a 16-byte load of 8 scores against a head's boundary bin.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

constexpr int kHistBins = 256;
constexpr float kBinsPerLogit = 8.0f;   // level-1 bin width 1/8 logit
constexpr float kSubPerLogit = 2048.0f;  // level-2 sub-bin width 1/2048 logit

__device__ __forceinline__ int Bin1(float d) {
  return d < 31.875f ? int(fmaxf(d, 0.0f) * kBinsPerLogit) : kHistBins - 1;
}
__device__ __forceinline__ int Bin2(float d, int b1) {
  const float t = (d - float(b1) * (1.0f / kBinsPerLogit)) * kSubPerLogit;
  return int(fminf(fmaxf(t, 0.0f), float(kHistBins - 1)));
}
// The max of the 8 FP16 scores of a LoadRaw8 result as a pair of halves (NaN in a half if
// any of its 4 scores is NaN).
__device__ __forceinline__ __half2 Max8Nan(const uint4& v) {
  return __hmax2_nan(__hmax2_nan(U32Half2(v.x), U32Half2(v.y)), __hmax2_nan(U32Half2(v.z), U32Half2(v.w)));
}
// Whether all 8 FP16 scores of a LoadRaw8 result are below thr (both halves the same
// threshold). The max propagates NaN, and NaN is never below, so a load holding a NaN
// always takes the exact per-slot path. Callers pick thr rounded down (__float2half_rd) and
// with a margin, so that every score it skips is one the exact path would add nothing for:
// peaked heads then cost a max and a compare per 8 slots instead of an exp per slot.
__device__ __forceinline__ bool AllBelow(const uint4& v, __half2 thr) {
  return __hblt2(Max8Nan(v), thr);
}
__device__ __forceinline__ __half2 HalfThreshold(float t) {
  const __half h = __float2half_rd(t);
  return __halves2half2(h, h);
}

// The weight exp(-d) of a score d >= 0 logits below its head's max, as every top-p pass
// computes it (level 1 in HistKernel and the boundary bin's level 2 must add the same
// fixed-point masses): ex2.approx, within ~3e-6 relative of exp over the 28.5 logits that
// carry weight (TopPBinnedRef on the host uses std::exp; its GPU test allows for it).
__device__ __forceinline__ float TopPWeight(float d) { return Exp2Approx(-d * kLog2e); }

// Bin1(d) for 0 <= d < 31.875 without a float-to-int conversion: d * 8 + 2^23 rounded down
// holds floor(d * 8) in its low mantissa bits (d * 8 is exact: a power-of-two scale).
__device__ __forceinline__ int Bin1Near(float d) {
  return __float_as_int(__fmaf_rd(d, kBinsPerLogit, 8388608.0f)) - 0x4B000000;
}

// FP16 edges (half2 bits, both halves equal) of a head's boundary bin B1 below its max mx,
// each with a 1/64-logit margin on the safe side (the float rounding of d = mx - x is below
// 2^-19 logit within the 32 logits the bins span): every score below `skip` lies past the
// bin (Bin1 > B1; B1 = 255: none), every score above `keep` before it (Bin1 < B1; B1 = 0:
// none). The kept pass tests only the scores between them slot by slot.
struct BinEdges {
  uint32_t skip = 0, keep = 0;
};
__host__ __device__ inline BinEdges BoundaryBinEdges(float mx, int b1) {
  const float below =
      b1 < kHistBins - 1 ? mx - float(b1 + 1) * (1.0f / kBinsPerLogit) - 1.0f / 64 : -INFINITY;
  const float over = b1 > 0 ? mx - float(b1) * (1.0f / kBinsPerLogit) + 1.0f / 64 : INFINITY;
  const __half s = __float2half_rd(below), k = __float2half_ru(over);
  const uint32_t sb = __half_as_ushort(s), kb = __half_as_ushort(k);
  BinEdges e;
  e.skip = sb | (sb << 16);
  e.keep = kb | (kb << 16);
  return e;
}

// Half k of LoadRaw8's result, as a float (k constant after unrolling folds the selects;
// a run-time k costs three).
__device__ __forceinline__ float RawHalf(const uint4& v, int k) {
  const uint32_t lo = (k & 2) ? v.y : v.x, hi = (k & 2) ? v.w : v.z;
  const uint32_t word = (k & 4) ? hi : lo;
  return H2F(fp16_t((k & 1) ? word >> 16 : word & 0xFFFFu));
}

// Bit k: half k of the 8 FP16 scores of a LoadRaw8 result compares true against thr (both
// halves the same threshold; NaN compares false). From the four half2 compares' masks
// (0xFFFF per true half): slot 2i sits at bit 2i, slot 2i + 1 at bit 16 + 2i, folded down.
__device__ __forceinline__ uint32_t FoldHalfMasks8(uint32_t m0, uint32_t m1, uint32_t m2,
                                                   uint32_t m3) {
  constexpr uint32_t kLow = 0x00010001u;
  const uint32_t a =
      (m0 & kLow) | ((m1 & kLow) << 2) | ((m2 & kLow) << 4) | ((m3 & kLow) << 6);
  return (a | (a >> 15)) & 0xFFu;
}
__device__ __forceinline__ uint32_t Above8(const uint4& v, __half2 thr) {
  return FoldHalfMasks8(__hgt2_mask(U32Half2(v.x), thr), __hgt2_mask(U32Half2(v.y), thr),
                        __hgt2_mask(U32Half2(v.z), thr), __hgt2_mask(U32Half2(v.w), thr));
}
__device__ __forceinline__ uint32_t Below8(const uint4& v, __half2 thr) {
  return FoldHalfMasks8(__hlt2_mask(U32Half2(v.x), thr), __hlt2_mask(U32Half2(v.y), thr),
                        __hlt2_mask(U32Half2(v.z), thr), __hlt2_mask(U32Half2(v.w), thr));
}
// Bit k: half k of the 8 FP16 scores is NaN (the unordered compare of a value with itself).
__device__ __forceinline__ uint32_t Nan8(const uint4& v) {
  return FoldHalfMasks8(__hneu2_mask(U32Half2(v.x), U32Half2(v.x)),
                        __hneu2_mask(U32Half2(v.y), U32Half2(v.y)),
                        __hneu2_mask(U32Half2(v.z), U32Half2(v.z)),
                        __hneu2_mask(U32Half2(v.w), U32Half2(v.w)));
}
// The 8 slots of a LoadRaw8 group of one top-p head (bit k of vmask: slot k is a valid
// candidate) against its boundary bin B1 below the max mx: returns the bits of the slots
// above the bin (b1 < B1 <= 254: d < 31.875, so their float weight is > 0, kept at once)
// and calls in_bin(k, b2, w) for each slot in the bin with a float weight w > 0 (its
// level-2 sub-bin b2). KeptKernel and BoundaryKernel's rescan classify alike through it.
// keep / skip (BoundaryBinEdges): the half2 compares settle every slot clearly above or
// below the bin as the per-slot test would; only the slots between them (the bin and its
// margins, a small share of a peaked head's slots) take that test, one by one.
template <class InBin>
__device__ __forceinline__ uint32_t SplitAtBoundary8(const uint4& raw, uint32_t vmask, float mx,
                                                     int B1, uint32_t keep, uint32_t skip,
                                                     InBin&& in_bin) {
  const uint32_t over = Above8(raw, U32Half2(keep));
  uint32_t above = vmask & over;
  uint32_t band = vmask & ~over & ~Below8(raw, U32Half2(skip));
  while (band) {
    const int k = __ffs(band) - 1;
    band &= band - 1;
    const float d = mx - RawHalf(raw, k);
    const int b1 = Bin1(d);
    if (b1 < B1) {
      above |= 1u << k;
    } else if (b1 == B1) {
      const float w = TopPWeight(d);
      if (w > 0.0f) in_bin(k, Bin2(d, b1), w);
    }
  }
  return above;
}

}  // namespace twl::cuda
