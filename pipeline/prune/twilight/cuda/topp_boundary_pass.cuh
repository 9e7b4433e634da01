// Top-p pass 3 (prune_hist.cuh): BoundaryKernel, the listed boundary candidates at or above
// each head's level-2 sub-bin into the union bit words.
#pragma once

#include "pipeline/prune/twilight/cuda/topp_common.cuh"

namespace twl::cuda {

// Grid: x = runs of `run` kept chunks (at most kBndRunMax), y = (sequence, KV head). Finds
// B2 per head (level-2 histogram complete) and sets the bits of the run's listed boundary
// candidates with sub-bin <= B2 (staged per chunk word in shared memory, then one atomic OR
// per word, which waits for nothing), adding them to the head's kept count; a chunk whose
// list overflowed rescans its scores. Block 0 of a pair writes each top-p head's kept mass
// from the histograms.
// Latency: a block first reads its run's list lengths alone (one round trip); a run that
// lists nothing for any head (most chunks of a peaked head) ends there unless it is block 0;
// the others prefetch their lists (and an overflowed chunk's scores) into L2 while they wait
// for the head max and both histogram rows, then walk every list of the run together. Runs:
// at B = 8, 128k one block per chunk made 2048 blocks of this chain, four waves of them at
// four blocks per SM (H100: 21.7 us, 3.6% DRAM); the heads' thresholds are loaded once per
// run instead. H100, B = 8, runs of 1 / 2 / 4 / 8 chunks: 23.2 / 19.9 / 18.7 / 27.6 us
// (bench/RESULTS.md, thirty-first session): longer runs walk more entries per thread. The
// walk now keeps kBndWalk loads in flight per thread, which gained less than predicted
// (18.9 -> 18.3 us at runs of 4; predicted ~10): the walk was not the block's critical path.
constexpr int kBndRunMax = 8;
constexpr int kBndWalk = 4;  // listed entries per thread whose loads are in flight together
static_assert(kBndRunMax * kMaxGroup <= kKeptThreads, "a thread per (chunk, head) list");
__global__ void __launch_bounds__(kKeptThreads)
    BoundaryKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
                   PruneShape shape, const fp16_t* __restrict__ scores,
                   const uint32_t* __restrict__ head_max, HistWork hw,
                   uint32_t* __restrict__ bits, int32_t run) {
  constexpr int kWords = kKeptChunk / 32;  // bit words of a chunk
  __shared__ ChunkHeads ch;
  __shared__ uint32_t s_bits[kBndRunMax][kWords];
  __shared__ int s_n[kBndRunMax * kMaxGroup];      // list length per (chunk, head); 0: none
  __shared__ int s_at[kBndRunMax * kMaxGroup + 1];  // first entry of each list in the walk
  __shared__ int scan[33];
  PdlLetNextLaunch();
  PdlWaitForPrevious();  // KeptKernel's lists, counts and bits (pdl.cuh)
  const int32_t pair = blockIdx.y;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const int32_t chunk0 = int32_t(blockIdx.x) * run;
  const int32_t c0 = chunk0 * kKeptChunk;
  if (c0 >= slots) return;
  const int nch = min(run, (slots - c0 + kKeptChunk - 1) / kKeptChunk);  // chunks of the run
  const int G = shape.group;
  const int lists = nch * G;  // entry e = k * G + j: chunk chunk0 + k, head j
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  const int lane = threadIdx.x & 31;
  auto seg_of = [&](int e) {  // (head, chunk) index of list e in hw.bnd / hw.bnd_count
    return int64_t(sq0 + e % G) * hw.bnd_chunks + chunk0 + e / G;
  };
  // KeptKernel wrote every count of a chunk below `slots` (0 for a head not in top-p mode).
  if (int(threadIdx.x) < lists) s_n[threadIdx.x] = hw.bnd_count[seg_of(int(threadIdx.x))];
  __syncthreads();
  bool listed = false;
  for (int e = 0; e < lists; ++e) listed |= s_n[e] > 0;
  if (!listed && blockIdx.x != 0) return;  // block-uniform
  const int32_t* pages = sel.pages + int64_t(pair) * sel.max_select;
  for (int e = 0; e < lists; ++e) {
    const int n = s_n[e];
    if (n > kBndCap) {
      const int32_t k0 = c0 + (e / G) * kKeptChunk;
      PrefetchChunk(scores, shape.cand_stride, sq0 + e % G, 1, pages, g.page_size, k0,
                    min(slots, k0 + kKeptChunk));
    } else {
      const int32_t* list = hw.bnd + seg_of(e) * kBndCap;
      for (int i = 32 * int(threadIdx.x); i < n; i += 32 * int(blockDim.x)) PrefetchL2(list + i);
    }
  }
  LoadChunkHeads(ch, params, shape, head_max, hw, s, sq0, G, /*level2=*/true);
  for (int i = threadIdx.x; i < nch * kWords; i += blockDim.x) (&s_bits[0][0])[i] = 0;
  __syncthreads();
  if (!listed) return;  // block 0 with nothing listed: the kept masses are written
  // The walk over every listed candidate of the run: list e's entries are [s_at[e],
  // s_at[e + 1]) (lists of heads not in top-p mode, and overflowed ones, count 0).
  {
    const int e = int(threadIdx.x);
    const int n = e < lists ? s_n[e] : 0;
    const bool walk = n > 0 && n <= kBndCap && ch.mode[e % G] == kModeTopP;
    int total;
    const int at = BlockExclusiveSum(walk ? n : 0, scan, &total);
    if (e < lists) s_at[e] = at;
    if (e == 0) s_at[lists] = total;
    __syncthreads();
    // kBndWalk entries per thread and step, their loads issued together: a peaked head's
    // boundary bin lists ~100-200 candidates per chunk, so a run of 4 chunks and 4 heads
    // gives a thread ~10 entries, one dependent round trip each when walked one at a time.
    for (int base = threadIdx.x; base < total; base += kBndWalk * blockDim.x) {
      int list_of[kBndWalk];
      int32_t v[kBndWalk];
#pragma unroll
      for (int u = 0; u < kBndWalk; ++u) {
        const int i = base + u * int(blockDim.x);
        int lo = 0, hi = lists - 1;  // the list holding entry i: the last e with s_at[e] <= i
        while (lo < hi) {
          const int mid = (lo + hi + 1) >> 1;
          if (s_at[mid] <= i) lo = mid; else hi = mid - 1;
        }
        list_of[u] = lo;
        v[u] = i < total ? hw.bnd[seg_of(lo) * kBndCap + (i - s_at[lo])] : INT32_MAX;
      }
#pragma unroll
      for (int u = 0; u < kBndWalk; ++u) {
        const int e = list_of[u], j = e % G;
        if ((v[u] >> 16) > ch.b2[j]) continue;  // and every entry past the walk (INT32_MAX)
        const int32_t off = v[u] & 0xFFFF;
        atomicOr(&s_bits[e / G][off >> 5], 1u << (off & 31));
        atomicAdd(&ch.count[j], 1);
      }
    }
  }
  // Overflowed lists: KeptKernel's test over the chunk's scores, 8 slots per thread and load
  // (the chunk's start and i0 multiples of 8: the 8 bits lie in one word).
  const int32_t len = batch.seq_len[s];
  const uint8_t* in_set = shape.in_set ? shape.in_set + int64_t(pair) * sel.max_select : nullptr;
  for (int e = 0; e < lists; ++e) {
    const int j = e % G;
    if (s_n[e] <= kBndCap || ch.mode[j] != kModeTopP) continue;  // block-uniform
    const int32_t k0 = c0 + (e / G) * kKeptChunk, k1 = min(slots, k0 + kKeptChunk);
    const int B1 = ch.b1[j], B2 = ch.b2[j];
    const fp16_t* row = scores + int64_t(sq0 + j) * shape.cand_stride;
    const float mxj = ch.mx[j];
    const bool vec = (shape.cand_stride & 7) == 0;
    int cnt = 0;
    for (int32_t i0 = k0 + 8 * int32_t(threadIdx.x); i0 < k1; i0 += 8 * int32_t(blockDim.x)) {
      const uint32_t vmask = CandidateMask8(pages, in_set, g.page_size, len, k1, i0);
      if (!vmask) continue;
      uint32_t byte = 0;
      SplitAtBoundary8(LoadRaw8(row, i0, k1, vec), vmask, mxj, B1, ch.keep[j], ch.skip[j],
                       [&](int k, int b2, float) {
                         if (b2 <= B2) byte |= 1u << k;
                       });
      if (byte) {
        atomicOr(&s_bits[e / G][(i0 - k0) >> 5], byte << ((i0 - k0) & 31));
        cnt += __popc(byte);
      }
    }
    cnt = int(__reduce_add_sync(0xffffffffu, unsigned(cnt)));
    if (lane == 0 && cnt) atomicAdd(&ch.count[j], cnt);
  }
  __syncthreads();
  uint32_t* run_bits = bits + int64_t(pair) * shape.bit_words + (c0 >> 5);
  const int32_t words = (min(slots, c0 + nch * kKeptChunk) - c0 + 31) / 32;
  for (int w = threadIdx.x; w < words; w += blockDim.x) {
    const uint32_t b = s_bits[w / kWords][w % kWords];
    if (b) atomicOr(&run_bits[w], b);
  }
  if (threadIdx.x < G && ch.count[threadIdx.x]) {
    atomicAdd(&hw.kept_count[sq0 + threadIdx.x], ch.count[threadIdx.x]);
  }
}

}  // namespace twl::cuda
