// Score pass fallback (prune.cuh, step 1): ScoreScalarKernel, one warp per slot, for the
// bit widths and K forms the tensor-core passes do not take.
#pragma once

#include "pipeline/prune/twilight/cuda/prune_common.cuh"

namespace twl::cuda {

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
