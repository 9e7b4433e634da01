// Score pass, general geometry (prune.cuh, step 1): ScoreInt4Kernel, INT4 estimates of
// 16-token tiles on the tensor cores for pages that are not one INT4 block each.
#pragma once

#include "pipeline/prune/twilight/cuda/prune_common.cuh"

namespace twl::cuda {

// Landing buffer of the score kernel: every thread stages its own code chunks (the bytes of
// its MMA fragments) with cp.async kScoreStages - 1 groups ahead, so loads stay in flight
// while the warp computes, without registers. Chunks are interleaved across threads (chunk
// slot k of thread t at [k][t]) so that a warp's 16-byte accesses hit distinct banks.
constexpr int kScoreStages = 3;
constexpr int kScoreSlots = kScoreStages * kTilesPerWarp * 2;  // chunks per thread
template <int kHeadDim>
constexpr size_t ScoreSmemBytes() {
  return size_t(kScoreSlots) * kScoreWarps * 32 * (kHeadDim / 8);
}

// Grid: x = blocks per (sequence, KV head), each owning tiles [x * tiles_per_block, ...);
// y = (sequence, KV head). scores: [num_seqs * num_q_heads][cand_stride] FP16, -inf for
// slots past the sequence end; head_max: [num_seqs * num_q_heads] FloatKey of the max stored
// (FP16-rounded) score, zeroed before.
// kPageChannel (k_scheme 1, page_size a multiple of 16 other than 16, which
// ScorePage16Kernel takes: a tile lies in one block): the A fragments are the codes
// dequantized to FP16 against the tile's block bounds (PcWordBounds / PcDequantWord), the B
// fragments the FP16 queries as for per-token codes, and est = scale * acc: the terms of
// EstimatePageChannelScoreRef, whose FP32 sums run in another order.
template <int kHeadDim, bool kPageChannel = false>
__global__ void __launch_bounds__(kScoreWarps * 32, 2)
    ScoreInt4Kernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk,
                    SelectionView sel, PruneShape shape, int32_t tiles_per_block,
                    fp16_t* __restrict__ scores, uint32_t* __restrict__ head_max) {
  constexpr int kWords = kHeadDim / 32;  // 32-bit code words per thread per token
  constexpr int kChunk = kHeadDim / 8;   // code bytes per thread per token (16 or 8)
  constexpr int kChanPerThread = kHeadDim / 4;
  constexpr int kThreads = kScoreWarps * 32;
  using Chunk = typename std::conditional<kWords == 4, uint4, uint2>::type;
  extern __shared__ __align__(16) unsigned char score_smem[];
  Chunk* landing = reinterpret_cast<Chunk*>(score_smem);  // [kScoreSlots][kThreads]
  __shared__ int32_t run_page[kScoreMaxPages];  // physical page id of run page i
  __shared__ int32_t run_rows[kScoreMaxPages];  // rows of run page i inside the sequence
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
  if (shape.only && !shape.only[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const int32_t t_begin = blockIdx.x * tiles_per_block;
  const int32_t t_end = min((slots + 15) / 16, t_begin + tiles_per_block);
  if (t_begin >= t_end) return;
  // Pages of the run, resolved once: selected index -> page table -> physical page.
  const int32_t p_begin = t_begin * 16 / g.page_size;
  const int32_t p_end = min(sel.count[pair], (t_end * 16 + g.page_size - 1) / g.page_size);
  const int32_t len = batch.seq_len[s];
  for (int32_t i = threadIdx.x; i < p_end - p_begin; i += blockDim.x) {
    const int32_t page_idx = sel.pages[int64_t(pair) * sel.max_select + p_begin + i];
    run_page[i] = batch.PageId(s, page_idx);
    run_rows[i] = min(g.page_size, len - page_idx * g.page_size);
  }
  const int r = lane >> 2, t4 = lane & 3;

  // B fragments: query head n = r of the group (zero past the group).
  const int32_t qbase = s * batch.num_q_heads + h * shape.group;
  uint32_t bfrag[kWords][2][2];
  LoadQueryFragment<kHeadDim>(q.q + int64_t(qbase + (r < shape.group ? r : 0)) * kHeadDim,
                              r < shape.group, t4, bfrag);
  // sum(q) for the two heads this thread's accumulators hold (2*t4, 2*t4+1).
  float qsum[1][2] = {{0.0f, 0.0f}};
  if constexpr (!kPageChannel) {
    GroupQuerySums<kHeadDim, 1>(q.q + int64_t(qbase) * kHeadDim, shape.group, lane, qsum);
  }
  __syncthreads();  // run_page / run_rows ready

  // Row (t, half) of group `grp` of this warp: slot, block, row, validity.
  const bool page16 = g.page_size == 16;  // tile == page: no division
  auto row_of = [&](int32_t tile, int half, int64_t* block, int32_t* row) -> bool {
    const int32_t slot = tile * 16 + r + half * 8;
    const int32_t local = page16 ? tile - p_begin : slot / g.page_size - p_begin;
    *row = page16 ? r + half * 8 : slot % g.page_size;
    const bool valid = tile < t_end && slot < slots && *row < run_rows[min(local, p_end - p_begin - 1)];
    *block = valid ? g.BlockId(run_page[local], h) : 0;
    if (!valid) *row = 0;
    return valid;
  };
  const int32_t stride = kScoreWarps * kTilesPerWarp;  // tiles between a warp's groups
  const int32_t first_tile = t_begin + warp * kTilesPerWarp;
  const int32_t groups = first_tile < t_end ? (t_end - first_tile + stride - 1) / stride : 0;
  // Copies of group k into landing stage k % kScoreStages (rows past the end: row 0 of
  // block 0, never used).
  // fn(t, half, valid, block, row) for the two rows of each tile of group k.
  auto each_row = [&](int32_t k, auto&& fn) {
    const int32_t tile0 = first_tile + k * stride;
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        int64_t block;
        int32_t row;
        const bool valid = row_of(tile0 + t, half, &block, &row);
        fn(t, half, valid, block, row);
      }
    }
  };
  auto issue = [&](int32_t k) {
    if (k < groups) {
      const int stage = k % kScoreStages;
      each_row(k, [&](int t, int half, bool, int64_t block, int32_t row) {
        const uint8_t* src = qk.Codes(g, block, row) + t4 * kChunk;
        Chunk* dst = &landing[((stage * kTilesPerWarp + t) * 2 + half) * kThreads + threadIdx.x];
        if constexpr (kChunk == 16) CpAsync16(dst, src);
        else CpAsync8(dst, src);
      });
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int k = 0; k < kScoreStages - 1; ++k) issue(k);

  float run_max[2] = {-INFINITY, -INFINITY};
  fp16_t* out_row[2];
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const int j = min(2 * t4 + kk, shape.group - 1);
    out_row[kk] = scores + (int64_t(s) * batch.num_q_heads + h * shape.group + j) * shape.cand_stride;
  }
  // Scale / zero of a group's rows, loaded one group ahead: their latency overlaps the
  // previous group's MMAs instead of stalling the warp after each landing wait.
  fp16_t nscale[kTilesPerWarp][2], nzero[kTilesPerWarp][2];
  bool nvalid[kTilesPerWarp][2];
  auto load_meta = [&](int32_t k) {
    each_row(k, [&](int t, int half, bool valid, int64_t block, int32_t row) {
      nvalid[t][half] = valid;
      if constexpr (!kPageChannel) {  // k_scheme 1 stores no per-token scale/zero
        nscale[t][half] = qk.scale[block * g.page_size + row];
        nzero[t][half] = qk.zero[block * g.page_size + row];
      } else {
        nscale[t][half] = nzero[t][half] = fp16_t(0);
      }
    });
  };
  if (groups > 0) load_meta(0);
  for (int32_t k = 0; k < groups; ++k) {
    CpAsyncWait<kScoreStages - 2>();  // this thread's copies of group k have landed
    issue(k + kScoreStages - 1);
    const int stage = k % kScoreStages;
    const int32_t tile0 = first_tile + k * stride;
    float tscale[kTilesPerWarp][2], tzero[kTilesPerWarp][2];
    bool valid[kTilesPerWarp][2];
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        valid[t][half] = nvalid[t][half];
        tscale[t][half] = H2F(nscale[t][half]);
        tzero[t][half] = H2F(nzero[t][half]);
      }
    }
    if (k + 1 < groups) load_meta(k + 1);
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
      if (tile0 + t >= t_end) break;
      const Chunk ca = landing[((stage * kTilesPerWarp + t) * 2 + 0) * kThreads + threadIdx.x];
      const Chunk cb = landing[((stage * kTilesPerWarp + t) * 2 + 1) * kThreads + threadIdx.x];
      const uint32_t* wa = reinterpret_cast<const uint32_t*>(&ca);
      const uint32_t* wb = reinterpret_cast<const uint32_t*>(&cb);
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if constexpr (kPageChannel) {
        // The tile's block (a tile lies in one page: page_size % 16 == 0).
        const int32_t local = (tile0 + t) * 16 / g.page_size - p_begin;
        const int64_t tb = g.BlockId(run_page[local], h);
        const uint8_t* record = qk.range + tb * ChannelRangeBytes(kHeadDim);
        const __half2 inv = PcInverse15();
#pragma unroll
        for (int m = 0; m < kWords; ++m) {
          uint32_t step[4], kmin[4];
          uint4 mn, mx;
          RangeWords8<kHeadDim>(record, t4 * kChanPerThread + m * 8, &mn, &mx);
          PcWordBounds(mn, mx, inv, step, kmin);
          uint32_t xa[4], xb[4];
          NibbleWordToHalf2x4(wa[m], xa);
          NibbleWordToHalf2x4(wb[m], xb);
          PcDequantWord(xa, step, kmin);
          PcDequantWord(xb, step, kmin);
          Mma16816(acc, xa[0], xb[0], xa[1], xb[1], bfrag[m][0][0], bfrag[m][0][1]);
          Mma16816(acc, xa[2], xb[2], xa[3], xb[3], bfrag[m][1][0], bfrag[m][1][1]);
        }
      } else {
#pragma unroll
        for (int m = 0; m < kWords; ++m) {
          uint32_t xa[4], xb[4];
          NibbleWordToHalf2x4(wa[m], xa);
          NibbleWordToHalf2x4(wb[m], xb);
          Mma16816(acc, xa[0], xb[0], xa[1], xb[1], bfrag[m][0][0], bfrag[m][0][1]);
          Mma16816(acc, xa[2], xb[2], xa[3], xb[3], bfrag[m][1][0], bfrag[m][1][1]);
        }
      }
      // acc[0], acc[1]: token r, heads 2t4, 2t4+1; acc[2], acc[3]: token r + 8.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int32_t slot = (tile0 + t) * 16 + r + half * 8;
        if (slot >= slots) continue;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const int j = 2 * t4 + kk;
          if (j >= shape.group) continue;
          fp16_t est;
          if constexpr (kPageChannel) {
            est = F2H(valid[t][half] ? shape.scale * acc[half * 2 + kk] : -INFINITY);
          } else {
            est = F2H(valid[t][half] ? shape.scale * (tscale[t][half] * acc[half * 2 + kk] +
                                                      tzero[t][half] * qsum[0][kk])
                                     : -INFINITY);
          }
          run_max[kk] = fmaxf(run_max[kk], H2F(est));  // the max of what is stored
          out_row[kk][slot] = est;
        }
      }
    }
  }
  CpAsyncWait<0>();
  // Per-head maximum: lanes with the same t4 hold the same heads.
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
      run_max[kk] = fmaxf(run_max[kk], __shfl_xor_sync(0xffffffffu, run_max[kk], o));
    }
    const int j = 2 * t4 + kk;
    if (r == 0 && j < shape.group && run_max[kk] > -INFINITY) {
      atomicMax(&head_max[s * batch.num_q_heads + h * shape.group + j], FloatKey(run_max[kk]));
    }
  }
}

}  // namespace twl::cuda
