// Append-stage kernels: K/V rows (stored as g.kv_dtype: FP16 or BF16) into their blocks with K quantized on the fly (one
// warp per (token, KV head) row), and the Quest per-channel min/max of touched blocks
// recomputed over their filled rows. Bit-exact with AppendRef: the same FP16-rounded
// scale/zero and correctly rounded float ops (no FMA contraction in the code path).
#pragma once

#include <cuda_bf16.h>

#include "gpu/cuda/common.cuh"
#include "pipeline/fetch/row_cache/cuda/row_slots.cuh"  // TakeFreeSlot
#include "runtime/cuda/append_launch.h"  // kInlineAppendSegments

namespace twl::cuda {

constexpr int kAppendWarps = 8;
constexpr int kMaxAppendHeadDim = 256;  // per-warp code scratch

// Input element i of `type` as the stored type (bf16: BF16, else FP16): copied when the
// types agree, else one round to nearest even (as ConvertToKv on the host).
__device__ __forceinline__ uint16_t LoadAsStored(const void* base, int64_t i, KvInputType type,
                                                 bool bf16) {
  switch (type) {
    case KvInputType::kBf16: {
      const uint16_t b = static_cast<const unsigned short*>(base)[i];
      return bf16 ? b : F2H(B2F(b));
    }
    case KvInputType::kFp32:
      return FKv(static_cast<const float*>(base)[i], bf16);
    default: {
      const fp16_t h = static_cast<const fp16_t*>(base)[i];
      return bf16 ? F2B(H2F(h)) : h;
    }
  }
}

// ---- Per-page-channel K (k_scheme 1, core/page_layout.h) ------------------------------
// Codes are relative to the block's channel ranges (core/channel_range.h), so whenever an
// append may have changed its Quest bounds the ranges are re-coded and every filled row of
// the block is re-quantized from its FP16 K, exactly as QuantizeBlockRowsRef: step_j =
// (hi_j - lo_j) / max_code and code = rint((k - lo_j) / step_j) in correctly rounded FP32
// (no FMA contraction), clamped in float (NaN: code 0).
__device__ __forceinline__ float PageChannelStepDev(fp16_t kmin, fp16_t kmax, int max_code) {
  return __fdiv_rn(__fsub_rn(H2F(kmax), H2F(kmin)), float(max_code));
}
__device__ __forceinline__ int PageChannelCode(float x, float mn, float step, int max_code) {
  float q = 0.0f;
  if (step > 0.0f) q = rintf(__fdiv_rn(__fsub_rn(x, mn), step));
  return q >= float(max_code) ? max_code : (q > 0.0f ? int(q) : 0);
}
// Whole thread block (every thread calls it): the block's channel-range record from its
// Quest bounds, given as floats in s_a (kmin) and s_b (kmax), [head_dim] in shared memory
// and synchronized; on return s_a holds each channel's lo_j and s_b its FP32 step, as
// RequantizeBlockRows takes them (synchronized). EncodeChannelRanges' steps, channels
// spread over the threads.
__device__ __forceinline__ void EncodeBlockRanges(const PageGeometry& g, const QuantKView& qk,
                                                  int64_t block, float* s_a, float* s_b) {
  const int32_t D = g.head_dim;
  fp16_t a, d;
  ChannelRangeGridOn([&](int32_t j) { return s_a[j]; }, [&](int32_t j) { return s_b[j]; }, D, &a,
                     &d);
  uint8_t* record = qk.Range(g, block);
  __syncthreads();  // every thread has read the bounds before they are overwritten
  for (int32_t c = threadIdx.x; c < D; c += blockDim.x) {
    uint8_t ca, cb;
    EncodeChannelRange(a, d, s_a[c], s_b[c], &ca, &cb);
    record[c] = ca;
    record[D + c] = cb;
    const fp16_t lo = RangeGridValue(ca, a, d), hi = RangeGridValue(cb, a, d);
    s_a[c] = H2F(lo);
    s_b[c] = PageChannelStepDev(lo, hi, g.MaxCode());
  }
  if (threadIdx.x == 0) StoreChannelRangeGrid(record, D, a, d);
  __syncthreads();
}

// Whole thread block: codes of rows [0, rows) of `block` from the FP16 K rows (row r at
// old_k + r * head_dim for r < split, else at new_k + r * head_dim, or from its slot in the
// GPU row cache `ins` when it has one: the same bits in device memory rather than a read of
// mapped host memory), against the per-channel kmin / step in shared memory (s_mn, s_step:
// filled and synchronized by the caller). Every thread of the block calls it.
// The rows are first staged in shared memory, 16 bytes per thread and load, all issued
// together: one thread per (row, code byte) reading its channels from global memory paid a
// dependent round trip per iteration (8 per thread for a 16-row page), which made a
// one-token append ~10 us (H200, seventeenth session); the codes then come from shared memory.
constexpr int kRequantStageElems = 4096;  // 8 KB: 32 rows at d = 128, 16 at d = 256
__device__ __forceinline__ void RequantizeBlockRows(const PageGeometry& g, const QuantKView& qk,
                                                    int64_t block, int32_t rows, int32_t split,
                                                    const fp16_t* old_k, const fp16_t* new_k,
                                                    const float* s_mn, const float* s_step,
                                                    const DeviceRowCache& ins) {
  __shared__ __align__(16) uint16_t staged[kRequantStageElems];
  const int32_t D = g.head_dim;
  const int32_t bytes = g.CodeBytesPerToken();
  const int per_byte = 8 / g.k_bits;
  const int max_code = g.MaxCode();
  const bool bf16 = g.kv_dtype == kKvBf16;
  // Pieces per row: 16 bytes where rows are 16-byte multiples (every aligned store; the
  // per-token path's MinMaxKernel also takes other head dims), else single elements.
  const bool vec = D % 8 == 0;
  const int32_t piece = vec ? 8 : 1;
  const int32_t pieces = D / piece;
  const int32_t tile_rows = kRequantStageElems / D;
  for (int32_t r0 = 0; r0 < rows; r0 += tile_rows) {
    const int32_t n = min(tile_rows, rows - r0);
    for (int32_t i = threadIdx.x; i < n * pieces; i += blockDim.x) {
      const int32_t r = r0 + i / pieces, v = i % pieces;
      const fp16_t* k = (r < split ? old_k : new_k) + int64_t(r) * D;
      if (ins.d_slot_of_row != nullptr) {
        const int32_t slot = ins.d_slot_of_row[block * g.page_size + r];
        if (slot >= 0) k = ins.d_slots + int64_t(slot) * 2 * D;
      }
      uint16_t* to = staged + (r - r0) * D + v * piece;
      if (vec) {
        *reinterpret_cast<uint4*>(to) = *reinterpret_cast<const uint4*>(k + v * piece);
      } else {
        *to = k[v];
      }
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < n * bytes; i += blockDim.x) {
      const int32_t r = i / bytes, b = i % bytes;
      const uint16_t* k = staged + r * D;
      uint32_t v = 0;
      for (int e = 0; e < per_byte; ++e) {
        const int j = b * per_byte + e;
        v |= uint32_t(PageChannelCode(KvF(k[j], bf16), s_mn[j], s_step[j], max_code))
             << (e * g.k_bits);
      }
      qk.Codes(g, block, r0 + r)[b] = uint8_t(v);
    }
    __syncthreads();  // the stage is rewritten by the next tile
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
  const bool bf16 = g.kv_dtype == kKvBf16;
  for (int j = lane; j < g.head_dim; j += 32) {
    const uint16_t k = LoadAsStored(in.k, src + j, type, bf16);
    kdst[j] = k;
    k_s[warp][j] = k;
    vdst[j] = LoadAsStored(in.v, src + j, type, bf16);
    const float x = BoundInput(KvF(k, bf16));
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  }
  // Per-page-channel codes depend on the block's range: MinMaxKernel writes them after it.
  if (!g.HasTokenScale()) return;
  lo = WarpMin(lo);
  hi = WarpMax(hi);
  const int max_code = g.MaxCode();
  const fp16_t scale_h = F2H(__fdiv_rn(__fsub_rn(hi, lo), float(max_code)));
  const fp16_t zero_h = F2H(lo);
  const float s = H2F(scale_h), z = H2F(zero_h);
  for (int j = lane; j < g.head_dim; j += 32) {
    int c = 0;
    if (s > 0.0f) {
      const float x = KvF(k_s[warp][j], bf16);  // written by this same lane above
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

// One block per (plan page, KV head), one thread per channel; under k_scheme 1 (k_bits < 16)
// the block's filled rows are then re-quantized against the new bounds.
__global__ void MinMaxKernel(PageGeometry g, AppendPagePlan plan, FpKvView kv, QuantKView qk) {
  __shared__ float s_mn[kMaxAppendHeadDim], s_step[kMaxAppendHeadDim];
  const bool page_channel = g.k_bits < 16 && g.k_scheme == kKSchemePageChannel;
  const int32_t i = blockIdx.x / g.num_kv_heads;
  const int32_t h = blockIdx.x % g.num_kv_heads;
  const int64_t block = g.BlockId(plan.d_page[i], h);
  const int32_t rows = plan.d_rows[i];
  const fp16_t* k = kv.Block(g, block);
  const bool bf16 = g.kv_dtype == kKvBf16;
  for (int c = threadIdx.x; c < g.head_dim; c += blockDim.x) {
    float lo = INFINITY, hi = -INFINITY;
    for (int r = 0; r < rows; ++r) {
      const float x = BoundInput(KvF(k[int64_t(r) * g.head_dim + c], bf16));
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    qk.kmin[block * g.head_dim + c] = F2H(lo);
    qk.kmax[block * g.head_dim + c] = F2H(hi);
    if (page_channel) {
      s_mn[c] = H2F(F2H(lo));
      s_step[c] = H2F(F2H(hi));
    }
  }
  if (!page_channel) return;  // uniform across the block
  __syncthreads();
  EncodeBlockRanges(g, qk, block, s_mn, s_step);
  RequantizeBlockRows(g, qk, block, rows, rows, k, k, s_mn, s_step, DeviceRowCache{});
}

// ---- Bulk append: one thread block per (segment, KV head) -----------------------------
// Threads are laid out as row groups of RowLanes(head_dim) threads (head_dim / 8 rounded up
// to a power of two for the shuffles; d = 96: 16, of which 12 hold channels), each owning 8
// consecutive channels of a row: it loads them (one 16-byte vector for aligned FP16/BF16
// input), stores them as one 16-byte vector, quantizes them against the row's scale/zero
// (a shuffle reduction over the row group) and keeps their running per-channel min/max;
// the block then reduces the channel bounds across row groups through shared memory.
constexpr int kSegThreads = 128;

// 8 input elements as the stored type (see LoadAsStored).
__device__ __forceinline__ void Load8(const void* base, int64_t elem, KvInputType type, bool vec,
                                      bool bf16, uint16_t out[8]) {
  if (vec) {
    switch (type) {
      case KvInputType::kFp16: {
        const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const fp16_t*>(base) + elem);
        const fp16_t* h = reinterpret_cast<const fp16_t*>(&u);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = bf16 ? F2B(H2F(h[e])) : h[e];
        return;
      }
      case KvInputType::kBf16: {
        const uint4 u =
            *reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(base) + elem);
        const unsigned short* b = reinterpret_cast<const unsigned short*>(&u);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = bf16 ? b[e] : F2H(B2F(b[e]));
        return;
      }
      case KvInputType::kFp32: {
        const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + elem);
        const float4 a = p[0], b = p[1];
        const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = FKv(f[e], bf16);
        return;
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = LoadAsStored(base, elem + e, type, bf16);
}

__device__ __forceinline__ void Store8(fp16_t* dst, const fp16_t h[8]) {
  uint4 u;
  fp16_t* p = reinterpret_cast<fp16_t*>(&u);
#pragma unroll
  for (int e = 0; e < 8; ++e) p[e] = h[e];
  *reinterpret_cast<uint4*>(dst) = u;
}

// Segments as a kernel parameter (LaunchAppendSegmentsInline): read from the parameter
// space in place (__grid_constant__), no copy per thread.
struct InlineSegments {
  AppendSegment seg[kInlineAppendSegments];
};

// segs: the device array, or null to read `inl`.
__global__ void __launch_bounds__(kSegThreads)
    AppendSegmentsKernel(PageGeometry g, const AppendSegment* __restrict__ segs,
                         const __grid_constant__ InlineSegments inl, const void* k_in,
                         const void* v_in, KvInputType type, bool vec, fp16_t* kv,
                         fp16_t* stage, QuantKView qk, DeviceRowCache ins) {
  __shared__ float s_lo[kSegThreads * 8];
  __shared__ float s_hi[kSegThreads * 8];
  __shared__ float s_mn[kMaxAppendHeadDim], s_step[kMaxAppendHeadDim];  // k_scheme 1
  const int32_t H = g.num_kv_heads, D = g.head_dim;
  const AppendSegment seg = segs ? segs[blockIdx.x / H] : inl.seg[blockIdx.x / H];
  const int32_t h = int32_t(blockIdx.x % H);
  const int tpr = RowLanes(D);         // threads per row: 1..32, a power of two
  const int rpp = kSegThreads / tpr;   // rows per pass
  const int c = threadIdx.x % tpr;     // this thread's 8 channels: [8c, 8c + 8)
  const int rg = threadIdx.x / tpr;    // row group
  const bool lane_real = c < D / 8;    // threads past the row's channels only join shuffles
  const int64_t block = g.BlockId(seg.page, h);
  fp16_t* dst = seg.stage >= 0 ? stage + (int64_t(seg.stage) * H + h) * g.FpBlockElems()
                               : kv + block * g.FpBlockElems();
  const int32_t rows = seg.row_end - seg.row_begin;
  const int64_t token_elems = int64_t(H) * D;
  const bool quant = g.HasTokenScale();  // per-token codes here; k_scheme 1's at the end
  const bool page_channel = g.k_bits < 16 && g.k_scheme == kKSchemePageChannel;
  const int max_code = g.MaxCode();
  const bool bf16 = g.kv_dtype == kKvBf16;
  float lo8[8], hi8[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) lo8[e] = INFINITY, hi8[e] = -INFINITY;
  // Loaded before the rows, so that their round trips overlap the rows': the block's bounds
  // from before this segment (thread t: channels t, t + kSegThreads), and, without a row
  // cache, the block's earlier K rows into L2, which the page-channel re-quantization reads
  // at the end. A one-token append was a chain of three round trips (rows, bounds, earlier
  // rows).
  constexpr int kChPerThread = kMaxAppendHeadDim / kSegThreads;
  static_assert(kChPerThread * kSegThreads == kMaxAppendHeadDim, "every channel has a thread");
  float prev_lo[kChPerThread], prev_hi[kChPerThread];
#pragma unroll
  for (int q = 0; q < kChPerThread; ++q) {
    const int ch = int(threadIdx.x) + q * kSegThreads;
    prev_lo[q] = INFINITY;
    prev_hi[q] = -INFINITY;
    if (seg.row_begin > 0 && ch < D) {
      prev_lo[q] = H2F(qk.kmin[block * D + ch]);
      prev_hi[q] = H2F(qk.kmax[block * D + ch]);
    }
  }
  if (page_channel && ins.d_slot_of_row == nullptr && seg.row_begin > 0) {
    const char* old_rows = reinterpret_cast<const char*>(kv + block * g.FpBlockElems());
    const int32_t lines = (seg.row_begin * D * int32_t(sizeof(fp16_t)) + 127) / 128;
    for (int32_t l = threadIdx.x; l < lines; l += kSegThreads) PrefetchL2(old_rows + l * 128);
  }

  for (int32_t base = 0; base < rows; base += rpp) {  // uniform trip count: shuffles are safe
    const int32_t i = base + rg;
    const bool active = i < rows && lane_real;
    const int32_t r = seg.row_begin + i;
    // The row's first thread takes its row-cache slot (if any) for the whole row group.
    int32_t slot = -1;
    if (ins.d_slot_of_row != nullptr) {  // uniform: a kernel parameter
      if (active && c == 0) slot = TakeFreeSlot(ins, block * g.page_size + r);
      slot = __shfl_sync(0xffffffffu, slot, 0, tpr);
    }
    fp16_t kh[8];
    float rlo = INFINITY, rhi = -INFINITY;
    if (active) {
      const int64_t src = (int64_t(seg.src_token) + i) * token_elems + int64_t(h) * D + c * 8;
      fp16_t vh[8];
      Load8(k_in, src, type, vec, bf16, kh);
      Load8(v_in, src, type, vec, bf16, vh);
      Store8(dst + int64_t(r) * D + c * 8, kh);
      Store8(dst + int64_t(g.page_size + r) * D + c * 8, vh);
      if (slot >= 0) {
        fp16_t* row_slot = ins.d_slots + int64_t(slot) * 2 * D;
        Store8(row_slot + c * 8, kh);
        Store8(row_slot + D + c * 8, vh);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float x = BoundInput(KvF(kh[e], bf16));
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
      if (s > 0.0f) q = rintf(__fdiv_rn(__fsub_rn(KvF(kh[e], bf16), z), s));
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
  if (lane_real) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      s_lo[rg * D + c * 8 + e] = lo8[e];
      s_hi[rg * D + c * 8 + e] = hi8[e];
    }
  }
  __syncthreads();
#pragma unroll
  for (int p = 0; p < kChPerThread; ++p) {
    const int ch = int(threadIdx.x) + p * kSegThreads;
    if (ch >= D) break;
    float lo = INFINITY, hi = -INFINITY;
    for (int q = 0; q < rpp; ++q) {
      lo = fminf(lo, s_lo[q * D + ch]);
      hi = fmaxf(hi, s_hi[q * D + ch]);
    }
    // Rows from before (row_begin > 0): their bounds, loaded above (else +-inf).
    lo = fminf(lo, prev_lo[p]);
    hi = fmaxf(hi, prev_hi[p]);
    qk.kmin[block * D + ch] = F2H(lo);  // exact: FP16 values (BF16: in FP16's normal range)
    qk.kmax[block * D + ch] = F2H(hi);
    if (page_channel) {
      s_mn[ch] = H2F(F2H(lo));
      s_step[ch] = H2F(F2H(hi));
    }
  }
  if (!page_channel) return;  // uniform across the block
  // Every filled row against the block's new ranges: rows from before the call from the
  // block store, this segment's rows from where they were just written (this block's own
  // stores, visible after the barrier).
  __syncthreads();
  EncodeBlockRanges(g, qk, block, s_mn, s_step);
  RequantizeBlockRows(g, qk, block, seg.row_end, seg.row_begin, kv + block * g.FpBlockElems(),
                      dst, s_mn, s_step, ins);
}

}  // namespace twl::cuda
