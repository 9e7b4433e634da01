// After the top-p passes (prune_hist.cuh): CompactKeptKernel, the union bit words as
// ascending token positions per (sequence, KV head), and the per-head telemetry.
#pragma once

#include "pipeline/prune/twilight/cuda/topp_common.cuh"

namespace twl::cuda {

// Grid: x = chunks of kCompactWords bit words, y = (sequence, KV head). Union bit words (or
// every valid slot when dense) -> ascending token positions: a block counts the set bits
// before its chunk (popcounts of the earlier words, or the earlier pages' valid rows when
// dense: at most a pair's 16 KB of bits, read from L2), each warp scans the popcounts of
// its 32 words, then writes word by word with lane k taking bit k (consecutive lanes write
// consecutive positions). The last chunk's block writes the pair's count; block 0 then
// writes per query head of the group the telemetry (selected: valid candidate rows; kept /
// est_mass: the head's own top-p set; full_mass; cap_hit), except selected / cap_hit when
// growing (GrowSearchKernel writes them).
__global__ void __launch_bounds__(kCompactThreads)
    CompactKeptKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
                      PruneShape shape, const uint32_t* __restrict__ bits,
                      const uint32_t* __restrict__ head_max, HistWork hw, KeptView out,
                      HeadStatsView stats) {
  constexpr int kWarps = kCompactThreads / 32;
  static_assert(kCompactWords == kWarps * 32, "one word per thread");
  __shared__ int scan[33];
  __shared__ int warp_total[kWarps];
  PdlWaitForPrevious();  // the top-p chain's bits and counters (pdl.cuh; dense: no-op)
  const int32_t pair = blockIdx.y;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t n_pages = sel.count[pair];
  const int32_t slots = n_pages * g.page_size;
  const int32_t* pages = sel.pages + int64_t(pair) * sel.max_select;
  const uint32_t* pb = bits + int64_t(pair) * shape.bit_words;
  int32_t* dst = out.tokens + int64_t(pair) * out.max_kept;
  const int32_t len = batch.seq_len[s];
  const bool dense = params.dense;
  const int32_t words = (slots + 31) / 32;
  const int32_t chunks = max(1, (words + kCompactWords - 1) / kCompactWords);
  if (int32_t(blockIdx.x) >= chunks) return;  // block-uniform
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  auto pos_of = [&](int32_t i) { return pages[i / g.page_size] * g.page_size + i % g.page_size; };
  const int32_t w0 = int32_t(blockIdx.x) * kCompactWords;
  // This lane's word of the warp's 32, loaded first: in flight with the prefix's loads.
  const int32_t wbase = w0 + warp * 32;
  uint32_t m = 0;
  if (!dense && wbase + lane < words) {
    const int32_t w = wbase + lane;
    m = pb[w];
    const int32_t rest = slots - w * 32;
    if (rest < 32) m &= (1u << rest) - 1u;
  }
  // The page entries of the warp's 1024 slots, two per lane, also in flight with the prefix
  // (pages of >= 16 rows: at most 64 entries). The writes below take them by shuffles; loaded
  // there, slot by slot, they were a chain of up to 32 round trips per warp.
  const int32_t ps = g.page_size;
  const bool hoisted = !dense && ps >= 16;
  const int32_t pfirst = wbase * 32 / ps;
  int32_t pe0 = 0, pe1 = 0;
  if (hoisted) {
    if (pfirst + lane < n_pages) pe0 = pages[pfirst + lane];
    if (pfirst + 32 + lane < n_pages) pe1 = pages[pfirst + 32 + lane];
  }
  // Set bits before the chunk (all in whole words < slots).
  int before = 0;
  if (dense) {
    const int32_t first = w0 * 32;  // rows [0, r) of page P and every page before it
    const int32_t P = first / g.page_size, r = first % g.page_size;
    for (int32_t p = threadIdx.x; p <= P && p < n_pages; p += blockDim.x) {
      before += min(p < P ? g.page_size : r, max(0, len - pages[p] * g.page_size));
    }
  } else {
#pragma unroll 8
    for (int32_t w = threadIdx.x; w < w0; w += blockDim.x) before += __popc(pb[w]);
  }
  int prefix;
  BlockExclusiveSum(before, scan, &prefix);
  if (dense) {  // the lane's word: every valid slot
    for (int j = 0; j < 32; ++j) {
      const int32_t i = (wbase + j) * 32 + lane;
      const uint32_t mj = __ballot_sync(0xffffffffu, i < slots && pos_of(i) < len);
      if (lane == j) m = mj;
    }
  }
  const int c = __popc(m);
  const int incl = WarpInclusiveSum(c);
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  int at = prefix + incl - c;  // output position of this lane's word
  int block_total = 0;
#pragma unroll
  for (int k = 0; k < kWarps; ++k) {
    if (k < warp) at += warp_total[k];
    block_total += warp_total[k];
  }
  for (int j = 0; j < 32; ++j) {  // warp-uniform
    const uint32_t mj = __shfl_sync(0xffffffffu, m, j);
    if (!mj) continue;
    const int aj = __shfl_sync(0xffffffffu, at, j);
    const int32_t i = (wbase + j) * 32 + lane;
    int32_t pos = 0;
    if (hoisted) {
      const int32_t local = i / ps - pfirst;  // < 64 (ps >= 16)
      const int32_t lo = __shfl_sync(0xffffffffu, pe0, local & 31);
      const int32_t hi = __shfl_sync(0xffffffffu, pe1, local & 31);
      pos = (local < 32 ? lo : hi) * ps + i % ps;
    } else if ((mj >> lane) & 1u) {
      pos = pos_of(i);
    }
    if ((mj >> lane) & 1u) dst[aj + __popc(mj & ((1u << lane) - 1u))] = pos;
  }
  if (int32_t(blockIdx.x) == chunks - 1 && threadIdx.x == 0) out.count[pair] = prefix + block_total;
  if (blockIdx.x != 0) return;  // block-uniform
  // Valid candidate rows (the rows of the listed pages inside the sequence; growing: the
  // search wrote `selected`, nothing here needs them). A selection of every page (FULL; the
  // selectors list distinct pages, as full_mass below assumes too) holds the sequence's
  // rows: no pass over its page list (at 128k 32 loads per thread, a chain of round trips
  // that made block 0 the compaction's longest). Otherwise loads unrolled.
  const bool grow = shape.head_p != nullptr;
  const bool all_pages = !grow && n_pages == batch.NumPages(g, s);
  int rows = 0;
  if (!grow && !all_pages) {
#pragma unroll 8
    for (int32_t i = threadIdx.x; i < n_pages; i += blockDim.x) {
      rows += min(g.page_size, len - pages[i] * g.page_size);
    }
  }
  int nvalid;
  BlockExclusiveSum(rows, scan, &nvalid);
  if (all_pages) nvalid = len;
  const int G = shape.group;
  for (int jw = warp; jw < G; jw += kWarps) {  // a warp per head (warp-uniform)
    const int32_t sq = s * batch.num_q_heads + h * G + jw;
    int32_t kept = 0;
    float est = 0.0f;
    if (dense) {
      kept = nvalid;
      est = 1.0f;
    } else {
      float mx;
      const int mode = HeadMode(params, shape, head_max, hw, s, sq, &mx);
      kept = hw.kept_count[sq];
      if (mode == kModeAll) {
        est = kept > 0 ? 1.0f : 0.0f;
      } else if (mode == kModeTopP) {
        u64 total = 0;
#pragma unroll
        for (int k = 0; k < 8; ++k) total += hw.hist1[int64_t(sq) * kHistBins + lane * 8 + k];
        total = WarpSumU64(total);
        est = total ? float(double(hw.kept_mass[sq]) / double(total)) : 0.0f;
      }
    }
    if (lane != 0) continue;
    if (stats.kept) stats.kept[sq] = kept;
    if (stats.est_mass) stats.est_mass[sq] = est;
    if (dense) {
      if (stats.selected) stats.selected[sq] = nvalid;
      if (stats.full_mass) stats.full_mass[sq] = 1.0f;
      if (stats.cap_hit) stats.cap_hit[sq] = 0;
    } else if (grow) {
      if (stats.full_mass) stats.full_mass[sq] = est * shape.head_ratio[sq];
    } else {
      if (stats.selected) stats.selected[sq] = nvalid;
      if (stats.full_mass) stats.full_mass[sq] = all_pages ? est : -1.0f;
      if (stats.cap_hit) stats.cap_hit[sq] = 0;
    }
  }
}

}  // namespace twl::cuda
