// Split-K paged decode attention (flash-decoding) over kept token sets, and its dense form.
//
// Work is planned on the device (no host round trip), stream-K style: AttendPlanKernel (or,
// for small batches, each attention block itself: kFusedPlanPairs) scans the kept counts
// into cum[] (the flat token space of the batch, pair-major, each pair's start charged
// piece_cost virtual tokens: AttnSpan) and the grid's P resident blocks each take an equal
// range [b*T/P, (b+1)*T/P) of it. A block's range is cut at (sequence, KV head) boundaries
// into pieces; each piece is one partial softmax state, numbered per pair (item_offset), so
// a heavy head is spread over many blocks, a light one fits in one, and every SM gets about
// the same time's work however the budgets vary. AttendChunkKernel<D, G> reads each piece's
// FP16 K/V rows once for all G query heads of the KV group (cp.async pipeline, FP32 online
// softmax) and writes an unnormalized partial state (m, l, acc). AttendMergeKernel combines
// the partial states of each (sequence, query head) and writes FP16.
#pragma once

#include <type_traits>

#include "gpu/cuda/common.cuh"
#include "gpu/cuda/cp_async.cuh"
#include "pipeline/attend/sparse/cuda/attend_compute.cuh"

namespace twl::cuda {

constexpr int kAttnWarps = 8;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kMaxBlocksPerSm = 4;  // bound on resident attention blocks (workspace sizing)

// Tokens attended by a (sequence, KV head): its kept count, or the whole sequence.
__device__ __forceinline__ int32_t AttnCount(const KeptView& kept, const BatchView& batch,
                                            const PageGeometry& g, bool dense, int32_t pair) {
  return dense ? batch.seq_len[pair / g.num_kv_heads] : kept.count[pair];
}

// The plan's token space is virtual: a pair of c > 0 tokens spans piece_cost + c of it, its
// first piece_cost virtual tokens standing for the start of a piece (the drained pipeline and
// the first lookups), so that a block whose range starts a pair gets that many fewer real
// tokens. Virtual offset v of a pair is real token max(0, v - piece_cost); a piece may then
// hold no real token (its partial state is empty: m = -inf, l = 0).
__device__ __forceinline__ int32_t AttnSpan(int32_t count, int32_t piece_cost) {
  return count > 0 ? count + piece_cost : 0;
}
__device__ __forceinline__ int32_t AttnReal(int32_t v, int32_t piece_cost) {
  return max(0, v - piece_cost);
}

// Stream-K boundaries: block b of P starts at B(b) = floor(b * T / P); with P <= T they are
// distinct. BoundariesUpTo(x) = #{b in [1, P) : B(b) <= x} for x >= 0.
__device__ __forceinline__ long long Boundary(long long b, long long total, long long p) {
  return b * total / p;
}
__device__ __forceinline__ long long BoundariesUpTo(long long x, long long total, long long p) {
  return min(p - 1, ((x + 1) * p - 1) / total);
}

// The plan, computed by one whole thread block (any size up to 1024): cum[pairs + 1]
// (exclusive prefix of the counts) and item_offset[pairs + 1] (first piece of each pair; a
// pair of c tokens starting at cum has 1 + #{boundaries strictly inside (cum, cum + c)}
// pieces, none when c = 0), in global or shared memory. The caller synchronizes before
// reading them from other threads.
__device__ __forceinline__ void ComputeAttendPlan(const PageGeometry& g, const BatchView& batch,
                                                  const KeptView& kept, bool dense,
                                                  int32_t piece_cost, int32_t grid_blocks,
                                                  int32_t* cum, int32_t* item_offset,
                                                  int* scan) {
  const int32_t pairs = batch.num_seqs * g.num_kv_heads;
  long long total = 0;
  for (int32_t base = 0; base < pairs; base += blockDim.x) {
    const int32_t i = base + threadIdx.x;
    const int c =
        i < pairs ? AttnSpan(max(0, AttnCount(kept, batch, g, dense, i)), piece_cost) : 0;
    int tile_total;
    const int at = BlockExclusiveSum(c, scan, &tile_total);
    if (i < pairs) cum[i] = int32_t(total + at);
    total += tile_total;
  }
  const long long p = min((long long)grid_blocks, max(1ll, total));
  int items = 0;
  for (int32_t base = 0; base < pairs; base += blockDim.x) {
    const int32_t i = base + threadIdx.x;
    int n = 0;
    if (i < pairs) {
      const int c = AttnSpan(max(0, AttnCount(kept, batch, g, dense, i)), piece_cost);
      const long long c0 = cum[i];  // written by this thread above
      if (c > 0) n = 1 + int(BoundariesUpTo(c0 + c - 1, total, p) - BoundariesUpTo(c0, total, p));
    }
    int tile_total;
    const int at = items + BlockExclusiveSum(n, scan, &tile_total);
    if (i < pairs) item_offset[i] = at;
    items += tile_total;
  }
  if (threadIdx.x == 0) {
    item_offset[pairs] = items;
    cum[pairs] = int32_t(total);
  }
}

// The plan in its own launch (one block of 1024 threads), for batches of more than
// kFusedPlanPairs pairs; smaller ones plan inside AttendChunkKernel.
__global__ void __launch_bounds__(1024)
    AttendPlanKernel(PageGeometry g, BatchView batch, KeptView kept, bool dense,
                     int32_t piece_cost, int32_t grid_blocks, int32_t* cum,
                     int32_t* item_offset) {
  __shared__ int scan[33];
  ComputeAttendPlan(g, batch, kept, dense, piece_cost, grid_blocks, cum, item_offset, scan);
}

// Up to this many (sequence, KV head) pairs every attention block computes the plan itself
// (a few microseconds of scans against a separate launch and its kernel boundary: 3.3 us +
// a dependent launch at B = 1 on the H200); block (0, 0) also stores it for the merge. Not
// for rows behind a row map (attend.cu says why).
constexpr int32_t kFusedPlanPairs = 256;

// Where a token's K and V rows are read from (nullptr: past the item's end, zero-filled).
struct alignas(16) AttnRowSrc {
  const fp16_t* k;
  const fp16_t* v;
};

// Pipeline shape per head dim: kStages buffers of kStageTok tokens (K and V rows), and a
// ring of kStages + 1 stages of resolved row addresses.
template <int D>
struct AttnCfg {
  static constexpr int kStageTok = 64;               // tokens per stage (one resolver each)
  // 64 KB (D=64), 96 KB (D=96, D=128), 192 KB (D=256: one block per SM) of stage buffers.
  static constexpr int kStages = D >= 128 ? 3 : 4;
  static constexpr int kAddrStages = kStages + 1;
  static constexpr size_t kStageBytes = size_t(kStages) * kStageTok * D * 2 * sizeof(fp16_t);
  static constexpr size_t kRingBytes = size_t(kAddrStages) * kStageTok * sizeof(AttnRowSrc);
  // The next piece's first lookups, prefetched during the current piece: positions of
  // stages 0 .. S+1, pages of 0 .. S, raw slot-table entries of 0 .. S-1.
  static constexpr int kPrePos = 0, kPrePage = kStages + 2, kPreSlot = 2 * kStages + 3;
  static constexpr size_t kPreBytes = size_t(3 * kStages + 3) * kStageTok * sizeof(int32_t);
  static constexpr size_t kSmemBytes = kStageBytes + kRingBytes + kPreBytes;
};

// One work item (sequence, KV head, chunk of its token list) per block of 256 threads.
// Resolver role: thread t < kStageTok owns token t of every stage; its token -> page -> slot
// lookups run in a register pipeline one to three stages ahead of the copies, so their
// latency overlaps the compute, and it leaves the token's K and V source addresses in a
// shared ring (AttnRowSrc) one stage before they are copied.
// Loader role: every thread, kStages - 1 stages ahead of the compute, copies with cp.async
// 16-byte chunks of the rows of the tokens its warp computes: RowLanes(D) lanes per row, so
// one instruction copies 32 / RowLanes(D) whole consecutive rows (2 at d = 128: 512 bytes,
// contiguous when the tokens are neighbours in a block), not 8 tokens x 64 bytes as when each
// token's 4 threads copied a quarter of its rows: rows read in place from mapped host memory
// came 1.5x faster (H200; bench/RESULTS.md, thirteenth session).
// Compute role: warp w scores tokens [8w, 8w + 8) of each stage for all G heads (lanes own 8
// channels; RowLanes(D) lanes per token, of which D/8 hold channels: D = 96 uses 16 lanes, 12
// of them real), FP32 online softmax in base 2, V accumulated in registers.
// Groups wider than G (up to kMaxGroup = 16 with G = 8): blockIdx.y picks heads
// [G * y, G * y + G) of the group, so the per-head registers stay sized by G (16 heads in one
// block would need 256 registers of q and acc per thread) and each half re-reads the piece's
// K/V (mostly from L2: both halves of a piece run at about the same time). gstride is the
// head stride of the partial states (the group rounded up to a power of two).
// kBf16: the stored K/V are BF16 (PageGeometry::kv_dtype), else FP16; q is FP16 either way.
// kTc: the compute on tensor cores (TcCompute, G = 8, FP16 K/V, D 64 or 128), else on CUDA
// cores (CoreCompute); attend_compute.cuh has both.
template <int D, int G, bool kBf16, bool kTc>
// 2 blocks per SM up to G = 4 and for the tensor-core form (its registers fit), else 1.
__global__ void __launch_bounds__(kAttnThreads, G <= 4 || kTc ? 2 : 1)
    AttendChunkKernel(PageGeometry g, BatchView batch, QueryView q, FpKvView kv, KeptView kept,
                      bool dense, int32_t group, int32_t gstride, float qscale,
                      bool plan_here, bool prefetch_next, int32_t piece_cost,
                      int32_t* __restrict__ cum_g,
                      int32_t* __restrict__ item_offset_g, float* __restrict__ part_acc,
                      float2* __restrict__ part_ml) {
  using Cfg = AttnCfg<D>;
  using Compute = std::conditional_t<kTc, TcCompute<D>, CoreCompute<D, G, kBf16>>;
  static_assert(!kTc || (G == 8 && !kBf16), "tensor cores: FP16 K/V, 8 heads per block");
  constexpr int S = Cfg::kStages, T = Cfg::kStageTok;
  constexpr int L = RowLanes(D);     // loader lanes per row (a 16-byte chunk each)
  constexpr int RC = D / 8;          // of them holding channels
  constexpr int TPW = 32 / L;        // rows per loader instruction
  constexpr int U = 8 / TPW;         // loader instructions per stage (8 rows per warp)
  static_assert(T == kAttnWarps * 8 && kAttnThreads == T * 4, "stage/thread mapping");
  extern __shared__ __align__(16) unsigned char attn_smem[];
  fp16_t* kbuf = reinterpret_cast<fp16_t*>(attn_smem);  // [S][T][D]
  fp16_t* vbuf = kbuf + S * T * D;                      // [S][T][D]

  const int32_t pairs = batch.num_seqs * g.num_kv_heads;
  const int32_t jb = int32_t(blockIdx.y) * G;  // first head of the group this block computes
  // The plan: from AttendPlanKernel (cum_g, item_offset_g), or computed here (plan_here:
  // pairs <= kFusedPlanPairs), block (0, 0) storing it for the merge.
  __shared__ int32_t s_plan[2 * (kFusedPlanPairs + 1)];
  __shared__ int s_scan[33];
  const int32_t* cum = cum_g;
  const int32_t* item_offset = item_offset_g;
  if (plan_here) {  // uniform across the grid
    int32_t* pc = s_plan;
    int32_t* pi = s_plan + kFusedPlanPairs + 1;
    ComputeAttendPlan(g, batch, kept, dense, piece_cost, int32_t(gridDim.x), pc, pi, s_scan);
    __syncthreads();
    if (blockIdx.x == 0 && blockIdx.y == 0) {
      for (int32_t i = threadIdx.x; i <= pairs; i += blockDim.x) {
        cum_g[i] = pc[i];
        item_offset_g[i] = pi[i];
      }
    }
    cum = pc;
    item_offset = pi;
  }
  const long long total = cum[pairs];
  const long long nblk = min((long long)gridDim.x, max(1ll, total));
  if (blockIdx.x >= nblk) return;
  const long long range_lo = Boundary(blockIdx.x, total, nblk);
  const long long range_hi = Boundary(blockIdx.x + 1, total, nblk);
  int32_t pair;
  {
    int32_t lo = 0, hi = pairs;  // last pair with cum[pair] <= range_lo (it holds range_lo)
    while (hi - lo > 1) {
      const int32_t mid = (lo + hi) / 2;
      if (cum[mid] <= range_lo) lo = mid;
      else hi = mid;
    }
    pair = lo;
  }
  // Prefetching the next piece's first lookups (prefetch_next): while a piece runs, its
  // resolver threads copy the next piece's positions, then pages, then slot-table entries
  // into shared memory, each level (S - 1) stages after the one it depends on (cp.async
  // groups: landed by then). A block's second piece otherwise starts with a chain of
  // dependent loads while the other blocks' reads fill the memory system, which stretches
  // each round trip to several microseconds: that start was the kernel's tail.
  int32_t pre_ready = 0;  // levels of this piece's first lookups already in `pre`
  int32_t* pre = reinterpret_cast<int32_t*>(attn_smem + Cfg::kStageBytes + Cfg::kRingBytes);
  for (long long pos = range_lo; pos < range_hi;) {
    while (cum[pair + 1] <= pos) ++pair;  // skip empty sets
    const long long piece_end = min(range_hi, (long long)cum[pair + 1]);
    const int32_t item =
        item_offset[pair] + (pos == cum[pair] ? 0
                                              : int32_t(BoundariesUpTo(pos, total, nblk) -
                                                        BoundariesUpTo(cum[pair], total, nblk)));
    // The piece's real tokens [c0, c1) of the pair (AttnReal: maybe none).
    const int32_t c0 = AttnReal(int32_t(pos - cum[pair]), piece_cost);
    const int32_t c1 = AttnReal(int32_t(piece_end - cum[pair]), piece_cost);
    pos = piece_end;
    // The block's next piece, if any, starts at token 0 of the next non-empty pair.
    int32_t npair = -1, nc1 = 0;
    if (prefetch_next && pos < range_hi) {
      npair = pair + 1;
      while (cum[npair + 1] <= pos) ++npair;
      nc1 = AttnReal(int32_t(min(range_hi, (long long)cum[npair + 1]) - cum[npair]), piece_cost);
    }
    __syncthreads();  // the previous piece's merge scratch is no longer read
    const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
    const int32_t nst = (c1 - c0 + T - 1) / T;  // stages of this item
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int lg = lane / L, li = lane % L;  // token in a warp step, 16-byte chunk of its row
    const bool real = li < RC;               // lanes past the row's channels hold zeros
    // Resolver: token tl of each stage (threads of the first two warps: warp-uniform).
    const int tl = threadIdx.x;
    const bool resolver = tl < T;
    AttnRowSrc* ring = reinterpret_cast<AttnRowSrc*>(attn_smem + Cfg::kStageBytes);  // [R][T]
    constexpr int R = Cfg::kAddrStages;

    // ---- resolver address pipeline (per thread: token tl of each stage) ----
    const int32_t* tokens = dense ? nullptr : kept.tokens + int64_t(pair) * kept.max_kept;
    const int32_t* ptab = batch.page_table + int64_t(s) * batch.max_pages;
    auto load_pos = [&](int32_t stage) -> int32_t {  // -1 past the item's end
      const int32_t i = c0 + stage * T + tl;
      if (i >= c1) return -1;
      return dense ? i : tokens[i];
    };
    auto load_page = [&](int32_t pos) -> int32_t { return pos < 0 ? 0 : ptab[pos / g.page_size]; };
    // Row mode (the row cache, kv.slot_of_row): a resident token's K and V rows are one slot
    // of 2 x D elements; one not resident is read in place like a block's (~block). Uniform
    // over the kernel, so the block path pays one predictable branch per lookup.
    const bool rows = kv.slot_of_row != nullptr;
    const bool slot_table = rows || kv.slot_of_block != nullptr;
    // The slot-table entry of a token of KV head hh (0 without a table or past the end).
    auto slot_entry = [&](int32_t pos, int32_t page, int32_t hh) -> const int32_t* {
      const int64_t block = g.BlockId(page, hh);
      return rows ? kv.slot_of_row + block * g.page_size + pos % g.page_size
                  : kv.slot_of_block + block;
    };
    // What resolve() takes: a row or block slot, ~block for one read in place from miss_kv
    // (the cache did not admit it), or the block itself without a slot table.
    auto finish_slot = [&](int32_t pos, int32_t page, int32_t raw) -> int64_t {
      if (pos < 0) return 0;
      const int64_t block = g.BlockId(page, h);
      if (!slot_table) return block;
      return raw >= 0 || !kv.miss_kv ? int64_t(raw) : ~block;
    };
    auto load_slot = [&](int32_t pos, int32_t page) -> int64_t {
      return finish_slot(pos, page, pos < 0 || !slot_table ? 0 : *slot_entry(pos, page, h));
    };
    // Levels of lookups: positions (not for a dense item: computed), pages, slot entries
    // (with a slot table); the prefetch issues level k at stage k (S - 1) of the piece.
    const int32_t page_level = dense ? 0 : 1, levels = page_level + 1 + int32_t(slot_table);
    auto resolve = [&](int32_t stage, int32_t pos, int64_t slot) {
      AttnRowSrc a{nullptr, nullptr};
      if (pos >= 0) {
        const int64_t row = int64_t(pos % g.page_size) * D;
        const bool row_slot = rows && slot >= 0;
        a.k = row_slot ? kv.kv + slot * (2 * D)
              : slot >= 0 ? kv.kv + slot * g.FpBlockElems() + row
                          : kv.miss_kv + kv.MissIndex(~slot) * g.FpBlockElems() + row;
        // V row: right after K in a row slot, page_size rows after it in a block.
        a.v = a.k + (row_slot ? int64_t(D) : int64_t(g.page_size) * D);
      }
      ring[(stage % R) * T + tl] = a;
    };
    // The next piece's lookups of one level into `pre` (resolver threads; see pre_ready):
    // positions of stages 0 .. S+1, pages of 0 .. S, slot entries of 0 .. S-1.
    auto next_pos = [&](int32_t q) -> int32_t {  // token tl of the next piece's stage q
      const int32_t i = q * T + tl;
      if (i >= nc1) return -1;
      return dense ? i : pre[(Cfg::kPrePos + q) * T + tl];
    };
    auto prefetch = [&](int32_t level) {
      if (level < page_level) {
        const int32_t* ntok = kept.tokens + int64_t(npair) * kept.max_kept;
        for (int32_t q = 0; q < S + 2; ++q) {
          int32_t* dst = pre + (Cfg::kPrePos + q) * T + tl;
          const int32_t i = q * T + tl;
          if (i < nc1) CpAsync4(dst, ntok + i);
          else *dst = -1;
        }
      } else if (level == page_level) {
        const int32_t* nptab =
            batch.page_table + int64_t(npair / g.num_kv_heads) * batch.max_pages;
        for (int32_t q = 0; q < S + 1; ++q) {
          int32_t* dst = pre + (Cfg::kPrePage + q) * T + tl;
          const int32_t p = next_pos(q);
          if (p >= 0) CpAsync4(dst, nptab + p / g.page_size);
          else *dst = 0;
        }
      } else {
        for (int32_t q = 0; q < S; ++q) {
          int32_t* dst = pre + (Cfg::kPreSlot + q) * T + tl;
          const int32_t p = next_pos(q);
          if (p >= 0) {
            CpAsync4(dst, slot_entry(p, pre[(Cfg::kPrePage + q) * T + tl],
                                     npair % g.num_kv_heads));
          } else {
            *dst = 0;
          }
        }
      }
    };
    // Loader: the rows of tokens [8 warp, 8 warp + 8) of a stage, TPW whole rows per
    // instruction (lane group lg, chunk li), from the ring.
    auto issue = [&](int32_t stage) {
      const int b = stage % S;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int t = warp * 8 + u * TPW + lg;
        const AttnRowSrc a = ring[(stage % R) * T + t];
        if (!real) continue;
        const bool valid = a.k != nullptr;
        const int dst = (b * T + t) * D + StageChunk<Compute::kSwizzle>(t, li) * 8;
        CpAsync16(kbuf + dst, valid ? a.k + li * 8 : kv.kv, valid);
        CpAsync16(vbuf + dst, valid ? a.v + li * 8 : kv.kv, valid);
      }
    };
    // Prologue: the addresses of stages 0 .. S-1 resolved synchronously, stages 0 .. S-2
    // copied. One level of lookups at a time over all of them (every position, then every
    // page, then every slot), so a piece starts after three round trips, not 3 S: with one
    // or two pieces per block, the start of each was a large part of the kernel's tail.
    // Register pipeline (resolvers): stage S has its page (pos2, page2), stage S+1 its
    // position (pos3).
    int32_t pos2 = -1, page2 = 0, pos3 = -1;
    if (resolver) {
      int32_t pos[S + 2], page[S + 1];
#pragma unroll
      for (int32_t st = 0; st < S + 2; ++st) {
        pos[st] = !dense && pre_ready > 0 ? pre[(Cfg::kPrePos + st) * T + tl] : load_pos(st);
      }
#pragma unroll
      for (int32_t st = 0; st < S + 1; ++st) {
        page[st] = pre_ready > page_level ? pre[(Cfg::kPrePage + st) * T + tl]
                                          : load_page(pos[st]);
      }
      int64_t slot[S];
#pragma unroll
      for (int32_t st = 0; st < S; ++st) {
        slot[st] = slot_table && pre_ready == levels
                       ? finish_slot(pos[st], page[st], pre[(Cfg::kPreSlot + st) * T + tl])
                       : load_slot(pos[st], page[st]);
      }
#pragma unroll
      for (int32_t st = 0; st < S; ++st) resolve(st, pos[st], slot[st]);
      pos2 = pos[S];
      page2 = page[S];
      pos3 = pos[S + 1];
    }
    __syncthreads();
    for (int32_t st = 0; st < S - 1; ++st) {
      if (st < nst) issue(st);
      CpAsyncCommit();
    }

    // ---- compute state ----
    Compute comp;
    comp.Init(q.q + (int64_t(s) * batch.num_q_heads + h * group + jb) * D, group - jb, qscale);

    for (int32_t st = 0; st < nst; ++st) {
      // Resolvers: the slot-table entry of stage st + S's token, loaded first and used after
      // this stage's compute, so that its round trip overlaps the wait, the copies' issue and
      // the compute. Used at once, it held the resolver warps back by a round trip in every
      // stage, and every warp then waited for them at the next barrier (with a slot table
      // only: the row cache's attention ran 124 us against the HBM store's 107 at B = 8 on an
      // H100, twenty-ninth session's timeline).
      const int32_t raw_next =
          resolver && slot_table && pos2 >= 0 ? *slot_entry(pos2, page2, h) : 0;
      CpAsyncWait<S - 2>();
      // Stage st landed for every thread; buffer (st - 1) % S is free; the addresses of stage
      // st + S - 1 (resolved one iteration ago) are visible.
      __syncthreads();
      if (st + S - 1 < nst) issue(st + S - 1);
      if (npair >= 0 && resolver && st % (S - 1) == 0 && st / (S - 1) < levels) {
        prefetch(st / (S - 1));
      }
      CpAsyncCommit();

      // Compute on stage st.
      const int b = st % S;
      comp.Stage(kbuf + b * T * D, vbuf + b * T * D, min(T, c1 - (c0 + st * T)));

      // Resolvers: stage st + S's addresses into the ring (copied next iteration, after its
      // barrier; its slot st + S - R = st - 1 was last read S iterations ago), then advance
      // the lookups.
      if (resolver) {
        resolve(st + S, pos2, finish_slot(pos2, page2, raw_next));
        pos2 = pos3;
        page2 = load_page(pos3);
        pos3 = load_pos(st + S + 2);
      }
    }
    CpAsyncWait<0>();
    __syncthreads();  // stage buffers are reused for the merge below
    // Levels the loop issued for the next piece (level k at stage k (S - 1)); landed now.
    pre_ready = npair < 0 ? 0 : min(levels, (nst + S - 2) / (S - 1));

    float* sacc = reinterpret_cast<float*>(attn_smem);     // [kAttnWarps][G][D]
    float* sm_m = sacc + kAttnWarps * G * D;               // [kAttnWarps][G]
    float* sm_l = sm_m + kAttnWarps * G;                   // [kAttnWarps][G]
    static_assert(sizeof(float) * kAttnWarps * G * (D + 2) <= Cfg::kStageBytes, "merge scratch");
    comp.Store(AttnMergeScratch{sacc, sm_m, sm_l});
    __syncthreads();
    // Merge the warps; one thread per (head, channel).
    for (int idx = threadIdx.x; idx < G * D; idx += kAttnThreads) {
      const int j = idx / D, c = idx % D;
      if (jb + j >= group) continue;
      float mn = -INFINITY;
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) mn = fmaxf(mn, sm_m[w * G + j]);
      const float ms = mn == -INFINITY ? 0.0f : mn;
      float a = 0.0f, lsum = 0.0f;
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) {
        const float f = SafeExp2Diff(sm_m[w * G + j], ms);
        a += sacc[(w * G + j) * D + c] * f;
        lsum += sm_l[w * G + j] * f;
      }
      part_acc[(int64_t(item) * gstride + jb + j) * D + c] = a;
      if (c == 0) part_ml[int64_t(item) * gstride + jb + j] = make_float2(mn, lsum);
    }
  }  // pieces
}

// One block of kMergeThreads per (sequence, query head): combine the partial states of its KV
// head's items. A heavy head at low batch has many items (B = 1, 128k: ~30 per head), so every
// phase runs over the items in parallel (threads for the max and the sum, warps for the
// weighted sum of acc, lanes over channels) instead of one thread walking the items three
// times in a chain of dependent loads. Fixed order per thread and a fixed reduction tree:
// deterministic.
// 256: at B = 1 a head has ~33 items, so 8 warps take ~4 each (128 threads measured 11 us
// on the H200, a chain of ~8 dependent row loads per warp).
// Each warp loads the acc rows and maxima of its first kMergeAhead items right after the item
// range, before the two block reductions, so that their round trip overlaps them; the rows
// are summed in the same order as the items past them (the same bits as summing as they
// come). At B = 1 the loads after the reductions were ~3 of the kernel's ~6 round trips.
constexpr int kMergeThreads = 256;
constexpr int kMergeAhead = 8;
template <int D>
__global__ void __launch_bounds__(kMergeThreads)
    AttendMergeKernel(PageGeometry g, BatchView batch, int32_t group, int32_t gpad,
                      const int32_t* __restrict__ item_offset, const float* __restrict__ part_acc,
                      const float2* __restrict__ part_ml, OutputView out) {
  constexpr int kWarps = kMergeThreads / 32;
  constexpr int kPerLane = (D + 31) / 32;  // channels per lane
  __shared__ float red[kWarps];
  __shared__ float acc_s[kWarps][D];
  const int32_t sq = blockIdx.x;
  const int32_t s = sq / batch.num_q_heads, qh = sq % batch.num_q_heads;
  const int32_t pair = s * g.num_kv_heads + qh / group;
  const int32_t j = qh % group;
  const int32_t i0 = item_offset[pair], i1 = item_offset[pair + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // Item i0 + warp + kWarps r of this warp, r < kMergeAhead: its max and acc row.
  float ahead_m[kMergeAhead], ahead_acc[kMergeAhead][kPerLane];
#pragma unroll
  for (int r = 0; r < kMergeAhead; ++r) {
    const int32_t i = i0 + warp + kWarps * r;
    const bool in = i < i1;
    ahead_m[r] = in ? part_ml[int64_t(i) * gpad + j].x : -INFINITY;
    const float* src = part_acc + (int64_t(in ? i : i0) * gpad + j) * D;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int c = lane + 32 * k;
      ahead_acc[r][k] = in && c < D ? src[c] : 0.0f;
    }
  }
  auto block_reduce = [&](float v, bool is_max) -> float {
    for (int o = 16; o > 0; o >>= 1) {
      const float w = __shfl_xor_sync(0xffffffffu, v, o);
      v = is_max ? fmaxf(v, w) : v + w;
    }
    __syncthreads();  // red[] of a previous reduction has been read
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < kWarps; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    return r;
  };
  float mn = -INFINITY;
  for (int32_t i = i0 + int32_t(threadIdx.x); i < i1; i += kMergeThreads) {
    mn = fmaxf(mn, part_ml[int64_t(i) * gpad + j].x);
  }
  mn = block_reduce(mn, true);
  const float ms = mn == -INFINITY ? 0.0f : mn;
  float lsum = 0.0f;
  for (int32_t i = i0 + int32_t(threadIdx.x); i < i1; i += kMergeThreads) {
    const float2 ml = part_ml[int64_t(i) * gpad + j];
    lsum += ml.y * SafeExp2Diff(ml.x, ms);
  }
  lsum = block_reduce(lsum, false);
  const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
  float a[kPerLane];
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) a[k] = 0.0f;
#pragma unroll
  for (int r = 0; r < kMergeAhead; ++r) {
    if (i0 + warp + kWarps * r >= i1) break;  // warp-uniform
    const float w = SafeExp2Diff(ahead_m[r], ms);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) a[k] = fmaf(ahead_acc[r][k], w, a[k]);
  }
#pragma unroll 2
  for (int32_t i = i0 + warp + kWarps * kMergeAhead; i < i1; i += kWarps) {
    const float w = SafeExp2Diff(part_ml[int64_t(i) * gpad + j].x, ms);
    const float* src = part_acc + (int64_t(i) * gpad + j) * D;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int c = lane + 32 * k;
      if (c < D) a[k] = fmaf(src[c], w, a[k]);
    }
  }
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int c = lane + 32 * k;
    if (c < D) acc_s[warp][c] = a[k];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += kMergeThreads) {
    float t = 0.0f;
    for (int w = 0; w < kWarps; ++w) t += acc_s[w][c];
    out.out[int64_t(sq) * D + c] = F2H(t * inv);
  }
}

}  // namespace twl::cuda
