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
  float base = 0.0f;  // per block: q . kmin
  float dot = 0.0f;   // per token: FP16(q * step) . codes
  for (int32_t j = 0; j < g.head_dim; ++j) {
    base += q[j] * HalfToFloat(mn[j]);
    const float qs = HalfToFloat(FloatToHalf(q[j] * PageChannelStep(g, mn[j], mx[j])));
    dot += qs * float(UnpackCode(codes, j, g.k_bits));
  }
  return base + dot;
}

void EstimatePageChannelBlockRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                 int64_t block, int32_t rows, float* out) {
  const fp16_t* mn = qk.kmin + block * g.head_dim;
  const fp16_t* mx = qk.kmax + block * g.head_dim;
  const size_t d = size_t(g.head_dim), n = size_t(rows);
  // Reused per thread: the host pruner calls this once per page, query head and step.
  thread_local std::vector<float> qs, codes, dot;
  qs.resize(d);
  codes.resize(d * n);
  dot.assign(n, 0.0f);
  float base = 0.0f;
  for (size_t j = 0; j < d; ++j) {
    base += q[j] * HalfToFloat(mn[j]);
    qs[j] = HalfToFloat(FloatToHalf(q[j] * PageChannelStep(g, mn[j], mx[j])));
  }
  // Codes channel-major, byte by byte (UnpackCode's packing: low bits first).
  const int32_t bits = g.k_bits, per_byte = 8 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  const uint8_t* row0 = qk.Codes(g, block, 0);
  const ptrdiff_t row_stride = ptrdiff_t(g.CodeBytesPerToken());
  for (size_t b = 0; b < d / size_t(per_byte); ++b) {
    float* dst = &codes[b * size_t(per_byte) * n];
    for (size_t r = 0; r < n; ++r) {
      uint32_t v = row0[ptrdiff_t(r) * row_stride + ptrdiff_t(b)];
      for (int32_t k = 0; k < per_byte; ++k, v >>= bits) dst[size_t(k) * n + r] = float(v & mask);
    }
  }
  // Channel-major: every row's sum still runs over j in order (the same FP32 result as the
  // per-row loop), while the rows' independent sums fill the vector lanes.
  for (size_t j = 0; j < d; ++j) {
    const float w = qs[j];
    const float* c = &codes[j * n];
    for (size_t r = 0; r < n; ++r) dot[r] += w * c[r];
  }
  for (size_t r = 0; r < n; ++r) out[r] = base + dot[r];
}

}  // namespace twl
