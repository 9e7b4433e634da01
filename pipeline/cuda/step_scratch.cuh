// Device scratch of one decode step shared by the GPU stores: the selection (pages, counts,
// growing Quest's bounds and caps), the kept lists, the per-query-head statistics, and the
// workspaces of select, prune and attend. Buffers grow to the largest step seen (growth
// waits for the device; see scratch.cuh) and are shared by consecutive steps, which the
// stores order with an event. Views cover the sequences from `first_seq` on, so a store
// that pipelines groups of sequences hands each group its slice.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"
#include "gpu/device.h"

namespace twl::pipeline_cuda {

struct StepShape {
  int32_t num_seqs = 0, num_q_heads = 0, num_kv_heads = 0;
  int32_t max_select = 0;  // selection stride (Selector::Stride)
  int32_t max_kept = 0;    // kept-list stride (max_select * page_size)
  bool grow = false;       // growing Quest: bounds and caps
};

class StepScratch {
 public:
  // `min_bytes`: least allocation of each buffer (GrowScratch).
  explicit StepScratch(size_t min_bytes) : min_bytes_(min_bytes) {}

  // The step's shape: the views and the growth below follow it.
  void SetShape(const StepShape& shape) { shape_ = shape; }
  // Selection, kept lists, statistics and the select / prune workspaces.
  absl::Status GrowSelectPrune(size_t select_workspace, size_t prune_workspace);
  absl::Status GrowAttend(size_t attend_workspace);

  SelectionView Selection(int64_t first_seq) const;
  // Kept lists of the sequences from first_seq on, with `counts` (whole-batch array, e.g. a
  // fetch stage's split of the counts) or, when null, the pruner's counts.
  KeptView Kept(int64_t first_seq, const int32_t* counts = nullptr) const;
  HeadStatsView Stats(int64_t first_seq) const;

  int32_t* kept_tokens() const { return kept_tokens_.as<int32_t>(); }
  int32_t* kept_count() const { return kept_count_.as<int32_t>(); }
  // Statistics as laid out for the telemetry copy: selected, kept, est_mass, full_mass,
  // cap_hit, each [num_seqs][num_q_heads] 4-byte values.
  const void* stats() const { return stats_.get(); }
  size_t stats_bytes() const { return size_t(shape_.num_seqs) * shape_.num_q_heads * 20; }

  void* select_workspace() const { return ws_select_.get(); }
  size_t select_workspace_bytes() const { return ws_select_.bytes(); }
  void* prune_workspace() const { return ws_prune_.get(); }
  size_t prune_workspace_bytes() const { return ws_prune_.bytes(); }
  void* attend_workspace() const { return ws_attend_.get(); }
  size_t attend_workspace_bytes() const { return ws_attend_.bytes(); }

 private:
  const size_t min_bytes_;
  StepShape shape_;
  gpu::DeviceBuffer sel_pages_, sel_count_, sel_bound_, sel_limit_;
  gpu::DeviceBuffer kept_tokens_, kept_count_, stats_;
  gpu::DeviceBuffer ws_select_, ws_prune_, ws_attend_;
};

}  // namespace twl::pipeline_cuda
