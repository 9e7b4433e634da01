// The CUDA executor: the stage sequence of one decode step, written once for every GPU
// store. Per pipeline group of sequences, on the compute stream:
//   SELECT (Selector) -> PRUNE (TwilightPruner) -> FETCH (the store's CudaFetch, which may
//   run on a stream of its own) -> ATTEND (SparseAttention over where the fetch put the rows)
// with the attention of group g enqueued after the select/prune/fetch of group g+1, so the
// prune of g+1 overlaps the fetch of g, and the attention of g the fetch of g+1. A store
// with one group and no fetch (HBM) runs select -> prune -> attend back to back.
// The executor owns no memory: the store hands it the step's device plan, its StepScratch
// and its fetch stage; nothing here waits for the host.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/gpu_page_cache.h"
#include "core/stage_views.h"
#include "pipeline/attend/sparse/sparse_attention.h"
#include "pipeline/cuda/step_scratch.cuh"
#include "pipeline/cuda/telemetry_ring.cuh"
#include "pipeline/fetch/fetch.cuh"
#include "pipeline/prune/twilight/twilight_pruner.h"
#include "pipeline/select/selector.h"

namespace twl::pipeline_cuda {

// One step as the store prepared it. Every pointer is a device pointer.
struct CudaStep {
  PageGeometry g;
  const Selector* selector = nullptr;
  SelectorParams selector_params;
  PrunerParams pruner;     // pruner.seq_p: whole-batch device array, or null
  BatchView batch;         // whole batch: device seq_len and page_table
  const fp16_t* q = nullptr;
  fp16_t* out = nullptr;
  QuantKView qk;           // estimation store
  FpKvView prune_kv;       // FP16 K the pruner reads when g.k_bits == 16
  size_t ws_select = 0, ws_prune = 0, ws_attend = 0;  // workspace bytes for the launchers
  cudaStream_t compute = nullptr;
  // Timing events (GroupEvent order) come from this ring slot; null ring: no timing.
  const TelemetryRing* timing = nullptr;
  int32_t timing_slot = 0;
};

// A step of one store's call: what every backend sets per call. Workspace sizes and timing
// stay at their defaults (the executor sizes the first, the caller sets the second).
inline CudaStep MakeCudaStep(const PageGeometry& g, const Selector& selector,
                             const SelectorParams& sel, const PrunerParams& pruner,
                             const BatchView& batch, const fp16_t* q, fp16_t* out,
                             const QuantKView& qk, const FpKvView& prune_kv,
                             cudaStream_t compute) {
  CudaStep step;
  step.g = g;
  step.selector = &selector;
  step.selector_params = sel;
  step.pruner = pruner;
  step.batch = batch;
  step.q = q;
  step.out = out;
  step.qk = qk;
  step.prune_kv = prune_kv;
  step.compute = compute;
  return step;
}

// The strides of a step's selection and kept lists, as its StepScratch is shaped.
struct StepStrides {
  int32_t max_select = 0;  // pages per (sequence, KV head): Selector::Stride
  int32_t max_kept = 0;    // tokens per (sequence, KV head): max_select * page_size
};

class CudaExecutor {
 public:
  // Shapes `scratch` for a step of `num_seqs` sequences of at most `max_pages` pages each
  // under `selector`, and grows its buffers (a growth waits for the device): the attention
  // workspace always; the selection, kept lists, statistics and the select / prune
  // workspaces when `select_prune` (a dense step needs none of them). InvalidArgument,
  // prefixed by `what`, when the kept-token stride is past the kernels' int32 indexing.
  absl::StatusOr<StepStrides> PrepareScratch(StepScratch& scratch, const PageGeometry& g,
                                             const Selector& selector,
                                             const SelectorParams& params, int32_t num_seqs,
                                             int32_t num_q_heads, int32_t max_pages,
                                             bool select_prune, const char* what) const;

  // Enqueues the step over `groups` (consecutive slices of the batch, in order).
  absl::Status Run(const CudaStep& step, absl::Span<const SeqGroup> groups,
                   const StepScratch& scratch, CudaFetch& fetch) const;
  // The step over the whole batch as one group with every block resident in `pool`, nothing
  // to fetch (IdentityFetch): the HBM store, and the kernel benchmark's timed step. The
  // workspace sizes are the scratch's.
  absl::Status RunResident(CudaStep step, const StepScratch& scratch,
                           const FpKvView& pool) const;

 private:
  TwilightPruner pruner_;
  SparseAttention attention_;
};

}  // namespace twl::pipeline_cuda
