// Score pass, the common geometry (prune.cuh, step 1): ScorePage16Kernel, a page per MMA
// tile, INT4 per token or per page channel, d 64/128, up to 16 heads per KV head.
#pragma once

#include "pipeline/prune/twilight/cuda/prune_common.cuh"

namespace twl::cuda {

// The per-token INT4 estimator for the common geometry (k_scheme 0, page_size 16, head dim
// 64/128): a 16-token MMA tile is exactly one block, so a lane's code bytes sit at a fixed
// offset inside the block's contiguous codes (row r and r + 8, chunk t4) and a page costs one
// block id (resolved once per block into shared memory) and one address per lane, where the
// general ScoreInt4Kernel resolves slot -> page -> block -> row four times per tile. What is
// left per page and lane: two cp.async, four 2-byte scale/zero loads (one step ahead), the
// nibble conversion, the MMAs and four stores (measured reasoning: the general kernel spent
// ~300 instructions per 1 KB tile, more than the SM can issue at HBM rate; this one ~140).
// Warps take pages round robin (warp w: local pages kP16Pages * (w + kP16Warps * k) + ...), so
// a block's warps stream adjacent blocks. kNT: MMA n-tiles of 8 query heads (groups of 9-16
// heads: two). kMass (growing): each page's max estimate per query head (NaN when the page
// holds one) and the sum of exp(est - that max) by list entry (GrowWork::page_max /
// page_mass; the search rescales by the head's max), so no page-sum pass re-reads scores.
// exp(x) for x <= 0 as ex2.approx(x * log2 e): one multiply and one MUFU op (expf's
// accurate range reduction costs ~10 instructions, four times per page and lane). Relative
// error ~1e-6 at x = -20 (the argument's rounding), far below the float sums' own; results
// below 2^-126 flush to 0.
// kPageChannel (k_scheme 1, same geometry): no per-token scale/zero; per page the block's
// channel-range record (272 B at d = 128; the FP16 Quest bounds were 512 B) lands with its
// codes, the warp decodes it in place into lo and FP16 step pairs (PcPageBoundsInPlace: each
// channel's range and step formed once per page), and
// each lane dequantizes its A fragments with one HFMA2 per pair (PcDequantWord); the B
// fragments are the FP16 queries, loaded once per block, and est = scale * acc
// (EstimatePageChannelScoreRef's terms). Until the seventeenth session the B fragments were
// rebuilt per page as FP16(q_j step_j) with a per-head base sum_j q_j kmin_j (the pass at
// B = 8 went from ~0.33 to ~0.27 ms, H200). SASS per page and main loop (d = 128, G <= 8,
// scripts/sass-count.sh): 318.5 with each lane forming its own steps, 232.0 now
// (docs/PRUNE_PASSES.md, "SASS counts").
// max that propagates NaN (fmaxf drops it).
__device__ __forceinline__ float MaxNan(float a, float b) {
  float y;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
  return y;
}

constexpr int kP16Warps = 8;
constexpr int kP16Pages = 2;     // pages per warp per pipeline step
constexpr int kP16Stages = 4;    // steps: kP16Stages - 1 in flight while one is computed
constexpr int kP16MaxPages = 2048;  // pages of a block's run resolved in shared memory

// Shared memory of ScorePage16Kernel (2 blocks per SM: at most ~113 KB each). Per token: the
// code landing buffer. Per page channel also the bounds landing buffer (each page's
// channel-range record, in the codes' cp.async groups, then its lo and step pairs)
// [stage][page][warp][4 * kHeadDim bytes]; to fit,
// it resolves runs of up to 1024 pages. (3 blocks per SM with 2 stages measured the same on
// the H200, 346.75 vs 346.98 us at B = 8: the pass is issue-bound, not latency-bound.)
template <int kHeadDim, int kNT, bool kPageChannel>
struct P16Smem {
  static constexpr int kStages = kP16Stages;
  static constexpr int kMaxPages = kPageChannel ? kP16MaxPages / 2 : kP16MaxPages;
  static constexpr size_t kLanding =
      size_t(kStages) * kP16Pages * 2 * kP16Warps * 32 * (kHeadDim / 8);
  static constexpr size_t kBoundsPage = 4 * kHeadDim;  // lo + step pairs, FP16
  static constexpr size_t kBounds =
      kPageChannel ? size_t(kStages) * kP16Pages * kP16Warps * kBoundsPage : 0;
  static constexpr size_t kBytes = kLanding + kBounds;
  static __device__ __forceinline__ fp16_t* Bounds(unsigned char* smem, int stage, int page,
                                                   int warp) {
    return reinterpret_cast<fp16_t*>(
        smem + kLanding + ((size_t(stage) * kP16Pages + page) * kP16Warps + warp) * kBoundsPage);
  }
};
static_assert(P16Smem<128, 2, true>::kBytes + P16Smem<128, 2, true>::kMaxPages * 5 <= 110 * 1024,
              "two blocks per SM");
template <int kHeadDim, int kNT = 1, bool kPageChannel = false>
constexpr size_t ScorePage16SmemBytes() {
  return P16Smem<kHeadDim, kNT, kPageChannel>::kBytes;
}

template <int kHeadDim, int kNT, bool kMass, bool kPageChannel = false>
__global__ void __launch_bounds__(kP16Warps * 32, 2)
    ScorePage16Kernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk,
                      SelectionView sel, PruneShape shape, int32_t pages_per_block,
                      fp16_t* __restrict__ scores, uint32_t* __restrict__ head_max,
                      float* __restrict__ page_mass, float* __restrict__ page_max) {
  using Smem = P16Smem<kHeadDim, kNT, kPageChannel>;
  constexpr int kStages = Smem::kStages;
  constexpr int kWords = kHeadDim / 32;  // 32-bit code words per thread per token
  constexpr int kChunk = kHeadDim / 8;   // code bytes per thread per token (16 or 8)
  constexpr int kRowBytes = kHeadDim / 2;
  constexpr int kBlockBytes = 16 * kRowBytes;
  constexpr int kThreads = kP16Warps * 32;
  using Chunk = typename std::conditional<kWords == 4, uint4, uint2>::type;
  extern __shared__ __align__(16) unsigned char p16_smem[];
  Chunk* landing = reinterpret_cast<Chunk*>(p16_smem);  // [stage][page][half][kThreads]
  // Block id of run page i, in 32 bits: the ids index the INT4 codes in device memory at
  // >= 256 B per block (2-bit K, d = 64), so they stay below 2^32 on any GPU under 1 TiB.
  // One IMAD.WIDE.U32 per address instead of a 64-bit multiply and add.
  __shared__ uint32_t run_blk[Smem::kMaxPages];
  __shared__ uint8_t run_rows[Smem::kMaxPages];  // its rows inside the sequence (0..16)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
  if (shape.only && !shape.only[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t p_begin = blockIdx.x * pages_per_block;
  const int r = lane >> 2, t4 = lane & 3;
  const int G = shape.group;
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  // The block's first loads go out together: the selection's count, the run's page entries
  // (bounded by the selection's capacity, as the count is not known yet), the sequence's
  // length and the queries. Loaded after the count's test, they were a chain: count, then
  // entries, then the page table, then the first copies; with 8 waves of blocks at B = 8,
  // each block's start leaves its share of the SM's streaming idle.
  const int32_t n_pages = sel.count[pair];
  constexpr int kEntriesPerThread = Smem::kMaxPages / kThreads;
  static_assert(Smem::kMaxPages % kThreads == 0, "whole entries per thread");
  const int32_t entries = min(sel.max_select - p_begin, pages_per_block);
  int32_t page_idx[kEntriesPerThread];
#pragma unroll
  for (int u = 0; u < kEntriesPerThread; ++u) {
    const int32_t i = int32_t(threadIdx.x) + u * kThreads;
    page_idx[u] = i < entries ? sel.pages[int64_t(pair) * sel.max_select + p_begin + i] : 0;
  }
  const int32_t len = batch.seq_len[s];
  // B fragments per n-tile: query head nt * 8 + r (zero past the group), the FP16 queries
  // under either scheme (per page channel the A side is dequantized instead).
  uint32_t bfrag[kNT][kWords][2][2];
  // sum(q) of the heads this thread's accumulators hold (nt * 8 + 2 t4 + kk).
  float qsum[kNT][2];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int n = nt * 8 + r;
    LoadQueryFragment<kHeadDim>(q.q + int64_t(sq0 + (n < G ? n : 0)) * kHeadDim, n < G, t4,
                                bfrag[nt]);
  }
  if constexpr (!kPageChannel) GroupQuerySums<kHeadDim, kNT>(q.q + int64_t(sq0) * kHeadDim, G, lane, qsum);
  // An empty asm statement taking the entries keeps their loads ahead of the test below
  // (the compiler otherwise moves loads past a test that comes before their only use).
#pragma unroll
  for (int u = 0; u < kEntriesPerThread; ++u) asm volatile("" ::"r"(page_idx[u]));
  const int32_t run = min(n_pages, p_begin + pages_per_block) - p_begin;
  if (run <= 0) return;
#pragma unroll
  for (int u = 0; u < kEntriesPerThread; ++u) {
    const int32_t i = int32_t(threadIdx.x) + u * kThreads;
    if (i < run) {
      run_blk[i] = uint32_t(g.BlockId(batch.PageId(s, page_idx[u]), h));
      run_rows[i] = uint8_t(max(0, min(16, len - page_idx[u] * 16)));
    }
  }
  __syncthreads();  // run_blk / run_rows ready

  constexpr int kStride = kP16Warps * kP16Pages;  // run pages between a warp's steps
  const int32_t first = warp * kP16Pages;
  const int32_t steps = first < run ? (run - first + kStride - 1) / kStride : 0;
  // This lane's sources (block 0) and shared destinations (stage 0, page 0), formed once:
  // per copy one IMAD.WIDE.U32 for the source and a constant offset for the destination.
  const uint8_t* lane_codes = qk.codes + r * kRowBytes + t4 * kChunk;
  const uint32_t land_s = SharedAddress(&landing[threadIdx.x]);
  constexpr uint32_t kLandPage = 2 * kThreads * sizeof(Chunk);  // one page's two halves
  // Per page channel: the block's channel-range record, 16-byte pieces (17 at d = 128). Every
  // lane of a stage's pieces copies one, without a branch: lanes past the record repeat its
  // last piece into the stage's spare bytes (the same source sectors: no more bytes read).
  // At d = 64 the stage has 16 pieces and lanes 16-31 copy nothing: copying lanes 0-15's
  // pieces again wrote the same bytes from two unordered async copies (compute-sanitizer
  // racecheck: a WAW hazard, benign in value but a race all the same).
  constexpr int kRecordBytes = int(ChannelRangeBytes(kHeadDim));
  constexpr int kRecordPieces = kRecordBytes / 16;
  constexpr int kStagePieces = 4 * kHeadDim / 16;  // the page's bounds stage, in pieces
  static_assert(kRecordPieces <= kStagePieces, "the record fits the bounds stage");
  const int lane_piece = lane % kStagePieces;
  const bool lane_copies_piece = kStagePieces >= 32 || lane < kStagePieces;
  const uint8_t* lane_record = qk.range + min(lane_piece, kRecordPieces - 1) * 16;
  const uint32_t bounds_s = kPageChannel ? SharedAddress(Smem::Bounds(p16_smem, 0, 0, warp)) + lane_piece * 16 : 0;
  constexpr uint32_t kBoundsStep = kP16Warps * Smem::kBoundsPage;  // between (stage, page)s
  auto issue = [&](int32_t k) {
    if (k < steps) {
      const int stage = k % kStages;
#pragma unroll
      for (int pp = 0; pp < kP16Pages; ++pp) {
        const int32_t lp = first + k * kStride + pp;
        if (lp < run) {
          const uint32_t blk = run_blk[lp];
          const uint8_t* src = lane_codes + size_t(blk) * kBlockBytes;
          const uint32_t dst = land_s + uint32_t(stage * kP16Pages + pp) * kLandPage;
          if constexpr (kChunk == 16) {
            CpAsync16(dst, src);
            CpAsync16(dst + kThreads * sizeof(Chunk), src + 8 * kRowBytes);
          } else {
            CpAsync8(dst, src);
            CpAsync8(dst + kThreads * sizeof(Chunk), src + 8 * kRowBytes);
          }
          if constexpr (kPageChannel) {
            CpAsync16If(lane_copies_piece,
                        bounds_s + uint32_t(stage * kP16Pages + pp) * kBoundsStep,
                        lane_record + size_t(blk) * kRecordBytes);
          }
        }
      }
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (int k = 0; k < kStages - 1; ++k) issue(k);

  // Scale / zero of rows r, r + 8 of a step's pages, loaded one step ahead.
  fp16_t nscale[kP16Pages][2], nzero[kP16Pages][2];
  int nrows[kP16Pages];
  auto load_meta = [&](int32_t k) {
#pragma unroll
    for (int pp = 0; pp < kP16Pages; ++pp) {
      const int32_t lp = min(first + k * kStride + pp, run - 1);
      const int64_t at = int64_t(run_blk[lp]) * 16 + r;
      nrows[pp] = run_rows[lp];
      nscale[pp][0] = qk.scale[at];
      nscale[pp][1] = qk.scale[at + 8];
      nzero[pp][0] = qk.zero[at];
      nzero[pp][1] = qk.zero[at + 8];
    }
  };
  // The running max of this lane's estimates per held head, over rows r and r + 8 as the
  // halves of one FP16 pair: the estimates are FP16 already, so the max is the same value
  // as over their floats, and packing and comparing them in pairs costs 2 F2FP and 2 HMNMX2
  // per page where floats cost 4 F2FP, 4 conversions back and 4 FMNMX.
  __half2 run_max[kNT][2];
  fp16_t* out_row[kNT][2];
  float* mass_row[kNT][2];
  float* max_row[kNT][2];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      run_max[nt][kk] = __float2half2_rn(-INFINITY);
      const int j = min(nt * 8 + 2 * t4 + kk, G - 1);
      out_row[nt][kk] = scores + int64_t(sq0 + j) * shape.cand_stride + int64_t(p_begin) * 16 + r;
      mass_row[nt][kk] = kMass ? page_mass + int64_t(sq0 + j) * sel.max_select + p_begin : nullptr;
      max_row[nt][kk] = kMass ? page_max + int64_t(sq0 + j) * sel.max_select + p_begin : nullptr;
    }
  }
  if constexpr (!kPageChannel) {
    if (steps > 0) load_meta(0);
  }
  for (int32_t k = 0; k < steps; ++k) {
    CpAsyncWait<kStages - 2>();  // this thread's copies of step k have landed
    if constexpr (kPageChannel) {
      // Every lane's bounds of step k have landed and are visible to the warp, and every
      // lane is done with step k - 1's, whose stage the next issue overwrites.
      __syncwarp();
    }
    issue(k + kStages - 1);
    const int stage = k % kStages;
    if constexpr (kPageChannel) {
      // Every page of the step, without a test: a page past the run decodes what its stage
      // holds from an earlier step (or nothing written yet), which nothing reads. The test
      // made the compiler wrap each page's decode in a divergence check and reconvergence:
      // 13 of 246.5 SASS instructions per page at d = 128 (scripts/sass-count.sh).
#pragma unroll
      for (int pp = 0; pp < kP16Pages; ++pp) {
        PcPageBoundsInPlace<kHeadDim>(Smem::Bounds(p16_smem, stage, pp, warp), PcInverse15(), lane);
      }
      __syncwarp();  // the steps are visible to every lane
    }
    float tscale[kP16Pages][2], tzero[kP16Pages][2];
    int rows[kP16Pages];
    if constexpr (!kPageChannel) {
#pragma unroll
      for (int pp = 0; pp < kP16Pages; ++pp) {
        rows[pp] = nrows[pp];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          tscale[pp][half] = H2F(nscale[pp][half]);
          tzero[pp][half] = H2F(nzero[pp][half]);
        }
      }
      if (k + 1 < steps) load_meta(k + 1);
    }
    // Per page channel at 9-16 heads one page at a time: unrolled, the two pages' dequantized
    // codes and bounds next to two n-tiles' fragments risk passing 128 registers.
#pragma unroll(kPageChannel && kNT == 2 ? 1 : kP16Pages)
    for (int pp = 0; pp < kP16Pages; ++pp) {
      const int32_t lp = first + k * kStride + pp;
      if (lp >= run) break;  // warp-uniform
      int page_rows;  // rows of the page inside the sequence
      if constexpr (kPageChannel) {
        page_rows = run_rows[lp];
      } else {
        page_rows = rows[pp];
      }
      const Chunk ca = landing[((stage * kP16Pages + pp) * 2) * kThreads + threadIdx.x];
      const Chunk cb = landing[((stage * kP16Pages + pp) * 2 + 1) * kThreads + threadIdx.x];
      const uint32_t* wa = reinterpret_cast<const uint32_t*>(&ca);
      const uint32_t* wb = reinterpret_cast<const uint32_t*>(&cb);
      float acc[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
      // Per page channel: the page's kmin pairs then step pairs (PcPageBoundsInPlace), this
      // lane's channels [t4 * kHeadDim / 4, ...), 8 per code word.
      const fp16_t* bounds = kPageChannel ? Smem::Bounds(p16_smem, stage, pp, warp) + t4 * (kHeadDim / 4)
                                          : nullptr;
#pragma unroll
      for (int m = 0; m < kWords; ++m) {
        uint32_t xa[4], xb[4];
        NibbleWordToHalf2x4(wa[m], xa);
        NibbleWordToHalf2x4(wb[m], xb);
        if constexpr (kPageChannel) {
          // Group 4 t4 + m, swizzled at d = 128 (PcBoundsGroup).
          const int mg = kHeadDim == 128 ? (m ^ (t4 & 2)) : m;
          const uint4 kmin4 = *reinterpret_cast<const uint4*>(bounds + mg * 8);
          const uint4 step4 = *reinterpret_cast<const uint4*>(bounds + kHeadDim + mg * 8);
          const uint32_t kmin[4] = {kmin4.x, kmin4.y, kmin4.z, kmin4.w};
          const uint32_t step[4] = {step4.x, step4.y, step4.z, step4.w};
          PcDequantWord(xa, step, kmin);
          PcDequantWord(xb, step, kmin);
        }
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          Mma16816(acc[nt], xa[0], xb[0], xa[1], xb[1], bfrag[nt][m][0][0], bfrag[nt][m][0][1]);
          Mma16816(acc[nt], xa[2], xb[2], xa[3], xb[3], bfrag[nt][m][1][0], bfrag[nt][m][1][1]);
        }
      }
      // acc[nt][0..1]: token r, heads nt*8 + 2t4 + {0,1}; acc[nt][2..3]: token r + 8.
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const bool head = nt * 8 + 2 * t4 + kk < G;
          float v[2];
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const bool valid = r + half * 8 < page_rows;
            if constexpr (kPageChannel) {
              v[half] = valid ? shape.scale * acc[nt][half * 2 + kk] : -INFINITY;
            } else {
              v[half] = valid ? shape.scale * (tscale[pp][half] * acc[nt][half * 2 + kk] +
                                               tzero[pp][half] * qsum[nt][kk])
                              : -INFINITY;
            }
          }
          // Rows r and r + 8, each rounded to nearest once (as F2H rounds one).
          const __half2 est = __floats2half2_rn(v[0], v[1]);
          if (head) {
            out_row[nt][kk][lp * 16] = __half_as_ushort(__low2half(est));
            out_row[nt][kk][lp * 16 + 8] = __half_as_ushort(__high2half(est));
          }
          run_max[nt][kk] = __hmax2(run_max[nt][kk], est);
          if constexpr (kMass) {
            const float x[2] = {__low2float(est), __high2float(est)};
            // The page's max over its 16 rows (lanes of equal t4), NaN if any row is, and the
            // sum of exp(x - max) (a NaN page: NaN, as its sum of exp(x - M) was).
            float pm = MaxNan(x[0], x[1]);
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) {
              pm = MaxNan(pm, __shfl_xor_sync(0xffffffffu, pm, o));
            }
            if (r == 0 && head) max_row[nt][kk][lp] = pm;
            float sum = (x[0] == -INFINITY ? 0.0f : Exp2Approx((x[0] - pm) * kLog2e)) +
                        (x[1] == -INFINITY ? 0.0f : Exp2Approx((x[1] - pm) * kLog2e));
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (r == 0 && head) mass_row[nt][kk][lp] = sum;
          }
        }
      }
    }
  }
  CpAsyncWait<0>();
  // Per-head maximum: lanes with the same t4 hold the same heads.
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      float v = fmaxf(__low2float(run_max[nt][kk]), __high2float(run_max[nt][kk]));
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
      const int j = nt * 8 + 2 * t4 + kk;
      if (r == 0 && j < G && v > -INFINITY) atomicMax(&head_max[sq0 + j], FloatKey(v));
    }
  }
}

}  // namespace twl::cuda
