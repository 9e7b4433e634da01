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

// ---- Bulk append: one thread block per (segment, KV head) -----------------------------
// Threads are laid out as row groups of head_dim / 8 threads, each thread owning 8
// consecutive channels of a row: it loads them (one 16-byte vector for aligned FP16/BF16
// input), stores them as one 16-byte vector, quantizes them against the row's scale/zero
// (a shuffle reduction over the row group) and keeps their running per-channel min/max;
// the block then reduces the channel bounds across row groups through shared memory.
constexpr int kSegThreads = 128;

__device__ __forceinline__ void Load8(const void* base, int64_t elem, KvInputType type, bool vec,
                                      fp16_t out[8]) {
  if (vec) {
    switch (type) {
      case KvInputType::kFp16: {
        const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const fp16_t*>(base) + elem);
        const fp16_t* h = reinterpret_cast<const fp16_t*>(&u);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = h[e];
        return;
      }
      case KvInputType::kBf16: {
        const uint4 u =
            *reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(base) + elem);
        const unsigned short* b = reinterpret_cast<const unsigned short*>(&u);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = F2H(__bfloat162float(__ushort_as_bfloat16(b[e])));
        return;
      }
      case KvInputType::kFp32: {
        const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + elem);
        const float4 a = p[0], b = p[1];
        out[0] = F2H(a.x), out[1] = F2H(a.y), out[2] = F2H(a.z), out[3] = F2H(a.w);
        out[4] = F2H(b.x), out[5] = F2H(b.y), out[6] = F2H(b.z), out[7] = F2H(b.w);
        return;
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = LoadAsHalf(base, elem + e, type);
}

__device__ __forceinline__ void Store8(fp16_t* dst, const fp16_t h[8]) {
  uint4 u;
  fp16_t* p = reinterpret_cast<fp16_t*>(&u);
#pragma unroll
  for (int e = 0; e < 8; ++e) p[e] = h[e];
  *reinterpret_cast<uint4*>(dst) = u;
}

__global__ void __launch_bounds__(kSegThreads)
    AppendSegmentsKernel(PageGeometry g, const AppendSegment* __restrict__ segs,
                         const void* k_in, const void* v_in, KvInputType type, bool vec,
                         fp16_t* kv, fp16_t* stage, QuantKView qk) {
  __shared__ float s_lo[kSegThreads * 8];
  __shared__ float s_hi[kSegThreads * 8];
  const int32_t H = g.num_kv_heads, D = g.head_dim;
  const AppendSegment seg = segs[blockIdx.x / H];
  const int32_t h = int32_t(blockIdx.x % H);
  const int tpr = D / 8;               // threads per row: 1..32, a power of two
  const int rpp = kSegThreads / tpr;   // rows per pass
  const int c = threadIdx.x % tpr;     // this thread's 8 channels: [8c, 8c + 8)
  const int rg = threadIdx.x / tpr;    // row group
  const int64_t block = g.BlockId(seg.page, h);
  fp16_t* dst = seg.stage >= 0 ? stage + (int64_t(seg.stage) * H + h) * g.FpBlockElems()
                               : kv + block * g.FpBlockElems();
  const int32_t rows = seg.row_end - seg.row_begin;
  const int64_t token_elems = int64_t(H) * D;
  const bool quant = g.k_bits < 16;
  const int max_code = g.MaxCode();
  float lo8[8], hi8[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) lo8[e] = INFINITY, hi8[e] = -INFINITY;

  for (int32_t base = 0; base < rows; base += rpp) {  // uniform trip count: shuffles are safe
    const int32_t i = base + rg;
    const bool active = i < rows;
    const int32_t r = seg.row_begin + i;
    fp16_t kh[8];
    float rlo = INFINITY, rhi = -INFINITY;
    if (active) {
      const int64_t src = (int64_t(seg.src_token) + i) * token_elems + int64_t(h) * D + c * 8;
      fp16_t vh[8];
      Load8(k_in, src, type, vec, kh);
      Load8(v_in, src, type, vec, vh);
      Store8(dst + int64_t(r) * D + c * 8, kh);
      Store8(dst + int64_t(g.page_size + r) * D + c * 8, vh);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float x = H2F(kh[e]);
        rlo = fminf(rlo, x);
        rhi = fmaxf(rhi, x);
        lo8[e] = fminf(lo8[e], x);
        hi8[e] = fmaxf(hi8[e], x);
      }
    }
    if (!quant) continue;
    for (int o = tpr / 2; o > 0; o >>= 1) {
      rlo = fminf(rlo, __shfl_xor_sync(0xffffffffu, rlo, o));
      rhi = fmaxf(rhi, __shfl_xor_sync(0xffffffffu, rhi, o));
    }
    if (!active) continue;
    // The same FP16-rounded scale/zero and correctly rounded ops as QuantizeRowRef.
    const fp16_t scale_h = F2H(__fdiv_rn(__fsub_rn(rhi, rlo), float(max_code)));
    const fp16_t zero_h = F2H(rlo);
    const float s = H2F(scale_h), z = H2F(zero_h);
    uint64_t word = 0;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float q = 0.0f;
      if (s > 0.0f) q = rintf(__fdiv_rn(__fsub_rn(H2F(kh[e]), z), s));
      // Clamped in float first, as in the reference (NaN fails both tests: code 0).
      const int code = q >= float(max_code) ? max_code : (q > 0.0f ? int(q) : 0);
      word |= uint64_t(code) << (e * g.k_bits);
    }
    // 8 codes of k_bits bits = k_bits bytes at byte offset c * k_bits of the row.
    uint8_t* cdst = qk.Codes(g, block, r) + c * g.k_bits;
    if (g.k_bits == 2) {
      *reinterpret_cast<uint16_t*>(cdst) = uint16_t(word);
    } else if (g.k_bits == 4) {
      *reinterpret_cast<uint32_t*>(cdst) = uint32_t(word);
    } else {
      *reinterpret_cast<uint64_t*>(cdst) = word;
    }
    if (c == 0) {
      qk.scale[block * g.page_size + r] = scale_h;
      qk.zero[block * g.page_size + r] = zero_h;
    }
  }

  // Channel bounds: row groups -> shared memory -> one thread per channel.
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    s_lo[rg * D + c * 8 + e] = lo8[e];
    s_hi[rg * D + c * 8 + e] = hi8[e];
  }
  __syncthreads();
  for (int ch = threadIdx.x; ch < D; ch += kSegThreads) {
    float lo = INFINITY, hi = -INFINITY;
    for (int q = 0; q < rpp; ++q) {
      lo = fminf(lo, s_lo[q * D + ch]);
      hi = fmaxf(hi, s_hi[q * D + ch]);
    }
    if (seg.row_begin > 0) {  // rows from before: their bounds are already in qk
      lo = fminf(lo, H2F(qk.kmin[block * D + ch]));
      hi = fmaxf(hi, H2F(qk.kmax[block * D + ch]));
    }
    qk.kmin[block * D + ch] = F2H(lo);  // exact: lo and hi are FP16 values
    qk.kmax[block * D + ch] = F2H(hi);
  }
}

}  // namespace twl::cuda
