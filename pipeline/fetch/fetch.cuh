// Stage 3 of the decode step, FETCH, as the CUDA executor sees it: after a group's prune,
// make its kept FP16 blocks readable by the attention, and say where they are. The HBM store
// has nothing to move (IdentityFetch); the offload store plans its GPU hot cache and gathers
// the misses on a stream of its own (CacheFetch). A fetch stage orders its own streams
// against the compute stream (events), so the executor only calls it in step order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "cache/gpu_page_cache.h"
#include "core/stage_views.h"

namespace twl::pipeline_cuda {

// Where a group's attention reads its kept rows once fetched.
struct AttendSource {
  FpKvView kv;                      // resident rows (identity addressed or via slot_of_block)
  const int32_t* counts = nullptr;  // [units] kept counts attended from kv (null: the pruner's)
  // Units that did not fit (groups with may_overflow): attended from direct_kv with
  // direct_counts into direct_out (whole batch layout), then merged by MergeDirect.
  // direct_counts null: no such units.
  FpKvView direct_kv;
  const int32_t* direct_counts = nullptr;
  fp16_t* direct_out = nullptr;
};

class CudaFetch {
 public:
  virtual ~CudaFetch() = default;
  // Called once the group's prune is enqueued on `compute`: enqueues what makes the group's
  // kept blocks readable. `marks`: the group's timing events (GroupEvent order) or null.
  virtual absl::Status Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                             const BatchView& batch, const KeptView& kept,
                             cudaStream_t compute, const cudaEvent_t* marks) = 0;
  // Called before the group's attention: `compute` waits for the group's fetch.
  virtual absl::Status WaitFetched(int32_t index, cudaStream_t compute) = 0;
  virtual AttendSource Source() const = 0;
  // Merges the direct units' outputs (group slices of direct_out and out) on `compute`.
  virtual absl::Status MergeDirect(const PageGeometry& g, const SeqGroup& group,
                                   int32_t num_q_heads, const fp16_t* direct_out, fp16_t* out,
                                   cudaStream_t compute) = 0;
};

// A fetch stage that wraps another (the disk tier's stages over the GPU cache): every call
// goes to `inner` unless the wrapper overrides it.
class ForwardingFetch : public CudaFetch {
 public:
  explicit ForwardingFetch(CudaFetch* inner) : inner_(inner) {}
  absl::Status Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                     const BatchView& batch, const KeptView& kept, cudaStream_t compute,
                     const cudaEvent_t* marks) override {
    return inner_->Fetch(index, group, g, batch, kept, compute, marks);
  }
  absl::Status WaitFetched(int32_t index, cudaStream_t compute) override {
    return inner_->WaitFetched(index, compute);
  }
  AttendSource Source() const override { return inner_->Source(); }
  absl::Status MergeDirect(const PageGeometry& g, const SeqGroup& group, int32_t num_q_heads,
                           const fp16_t* direct_out, fp16_t* out,
                           cudaStream_t compute) override {
    return inner_->MergeDirect(g, group, num_q_heads, direct_out, out, compute);
  }

 protected:
  CudaFetch* inner_;
};

}  // namespace twl::pipeline_cuda
