// Launchers of the pruner kernels (see prune.cuh and gpu/kernels.h).
// Instantiations: ScoreInt4Kernel<64|128, false (per token) | true (per page channel)>,
// ScorePage16Kernel<64|128, 1|2 n-tiles, growth or not, per token | per page channel>; the
// rest are not templates.
#include <algorithm>

#include "pipeline/prune/twilight/cuda/prune.cuh"
#include "core/env_knob.h"
#include "core/validate.h"
#include "pipeline/prune/twilight/cuda/prune_grow.cuh"
#include "pipeline/prune/twilight/cuda/prune_hist.cuh"
#include "gpu/cuda/kernel_attrs.cuh"
#include "gpu/device.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"
#include "pipeline/prune/twilight/score_partition.h"

namespace twl {

using cuda::AsStream;
using cuda::LaunchStatus;

namespace {

struct PruneLayout {
  fp16_t* scores = nullptr;      // [num_seqs * num_q_heads][cand_stride]
  uint32_t* bits = nullptr;      // [num_seqs * num_kv_heads][bit_words]
  // Cleared by one memset, in this order (contiguous): head max keys, then the top-p
  // accumulators (cuda::HistWork).
  uint32_t* head_max = nullptr;  // [num_seqs * num_q_heads]
  cuda::HistWork hist;
  cuda::GrowWork grow;           // growing Quest only
  int32_t* radix_searches = nullptr;  // profiling: GrowWork::radix_searches
  size_t clear_bytes = 0;
  size_t bytes = 0;
};

PruneLayout Layout(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads,
                   int32_t max_select, void* base) {
  const int64_t cand = int64_t(max_select) * g.page_size;
  const int64_t words = (cand + 31) / 32;
  cuda::WorkspaceCarver c(base);
  PruneLayout l;
  const size_t heads = size_t(num_seqs) * size_t(num_q_heads);
  l.scores = c.Take<fp16_t>(heads * size_t(cand));
  // The kept bits sit just before the cleared region, so that one memset clears both when
  // the kept pass ORs its head splits into them (RunPrune).
  l.bits = c.Take<uint32_t>(size_t(num_seqs) * size_t(g.num_kv_heads) * size_t(words));
  const size_t clear_from = c.used();
  l.head_max = c.Take<uint32_t>(heads);
  l.hist.bad = c.Take<int32_t>(heads);
  l.hist.kept_count = c.Take<int32_t>(heads);
  l.hist.kept_mass = c.Take<cuda::u64>(heads);
  l.hist.hist1 = c.Take<cuda::u64>(heads * cuda::kHistBins);
  l.hist.hist2 = c.Take<cuda::u64>(heads * cuda::kHistBins);
  l.clear_bytes = c.used() - clear_from;
  // Boundary lists of the top-p (not cleared: KeptKernel writes every count it reads).
  l.hist.bnd_chunks = int32_t((cand + cuda::kKeptChunk - 1) / cuda::kKeptChunk);
  l.hist.bnd_count = c.Take<int32_t>(heads * size_t(l.hist.bnd_chunks));
  l.hist.bnd = c.Take<int32_t>(heads * size_t(l.hist.bnd_chunks) * size_t(cuda::kBndCap));
  const size_t per_head = heads * size_t(max_select);
  l.grow.page_mass = c.Take<float>(per_head);
  l.grow.page_max = c.Take<float>(per_head);
  l.grow.in_set = c.Take<uint8_t>(size_t(num_seqs) * size_t(g.num_kv_heads) * size_t(max_select));
  l.grow.head_p = c.Take<float>(heads);
  l.grow.head_ratio = c.Take<float>(heads);
  const size_t pair_pages = size_t(num_seqs) * size_t(g.num_kv_heads) * size_t(max_select);
  l.grow.list_pages = c.Take<int32_t>(pair_pages);
  l.grow.list_pos = c.Take<int32_t>(pair_pages);
  l.grow.list_count = c.Take<int32_t>(size_t(num_seqs) * size_t(g.num_kv_heads));
  l.grow.need = c.Take<int32_t>(size_t(num_seqs) * size_t(g.num_kv_heads));
  l.grow.key = c.Take<uint32_t>(pair_pages);
  l.grow.pa = c.Take<float>(per_head);
  l.grow.pb = c.Take<float>(per_head);
  l.radix_searches = c.Take<int32_t>(size_t(num_seqs) * size_t(g.num_kv_heads));
  l.bytes = c.used();
  return l;
}

}  // namespace

size_t PruneWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads,
                           int32_t max_select) {
  return Layout(g, num_seqs, num_q_heads, max_select, nullptr).bytes;
}

PruneEstimates PruneWorkspaceEstimates(const PageGeometry& g, int32_t num_seqs,
                                       int32_t num_q_heads, int32_t max_select,
                                       const void* workspace) {
  const PruneLayout l = Layout(g, num_seqs, num_q_heads, max_select, const_cast<void*>(workspace));
  return PruneEstimates{l.scores, l.grow.page_max, l.grow.page_mass};
}

namespace {

// See RunPrune's one_stage.
// Measured on the H200 (B = 8, 128k, 570 MB of INT4): two stages 1.01 ms, one stage 0.81:
// Quest's page bound at d = 128 sits so far above the real logits that the seed rarely
// satisfies the rule, so stage 2 rescored nearly every pair anyway. Two stages stay
// available through an explicit grow_seed_pages.
constexpr int64_t kOneStageBytes = int64_t(4) << 30;

// ScorePage16Kernel, one instantiation: its shared memory attribute and the launch.
template <int kHeadDim, int kNT, bool kMass, bool kPageChannel>
absl::Status LaunchScorePage16Kernel(const dim3& grid, int32_t run, const PageGeometry& g,
                                     const BatchView& batch, const QueryView& q,
                                     const QuantKView& qk, const SelectionView& list,
                                     const cuda::PruneShape& sh, fp16_t* scores,
                                     uint32_t* head_max, float* page_mass, float* page_max,
                                     cudaStream_t st) {
  constexpr size_t smem = cuda::ScorePage16SmemBytes<kHeadDim, kNT, kPageChannel>();
  auto kernel = cuda::ScorePage16Kernel<kHeadDim, kNT, kMass, kPageChannel>;
  if (cuda::SetMaxDynamicSmemOnce(reinterpret_cast<const void*>(kernel), int(smem)) !=
      cudaSuccess) {
    return LaunchStatus("ScorePage16Kernel smem attribute");
  }
  kernel<<<grid, cuda::kP16Warps * 32, smem, st>>>(g, batch, q, qk, list, sh, run, scores,
                                                   head_max, kMass ? page_mass : nullptr,
                                                   kMass ? page_max : nullptr);
  return LaunchStatus("ScorePage16Kernel");
}

// ScorePage16Kernel for one head dim and K scheme: the instantiation by group (n-tiles) and
// growth.
template <int kHeadDim, bool kPageChannel>
absl::Status LaunchScorePage16(bool grow, int32_t nt, int64_t bx, int64_t pairs, int32_t run,
                               const PageGeometry& g, const BatchView& batch,
                               const QueryView& q, const QuantKView& qk,
                               const SelectionView& list, const cuda::PruneShape& sh,
                               fp16_t* scores, uint32_t* head_max, float* page_mass,
                               float* page_max, cudaStream_t st) {
  const dim3 grid{unsigned(bx), unsigned(pairs), 1u};
  auto launch = grow ? (nt == 2 ? LaunchScorePage16Kernel<kHeadDim, 2, true, kPageChannel>
                                : LaunchScorePage16Kernel<kHeadDim, 1, true, kPageChannel>)
                     : (nt == 2 ? LaunchScorePage16Kernel<kHeadDim, 2, false, kPageChannel>
                                : LaunchScorePage16Kernel<kHeadDim, 1, false, kPageChannel>);
  return launch(grid, run, g, batch, q, qk, list, sh, scores, head_max, page_mass, page_max,
                st);
}

// `want` chunks per block, clamped to [1, most] and to the row's chunks, then balanced: the
// fewest chunks per block that keep the same number of blocks per row (no short last run).
int32_t BalancedRun(int64_t want, int64_t most, int64_t chunks) {
  if (chunks <= 0) return 1;
  const int64_t per_block =
      std::clamp<int64_t>(want, 1, std::max<int64_t>(1, std::min(most, chunks)));
  const int64_t blocks = (chunks + per_block - 1) / per_block;  // per row
  return int32_t((chunks + blocks - 1) / blocks);
}

// Chunks per block of the kept pass (KeptKernel): the explicit plan
// (PrunerParams::topp_chunks_per_block), clamped to the chunks, else 1. One-wave runs
// (several chunks per block, the next prefetched into L2) measured slower on the H200 at
// B = 8 (prune 0.514 vs 0.458 ms, trial of 913484b), so they are not the default.
// TWL_PRUNE_KEPT_RUN=k in the environment (1 to 64) sets the default plan, to measure runs
// in a serving loop without rebuilding it.
int32_t ChunksPerBlock(int32_t plan, int64_t chunks) {
  static const int32_t env_plan =
      int32_t(EnvInt("TWL_PRUNE_KEPT_RUN", 1, 64).value_or(1));
  return BalancedRun(plan > 0 ? plan : env_plan, chunks, chunks);
}

// Head splits of the kept pass (KeptKernel's grid z): the explicit plan, or by default two
// where the pass's grid (`blocks`) is at most two blocks per SM (TWL_PRUNE_HEAD_SPLIT=0 in the
// environment: one). At B = 1, 128k the pass runs 33 chunks x 8 pairs = 264 blocks of the
// group's heads, latency-bound at two per SM of the H200's 132; halves of the heads double
// the resident blocks: Kept 29.9 -> 21.3 us at 64 x 8, the step 191 -> 184 us (H200,
// seventeenth session). Splits need an even group of 4 or more.
int32_t KeptHeadSplits(int32_t plan, int32_t group, int64_t blocks) {
  if (group % 2 != 0 || group < 2) return 1;
  if (plan == 2) return 2;
  if (plan != 0) return 1;
  static const bool on = EnvSwitchOn("TWL_PRUNE_HEAD_SPLIT");
  return on && group >= 4 && blocks <= 2 * int64_t(gpu::SmCount()) ? 2 : 1;
}

// Kept chunks per BoundaryKernel block: the explicit plan (PrunerParams::
// topp_chunks_per_block, as for the kept pass), else enough that the grid fits about one wave
// (four blocks per SM; its blocks are chains of round trips) but at most 4: longer runs
// measured slower (H100, B = 8: runs of 4 took 18.7 us, of 8 27.6, thirty-first session;
// with the walk's loads four at a time, graph steps 0.542 against 0.548 ms at B = 8 and
// 0.132 against 0.143 at B = 1, thirty-second; bench/RESULTS.md); at most kBndRunMax, balanced
// over a pair's chunks. TWL_PRUNE_BOUNDARY_RUN (1 to kBndRunMax) in the environment replaces
// the default, for A/B runs.
constexpr int64_t kBndRunDefaultMax = 4;
int32_t BoundaryRun(int32_t plan, int64_t chunks, int64_t pairs) {
  static const int32_t env_run =
      int32_t(EnvInt("TWL_PRUNE_BOUNDARY_RUN", 1, cuda::kBndRunMax).value_or(0));
  const int64_t wave = 4 * int64_t(gpu::SmCount());
  const int64_t one_wave = std::min((chunks * pairs + wave - 1) / wave, kBndRunDefaultMax);
  const int64_t want = plan > 0 ? plan : env_run > 0 ? env_run : one_wave;
  return BalancedRun(want, cuda::kBndRunMax, chunks);
}

// Records ev[i] on the stream when events are given (profiling).
absl::Status Mark(cudaEvent_t* ev, int i, cudaStream_t st) {
  if (ev && cudaEventRecord(ev[i], st) != cudaSuccess) return LaunchStatus("prune event");
  return absl::OkStatus();
}

absl::Status RunPrune(const PageGeometry& g, const PrunerParams& params,
                      const BatchView& batch, const QueryView& q, const QuantKView& qk,
                      const FpKvView& kv, const SelectionView& selection, const KeptView& out,
                      const HeadStatsView& stats, void* workspace, size_t workspace_bytes,
                      void* stream, cudaEvent_t* ev) {
  TWL_RETURN_IF_ERROR(ValidateGeometry(g));
  TWL_RETURN_IF_ERROR(ValidateBatch(g, batch, /*check_host_data=*/false));
  TWL_RETURN_IF_ERROR(cuda::CheckHeadDim(g.head_dim));
  TWL_RETURN_IF_ERROR(ValidateP(params.p));  // seq_p lives on the device: checked by the caller
  const bool grow = selection.bound != nullptr && !params.dense;
  if (grow && (!selection.limit ||
               !(params.remainder_share > 0.0f && params.remainder_share < 1.0f))) {
    return absl::InvalidArgumentError(
        "prune: growing needs the selection's limit and remainder_share in (0, 1)");
  }
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  TWL_RETURN_IF_ERROR(cuda::CheckGroup(group));
  if (!q.q || !selection.pages || !selection.count || !out.tokens || !out.count) {
    return absl::InvalidArgumentError("prune: q, selection and outputs must not be null");
  }
  // The device estimators read the channel ranges' record (not decoded host arrays).
  const bool metadata_missing = (g.HasTokenScale() && (!qk.scale || !qk.zero)) ||
                                (g.HasChannelRange() && !qk.range);
  if (!params.dense && (g.k_bits >= 16 ? !kv.kv : (!qk.codes || metadata_missing))) {
    return absl::InvalidArgumentError("prune: the estimation K store is missing");
  }
  const int64_t cand = int64_t(selection.max_select) * g.page_size;
  if (selection.max_select < 1 || cand > cuda::kMaxPruneCandidates) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prune: max_select * page_size must be in [1, %d]", cuda::kMaxPruneCandidates));
  }
  if (out.max_kept < cand) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prune: max_kept %d is below max_select * page_size = %d", out.max_kept, cand));
  }
  const int64_t pairs = int64_t(batch.num_seqs) * g.num_kv_heads;
  if (pairs > 65535) return absl::InvalidArgumentError("prune: more than 65535 (seq, KV head)");
  PruneLayout l = Layout(g, batch.num_seqs, batch.num_q_heads, selection.max_select, workspace);
  if (workspace_bytes < l.bytes || !workspace) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prune: workspace of %d bytes, needs %d", workspace_bytes, l.bytes));
  }
  cuda::PruneShape shape;
  shape.group = group;
  shape.cand_stride = int32_t(cand);
  shape.bit_words = int32_t((cand + 31) / 32);
  shape.scale = params.softmax_scale > 0.0f ? params.softmax_scale
                                            : 1.0f / sqrtf(float(g.head_dim));
  cudaStream_t st = AsStream(stream);

  // Growing: the pruner works on its own list of pages (see prune_grow.cuh), not on every
  // page the selector listed.
  const SelectionView list =
      grow ? SelectionView{l.grow.list_pages, l.grow.list_count, selection.max_select}
           : selection;
  const int64_t heads = int64_t(batch.num_seqs) * batch.num_q_heads;
  if (grow && heads > 65535) return absl::InvalidArgumentError("prune: more than 65535 query heads");
  // The common geometry (INT4 per token or per page channel, pages of 16, d 64/128) has its
  // own estimator, which also writes the growth's page sums (no PageMassKernel then).
  const bool page16 = g.k_bits == 4 && g.page_size == 16 && (g.head_dim == 64 || g.head_dim == 128);
  const bool page16_channel = page16 && !g.HasTokenScale();
  // Estimates of every listed row (only the pairs flagged in `only`, when given).
  auto score = [&](const int32_t* only) -> absl::Status {
    cuda::PruneShape sh = shape;
    sh.only = only;
    if (page16) {
      // Blocks per pair (score_partition.h): whole waves of 2 blocks per SM, runs of at most
      // the kernel's run table (P16Smem::kMaxPages).
      const int64_t max_run = page16_channel ? cuda::P16Smem<128, 1, true>::kMaxPages
                                             : cuda::P16Smem<128, 1, false>::kMaxPages;
      const ScorePartition part =
          ChooseScorePartition(pairs, selection.max_select, 2 * int64_t(gpu::SmCount()), max_run);
      const int64_t bx = part.blocks;
      const int32_t run = part.run;
      const int32_t nt = group > 8 ? 2 : 1;
      auto launch = g.head_dim == 128 ? (page16_channel ? LaunchScorePage16<128, true>
                                                        : LaunchScorePage16<128, false>)
                                      : (page16_channel ? LaunchScorePage16<64, true>
                                                        : LaunchScorePage16<64, false>);
      return launch(grow, nt, bx, pairs, run, g, batch, q, qk, list, sh, l.scores, l.head_max,
                    l.grow.page_mass, l.grow.page_max, st);
    }
    // The per-page-channel scheme (k_scheme 1) needs a tile inside one block (its B fragment
    // is scaled by the block's steps): page_size a multiple of 16 (16 itself: above), else
    // the scalar kernel.
    const bool page_channel = !g.HasTokenScale();
    // (Its MMA holds 8 query heads: larger groups take the scalar kernel here.)
    const bool tensor_cores = g.k_bits == 4 && (g.head_dim == 64 || g.head_dim == 128) &&
                              (!page_channel || g.page_size % 16 == 0) && group <= 8;
    if (tensor_cores) {
      // Each block streams a contiguous run of tiles of one (seq, KV head): enough blocks
      // for ~16 per SM (2 resident: ~8 short waves, so the last one idles little; with 4
      // per SM the second of ~2 waves ran half empty), runs short enough for the block's
      // page table in shared memory.
      const int64_t tiles = (cand + 15) / 16;
      const int64_t per_group = cuda::kScoreWarps * cuda::kTilesPerWarp;
      int64_t bx = std::max<int64_t>(1, (16 * int64_t(gpu::SmCount()) + pairs - 1) / pairs);
      bx = std::min(bx, (tiles + per_group - 1) / per_group);
      // Few pairs with many tiles (B = 1 at 128k: 16 blocks per SM gave every warp one group,
      // so each block paid its page-table and query prologue for 35 KB and its cp.async
      // stages never overlapped): at least 4 groups per warp, as long as that leaves one
      // full wave (2 blocks per SM). Larger batches keep the split above.
      const int64_t bx_groups = (tiles + 4 * per_group - 1) / (4 * per_group);
      const int64_t bx_wave = (2 * int64_t(gpu::SmCount()) + pairs - 1) / pairs;
      bx = std::min(bx, std::max(bx_groups, bx_wave));
      int64_t run = (tiles + bx - 1) / bx;
      const int64_t max_run = (int64_t(cuda::kScoreMaxPages - 2) * g.page_size) / 16;
      if (run > max_run) {
        run = max_run;
        bx = (tiles + run - 1) / run;
      }
      return TWL_DISPATCH_HEAD_DIM(g.head_dim, [&] {
        const dim3 grid{unsigned(bx), unsigned(pairs), 1u};
        constexpr size_t smem = cuda::ScoreSmemBytes<kHeadDim>();
        auto kernel = page_channel ? cuda::ScoreInt4Kernel<kHeadDim, true>
                                   : cuda::ScoreInt4Kernel<kHeadDim, false>;
        if (cuda::SetMaxDynamicSmemOnce(reinterpret_cast<const void*>(kernel), int(smem)) !=
            cudaSuccess) {
          return LaunchStatus("ScoreInt4Kernel smem attribute");
        }
        kernel<<<grid, cuda::kScoreWarps * 32, smem, st>>>(g, batch, q, qk, list, sh,
                                                           int32_t(run), l.scores, l.head_max);
        return LaunchStatus("ScoreInt4Kernel");
      });
    }
    TWL_RETURN_IF_ERROR(cuda::CheckHeadDim(g.head_dim));
    const dim3 grid(unsigned((cand + cuda::kScoreWarps - 1) / cuda::kScoreWarps),
                    unsigned(pairs));
    cuda::ScoreScalarKernel<<<grid, cuda::kScoreWarps * 32, 0, st>>>(
        g, batch, q, qk, kv, list, sh, l.scores, l.head_max);
    return LaunchStatus("ScoreScalarKernel");
  };
  // Growing in one stage (every page listed and scored once, no seed list, no second
  // search) when the seed is automatic and the batch's estimation bytes are below
  // kOneStageBytes (see there: the seed rarely suffices, so two stages cost a seed list, a
  // second search and most of a second score pass). The result is the same rule's (a seed
  // only avoids scoring pages the rule cannot take).
  const int64_t est_bytes = pairs * cand *
                            (g.CodeBytesPerToken() + (g.HasTokenScale() ? 4 : 0));
  // An explicit seed of 0 asks for one stage.
  const bool one_stage =
      grow && (params.grow_seed_pages == 0 ||
               (params.grow_seed_pages < 0 && est_bytes <= kOneStageBytes));
  // Growing, stage 1 or 2: page sums of the listed pages, then the search (profiling
  // events 4 + 2 * stage and 5 + 2 * stage around it).
  auto grow_stage = [&](int stage) -> absl::Status {
    TWL_RETURN_IF_ERROR(Mark(ev, 4 + 2 * stage, st));
    cuda::PruneShape sh = shape;
    sh.only = stage == 2 ? l.grow.need : nullptr;
    const unsigned page_chunks =
        unsigned((selection.max_select + cuda::kMassThreads - 1) / cuda::kMassThreads);
    if (!page16) {  // the page16 estimator wrote the page sums
      cuda::PageMassKernel<<<dim3(page_chunks, unsigned(heads)), cuda::kMassThreads, 0, st>>>(
          g, batch, list, sh, l.scores, l.grow);
      TWL_RETURN_IF_ERROR(LaunchStatus("PageMassKernel"));
    }
    cuda::GrowPrepKernel<<<dim3(page_chunks, unsigned(pairs)), cuda::kMassThreads, 0, st>>>(
        g, batch, selection, shape, l.head_max, l.grow, stage);
    TWL_RETURN_IF_ERROR(LaunchStatus("GrowPrepKernel"));
    // One sort per pair when its pages fit a block's registers, the radix passes for the
    // longer pairs (mixed lengths around 128k: only those past 8192 pages pay for them).
    cuda::GrowSearchKernel<<<unsigned(pairs), cuda::kSortThreads, 0, st>>>(
        g, params, batch, selection, shape, l.head_max, l.grow, stats, stage);
    TWL_RETURN_IF_ERROR(LaunchStatus("GrowSearchKernel"));
    return Mark(ev, 5 + 2 * stage, st);
  };

  // The top-p's plan (prune_hist.cuh): a block per run of chunks and per split of a group's
  // heads; the splits OR their union bits into words cleared with the accumulators.
  const int32_t kept_run = ChunksPerBlock(params.topp_chunks_per_block, l.hist.bnd_chunks);
  const int64_t kept_blocks = (l.hist.bnd_chunks + kept_run - 1) / kept_run;
  const int32_t splits = KeptHeadSplits(params.topp_head_splits, group, kept_blocks * pairs);
  TWL_RETURN_IF_ERROR(Mark(ev, 0, st));
  if (ev && grow) {  // profiling: count the radix searches (a test aid, off the decode path)
    l.grow.radix_searches = l.radix_searches;
    if (cudaMemsetAsync(l.radix_searches, 0, size_t(pairs) * 4, st) != cudaSuccess) {
      return LaunchStatus("prune radix counter memset");
    }
  }
  if (!params.dense) {
    // With head splits, from the kept bits on (one memset: ~2 us less at B = 1).
    char* const clear_at = splits > 1 ? reinterpret_cast<char*>(l.bits)
                                      : reinterpret_cast<char*>(l.head_max);
    const size_t clear_bytes =
        size_t(reinterpret_cast<char*>(l.head_max) - clear_at) + l.clear_bytes;
    if (cudaMemsetAsync(clear_at, 0, clear_bytes, st) != cudaSuccess) {
      return LaunchStatus("prune bits memset");
    }
    if (grow) {
      TWL_RETURN_IF_ERROR(Mark(ev, 4, st));
      if (one_stage) {
        const unsigned page_chunks =
            unsigned((selection.max_select + cuda::kMassThreads - 1) / cuda::kMassThreads);
        cuda::ListAllKernel<<<dim3(page_chunks, unsigned(pairs)), cuda::kMassThreads, 0, st>>>(
            selection, l.grow);
        TWL_RETURN_IF_ERROR(LaunchStatus("ListAllKernel"));
      } else {
        if (selection.max_select <= cuda::kSortPages) {
          cuda::SeedListSortedKernel<<<unsigned(pairs), cuda::kSortThreads, 0, st>>>(
              g, batch, selection, shape, params.grow_seed_pages, l.grow);
          TWL_RETURN_IF_ERROR(LaunchStatus("SeedListSortedKernel"));
        } else {
          cuda::SeedListKernel<<<unsigned(pairs), cuda::kGrowThreads, 0, st>>>(
              g, batch, selection, shape, params.grow_seed_pages, l.grow);
          TWL_RETURN_IF_ERROR(LaunchStatus("SeedListKernel"));
        }
      }
      TWL_RETURN_IF_ERROR(Mark(ev, 5, st));
    }
    TWL_RETURN_IF_ERROR(score(nullptr));
  }
  if (grow) {
    // Stage 1 on the seed lists; stage 2 rescans the pairs it flagged with every page
    // (one stage: every page is listed, nothing is flagged).
    TWL_RETURN_IF_ERROR(grow_stage(1));
    if (one_stage) {
      TWL_RETURN_IF_ERROR(Mark(ev, 8, st));
      TWL_RETURN_IF_ERROR(Mark(ev, 9, st));
    } else {
      TWL_RETURN_IF_ERROR(score(l.grow.need));
      TWL_RETURN_IF_ERROR(grow_stage(2));
    }
    shape.head_p = l.grow.head_p;
    shape.head_ratio = l.grow.head_ratio;
    shape.in_set = l.grow.in_set;
  }
  TWL_RETURN_IF_ERROR(Mark(ev, 1, st));
  if (!params.dense) {
    // Top-p by histogram selection (prune_hist.cuh): level 1; level 2 with the kept bits
    // above the boundary bin; the boundary bin's bits.
    auto kept = group / splits > 8   ? cuda::KeptKernel<16>
                : group / splits > 4 ? cuda::KeptKernel<8>
                                     : cuda::KeptKernel<4>;
    const unsigned hist_chunks = unsigned((cand + cuda::kHistChunk - 1) / cuda::kHistChunk);
    cuda::HistKernel<<<dim3(unsigned(heads), hist_chunks), cuda::kHistThreads, 0, st>>>(
        g, params, batch, list, shape, l.scores, l.head_max, l.hist);
    TWL_RETURN_IF_ERROR(LaunchStatus("HistKernel"));
    const dim3 kept_runs{unsigned(kept_blocks), unsigned(pairs), unsigned(splits)};
    // Kept, Boundary and Compact overlap their predecessor's tail (pdl.cuh).
    TWL_RETURN_IF_ERROR(cuda::LaunchAfterPrevious(
        "KeptKernel", kept, kept_runs, cuda::kKeptThreads, st, g, params, batch, list, shape,
        static_cast<const fp16_t*>(l.scores), static_cast<const uint32_t*>(l.head_max), l.hist,
        l.bits, kept_run));
    const int32_t bnd_run = BoundaryRun(params.topp_chunks_per_block, l.hist.bnd_chunks, pairs);
    const dim3 bnd_grid{unsigned((l.hist.bnd_chunks + bnd_run - 1) / bnd_run), unsigned(pairs),
                        1u};
    TWL_RETURN_IF_ERROR(cuda::LaunchAfterPrevious(
        "BoundaryKernel", cuda::BoundaryKernel, bnd_grid, cuda::kKeptThreads, st, g, params,
        batch, list, shape, static_cast<const fp16_t*>(l.scores),
        static_cast<const uint32_t*>(l.head_max), l.hist, l.bits, bnd_run));
  }
  TWL_RETURN_IF_ERROR(Mark(ev, 2, st));
  const unsigned compact_chunks =
      unsigned((shape.bit_words + cuda::kCompactWords - 1) / cuda::kCompactWords);
  const dim3 compact_grid{compact_chunks, unsigned(pairs), 1u};
  if (params.dense) {  // no top-p chain before it
    cuda::CompactKeptKernel<<<compact_grid, cuda::kCompactThreads, 0, st>>>(
        g, params, batch, list, shape, l.bits, l.head_max, l.hist, out, stats);
    TWL_RETURN_IF_ERROR(LaunchStatus("CompactKeptKernel"));
  } else {
    TWL_RETURN_IF_ERROR(cuda::LaunchAfterPrevious(
        "CompactKeptKernel", cuda::CompactKeptKernel, compact_grid, cuda::kCompactThreads, st, g,
        params, batch, list, shape, static_cast<const uint32_t*>(l.bits),
        static_cast<const uint32_t*>(l.head_max), l.hist, out, stats));
  }
  return Mark(ev, 3, st);
}

}  // namespace

absl::Status LaunchPrune(const PageGeometry& g, const PrunerParams& params,
                         const BatchView& batch, const QueryView& q, const QuantKView& qk,
                         const FpKvView& kv, const SelectionView& selection,
                         const KeptView& out, const HeadStatsView& stats, void* workspace,
                         size_t workspace_bytes, void* stream) {
  return RunPrune(g, params, batch, q, qk, kv, selection, out, stats, workspace,
                  workspace_bytes, stream, nullptr);
}

absl::Status ProfilePrune(const PageGeometry& g, const PrunerParams& params,
                          const BatchView& batch, const QueryView& q, const QuantKView& qk,
                          const FpKvView& kv, const SelectionView& selection,
                          const KeptView& out, const HeadStatsView& stats, void* workspace,
                          size_t workspace_bytes, void* stream, PruneProfile* profile) {
  // 0-3: phase boundaries; 4-9 (growing): around the seed list and the two search stages.
  cudaEvent_t ev[10] = {};
  for (cudaEvent_t& e : ev) {
    if (cudaEventCreate(&e) != cudaSuccess) return LaunchStatus("prune profile events");
  }
  absl::Status s = RunPrune(g, params, batch, q, qk, kv, selection, out, stats, workspace,
                            workspace_bytes, stream, ev);
  if (s.ok() && cudaEventSynchronize(ev[3]) != cudaSuccess) s.Update(LaunchStatus("prune profile"));
  if (s.ok() && profile) {
    cudaEventElapsedTime(&profile->ms_score, ev[0], ev[1]);
    cudaEventElapsedTime(&profile->ms_topp, ev[1], ev[2]);
    cudaEventElapsedTime(&profile->ms_compact, ev[2], ev[3]);
    profile->ms_grow = 0.0f;
    profile->radix_searches.clear();
    if (selection.bound != nullptr && !params.dense) {
      const PruneLayout l =
          Layout(g, batch.num_seqs, batch.num_q_heads, selection.max_select, workspace);
      profile->radix_searches.resize(size_t(batch.num_seqs) * size_t(g.num_kv_heads));
      if (cudaMemcpy(profile->radix_searches.data(), l.radix_searches,
                     profile->radix_searches.size() * 4, cudaMemcpyDeviceToHost) != cudaSuccess) {
        s.Update(LaunchStatus("prune profile radix counters"));
      }
      for (int i = 4; i < 10; i += 2) {
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, ev[i], ev[i + 1]);
        profile->ms_grow += ms;
      }
    }
  }
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
  return s;
}

}  // namespace twl
