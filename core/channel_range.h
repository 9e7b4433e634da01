// Channel ranges of the per-page-channel K scheme (core/page_layout.h, k_scheme 1) in 8 bits
// per end: the range each channel of a block is quantized over, stored so that the FULL
// score pass reads 2 d + 4 bytes of ranges per block (rounded up to 16: 272 B at d = 128)
// instead of the block's FP16 Quest kmin_j / kmax_j (4 d: 512 B), 16% of its bytes.
// Accuracy: the same as the FP16 ranges (bench/ACCURACY.md, "Cheaper channel ranges", pc8).
//
// Coding of one block (head dim d, FP16 Quest bounds kmin_j <= kmax_j):
//   A = min_j kmin_j (FP16, exact), Z = max_j kmax_j
//   D = the FP16 step of the block's grid: FP16((Z - A) / 255), raised an ulp at a time
//       until grid code 255 reaches Z
//   grid value of code c: G(c) = FP16(c D + A), rounded once (the GPU's HFMA; the host's
//       exact double rounded by DoubleToHalf). Non-decreasing in c.
//   a_j = the largest code with G(a_j) <= kmin_j          (lo_j = G(a_j): rounded down)
//   b_j = the smallest code >= a_j with G(b_j) >= kmax_j  (hi_j = G(b_j): rounded up)
// The channel's range is [lo_j, hi_j], both FP16 values, which contains [kmin_j, kmax_j]:
// every row of the block lies inside its channel's code range. Quantizer and estimators use
// lo_j / hi_j where the FP16-range scheme used kmin_j / kmax_j (core/quantize.h); the Quest
// bounds themselves stay stored and exact (selectors and the appends' running min/max read
// them). The codes depend on the block's current kmin/kmax only, not on how its rows were
// appended. The GPU stores keep the record (its bytes are what the score pass saves); the CPU
// store keeps the decoded lo_j / hi_j instead (QuantKView::range_lo / range_hi), so that its
// estimator need not decode them every step.
// Non-finite bounds (K holding inf or NaN) give a NaN step D: every range of the block
// decodes to NaN and its codes to 0, so its estimates are NaN (a NaN estimate makes the
// pruner's head keep nothing, as an infinite FP16 range did). K near FP16's largest values
// (|K| ~ 65504) may give an infinite hi_j, as an overflowing kmax_j - kmin_j did.
//
// Record layout, ChannelRangeBytes(d) bytes per block (a 16-byte multiple, 16-byte aligned
// in every store, so it lands by 16-byte copies):
//   [0, d)          a_j, one byte per channel
//   [d, 2 d)        b_j
//   [2 d, 2 d + 2)  A (FP16, little endian)    [2 d + 2, 2 d + 4)  D (FP16)   then zeros
#pragma once

#include <cstdint>

#include "core/half.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace twl {

inline constexpr int32_t kRangeCodeMax = 255;  // 8-bit codes per end
// NaN as D: a block whose bounds are not finite.
inline constexpr fp16_t kRangeNanStep = 0x7e00u;

TWL_HD constexpr int64_t ChannelRangeBytes(int32_t head_dim) {
  return (2ll * head_dim + 4 + 15) / 16 * 16;
}

// G(c) = FP16(c d + a), one rounding. c d + a is exact in a double: c has 8 significant
// bits, d and a 11, and every term lies within 2^-24 .. 2^24.
TWL_HD fp16_t RangeGridValue(uint32_t c, fp16_t a, fp16_t d) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(
      __double2half(fma(double(c), double(HalfToFloat(d)), double(HalfToFloat(a)))));
#else
  return DoubleToHalf(double(c) * double(HalfToFloat(d)) + double(HalfToFloat(a)));
#endif
}
TWL_HD float RangeGridFloat(uint32_t c, fp16_t a, fp16_t d) {
  return HalfToFloat(RangeGridValue(c, a, d));
}

// The next FP16 value above a finite, non-negative h.
TWL_HD fp16_t HalfNextUp(fp16_t h) { return fp16_t(h + 1u); }

TWL_HD bool RangeFinite(float x) { return (FloatToBits(x) & 0x7f800000u) != 0x7f800000u; }

// D of a block from A and Z (FP16 values as floats; A <= Z).
TWL_HD fp16_t ChannelRangeStep(float a, float z) {
  if (!RangeFinite(a) || !RangeFinite(z)) return kRangeNanStep;
  if (!(z > a)) return 0;  // every channel is the one value A
  const fp16_t ah = FloatToHalf(a);
  fp16_t d = FloatToHalf((z - a) * (1.0f / 255.0f));
  // Raise D until G(255) >= Z: FP16((Z - A) / 255) is within an ulp or two of enough.
  for (int i = 0; i < 64 && RangeGridFloat(kRangeCodeMax, ah, d) < z; ++i) d = HalfNextUp(d);
  return d;
}

// A code estimate clamped to [lo, 255] in float before the conversion (NaN: lo).
TWL_HD uint32_t ClampRangeCode(float c, uint32_t lo) {
  return c >= float(kRangeCodeMax) ? uint32_t(kRangeCodeMax)
                                   : (c > float(lo) ? uint32_t(c) : lo);
}

// One channel's codes (a, b) on the grid (A, D), from its FP16 bounds as floats; grid(c) is
// G(c) as a float (RangeGridFloat, or a host's table of it), inv_d = 1 / D (any value when D
// is not > 0). The estimates only save steps: the loops find the same codes from any start,
// so host and device agree however their estimates round.
template <class Grid>
TWL_HD void EncodeChannelRangeOn(const Grid& grid, float A, float D, float inv_d, float kmin,
                                 float kmax, uint8_t* a_out, uint8_t* b_out) {
  const bool spread = D > 0.0f;  // false for 0 and NaN
  uint32_t a = spread ? ClampRangeCode(floorf((kmin - A) * inv_d), 0) : 0;
  while (a > 0 && grid(a) > kmin) --a;
  while (a < uint32_t(kRangeCodeMax) && grid(a + 1) <= kmin) ++a;
  uint32_t b = spread ? ClampRangeCode(ceilf((kmax - A) * inv_d), a) : a;
  while (b < uint32_t(kRangeCodeMax) && grid(b) < kmax) ++b;
  while (b > a && grid(b - 1) >= kmax) --b;
  *a_out = uint8_t(a);
  *b_out = uint8_t(b);
}
TWL_HD void EncodeChannelRange(fp16_t a_h, fp16_t d_h, float kmin, float kmax, uint8_t* a_out,
                               uint8_t* b_out) {
  const float D = HalfToFloat(d_h);
  EncodeChannelRangeOn([&](uint32_t c) { return RangeGridFloat(c, a_h, d_h); }, HalfToFloat(a_h),
                       D, 1.0f / D, kmin, kmax, a_out, b_out);
}

// min / max that keep a NaN (a channel whose bounds are NaN makes the block's step NaN).
TWL_HD float RangeMin(float acc, float x) { return (x < acc || x != x) ? x : acc; }
TWL_HD float RangeMax(float acc, float x) { return (x > acc || x != x) ? x : acc; }

// Record accessors (layout above).
TWL_HD fp16_t ChannelRangeA(const uint8_t* record, int32_t head_dim) {
  return fp16_t(record[2 * head_dim] | (uint32_t(record[2 * head_dim + 1]) << 8));
}
TWL_HD fp16_t ChannelRangeD(const uint8_t* record, int32_t head_dim) {
  return fp16_t(record[2 * head_dim + 2] | (uint32_t(record[2 * head_dim + 3]) << 8));
}
// A, D and the zero padding of a record.
TWL_HD void StoreChannelRangeGrid(uint8_t* record, int32_t head_dim, fp16_t a, fp16_t d) {
  record[2 * head_dim] = uint8_t(a);
  record[2 * head_dim + 1] = uint8_t(a >> 8);
  record[2 * head_dim + 2] = uint8_t(d);
  record[2 * head_dim + 3] = uint8_t(d >> 8);
  for (int64_t i = 2ll * head_dim + 4; i < ChannelRangeBytes(head_dim); ++i) record[i] = 0;
}

// Channel j's range [lo, hi] from a record.
TWL_HD void DecodeChannelRange(const uint8_t* record, int32_t head_dim, int32_t j, fp16_t* lo,
                               fp16_t* hi) {
  const fp16_t a = ChannelRangeA(record, head_dim), d = ChannelRangeD(record, head_dim);
  *lo = RangeGridValue(record[j], a, d);
  *hi = RangeGridValue(record[head_dim + j], a, d);
}

// A block's grid (A, D) from its bounds, channel j's as floats kmin(j) and kmax(j) (FP16
// values): A the smallest kmin, D from A and the largest kmax (NaN kept).
template <class Kmin, class Kmax>
TWL_HD void ChannelRangeGridOn(const Kmin& kmin, const Kmax& kmax, int32_t head_dim, fp16_t* a,
                               fp16_t* d) {
  float lo_all = kmin(0), hi_all = kmax(0);
  for (int32_t j = 1; j < head_dim; ++j) {
    lo_all = RangeMin(lo_all, kmin(j));
    hi_all = RangeMax(hi_all, kmax(j));
  }
  *a = FloatToHalf(lo_all);
  *d = ChannelRangeStep(lo_all, hi_all);
}
TWL_HD void ChannelRangeGridOf(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
                               fp16_t* a, fp16_t* d) {
  ChannelRangeGridOn([&](int32_t j) { return HalfToFloat(kmin[j]); },
                     [&](int32_t j) { return HalfToFloat(kmax[j]); }, head_dim, a, d);
}

// The whole record from a block's FP16 bounds (one device thread, or the host's reference;
// the host stores use EncodeChannelRangesHost, core/quantize.h: the same bytes).
TWL_HD void EncodeChannelRanges(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
                                uint8_t* record) {
  fp16_t a, d;
  ChannelRangeGridOf(kmin, kmax, head_dim, &a, &d);
  for (int32_t j = 0; j < head_dim; ++j) {
    EncodeChannelRange(a, d, HalfToFloat(kmin[j]), HalfToFloat(kmax[j]), record + j,
                       record + head_dim + j);
  }
  StoreChannelRangeGrid(record, head_dim, a, d);
}

// Every channel's range (lo, hi: [head_dim]).
TWL_HD void DecodeChannelRanges(const uint8_t* record, int32_t head_dim, fp16_t* lo,
                                fp16_t* hi) {
  for (int32_t j = 0; j < head_dim; ++j) DecodeChannelRange(record, head_dim, j, &lo[j], &hi[j]);
}

}  // namespace twl
