// Top-p pass 2 (prune_hist.cuh): KeptKernel, the union bit words of the candidates above
// each head's boundary bin, and the boundary bin's level-2 histogram and lists.
#pragma once

#include "pipeline/prune/twilight/cuda/topp_common.cuh"

namespace twl::cuda {

// Grid: x = chunks of kKeptChunk slots, y = (sequence, KV head). Level 2 and the kept bits
// in one pass over the scores (after HistKernel, which fixed B1 per head): a candidate above
// the boundary bin (b1 < B1) is kept at once (union bit words, [0, ceil(slots / 32)) all
// written, and per-head kept counts); a boundary candidate (b1 == B1) adds its mass to the
// head's level-2 histogram and is listed for BoundaryKernel, which sets its bit once B2 is
// known. Each thread takes 8 consecutive slots per step (one 16-byte load per head); four
// lanes make a bit word (two shuffles), written with a plain store. kMaxG (4, 8 or 16): the
// group sizes it takes (registers and level-2 sums sized for them; smaller groups keep the
// occupancy of their size when the GPU build allows 16).
// Occupancy: 4 blocks per SM for groups of up to 8 (64 registers: with fewer resident
// blocks each block's prologue and two steps are pure latency; at 1 block per SM the H200
// took 2x as long for the whole top-p).
// Grid: x = runs of `chunks` chunks (the launcher sizes them so that the grid is about one
// wave of resident blocks), y = (sequence, KV head), z = head splits (PrunerParams::
// topp_head_splits: at a small batch, each of z blocks takes 1/z of the group's heads). A block resolves its heads' thresholds
// once for its chunks (LoadChunkHeads: a chain of dependent loads) and, while it works on
// one chunk, prefetches the next into L2 (the first while that chain runs); the level-2
// sums and the kept counts of its chunks are flushed once.
// Resident blocks per SM the kept pass asks of ptxas, by its largest group: groups of up to 4
// (the serving shape's 32 x 8, and every split group of 8) fit 48 registers without spills,
// five blocks instead of four (62.5% occupancy instead of 50%) for a pass whose blocks wait
// on their loads (H100 ncu, B = 8: issue 0.60 per scheduler, DRAM 33%; bench/RESULTS.md,
// thirty-first session); six would spill. Measured (H100, B = 8, thirty-second session):
// the pass 60.7 -> 52.5 us.
constexpr int KeptMinBlocks(int max_group) { return max_group <= 4 ? 5 : max_group <= 8 ? 4 : 1; }
template <int kMaxG>
__global__ void __launch_bounds__(kKeptThreads, KeptMinBlocks(kMaxG))
    KeptKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
               PruneShape shape, const fp16_t* __restrict__ scores,
               const uint32_t* __restrict__ head_max, HistWork hw, uint32_t* __restrict__ bits,
               int32_t chunks) {
  __shared__ ChunkHeads ch;
  __shared__ u64 s_h2[kMaxG][kHistBins];  // level-2 partial sums of this block's chunks
  constexpr int kLoadHeads = kMaxG < 8 ? kMaxG : 8;  // heads whose scores load together
  PdlLetNextLaunch();
  const int32_t pair = blockIdx.y;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const int32_t first_chunk = blockIdx.x * chunks;
  const int32_t first = first_chunk * kKeptChunk;
  const int32_t last = min(slots, first + chunks * kKeptChunk);  // the block's slots end
  // Head splits (gridDim.z > 1): block z takes heads [z G, z G + G) of the group, with
  // G = group / splits; the splits of a chunk then share its union bit words (atomicOr into
  // words the launcher cleared).
  const int G = shape.group / int(gridDim.z);
  const int32_t sq0 = s * batch.num_q_heads + h * shape.group + int(blockIdx.z) * G;
  const int lane = threadIdx.x & 31;
  const int32_t* pages = sel.pages + int64_t(pair) * sel.max_select;
  const int32_t ps = g.page_size;
  // The selection and the scores were complete before HistKernel began: prefetched while
  // HistKernel may still run (pdl.cuh); its histograms only after the wait.
  if (first < slots) {
    PrefetchChunk(scores, shape.cand_stride, sq0, G, pages, ps, first,
                  min(last, first + kKeptChunk));
  }
  PdlWaitForPrevious();
  if (first >= slots) return;
  LoadChunkHeads(ch, params, shape, head_max, hw, s, sq0, G, /*level2=*/false);
  for (int i = threadIdx.x; i < G * kHistBins; i += blockDim.x) (&s_h2[0][0])[i] = 0;
  __syncthreads();
  const int32_t len = batch.seq_len[s];
  const uint8_t* in_set = shape.in_set ? shape.in_set + int64_t(pair) * sel.max_select : nullptr;
  uint32_t* pair_bits = bits + int64_t(pair) * shape.bit_words;
  const bool vec = (shape.cand_stride & 7) == 0;
  int cnt[kMaxG];
#pragma unroll
  for (int j = 0; j < kMaxG; ++j) cnt[j] = 0;
  for (int32_t chunk = first_chunk, c0 = first; c0 < last; ++chunk, c0 += kKeptChunk) {
    const int32_t c1 = min(last, c0 + kKeptChunk);
    if (c1 < last) {
      PrefetchChunk(scores, shape.cand_stride, sq0, G, pages, ps, c1, min(last, c1 + kKeptChunk));
    }
    // The same trip count for every thread (the shuffles); c0 and the step: multiples of 32.
    for (int32_t base = c0; base < c1; base += 8 * blockDim.x) {
      const int32_t i0 = base + 8 * int32_t(threadIdx.x);
      // bit k: slot i0 + k is a valid candidate
      const uint32_t vmask = CandidateMask8(pages, in_set, ps, len, c1, i0);
      // The heads' 8 scores loaded at once, 8 heads at a time (one round trip per step and 8
      // heads; groups of up to 16 keep the registers of 8).
      uint32_t byte = 0;
#pragma unroll
      for (int jb = 0; jb < kMaxG; jb += kLoadHeads) {
        if (jb >= G) break;
        uint4 raws[kLoadHeads];
#pragma unroll
        for (int jj = 0; jj < kLoadHeads; ++jj) {
          const int j = jb + jj;
          raws[jj] = make_uint4(0u, 0u, 0u, 0u);
          // Not gated by vmask: the loads need not wait for the page entries behind it (a
          // slot past the sequence holds -inf, and vmask masks every use below).
          if (j < G && i0 < c1 && ch.mode[j] == kModeTopP) {
            raws[jj] = LoadRaw8(scores + int64_t(sq0 + j) * shape.cand_stride, i0, c1, vec);
          }
        }
#pragma unroll
        for (int jj = 0; jj < kLoadHeads; ++jj) {
          const int j = jb + jj;
          if (j >= G) break;
          const int mode = ch.mode[j];  // block-uniform
          if (mode == kModeAll) {
            byte |= vmask;
            cnt[j] += __popc(vmask);
          } else if (mode == kModeTopP) {
            uint32_t bmask = 0;  // bit k: slot i0 + k lies in the boundary bin
            uint64_t b2s = 0;    // its sub-bin in byte k
            const uint32_t skip = ch.skip[j];
            if (vmask && !AllBelow(raws[jj], U32Half2(skip))) {
              const uint32_t above = SplitAtBoundary8(
                  raws[jj], vmask, ch.mx[j], ch.b1[j], ch.keep[j], skip,
                  [&](int k, int b2, float w) {
                    bmask |= 1u << k;
                    b2s |= uint64_t(b2) << (8 * k);
                    const u64 m = Fixed(w, kFixedScale);
                    if (m) SharedAddU64(&s_h2[j][b2], m);
                  });
              byte |= above;
              cnt[j] += __popc(above);
            }
            // List the boundary candidates: one shared atomic per warp (mode is block-uniform,
            // so every lane of the warp is here).
            const unsigned any = __ballot_sync(0xffffffffu, bmask != 0);
            if (any) {
              const int n = __popc(bmask);
              const int incl = WarpInclusiveSum(n);
              int at = 0;
              if (lane == 31) at = atomicAdd(&ch.bnd[j], incl);
              at = __shfl_sync(0xffffffffu, at, 31) + incl - n;
              int32_t* list =
                  hw.bnd + (int64_t(sq0 + j) * hw.bnd_chunks + chunk) * int64_t(kBndCap);
#pragma unroll
              for (int k = 0; k < 8; ++k) {
                if (!((bmask >> k) & 1u)) continue;
                if (at < kBndCap) {
                  list[at] = (i0 + k - c0) | (int32_t((b2s >> (8 * k)) & 255u) << 16);
                }
                ++at;
              }
            }
          }
        }
      }
      uint32_t word = byte << (8 * (lane & 3));  // slots i0..i0+7 are bits 8 (lane & 3) + k
      word |= __shfl_xor_sync(0xffffffffu, word, 1);
      word |= __shfl_xor_sync(0xffffffffu, word, 2);
      if ((lane & 3) == 0 && i0 < c1) {
        if (gridDim.z == 1) {
          pair_bits[i0 >> 5] = word;
        } else if (word) {
          atomicOr(&pair_bits[i0 >> 5], word);
        }
      }
    }
    __syncthreads();  // the chunk's boundary lists complete
    if (threadIdx.x < G) {  // every count BoundaryKernel reads, then the next chunk's from 0
      hw.bnd_count[int64_t(sq0 + threadIdx.x) * hw.bnd_chunks + chunk] = ch.bnd[threadIdx.x];
      ch.bnd[threadIdx.x] = 0;
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kMaxG; ++j) {
    if (j >= G) break;
    const int c = __reduce_add_sync(0xffffffffu, unsigned(cnt[j]));
    if (lane == 0 && c) atomicAdd(&ch.count[j], c);
  }
  __syncthreads();
  if (threadIdx.x < G && ch.count[threadIdx.x]) {
    atomicAdd(&hw.kept_count[sq0 + threadIdx.x], ch.count[threadIdx.x]);
  }
  for (int i = threadIdx.x; i < G * kHistBins; i += blockDim.x) {
    const u64 v = (&s_h2[0][0])[i];
    if (v) atomicAdd(&hw.hist2[int64_t(sq0 + i / kHistBins) * kHistBins + i % kHistBins], v);
  }
}

}  // namespace twl::cuda
