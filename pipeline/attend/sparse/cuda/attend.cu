// Launchers of the split-K attention kernels (see attend.cuh and gpu/kernels.h).
// Instantiations: AttendChunkKernel<D, G, BF16, false> for D in {64, 96, 128, 256} x G in
// {1, 2, 4, 8} x stored K/V FP16 or BF16 (G is the group size rounded up to a power of two;
// extra heads are masked), and the tensor-core form <D, 8, false, true> for FP16 K/V at D 64
// and 128, groups of 3..16. Groups of 9..16 run G = 8 on a grid of 2 head halves
// (blockIdx.y), each half with half the stream-K blocks.
#include <algorithm>
#include <atomic>
#include <type_traits>

#include "pipeline/attend/sparse/cuda/attend.cuh"
#include "core/env_knob.h"
#include "core/validate.h"
#include "gpu/cuda/kernel_attrs.cuh"
#include "gpu/device.h"
#include "pipeline/attend/sparse/cuda/attend_launch.h"

namespace twl {

using cuda::AsStream;
using cuda::LaunchStatus;

namespace {

// Groups of at least this many query heads (rounded up) compute on tensor cores where the
// K/V are FP16 and D is 64 or 128 (attend_compute.cuh); smaller groups are bound by bytes on
// CUDA cores already, and the MMA's 8 head rows would be mostly zeros.
constexpr int32_t kTensorCoreMinGroup = 4;

// -1: not decided yet (TWL_ATTN_TC, default on); 0 / 1: off / on.
std::atomic<int> g_tensor_cores{-1};

// -1: not decided yet (TWL_ATTN_PREFETCH, default on); 0 / 1: off / on. The attention's
// prefetch of a block's next piece (attend.cuh, pre_ready); off only to measure it.
std::atomic<int> g_prefetch_next{-1};

// A switch read from the environment at its first use (EnvSwitchOn: on unless "0").
bool SwitchOn(std::atomic<int>& cached, const char* name) {
  int v = cached.load(std::memory_order_relaxed);
  if (v < 0) {
    v = EnvSwitchOn(name) ? 1 : 0;
    cached.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

bool AttentionPrefetchNext() { return SwitchOn(g_prefetch_next, "TWL_ATTN_PREFETCH"); }

// Virtual tokens charged for the start of each pair's piece in the stream-K split (attend.cuh,
// AttnSpan). By default the K/V bytes of 64 KiB of rows (128 tokens at d = 128): on an H100 at
// B = 8, 128k, 0 / 64 / 128 / 256 tokens took the attention 105.2 / 96.7 / 93.2 / 94.1 us, at
// B = 1 24.1 / - / 21.7 / 21.6 (bench/RESULTS.md, thirtieth session): a block that starts a
// pair pays a drained pipeline and the first lookups' round trips, about what it takes to
// read that many rows. In bytes, because that time does not depend on the head dim.
// Rows behind a slot table (the offload row cache) pay three levels of lookups per start and
// take twice that: on an H200 at B = 8 the row cache's attention took 97.5 / 91.9 / 92.7 us at
// 128 / 256 / 384 tokens, the CUDA-graph step 0.5332 and 0.5371 ms at 128 against 0.5277 at
// 256, and at B = 1 0.1427 and 0.1440 against 0.1422 (bench/RESULTS.md, thirty-first session).
constexpr int32_t kPieceCostBytes = 64 * 1024;
constexpr int32_t kMappedPieceCostBytes = 128 * 1024;
// -2: the environment not read yet; -1: the default; >= 0: tokens (TWL_ATTN_PIECE_COST, 0 to
// 4096, or SetAttentionPieceCost).
std::atomic<int32_t> g_piece_cost{-2};

int32_t PieceCostSetting() {
  int32_t v = g_piece_cost.load(std::memory_order_relaxed);
  if (v == -2) {
    v = int32_t(EnvInt("TWL_ATTN_PIECE_COST", 0, 4096).value_or(-1));
    g_piece_cost.store(v, std::memory_order_relaxed);
  }
  return v;
}

int32_t AttentionPieceCost(int32_t head_dim, bool mapped_rows) {
  const int32_t v = PieceCostSetting();
  const int32_t bytes = mapped_rows ? kMappedPieceCostBytes : kPieceCostBytes;
  return v >= 0 ? v : bytes / (2 * head_dim * int32_t(sizeof(fp16_t)));
}

bool AttentionTensorCores() { return SwitchOn(g_tensor_cores, "TWL_ATTN_TC"); }

// Batches of at most this many (sequence, KV head) pairs run one attention block per SM
// instead of every resident block: their few kept tokens then make fewer, longer pieces, and
// the merge (one block per query head, latency-bound) has half the partial states to combine.
// H100, serving loop, B = 1 (8 pairs), CUDA graphs, two runs per side: HBM 0.1352 / 0.1351 ->
// 0.1327 / 0.1327 ms, offload 0.1513 / 0.1505 -> 0.1496 / 0.1493; H200 eager trace: attention +
// merge 24.7 -> 23.6 us (bench/RESULTS.md, thirty-first session). Larger batches are unmeasured
// and keep the full wave (B = 8: 64 pairs, every SM busy with whole pairs' worth of tokens).
constexpr int64_t kOneBlockPerSmPairs = 8;

// A cap on the stream-K grid (TWL_ATTN_GRID_BLOCKS, 1 to 65536; unset: no cap), for A/B runs
// of the grid size.
int32_t AttentionGridCap() {
  static const int32_t cap = int32_t(EnvInt("TWL_ATTN_GRID_BLOCKS", 1, 65536).value_or(0));
  return cap;
}

int32_t PaddedGroup(int32_t group) {
  int32_t p = 1;
  while (p < group) p *= 2;
  return p;
}

struct AttnLayout {
  int32_t* cum = nullptr;          // [pairs + 1] exclusive prefix of the token counts
  int32_t* item_offset = nullptr;  // [pairs + 1] first partial state of each pair
  float* part_acc = nullptr;       // [max_items][gpad][head_dim]
  float2* part_ml = nullptr;       // [max_items][gpad]
  int32_t max_blocks = 0;          // bound on the attention grid (resident blocks)
  size_t bytes = 0;
};

AttnLayout Layout(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads, void* base) {
  const int64_t pairs = int64_t(num_seqs) * g.num_kv_heads;
  const int32_t gpad = PaddedGroup(std::max(1, num_q_heads / std::max(1, g.num_kv_heads)));
  AttnLayout l;
  l.max_blocks = cuda::kMaxBlocksPerSm * gpu::SmCount();
  // Pieces: one per block range plus at most one extra per pair boundary.
  const int64_t max_items = std::min<int64_t>(INT32_MAX / 2, l.max_blocks + pairs);
  cuda::WorkspaceCarver c(base);
  l.cum = c.Take<int32_t>(size_t(pairs) + 1);
  l.item_offset = c.Take<int32_t>(size_t(pairs) + 1);
  l.part_acc = c.Take<float>(size_t(max_items) * gpad * size_t(g.head_dim));
  l.part_ml = c.Take<float2>(size_t(max_items) * gpad);
  l.bytes = c.used();
  return l;
}

absl::Status Attend(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                    const FpKvView& kv, const KeptView* kept, const OutputView& out,
                    float softmax_scale, void* workspace, size_t workspace_bytes, void* stream) {
  TWL_RETURN_IF_ERROR(ValidateGeometry(g));
  TWL_RETURN_IF_ERROR(ValidateBatch(g, batch, /*check_host_data=*/false));
  TWL_RETURN_IF_ERROR(cuda::CheckHeadDim(g.head_dim));
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  TWL_RETURN_IF_ERROR(cuda::CheckGroup(group, kGpuMaxGroup));
  if (!q.q || !kv.kv || !out.out) {
    return absl::InvalidArgumentError("attention: q, kv and out must not be null");
  }
  if (kept && (!kept->tokens || !kept->count)) {
    return absl::InvalidArgumentError("attention: kept set must not be null");
  }
  const int64_t pairs = int64_t(batch.num_seqs) * g.num_kv_heads;
  if (pairs > INT32_MAX / 2) return absl::InvalidArgumentError("attention: batch too large");
  const AttnLayout l = Layout(g, batch.num_seqs, batch.num_q_heads, workspace);
  if (workspace_bytes < l.bytes || !workspace) {
    return absl::InvalidArgumentError(
        absl::StrFormat("attention: workspace of %d bytes, needs %d", workspace_bytes, l.bytes));
  }
  const float scale =
      (softmax_scale > 0.0f ? softmax_scale : 1.0f / sqrtf(float(g.head_dim))) * cuda::kLog2e;
  const KeptView kv_set = kept ? *kept : KeptView{};
  const bool dense = kept == nullptr;
  cudaStream_t st = AsStream(stream);
  const int32_t gpad = PaddedGroup(group);
  const int32_t piece_cost = AttentionPieceCost(g.head_dim, kv.slot_of_row != nullptr);
  TWL_RETURN_IF_ERROR(TWL_DISPATCH_HEAD_DIM(g.head_dim, [&]() -> absl::Status {
    auto launch = [&](auto kernel, int32_t halves) {
      constexpr size_t smem = cuda::AttnCfg<kHeadDim>::kSmemBytes;
      const void* fn = reinterpret_cast<const void*>(kernel);
      if (cuda::SetMaxDynamicSmemOnce(fn, int(smem)) != cudaSuccess) {
        return LaunchStatus("AttendChunkKernel smem attribute");
      }
      // Stream-K: as many blocks as fit at once; each takes an equal share of the tokens.
      int per_sm = 0;
      if (cuda::MaxActiveBlocksPerSm(&per_sm, fn, cuda::kAttnThreads, smem) != cudaSuccess) {
        return LaunchStatus("AttendChunkKernel occupancy");
      }
      if (pairs <= kOneBlockPerSmPairs) per_sm = std::min(per_sm, 1);
      // Head halves share the resident blocks (one wave in all).
      int32_t resident = std::min(l.max_blocks, std::max(1, per_sm) * gpu::SmCount());
      if (AttentionGridCap() > 0) resident = std::min(resident, AttentionGridCap());
      const int32_t blocks = std::max(1, resident / halves);
      // Rows behind a row map (the offload row cache) keep the plan kernel: there the cache's
      // plan kernels start beside the attention, and the plan kernel ahead of the attention's
      // one wave measured faster (H200, one machine, serving loop B = 1: 0.178 vs 0.183 ms;
      // the HBM backend: 0.154 with the plan in the blocks vs 0.162).
      const bool plan_here = pairs <= cuda::kFusedPlanPairs && kv.slot_of_row == nullptr;
      if (!plan_here) {
        cuda::AttendPlanKernel<<<1, 1024, 0, st>>>(g, batch, kv_set, dense, piece_cost, blocks,
                                                   l.cum, l.item_offset);
        TWL_RETURN_IF_ERROR(LaunchStatus("AttendPlanKernel"));
      }
      kernel<<<dim3(unsigned(blocks), unsigned(halves)), cuda::kAttnThreads, smem, st>>>(
          g, batch, q, kv, kv_set, dense, group, gpad, scale, plan_here,
          AttentionPrefetchNext(), piece_cost, l.cum, l.item_offset, l.part_acc, l.part_ml);
      return LaunchStatus("AttendChunkKernel");
    };
    auto by_group = [&](auto bf16) -> absl::Status {
      constexpr bool kBf = decltype(bf16)::value;
      if constexpr (!kBf && (kHeadDim == 64 || kHeadDim == 128)) {
        if (gpad >= kTensorCoreMinGroup && AttentionTensorCores()) {
          return launch(cuda::AttendChunkKernel<kHeadDim, 8, false, true>,
                        std::max(1, gpad / 8));
        }
      }
      switch (gpad) {
        case 1: return launch(cuda::AttendChunkKernel<kHeadDim, 1, kBf, false>, 1);
        case 2: return launch(cuda::AttendChunkKernel<kHeadDim, 2, kBf, false>, 1);
        case 4: return launch(cuda::AttendChunkKernel<kHeadDim, 4, kBf, false>, 1);
        case 8: return launch(cuda::AttendChunkKernel<kHeadDim, 8, kBf, false>, 1);
        default: return launch(cuda::AttendChunkKernel<kHeadDim, 8, kBf, false>, gpad / 8);
      }
    };
    TWL_RETURN_IF_ERROR(g.kv_dtype == kKvBf16 ? by_group(std::true_type{})
                                              : by_group(std::false_type{}));
    const int64_t heads = int64_t(batch.num_seqs) * batch.num_q_heads;
    cuda::AttendMergeKernel<kHeadDim><<<unsigned(heads), cuda::kMergeThreads, 0, st>>>(
        g, batch, group, gpad, l.item_offset, l.part_acc, l.part_ml, out);
    return LaunchStatus("AttendMergeKernel");
  }));
  return absl::OkStatus();
}

}  // namespace

bool SetAttentionTensorCores(bool on) {
  const bool before = AttentionTensorCores();
  g_tensor_cores.store(on ? 1 : 0);
  return before;
}

int32_t SetAttentionPieceCost(int32_t cost) {
  const int32_t before = PieceCostSetting();
  g_piece_cost.store(cost < 0 ? -1 : std::min<int32_t>(cost, 4096));
  return before;
}

size_t AttentionWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads) {
  return Layout(g, num_seqs, num_q_heads, nullptr).bytes;
}

absl::Status LaunchSparseAttention(const PageGeometry& g, const BatchView& batch,
                                   const QueryView& q, const FpKvView& kv,
                                   const KeptView& kept, const OutputView& out,
                                   float softmax_scale, void* workspace,
                                   size_t workspace_bytes, void* stream) {
  return Attend(g, batch, q, kv, &kept, out, softmax_scale, workspace, workspace_bytes, stream);
}

absl::Status LaunchDenseAttention(const PageGeometry& g, const BatchView& batch,
                                  const QueryView& q, const FpKvView& kv,
                                  const OutputView& out, float softmax_scale, void* workspace,
                                  size_t workspace_bytes, void* stream) {
  return Attend(g, batch, q, kv, nullptr, out, softmax_scale, workspace, workspace_bytes,
                stream);
}

}  // namespace twl
