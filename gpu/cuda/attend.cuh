// Split-K paged decode attention (flash-decoding) over kept token sets, and its dense form.
//
// Work is planned on the device (no host round trip): AttendPlanKernel reads the kept
// counts, picks one chunk length for the whole batch (about kItemsPerSm work items per SM)
// and writes each (sequence, KV head)'s first item index, so a heavy head is cut into many
// chunks and a light one into few, and the flat item list spreads evenly over the SMs.
// AttendChunkKernel<D, G> runs one item per block: the FP16 K/V rows of its chunk are read
// once for all G query heads of the KV group (16-byte loads, FP32 online softmax), and it
// writes an unnormalized partial state (m, l, acc). AttendMergeKernel combines the partial
// states of each (sequence, query head) and writes FP16.
#pragma once

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

constexpr int kAttnWarps = 8;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kAttnTile = 512;  // token addresses resolved per block-wide step
constexpr int kAttnMinChunk = 64;
constexpr int kItemsPerSm = 4;
constexpr float kLog2e = 1.4426950408889634f;

struct AttnPlan {
  int32_t chunk = 0;        // tokens per work item
  int32_t total_items = 0;  // == item_offset[num_pairs]
};

// Tokens attended by a (sequence, KV head): its kept count, or the whole sequence.
__device__ __forceinline__ int32_t AttnCount(const KeptView& kept, const BatchView& batch,
                                            const PageGeometry& g, bool dense, int32_t pair) {
  return dense ? batch.seq_len[pair / g.num_kv_heads] : kept.count[pair];
}

// One block of 1024 threads.
__global__ void __launch_bounds__(1024)
    AttendPlanKernel(PageGeometry g, BatchView batch, KeptView kept, bool dense,
                     int32_t target_items, AttnPlan* plan, int32_t* item_offset) {
  __shared__ int scan[33];
  const int32_t pairs = batch.num_seqs * g.num_kv_heads;
  long long total = 0;
  for (int32_t base = 0; base < pairs; base += blockDim.x) {
    const int32_t i = base + threadIdx.x;
    const int c = i < pairs ? max(0, AttnCount(kept, batch, g, dense, i)) : 0;
    int tile_total;
    BlockExclusiveSum(c, scan, &tile_total);
    total += tile_total;
  }
  const long long want = (total + target_items - 1) / target_items;
  const int32_t chunk = int32_t(max((long long)kAttnMinChunk, (want + 31) / 32 * 32));
  int items = 0;
  for (int32_t base = 0; base < pairs; base += blockDim.x) {
    const int32_t i = base + threadIdx.x;
    const int c = i < pairs ? max(0, AttnCount(kept, batch, g, dense, i)) : 0;
    const int n = (c + chunk - 1) / chunk;
    int tile_total;
    const int at = items + BlockExclusiveSum(n, scan, &tile_total);
    if (i < pairs) item_offset[i] = at;
    items += tile_total;
  }
  if (threadIdx.x == 0) {
    item_offset[pairs] = items;
    plan->chunk = chunk;
    plan->total_items = items;
  }
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

// Rescale factor exp2(m_old - m_new) that is 0 (not NaN) while nothing was seen.
__device__ __forceinline__ float SafeExp2Diff(float a, float b) {
  return a == -INFINITY ? 0.0f : exp2f(a - b);
}

template <int D, int G>
struct AttnSmem {
  int64_t off[kAttnTile];
  float acc[kAttnWarps][G][D];
  float m[kAttnWarps][G];
  float l[kAttnWarps][G];
};

template <int D, int G>
__global__ void __launch_bounds__(kAttnThreads)
    AttendChunkKernel(PageGeometry g, BatchView batch, QueryView q, FpKvView kv, KeptView kept,
                      bool dense, int32_t group, float qscale, const AttnPlan* __restrict__ plan,
                      const int32_t* __restrict__ item_offset, float* __restrict__ part_acc,
                      float2* __restrict__ part_ml) {
  constexpr int L = D / 8;          // lanes per token (8 channels each)
  constexpr int TPW = 32 / L;       // tokens per warp step
  constexpr int U = G <= 4 ? 4 : 2; // warp steps whose loads are in flight together
  constexpr int kPerWarp = kAttnTile / kAttnWarps;
  static_assert(kPerWarp % (TPW * U) == 0, "tile must split evenly");
  __shared__ AttnSmem<D, G> sm;

  const int32_t pairs = batch.num_seqs * g.num_kv_heads;
  const int32_t item = blockIdx.x;
  if (item >= item_offset[pairs]) return;
  int32_t lo = 0, hi = pairs;  // last pair with item_offset[pair] <= item
  while (hi - lo > 1) {
    const int32_t mid = (lo + hi) / 2;
    if (item_offset[mid] <= item) lo = mid;
    else hi = mid;
  }
  const int32_t pair = lo;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t chunk = plan->chunk;
  const int32_t count = AttnCount(kept, batch, g, dense, pair);
  const int32_t c0 = (item - item_offset[pair]) * chunk;
  const int32_t c1 = min(count, c0 + chunk);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int lg = lane / L, li = lane % L;

  float qv[G][8];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    if (j < group) {
      const uint4 raw = *reinterpret_cast<const uint4*>(
          q.q + (int64_t(s) * batch.num_q_heads + h * group + j) * D + li * 8);
      Unpack8(raw, qv[j]);
#pragma unroll
      for (int e = 0; e < 8; ++e) qv[j][e] *= qscale;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) qv[j][e] = 0.0f;
    }
  }
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[j][e] = 0.0f;
  }

  const int32_t* tokens = dense ? nullptr : kept.tokens + int64_t(pair) * kept.max_kept;
  const int64_t v_shift = int64_t(g.page_size) * D;
  for (int32_t base = c0; base < c1; base += kAttnTile) {
    const int32_t n_tile = min(kAttnTile, c1 - base);
    __syncthreads();  // the previous tile's offsets are no longer read
    for (int k = threadIdx.x; k < n_tile; k += kAttnThreads) {
      const int32_t pos = dense ? base + k : tokens[base + k];
      const int64_t block = g.BlockId(batch.PageId(s, pos / g.page_size), h);
      const int64_t slot = kv.slot_of_block ? kv.slot_of_block[block] : block;
      sm.off[k] = slot * g.FpBlockElems() + int64_t(pos % g.page_size) * D;
    }
    __syncthreads();
    for (int st = 0; st < kPerWarp / TPW; st += U) {
      uint4 kr[U], vr[U];
      bool ok[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int idx = warp * kPerWarp + (st + u) * TPW + lg;
        ok[u] = idx < n_tile;
        if (ok[u]) {
          const fp16_t* kp = kv.kv + sm.off[idx] + li * 8;
          kr[u] = *reinterpret_cast<const uint4*>(kp);
          vr[u] = *reinterpret_cast<const uint4*>(kp + v_shift);
        } else {
          kr[u] = make_uint4(0, 0, 0, 0);
          vr[u] = make_uint4(0, 0, 0, 0);
        }
      }
      if (!__any_sync(0xffffffffu, ok[0])) break;  // rest of the warp's share is past the end
      float sc[U][G];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float kf[8];
        Unpack8(kr[u], kf);
#pragma unroll
        for (int j = 0; j < G; ++j) {
          float d = 0.0f;
#pragma unroll
          for (int e = 0; e < 8; ++e) d = fmaf(qv[j][e], kf[e], d);
#pragma unroll
          for (int o = L / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
          sc[u][j] = ok[u] ? d : -INFINITY;
        }
      }
#pragma unroll
      for (int j = 0; j < G; ++j) {
        float mn = m[j];
#pragma unroll
        for (int u = 0; u < U; ++u) mn = fmaxf(mn, sc[u][j]);
        const float ms = mn == -INFINITY ? 0.0f : mn;
        const float alpha = SafeExp2Diff(m[j], ms);
        float p[U];
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          p[u] = exp2f(sc[u][j] - ms);
          psum += p[u];
        }
        l[j] = l[j] * alpha + psum;
        m[j] = mn;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] *= alpha;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          float vf[8];
          Unpack8(vr[u], vf);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[j][e] = fmaf(p[u], vf[e], acc[j][e]);
        }
      }
    }
  }

  // Merge the TPW token lanes of each warp (lanes li of groups lg hold the same channels).
#pragma unroll
  for (int o = L; o < 32; o <<= 1) {
#pragma unroll
    for (int j = 0; j < G; ++j) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[j], o);
      const float lo_ = __shfl_xor_sync(0xffffffffu, l[j], o);
      const float mn = fmaxf(m[j], mo);
      const float ms = mn == -INFINITY ? 0.0f : mn;
      const float fa = SafeExp2Diff(m[j], ms), fb = SafeExp2Diff(mo, ms);
      l[j] = l[j] * fa + lo_ * fb;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[j][e], o);
        acc[j][e] = acc[j][e] * fa + ao * fb;
      }
      m[j] = mn;
    }
  }
  if (lane < L) {
#pragma unroll
    for (int j = 0; j < G; ++j) {
#pragma unroll
      for (int e = 0; e < 8; ++e) sm.acc[warp][j][li * 8 + e] = acc[j][e];
      if (li == 0) {
        sm.m[warp][j] = m[j];
        sm.l[warp][j] = l[j];
      }
    }
  }
  __syncthreads();
  // Merge the warps; one thread per (head, channel).
  for (int idx = threadIdx.x; idx < G * D; idx += kAttnThreads) {
    const int j = idx / D, c = idx % D;
    if (j >= group) continue;
    float mn = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) mn = fmaxf(mn, sm.m[w][j]);
    const float ms = mn == -INFINITY ? 0.0f : mn;
    float a = 0.0f, lsum = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) {
      const float f = SafeExp2Diff(sm.m[w][j], ms);
      a += sm.acc[w][j][c] * f;
      lsum += sm.l[w][j] * f;
    }
    part_acc[(int64_t(item) * G + j) * D + c] = a;
    if (c == 0) part_ml[int64_t(item) * G + j] = make_float2(mn, lsum);
  }
}

// One block per (sequence, query head): combine the partial states of its KV head's items.
__global__ void AttendMergeKernel(PageGeometry g, BatchView batch, int32_t group, int32_t gpad,
                                  const int32_t* __restrict__ item_offset,
                                  const float* __restrict__ part_acc,
                                  const float2* __restrict__ part_ml, OutputView out) {
  const int32_t sq = blockIdx.x;
  const int32_t s = sq / batch.num_q_heads, qh = sq % batch.num_q_heads;
  const int32_t pair = s * g.num_kv_heads + qh / group;
  const int32_t j = qh % group;
  const int32_t i0 = item_offset[pair], i1 = item_offset[pair + 1];
  float mn = -INFINITY;
  for (int32_t i = i0; i < i1; ++i) mn = fmaxf(mn, part_ml[int64_t(i) * gpad + j].x);
  const float ms = mn == -INFINITY ? 0.0f : mn;
  float lsum = 0.0f;
  for (int32_t i = i0; i < i1; ++i) {
    const float2 ml = part_ml[int64_t(i) * gpad + j];
    lsum += ml.y * SafeExp2Diff(ml.x, ms);
  }
  const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
  for (int c = threadIdx.x; c < g.head_dim; c += blockDim.x) {
    float a = 0.0f;
    for (int32_t i = i0; i < i1; ++i) {
      a += part_acc[(int64_t(i) * gpad + j) * g.head_dim + c] *
           SafeExp2Diff(part_ml[int64_t(i) * gpad + j].x, ms);
    }
    out.out[int64_t(sq) * g.head_dim + c] = F2H(a * inv);
  }
}

}  // namespace twl::cuda
