#include "pipeline/cuda/cuda_executor.cuh"

#include <limits>
#include <string>

#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/cuda/step_events.cuh"
#include "pipeline/fetch/identity/identity_fetch.cuh"

namespace twl::pipeline_cuda {
namespace {

// The group's slice of the batch (device plan rows from first_seq on).
BatchView GroupBatch(const BatchView& all, const SeqGroup& grp) {
  return all.Slice(grp.first_seq, grp.num_seqs);
}

}  // namespace

absl::StatusOr<StepStrides> CudaExecutor::PrepareScratch(
    StepScratch& scratch, const PageGeometry& g, const Selector& selector,
    const SelectorParams& params, int32_t num_seqs, int32_t num_q_heads, int32_t max_pages,
    bool select_prune, const char* what) const {
  StepStrides st;
  st.max_select = selector.Stride(params, max_pages);
  const int64_t max_kept = int64_t(st.max_select) * g.page_size;
  if (max_kept > std::numeric_limits<int32_t>::max() / 2) {
    return absl::InvalidArgumentError(std::string(what) + ": kept-token stride overflows int32");
  }
  st.max_kept = int32_t(max_kept);
  const bool grow = params.grow && params.kind == SelectorKind::kQuest;
  scratch.SetShape(StepShape{num_seqs, num_q_heads, g.num_kv_heads, st.max_select, st.max_kept,
                             grow});
  TWL_RETURN_IF_ERROR(
      scratch.GrowAttend(attention_.DeviceWorkspaceBytes(g, num_seqs, num_q_heads)));
  if (select_prune) {
    TWL_RETURN_IF_ERROR(scratch.GrowSelectPrune(
        selector.DeviceWorkspaceBytes(g, params, num_seqs, max_pages),
        pruner_.DeviceWorkspaceBytes(g, num_seqs, num_q_heads, st.max_select)));
  }
  return st;
}

absl::Status CudaExecutor::RunResident(CudaStep step, const StepScratch& scratch,
                                       const FpKvView& pool) const {
  step.ws_select = scratch.select_workspace_bytes();
  step.ws_prune = scratch.prune_workspace_bytes();
  step.ws_attend = scratch.attend_workspace_bytes();
  const SeqGroup all{0, step.batch.num_seqs, 0, false};
  IdentityFetch resident(pool);
  return Run(step, absl::MakeConstSpan(&all, 1), scratch, resident);
}

absl::Status CudaExecutor::Run(const CudaStep& step, absl::Span<const SeqGroup> groups,
                               const StepScratch& scratch, CudaFetch& fetch) const {
  const PageGeometry& g = step.g;
  const int32_t Hq = step.batch.num_q_heads;
  const cudaStream_t c = step.compute;
  const int32_t G = int32_t(groups.size());
  // The group's timing events, or null without telemetry.
  cudaEvent_t marks[kNumGroupEvents] = {};
  auto marks_of = [&](int32_t gi) -> const cudaEvent_t* {
    if (!step.timing) return nullptr;
    for (int32_t e = 0; e < kNumGroupEvents; ++e) {
      marks[e] = step.timing->timing(step.timing_slot, gi * kNumGroupEvents + e);
    }
    return marks;
  };
  auto attend = [&](int32_t gi) -> absl::Status {
    const SeqGroup& grp = groups[size_t(gi)];
    const BatchView b = GroupBatch(step.batch, grp);
    const int64_t row0 = int64_t(grp.first_seq) * Hq * g.head_dim;
    const cudaEvent_t* m = marks_of(gi);
    TWL_RETURN_IF_ERROR(fetch.WaitFetched(gi, c));
    if (m) TWL_CUDA(cudaEventRecord(m[kAttn0], c));
    const AttendSource src = fetch.Source();
    TWL_RETURN_IF_ERROR(attention_.AttendOnDevice(
        g, b, QueryView{step.q + row0}, src.kv, scratch.Kept(grp.first_seq, src.counts),
        OutputView{step.out + row0}, step.pruner.softmax_scale, scratch.attend_workspace(),
        step.ws_attend, c));
    if (grp.may_overflow && src.direct_counts) {
      fp16_t* direct = src.direct_out + row0;
      TWL_RETURN_IF_ERROR(attention_.AttendOnDevice(
          g, b, QueryView{step.q + row0}, src.direct_kv,
          scratch.Kept(grp.first_seq, src.direct_counts), OutputView{direct},
          step.pruner.softmax_scale, scratch.attend_workspace(), step.ws_attend, c));
      TWL_RETURN_IF_ERROR(fetch.MergeDirect(g, grp, Hq, direct, step.out + row0, c));
    }
    if (m) TWL_CUDA(cudaEventRecord(m[kAttn1], c));
    return absl::OkStatus();
  };

  for (int32_t gi = 0; gi < G; ++gi) {
    const SeqGroup& grp = groups[size_t(gi)];
    const BatchView b = GroupBatch(step.batch, grp);
    const int64_t row0 = int64_t(grp.first_seq) * Hq * g.head_dim;
    const QueryView q{step.q + row0};
    const SelectionView sel = scratch.Selection(grp.first_seq);
    const KeptView kept = scratch.Kept(grp.first_seq);
    PrunerParams pp = step.pruner;
    pp.seq_p = step.pruner.seq_p ? step.pruner.seq_p + grp.first_seq : nullptr;
    const cudaEvent_t* m = marks_of(gi);
    // Compute stream: select + prune of this group.
    if (m) TWL_CUDA(cudaEventRecord(m[kSel0], c));
    TWL_RETURN_IF_ERROR(step.selector->SelectOnDevice(
        g, step.selector_params, b, q, step.qk, sel, scratch.select_workspace(),
        step.ws_select, c, step.pruner.softmax_scale));
    if (m) TWL_CUDA(cudaEventRecord(m[kSel1], c));
    TWL_RETURN_IF_ERROR(pruner_.PruneOnDevice(g, pp, b, q, step.qk, step.prune_kv, sel, kept,
                                              scratch.Stats(grp.first_seq),
                                              scratch.prune_workspace(), step.ws_prune, c));
    if (m) TWL_CUDA(cudaEventRecord(m[kPrune1], c));
    TWL_RETURN_IF_ERROR(fetch.Fetch(gi, grp, g, b, kept, c, m));
    // Compute stream: the previous group's attention overlaps this group's fetch.
    if (gi > 0) TWL_RETURN_IF_ERROR(attend(gi - 1));
  }
  return G > 0 ? attend(G - 1) : absl::OkStatus();
}

}  // namespace twl::pipeline_cuda
