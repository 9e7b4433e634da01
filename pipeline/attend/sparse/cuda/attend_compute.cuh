// The compute of one attention warp over the stages AttendChunkKernel lands in shared memory:
// scores of its 8 tokens of a stage for the block's G query heads, an FP32 online softmax in
// base 2, and V accumulated; at the end of a piece the warp's (m, l, acc) per head go to
// shared memory for the block's cross-warp merge. Two forms behind one interface:
//   CoreCompute<D, G, kBf16>  CUDA cores: lanes own 8 channels of a token (RowLanes(D) lanes
//                             per token), q and acc in registers, shuffles reduce q.k. Every
//                             head dim, group and K/V type.
//   TcCompute<D>              tensor cores, FP16 K/V, D = 64 or 128, up to 8 heads: S = Q K^T
//                             as m16n8k16 MMAs (heads are the 16 rows, 8 of them real), then
//                             O^T += V^T P^T as m16n8k8 MMAs (channels are the rows, heads the
//                             8 columns), so the score fragment each lane holds is exactly the
//                             P^T fragment it feeds: no shuffle and no shared-memory trip
//                             between the two products. Rows are read with ldmatrix from
//                             stage buffers whose 16-byte chunks are XOR-swizzled by the
//                             token (StageChunk), so the 8 rows of a matrix hit 8 distinct
//                             bank groups.
// At G = 8 the CUDA-core form spends 8 FMAs and 4 shuffles per head, token and lane (the
// attention of the 64 x 8 shape took 1.55x the time of 32 x 8 on the H200, fifteenth
// session); the MMAs do a stage of 64 tokens x 8 heads in 16 instructions per warp.
#pragma once

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

// Where chunk j (8 channels, 16 bytes) of row t of a stage buffer is stored: swizzled for
// the tensor-core form (rows of 64 or 128 channels: the XOR stays inside the row), in place
// for the CUDA-core form.
template <bool kSwizzle>
__device__ __forceinline__ int StageChunk(int t, int j) {
  return kSwizzle ? (j ^ (t & 7)) : j;
}

// Rescale factor exp2(m_old - m_new) that is 0 (not NaN) while nothing was seen.
__device__ __forceinline__ float SafeExp2Diff(float a, float b) {
  return a == -INFINITY ? 0.0f : exp2f(a - b);
}

__device__ __forceinline__ void Unpack8(const uint4& u, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __half22float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// 8 stored K/V elements: FP16, or BF16 (kBf16: PageGeometry::kv_dtype BF16).
template <bool kBf16>
__device__ __forceinline__ void Unpack8Kv(const uint4& u, float* f) {
  if constexpr (kBf16) {
    const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = __bfloat1622float2(b[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  } else {
    Unpack8(u, f);
  }
}

// Shared-memory scratch of the cross-warp merge: sacc [warps][G][D], sm_m and sm_l [warps][G].
struct AttnMergeScratch {
  float* sacc;
  float* sm_m;
  float* sm_l;
};

template <int D, int G, bool kBf16>
struct CoreCompute {
  static constexpr bool kSwizzle = false;
  static constexpr int L = RowLanes(D);  // lanes per token (8 channels each)
  static constexpr int RC = D / 8;       // of them holding channels
  static constexpr int TPW = 32 / L;     // tokens per warp step
  static constexpr int U = 8 / TPW;      // warp steps per stage (8 tokens per warp)

  int warp, lane, lg, li;
  bool real;  // lanes past the row's channels hold zeros
  float qv[G][8];
  float m[G], l[G], acc[G][8];

  // qrow: the first of the block's heads; heads: how many of the G are real.
  __device__ __forceinline__ void Init(const fp16_t* qrow, int32_t heads, float qscale) {
    warp = threadIdx.x >> 5;
    lane = threadIdx.x & 31;
    lg = lane / L;
    li = lane % L;
    real = li < RC;
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (j < heads && real) {
        Unpack8(*reinterpret_cast<const uint4*>(qrow + int64_t(j) * D + li * 8), qv[j]);
#pragma unroll
        for (int e = 0; e < 8; ++e) qv[j][e] *= qscale;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) qv[j][e] = 0.0f;
      }
      m[j] = -INFINITY;
      l[j] = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[j][e] = 0.0f;
    }
  }

  // One stage: kst / vst are its [T][D] buffers; tokens >= nvalid are masked.
  __device__ __forceinline__ void Stage(const fp16_t* kst, const fp16_t* vst, int32_t nvalid) {
    float sc[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = warp * 8 + u * TPW + lg;
      float kf[8] = {};
      if (real) Unpack8Kv<kBf16>(*reinterpret_cast<const uint4*>(kst + t * D + li * 8), kf);
#pragma unroll
      for (int j = 0; j < G; ++j) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d = fmaf(qv[j][e], kf[e], d);
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        sc[u][j] = t < nvalid ? d : -INFINITY;
      }
    }
#pragma unroll
    for (int j = 0; j < G; ++j) {
      float mn = m[j];
#pragma unroll
      for (int u = 0; u < U; ++u) mn = fmaxf(mn, sc[u][j]);
      const float ms = mn == -INFINITY ? 0.0f : mn;
      const float alpha = SafeExp2Diff(m[j], ms);
      l[j] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[j][e] *= alpha;
      m[j] = mn;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        sc[u][j] = exp2f(sc[u][j] - ms);  // 0 for masked tokens
        l[j] += sc[u][j];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = warp * 8 + u * TPW + lg;
      float vf[8] = {};
      if (real) Unpack8Kv<kBf16>(*reinterpret_cast<const uint4*>(vst + t * D + li * 8), vf);
#pragma unroll
      for (int j = 0; j < G; ++j) {
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] = fmaf(sc[u][j], vf[e], acc[j][e]);
      }
    }
  }

  // The warp's state per head into the merge scratch (after the stage buffers are free).
  __device__ __forceinline__ void Store(const AttnMergeScratch& ms_) {
    // Merge the TPW token lanes of the warp (lanes li of groups lg hold the same channels).
#pragma unroll
    for (int o = L; o < 32; o <<= 1) {
#pragma unroll
      for (int j = 0; j < G; ++j) {
        const float mo = __shfl_xor_sync(0xffffffffu, m[j], o);
        const float lo = __shfl_xor_sync(0xffffffffu, l[j], o);
        const float mn = fmaxf(m[j], mo);
        const float ms = mn == -INFINITY ? 0.0f : mn;
        const float fa = SafeExp2Diff(m[j], ms), fb = SafeExp2Diff(mo, ms);
        l[j] = l[j] * fa + lo * fb;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float ao = __shfl_xor_sync(0xffffffffu, acc[j][e], o);
          acc[j][e] = acc[j][e] * fa + ao * fb;
        }
        m[j] = mn;
      }
    }
    if (lane < RC) {  // token lane group 0, channel lanes
#pragma unroll
      for (int j = 0; j < G; ++j) {
#pragma unroll
        for (int e = 0; e < 8; ++e) ms_.sacc[(warp * G + j) * D + li * 8 + e] = acc[j][e];
        if (li == 0) {
          ms_.sm_m[warp * G + j] = m[j];
          ms_.sm_l[warp * G + j] = l[j];
        }
      }
    }
  }
};

// Tensor-core form; G is 8 (the MMA's 8 real rows / columns): fewer real heads leave zero
// query rows whose results are never stored. Lane (g = lane / 4, q = lane % 4) holds head g's
// scores of tokens 2q, 2q + 1 of the warp's 8, and O^T[channel 16p + g (+ 8)][heads 2q, 2q + 1]
// of each 16-channel tile p.
template <int D>
struct TcCompute {
  static_assert(D == 64 || D == 128, "tensor-core attention: head dim 64 or 128");
  static constexpr bool kSwizzle = true;
  static constexpr int G = 8;
  static constexpr int KS = D / 16;  // k-steps of S; 16-channel tiles of O^T

  int warp, lane, gq, tq;
  float qscale;
  uint32_t qa[KS][2];  // A fragments of Q: head gq, channels 16k + 2tq (+1) and + 8
  float o[KS][4];      // O^T fragments
  float m, l;          // head gq (the same in the 4 lanes of a quad; l is per lane until Store)

  __device__ __forceinline__ void Init(const fp16_t* qrow, int32_t heads, float scale) {
    warp = threadIdx.x >> 5;
    lane = threadIdx.x & 31;
    gq = lane >> 2;
    tq = lane & 3;
    qscale = scale;  // applied to the FP32 scores: Q stays exact in FP16
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      if (gq < heads) {
        const fp16_t* r = qrow + int64_t(gq) * D + 16 * k + 2 * tq;
        qa[k][0] = *reinterpret_cast<const uint32_t*>(r);
        qa[k][1] = *reinterpret_cast<const uint32_t*>(r + 8);
      } else {
        qa[k][0] = qa[k][1] = 0u;
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) o[k][e] = 0.0f;
    }
    m = -INFINITY;
    l = 0.0f;
  }

  // Lane's row address for an x4 ldmatrix of chunks 4c .. 4c + 3 of the warp's 8 rows.
  __device__ __forceinline__ const fp16_t* RowChunk(const fp16_t* st, int c) const {
    const int t = warp * 8 + (lane & 7);
    return st + t * D + StageChunk<true>(t, 4 * c + (lane >> 3)) * 8;
  }

  __device__ __forceinline__ void Stage(const fp16_t* kst, const fp16_t* vst, int32_t nvalid) {
    // S[head][token] for the warp's 8 tokens: B fragments straight from the K rows.
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int c = 0; c < KS / 2; ++c) {
      uint32_t b[4];
      LdMatrixX4<false>(b, RowChunk(kst, c));
      Mma16816(s, qa[2 * c][0], 0u, qa[2 * c][1], 0u, b[0], b[1]);
      Mma16816(s, qa[2 * c + 1][0], 0u, qa[2 * c + 1][1], 0u, b[2], b[3]);
    }
    const int t0 = warp * 8 + 2 * tq;
    const float x0 = t0 < nvalid ? s[0] * qscale : -INFINITY;
    const float x1 = t0 + 1 < nvalid ? s[1] * qscale : -INFINITY;
    float mx = fmaxf(x0, x1);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m, mx);
    const float ms = mn == -INFINITY ? 0.0f : mn;
    const float alpha = SafeExp2Diff(m, ms);
    m = mn;
    // The weights as the MMA sees them (FP16), so l sums exactly what multiplies V.
    const __half2 p = __floats2half2_rn(exp2f(x0 - ms), exp2f(x1 - ms));
    const float2 pf = __half22float2(p);
    l = l * alpha + pf.x + pf.y;
    // O^T's columns are heads 2tq and 2tq + 1: their rescale factors live in quads 2tq, 2tq+1.
    const float a_lo = __shfl_sync(0xffffffffu, alpha, 8 * tq);
    const float a_hi = __shfl_sync(0xffffffffu, alpha, 8 * tq + 4);
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      o[k][0] *= a_lo;
      o[k][1] *= a_hi;
      o[k][2] *= a_lo;
      o[k][3] *= a_hi;
    }
    const uint32_t pb = *reinterpret_cast<const uint32_t*>(&p);
#pragma unroll
    for (int c = 0; c < KS / 2; ++c) {
      uint32_t a[4];
      LdMatrixX4<true>(a, RowChunk(vst, c));
      Mma1688(o[2 * c], a[0], a[1], pb);
      Mma1688(o[2 * c + 1], a[2], a[3], pb);
    }
  }

  __device__ __forceinline__ void Store(const AttnMergeScratch& ms_) {
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (tq == 0) {
      ms_.sm_m[warp * G + gq] = m;
      ms_.sm_l[warp * G + gq] = l;
    }
    float* lo = ms_.sacc + (warp * G + 2 * tq) * D;  // head 2tq
    float* hi = lo + D;                              // head 2tq + 1
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      lo[16 * k + gq] = o[k][0];
      hi[16 * k + gq] = o[k][1];
      lo[16 * k + gq + 8] = o[k][2];
      hi[16 * k + gq + 8] = o[k][3];
    }
  }
};

}  // namespace twl::cuda
