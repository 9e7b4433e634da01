// Host launchers of the CUDA kernels of every decode stage (append, select, prune, attend).
// No device code and no CUDA types: every pointer inside the views is a DEVICE pointer
// (including BatchView.seq_len/page_table and PrunerParams.seq_p), `stream` is a
// cudaStream_t passed as void* (null: the legacy default stream), and each launcher only
// enqueues work: it never synchronizes, so a decode step never waits for the host.
//
// Outputs are exactly those of the CPU stages (pipeline/<stage>/cpu/): same views, same fixed
// strides, same algorithms; float sums run in a different order, so scores can differ in the
// last bits and top-p / top-B0 sets can differ at near ties (see tests/gpu/).
//
// Supported on the GPU: head_dim 64, 96, 128 and 256, group size (num_q_heads /
// num_kv_heads) 1..16 (kGpuMaxGroup; the pruner kGpuPruneMaxGroup, also 16), any
// page_size; INT4 K at head_dim 64/128 uses the tensor-core
// estimator, other head dims and k_bits 2/8/16 a scalar one; under the
// per-page-channel K scheme (g.k_scheme 1) INT4 uses the tensor cores when page_size is a
// multiple of 16 (a 16-token tile in one block), the scalar estimator otherwise. Under
// k_scheme 1 the append launchers re-quantize every filled row of each touched block against
// its new Quest range (QuantKView.scale/zero are unused and may be null).
// Anything else returns Unimplemented before enqueueing work.
//
// Temporaries live in a caller-owned workspace sized by the matching *WorkspaceBytes query
// (it depends only on shapes, so it can be allocated once; CUDA-graph safe). Workspaces must
// be 256-byte aligned (cudaMalloc is). A workspace may be reused by the next launch on the
// same stream, never concurrently by two streams.
//
// Status codes: InvalidArgument (bad shape/null pointer/small workspace), Unimplemented
// (shape outside the list above), Unavailable (built without CUDA), Internal (launch failed).
// Built without CUDA, every launcher returns Unavailable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// The shapes the GPU kernels take (backends refuse others at creation).
constexpr bool GpuKernelsSupportHeadDim(int32_t head_dim) {
  return head_dim == 64 || head_dim == 96 || head_dim == 128 || head_dim == 256;
}
constexpr int32_t kGpuMaxGroup = 16;  // query heads per KV head
// Query heads per KV head the pruner kernels (pipeline/prune/twilight/cuda) take: all of
// kGpuMaxGroup (verified on the H200, groups 12 and 16 against the CPU reference). Kept as a
// separate bound so that a wider kGpuMaxGroup cannot outrun the pruner: a group past it
// decodes through the dense path and LaunchPrune returns Unimplemented.
constexpr int32_t kGpuPruneMaxGroup = 16;

// ---- Append ---------------------------------------------------------------------------

// Element type of the K/V rows handed to LaunchAppend (AppendView.k/v are reinterpreted).
enum class KvInputType : int32_t { kFp16 = 0, kBf16 = 1, kFp32 = 2 };

// Pages touched by an append and their filled rows afterwards, so that the Quest min/max
// is recomputed over exactly the rows AppendRef uses. Built on the host (which knows the
// page ids and slots) by PlanAppendPages and copied to the device.
struct AppendPagePlan {
  const int32_t* d_page = nullptr;  // [num_pages] distinct page ids
  const int32_t* d_rows = nullptr;  // [num_pages] rows filled after the call (max slot + 1)
  int32_t num_pages = 0;
};

// Host helper: distinct pages of h_page_id[0..n) (in first-seen order) and max slot + 1.
void PlanAppendPages(const int32_t* h_page_id, const int32_t* h_slot, int32_t n,
                     std::vector<int32_t>* pages, std::vector<int32_t>* rows);

// Writes FP16 K/V rows (converted from `type`) into kv, quantizes K into qk (k_bits < 16),
// then recomputes kmin/kmax of every (plan page, KV head) block over its filled rows from
// the FP16 K in kv. in.page_id/in.slot are device arrays. kv.slot_of_block may be set (e.g.
// device-mapped pinned host blocks stay identity-addressed; a slot table redirects).
absl::Status LaunchAppend(const PageGeometry& g, const AppendView& in, KvInputType type,
                          const AppendPagePlan& plan, const FpKvView& kv, const QuantKView& qk,
                          void* stream);

// Recomputes kmin/kmax of the plan's blocks from the FP16 K in kv (e.g. after a page copy).
absl::Status LaunchRecomputeMinMax(const PageGeometry& g, const AppendPagePlan& plan,
                                   const FpKvView& kv, const QuantKView& qk, void* stream);

// Bulk append (one launch for a whole batch of sequences). A segment is a run of rows of one
// page written by one append: rows [row_begin, row_end) of every KV head's block of `page`
// come from input tokens src_token, src_token + 1, ... . stage >= 0 sends the segment's FP16
// rows to page `stage` of a device staging buffer laid out like the block store (a page's
// num_kv_heads blocks back to back, so whole pages can then be copied to the store in large
// contiguous transfers) instead of the block store itself.
struct AppendSegment {
  int32_t page = 0;
  int32_t row_begin = 0;
  int32_t row_end = 0;
  int32_t src_token = 0;
  int32_t stage = -1;
};

// Host helper: the segments of h_page_id/h_slot[0..n) (maximal runs of tokens with
// consecutive slots on one page), stage -1. Returns false when a page appears in two runs
// (then the segment kernel does not apply: use LaunchAppend).
bool PlanAppendSegments(const int32_t* h_page_id, const int32_t* h_slot, int32_t n,
                        std::vector<AppendSegment>* segments);

// Writes every segment of d_segments[0..num_segments) (device array) in one pass, one thread
// block per (segment, KV head): the FP16 K/V rows (converted from `type`) to kv (identity
// addressed: kv.slot_of_block must be null) or to `stage` (segments with stage >= 0), K
// quantized into qk (k_bits < 16), and the Quest kmin/kmax of the block from the same
// registers: rows [0, row_begin) are taken to be the block's filled rows before the call
// (how the Runtime appends), so the bounds already in qk are merged with the new rows'
// (row_begin == 0 replaces them). Outputs equal AppendRef's for such appends. k and v are
// [tokens][num_kv_heads][head_dim] device (or device-mapped) arrays; 16-byte aligned input
// is read with vector loads. Stores are 16-byte vectors, whole rows per thread group, so
// writes into mapped host memory go out as full 128-byte lines.
absl::Status LaunchAppendSegments(const PageGeometry& g, const AppendSegment* d_segments,
                                  int32_t num_segments, const void* k, const void* v,
                                  KvInputType type, const FpKvView& kv, fp16_t* stage,
                                  const QuantKView& qk, void* stream);

// ---- Select (Quest) ---------------------------------------------------------------------

size_t SelectWorkspaceBytes(const PageGeometry& g, const SelectorParams& params,
                            int32_t num_seqs, int32_t max_pages);

// SelectPagesRef on the GPU: page bounds of every page of the batch, then per (sequence,
// KV head) the top budget pages by a block-wide radix select (ties to the lower page),
// plus sinks and the last page; output ascending. Growing Quest (params.grow): every page
// ascending with per query head bounds * softmax_scale (0: 1/sqrt(head_dim)) in out.bound and
// the cap in out.limit, as SelectPagesRef; no workspace.
absl::Status LaunchSelectPages(const PageGeometry& g, const SelectorParams& params,
                               const BatchView& batch, const QueryView& q, const QuantKView& qk,
                               const SelectionView& out, void* workspace,
                               size_t workspace_bytes, void* stream, float softmax_scale = 0.0f);

// Benchmark aid, not for the decode path: LaunchSelectPages with the page-bound and top-B0
// kernels timed by events. Synchronizes the stream.
struct SelectProfile {
  float ms_bounds = 0.0f, ms_top = 0.0f;
};
absl::Status ProfileSelect(const PageGeometry& g, const SelectorParams& params,
                           const BatchView& batch, const QueryView& q, const QuantKView& qk,
                           const SelectionView& out, void* workspace, size_t workspace_bytes,
                           void* stream, SelectProfile* profile, float softmax_scale = 0.0f);

// ---- Prune (Twilight top-p) -----------------------------------------------------------

size_t PruneWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads,
                           int32_t max_select);

// PruneRef on the GPU: estimated scores of the selected tokens (INT4 codes, tensor cores),
// stored as FP16; per query head the smallest level set of estimated softmax weights with
// mass >= p, found by a two-level histogram (1/8 then 1/2048 logit bins, integer mass
// sums: deterministic and independent of batch-mates; the rule is TopPBinnedRef,
// reference/top_p_bins.h, equal to PruneRef's bisection up to the threshold's
// 1/2048-logit sub-bin and FP16 rounding of the scores); union over the GQA group ->
// ascending kept tokens + counts, and per-head telemetry (stats pointers nullable).
// max_select * page_size <= 2^23. params.stop_gap / max_iterations (bisection) are unused.
// params.seq_p is a device array or null. kv is read only when g.k_bits == 16.
// Growing Quest (selection from LaunchSelectPages with params.grow): the candidates of
// GrowCandidatesRef (same set up to float near-ties of the growth rule), found in two stages
// (a seed of top-bound pages, then every page only where the seed is not enough; see
// pipeline/prune/twilight/cuda/prune_grow.cuh), and per-head full_mass / cap_hit telemetry.
absl::Status LaunchPrune(const PageGeometry& g, const PrunerParams& params,
                         const BatchView& batch, const QueryView& q, const QuantKView& qk,
                         const FpKvView& kv, const SelectionView& selection,
                         const KeptView& out, const HeadStatsView& stats, void* workspace,
                         size_t workspace_bytes, void* stream);

// Benchmark aid, not for the decode path: LaunchPrune with each phase timed by events
// (estimated scores incl. the growing search / histogram top-p + kept bits / kept-list
// compaction + telemetry). Synchronizes the stream.
struct PruneProfile {
  float ms_score = 0.0f, ms_topp = 0.0f, ms_compact = 0.0f;
  float ms_grow = 0.0f;  // growing Quest: the part of ms_score in the seed/mass/search kernels
};
absl::Status ProfilePrune(const PageGeometry& g, const PrunerParams& params,
                          const BatchView& batch, const QueryView& q, const QuantKView& qk,
                          const FpKvView& kv, const SelectionView& selection,
                          const KeptView& out, const HeadStatsView& stats, void* workspace,
                          size_t workspace_bytes, void* stream, PruneProfile* profile);

// ---- Attention --------------------------------------------------------------------------

// Workspace of both attention launchers (partial softmax states of the split-K chunks).
size_t AttentionWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads);

// Split-K (flash-decoding) attention over each (sequence, KV head) kept set, read once for
// all query heads of the group. The split is planned on the device from the kept counts
// (stream-K): every resident block takes an equal share of the batch's kept tokens, cut at
// (sequence, KV head) boundaries, so heavy and light heads spread evenly over the SMs.
// kv.slot_of_block is honoured (GPU cache slots). softmax_scale 0: 1/sqrt(head_dim).
absl::Status LaunchSparseAttention(const PageGeometry& g, const BatchView& batch,
                                   const QueryView& q, const FpKvView& kv,
                                   const KeptView& kept, const OutputView& out,
                                   float softmax_scale, void* workspace,
                                   size_t workspace_bytes, void* stream);

// The same kernels over every token of every sequence (the in-run dense baseline).
absl::Status LaunchDenseAttention(const PageGeometry& g, const BatchView& batch,
                                  const QueryView& q, const FpKvView& kv,
                                  const OutputView& out, float softmax_scale, void* workspace,
                                  size_t workspace_bytes, void* stream);

}  // namespace twl
