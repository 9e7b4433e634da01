// Per-page-channel score estimate (see estimate_cpu.h).
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/quantize.h"

namespace twl {

float EstimatePageChannelScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                  int64_t block, int32_t row) {
  const fp16_t* mn = qk.kmin + block * g.head_dim;
  const fp16_t* mx = qk.kmax + block * g.head_dim;
  const uint8_t* codes = qk.Codes(g, block, row);
  float dot = 0.0f;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    const float step = PageChannelStepValue(g, mn[j], mx[j]);
    dot += q[j] * PageChannelDequantValue(int32_t(UnpackCode(codes, j, g.k_bits)), step,
                                          HalfToFloat(mn[j]));
  }
  return dot;
}

void EstimatePageChannelBlockRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                 int64_t block, int32_t rows, float* out) {
  EstimatePageChannelBlockMultiRef(g, &q, 1, qk, block, rows, &out);
}

void EstimatePageChannelBlockMultiRef(const PageGeometry& g, const float* const* q,
                                      int32_t heads, const QuantKView& qk, int64_t block,
                                      int32_t rows, float* const* out) {
  const fp16_t* mn = qk.kmin + block * g.head_dim;
  const fp16_t* mx = qk.kmax + block * g.head_dim;
  const size_t d = size_t(g.head_dim), n = size_t(rows);
  // Reused per thread: the host pruner calls this once per page and step.
  thread_local std::vector<float> deq;
  deq.resize(d * n);
  // Dequantized K channel-major, byte by byte (UnpackCode's packing: low bits first); a
  // channel's 2^k_bits possible values are formed once when there are no more than rows.
  const int32_t bits = g.k_bits, per_byte = 8 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  const bool by_table = size_t(mask) + 1 <= n;
  const float inverse = HalfToFloat(PageChannelInverseMaxCodeHalf(g));
  const uint8_t* row0 = qk.Codes(g, block, 0);
  const ptrdiff_t row_stride = ptrdiff_t(g.CodeBytesPerToken());
  float table[256];
  for (size_t b = 0; b < d / size_t(per_byte); ++b) {
    for (int32_t k = 0; k < per_byte; ++k) {
      const size_t j = b * size_t(per_byte) + size_t(k);
      const float lo = HalfToFloat(mn[j]);
      const float step = PageChannelStepValue(lo, HalfToFloat(mx[j]), inverse);
      float* dst = &deq[j * n];
      if (by_table) {
        for (uint32_t c = 0; c <= mask; ++c) table[c] = PageChannelDequantValue(int32_t(c), step, lo);
      }
      for (size_t r = 0; r < n; ++r) {
        const uint32_t c = (row0[ptrdiff_t(r) * row_stride + ptrdiff_t(b)] >> (k * bits)) & mask;
        dst[r] = by_table ? table[c] : PageChannelDequantValue(int32_t(c), step, lo);
      }
    }
  }
  // Channel-major: every row's sum still runs over j in order (the same FP32 result as the
  // per-row loop), while the rows' independent sums fill the vector lanes.
  for (int32_t hd = 0; hd < heads; ++hd) {
    float* dot = out[hd];
    std::fill(dot, dot + n, 0.0f);
    for (size_t j = 0; j < d; ++j) {
      const float w = q[hd][j];
      const float* c = &deq[j * n];
      for (size_t r = 0; r < n; ++r) dot[r] += w * c[r];
    }
  }
}

}  // namespace twl
