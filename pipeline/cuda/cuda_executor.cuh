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

class CudaExecutor {
 public:
  // Enqueues the step over `groups` (consecutive slices of the batch, in order).
  absl::Status Run(const CudaStep& step, absl::Span<const SeqGroup> groups,
                   const StepScratch& scratch, CudaFetch& fetch) const;

 private:
  TwilightPruner pruner_;
  SparseAttention attention_;
};

}  // namespace twl::pipeline_cuda
