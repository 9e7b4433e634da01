// Per-page-channel score estimate (see estimate_cpu.h).
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"

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

}  // namespace twl
