// Append-stage kernels: FP16 K/V rows into their blocks with K quantized on the fly (one
// warp per (token, KV head) row), and the Quest per-channel min/max of touched blocks
// recomputed over their filled rows. Bit-exact with AppendRef: the same FP16-rounded
// scale/zero and correctly rounded float ops (no FMA contraction in the code path).
#pragma once

#include <cuda_bf16.h>

#include "gpu/cuda/common.cuh"
#include "gpu/kernels.h"

namespace twl::cuda {

constexpr int kAppendWarps = 8;
constexpr int kMaxAppendHeadDim = 256;  // per-warp code scratch

__device__ __forceinline__ fp16_t LoadAsHalf(const void* base, int64_t i, KvInputType type) {
  switch (type) {
    case KvInputType::kBf16:
      return F2H(__bfloat162float(
          __ushort_as_bfloat16(static_cast<const unsigned short*>(base)[i])));
    case KvInputType::kFp32:
      return F2H(static_cast<const float*>(base)[i]);
    default:
      return static_cast<const fp16_t*>(base)[i];
  }
}

__global__ void AppendRowsKernel(PageGeometry g, AppendView in, KvInputType type, FpKvView kv,
                                 QuantKView qk) {
  __shared__ uint8_t codes_s[kAppendWarps][kMaxAppendHeadDim];
  __shared__ fp16_t k_s[kAppendWarps][kMaxAppendHeadDim];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row_id = int64_t(blockIdx.x) * kAppendWarps + warp;
  if (row_id >= int64_t(in.num_tokens) * g.num_kv_heads) return;
  const int32_t t = int32_t(row_id / g.num_kv_heads);
  const int32_t h = int32_t(row_id % g.num_kv_heads);
  const int32_t page = in.page_id[t], row = in.slot[t];
  const int64_t block = g.BlockId(page, h);
  const int64_t src = row_id * g.head_dim;
  fp16_t* kdst = kv.K(g, block, row);
  fp16_t* vdst = kv.V(g, block, row);
  float lo = INFINITY, hi = -INFINITY;
  for (int j = lane; j < g.head_dim; j += 32) {
    const fp16_t k = LoadAsHalf(in.k, src + j, type);
    kdst[j] = k;
    k_s[warp][j] = k;
    vdst[j] = LoadAsHalf(in.v, src + j, type);
    const float x = H2F(k);
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  }
  if (g.k_bits >= 16) return;
  lo = WarpMin(lo);
  hi = WarpMax(hi);
  const int max_code = g.MaxCode();
  const fp16_t scale_h = F2H(__fdiv_rn(__fsub_rn(hi, lo), float(max_code)));
  const fp16_t zero_h = F2H(lo);
  const float s = H2F(scale_h), z = H2F(zero_h);
  for (int j = lane; j < g.head_dim; j += 32) {
    int c = 0;
    if (s > 0.0f) {
      const float x = H2F(k_s[warp][j]);  // written by this same lane above
      c = int(rintf(__fdiv_rn(__fsub_rn(x, z), s)));
    }
    codes_s[warp][j] = uint8_t(min(max(c, 0), max_code));
  }
  __syncwarp();
  const int per_byte = 8 / g.k_bits;
  uint8_t* cdst = qk.Codes(g, block, row);
  for (int b = lane; b < g.CodeBytesPerToken(); b += 32) {
    uint32_t v = 0;
    for (int e = 0; e < per_byte; ++e) v |= uint32_t(codes_s[warp][b * per_byte + e]) << (e * g.k_bits);
    cdst[b] = uint8_t(v);
  }
  if (lane == 0) {
    qk.scale[block * g.page_size + row] = scale_h;
    qk.zero[block * g.page_size + row] = zero_h;
  }
}

// One block per (plan page, KV head), one thread per channel.
__global__ void MinMaxKernel(PageGeometry g, AppendPagePlan plan, FpKvView kv, QuantKView qk) {
  const int32_t i = blockIdx.x / g.num_kv_heads;
  const int32_t h = blockIdx.x % g.num_kv_heads;
  const int64_t block = g.BlockId(plan.d_page[i], h);
  const int32_t rows = plan.d_rows[i];
  const fp16_t* k = kv.Block(g, block);
  for (int c = threadIdx.x; c < g.head_dim; c += blockDim.x) {
    float lo = INFINITY, hi = -INFINITY;
    for (int r = 0; r < rows; ++r) {
      const float x = H2F(k[int64_t(r) * g.head_dim + c]);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    qk.kmin[block * g.head_dim + c] = F2H(lo);
    qk.kmax[block * g.head_dim + c] = F2H(hi);
  }
}

}  // namespace twl::cuda
