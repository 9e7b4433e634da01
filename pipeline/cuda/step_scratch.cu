#include "pipeline/cuda/step_scratch.cuh"

#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/cuda/scratch.cuh"

namespace twl::pipeline_cuda {

absl::Status StepScratch::GrowSelectPrune(size_t select_workspace, size_t prune_workspace) {
  const StepShape& s = shape_;
  const int64_t units = int64_t(s.num_seqs) * s.num_kv_heads;
  const int64_t heads = int64_t(s.num_seqs) * s.num_q_heads;
  TWL_RETURN_IF_ERROR(GrowScratch(sel_pages_, size_t(units * s.max_select) * 4, min_bytes_));
  TWL_RETURN_IF_ERROR(GrowScratch(sel_count_, size_t(units) * 4, min_bytes_));
  TWL_RETURN_IF_ERROR(GrowScratch(kept_tokens_, size_t(units * s.max_kept) * 4, min_bytes_));
  TWL_RETURN_IF_ERROR(GrowScratch(kept_count_, size_t(units) * 4, min_bytes_));
  // selected, kept, est_mass, full_mass, cap_hit per query head.
  TWL_RETURN_IF_ERROR(GrowScratch(stats_, size_t(heads) * 20, min_bytes_));
  if (s.grow) {
    TWL_RETURN_IF_ERROR(GrowScratch(sel_bound_, size_t(heads * s.max_select) * 4, min_bytes_));
    TWL_RETURN_IF_ERROR(GrowScratch(sel_limit_, size_t(units) * 4, min_bytes_));
  }
  TWL_RETURN_IF_ERROR(GrowScratch(ws_select_, select_workspace, min_bytes_));
  return GrowScratch(ws_prune_, prune_workspace, min_bytes_);
}

absl::Status StepScratch::GrowAttend(size_t attend_workspace) {
  return GrowScratch(ws_attend_, attend_workspace, min_bytes_);
}

SelectionView StepScratch::Selection(int64_t first_seq) const {
  const SelectionView all{sel_pages_.as<int32_t>(), sel_count_.as<int32_t>(), shape_.max_select,
                          shape_.grow ? sel_bound_.as<float>() : nullptr,
                          shape_.grow ? sel_limit_.as<int32_t>() : nullptr};
  return all.FromSeq(first_seq, shape_.num_kv_heads, shape_.num_q_heads);
}

KeptView StepScratch::Kept(int64_t first_seq, const int32_t* counts) const {
  int32_t* c = counts ? const_cast<int32_t*>(counts) : kept_count_.as<int32_t>();
  return KeptView{kept_tokens_.as<int32_t>(), c, shape_.max_kept}.FromSeq(first_seq,
                                                                         shape_.num_kv_heads);
}

HeadStatsView StepScratch::Stats(int64_t first_seq) const {
  const size_t heads = size_t(shape_.num_seqs) * shape_.num_q_heads;
  int32_t* sel = stats_.as<int32_t>();
  int32_t* kept = sel + heads;
  float* mass = reinterpret_cast<float*>(kept + heads);
  float* full = mass + heads;
  int32_t* cap = reinterpret_cast<int32_t*>(full + heads);
  return HeadStatsView{sel, kept, mass, full, cap}.FromSeq(first_seq, shape_.num_q_heads);
}

}  // namespace twl::pipeline_cuda
