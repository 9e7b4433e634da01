// Per-page-channel score estimate (see estimate_cpu.h).
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"

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
    const fp16_t step = PageChannelStepHalf(g, mn[j], mx[j]);
    dot += q[j] * HalfToFloat(PageChannelDequantHalf(UnpackCode(codes, j, g.k_bits), step, mn[j]));
  }
  return dot;
}

void EstimatePageChannelBlockRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                 int64_t block, int32_t rows, float* out) {
  const fp16_t* mn = qk.kmin + block * g.head_dim;
  const fp16_t* mx = qk.kmax + block * g.head_dim;
  const size_t d = size_t(g.head_dim), n = size_t(rows);
  // Reused per thread: the host pruner calls this once per page, query head and step.
  thread_local std::vector<fp16_t> step;
  thread_local std::vector<float> deq, dot;
  step.resize(d);
  deq.resize(d * n);
  dot.assign(n, 0.0f);
  for (size_t j = 0; j < d; ++j) step[j] = PageChannelStepHalf(g, mn[j], mx[j]);
  // Dequantized K channel-major, byte by byte (UnpackCode's packing: low bits first); a
  // channel's 2^k_bits possible values are formed once, then looked up per row.
  const int32_t bits = g.k_bits, per_byte = 8 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  const uint8_t* row0 = qk.Codes(g, block, 0);
  const ptrdiff_t row_stride = ptrdiff_t(g.CodeBytesPerToken());
  float table[256];
  for (size_t b = 0; b < d / size_t(per_byte); ++b) {
    for (int32_t k = 0; k < per_byte; ++k) {
      const size_t j = b * size_t(per_byte) + size_t(k);
      float* dst = &deq[j * n];
      if (size_t(mask) + 1 > n) {  // more possible codes than rows (k_bits 8): per row
        for (size_t r = 0; r < n; ++r) {
          const int32_t c = (row0[ptrdiff_t(r) * row_stride + ptrdiff_t(b)] >> (k * bits)) & mask;
          dst[r] = HalfToFloat(PageChannelDequantHalf(c, step[j], mn[j]));
        }
        continue;
      }
      for (uint32_t c = 0; c <= mask; ++c) {
        table[c] = HalfToFloat(PageChannelDequantHalf(int32_t(c), step[j], mn[j]));
      }
      for (size_t r = 0; r < n; ++r) {
        dst[r] = table[(row0[ptrdiff_t(r) * row_stride + ptrdiff_t(b)] >> (k * bits)) & mask];
      }
    }
  }
  // Channel-major: every row's sum still runs over j in order (the same FP32 result as the
  // per-row loop), while the rows' independent sums fill the vector lanes.
  for (size_t j = 0; j < d; ++j) {
    const float w = q[j];
    const float* c = &deq[j * n];
    for (size_t r = 0; r < n; ++r) dot[r] += w * c[r];
  }
  for (size_t r = 0; r < n; ++r) out[r] = dot[r];
}

}  // namespace twl
