// The K quantizer of the estimation copy (layout: core/page_layout.h), on the host: K rows
// quantized to k_bits (g.k_scheme: one (scale, zero) group per (token, KV head), or per
// (block, channel) over the block's Quest range) and dequantized. The CPU append
// (runtime/cpu/append_cpu.h), the CPU selectors and the CPU pruner use it; the append
// kernels (runtime/cuda/append.cuh) and the pruner's kernels match it bit for bit.
#pragma once

#include <cstdint>

#include "core/half.h"
#include "core/stage_views.h"

namespace twl {

// Quantizes one K row of head_dim values: codes packed per page_layout.h.
void QuantizeRowRef(const PageGeometry& g, const fp16_t* k, uint8_t* codes, fp16_t* scale,
                    fp16_t* zero);
// Dequantized element j of a code row.
float DequantizeRef(const PageGeometry& g, const uint8_t* codes, fp16_t scale, fp16_t zero,
                    int32_t j);

// Per-page-channel scheme (core/page_layout.h): a channel is quantized over its range
// [lo, hi] (the block's channel ranges, core/channel_range.h, which contain its Quest
// bounds; "kmin" and "kmax" below name a range's ends, FP16 values).
// The channel ranges of a block as floats (lo, hi: [head_dim]), from its decoded ranges or
// its record (QuantKView::range_lo / range).
void PageChannelRangeValues(const PageGeometry& g, const QuantKView& qk, int64_t block,
                            float* lo, float* hi);
// Channel j's range alone.
void PageChannelRangeAt(const PageGeometry& g, const QuantKView& qk, int64_t block, int32_t j,
                        float* lo, float* hi);
// A block's channel ranges coded from its FP16 Quest bounds on the host: the record's bytes
// EncodeChannelRanges writes (core/channel_range.h) into `record` and the decoded ranges into
// lo / hi (each may be null). The vector path below where it applies, else a search on a
// table of the grid's 256 values.
void EncodeChannelRangesHost(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
                             uint8_t* record, fp16_t* lo, fp16_t* hi);
// Its vector path alone (AVX2 + F16C, eight channels at a time, no table), which
// EncodeChannelRangesHost takes where the host has it: the same bytes and ranges for the
// blocks it codes (finite bounds, head_dim a multiple of 8, a step D > 0, every c D + A
// exact in float: what appends make); false, having written nothing, for any other block
// and on hosts without AVX2 + F16C. Exposed so that tests can pin it to the reference.
bool EncodeChannelRangesVector(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
                               uint8_t* record, fp16_t* lo, fp16_t* hi);
// The quantizer's FP32 step of a channel: codes are rint((k - lo) / step). Inline: the
// append computes it for every channel of every block it re-quantizes.
inline float PageChannelStep(const PageGeometry& g, float lo, float hi) {
  return (hi - lo) / float(g.MaxCode());
}
// The estimator's FP16 dequantization of a code (the pruner's score estimate reads K as
// these values): k~ = FP16(code * step16 + kmin) with one rounding, where
// step16 = FP16(FP16(kmax - kmin) * FP16(1 / max_code)), each FP16 operation rounded once.
// The GPU computes exactly this with HSUB2 / HMUL2 / HFMA2 on the Quest bounds, so its
// tensor cores take the dequantized K as the A operand against the unchanged FP16 queries.
// step16 differs from the quantizer's step by a few FP16 ulps (k~ moves by < 2^-6 of a step
// at code 15), and k~'s rounding by 2^-11 of |k~|: both far below the INT4 error (step / 2).
// Both as float values (FP16 values; FloatToHalf gives their bits exactly).
fp16_t PageChannelInverseMaxCodeHalf(const PageGeometry& g);  // FP16(1 / max_code)
// step16 from the block's bounds, or from kmin, kmax and FP16(1 / max_code) as floats.
float PageChannelStepValue(const PageGeometry& g, fp16_t kmin, fp16_t kmax);
inline float PageChannelStepValue(float kmin, float kmax, float inverse_max_code) {
  // Differences and products of FP16 values are exact in double: one rounding each.
  const float range = HalfRoundValue(double(kmax) - double(kmin));
  return HalfRoundValue(double(range) * double(inverse_max_code));
}
// k~ from step16 and kmin as floats: the exact code * step16 + kmin (a double: <= 8 + 11
// bits, plus 11 bits, within 2^-24 .. 2^24) rounded once to FP16 by HalfRoundValue.
inline float PageChannelDequantValue(int32_t code, float step16, float kmin) {
  return HalfRoundValue(double(code) * double(step16) + double(kmin));
}
// The table of every code's k~ for `channels` channels: table[j * (max_code + 1) + c] =
// PageChannelDequantValue(c, step16[j], kmin[j]), bit for bit. Where a channel's
// code * step16 + kmin are all exact in float (nearly always: they fail only when kmin's
// magnitude dwarfs the step by about 2^14), it computes them in float and rounds with
// HalfRoundFloat four wide; other channels take the double route.
void PageChannelDequantTable(const float* kmin, const float* step16, int32_t channels,
                             int32_t max_code, float* table);
// Re-codes the block's channel ranges from its Quest kmin/kmax (which must cover rows
// [0, rows)) and re-quantizes those rows over them.
void QuantizeBlockRowsRef(const PageGeometry& g, const FpKvView& kv, const QuantKView& qk,
                          int64_t block, int32_t rows);
// Dequantized element j of row `row` of `block` under g.k_scheme (k_bits < 16).
float DequantizeAtRef(const PageGeometry& g, const QuantKView& qk, int64_t block, int32_t row,
                      int32_t j);


}  // namespace twl
