// Stage 3 of the decode step, FETCH, for a store whose FP16 pages may be on disk: before the
// inner fetch (the GPU hot cache over the pinned pool, CacheFetch) moves a group's kept
// blocks, a store callback makes the pages holding them resident in the pinned pool (reads
// from the NVMe tier, spills of cold pages) and refreshes the device copy of the pool map.
// The callback runs on the host after the group's prune has completed (it reads the kept
// lists back), so a step with a disk tier waits for the host once per group; every other
// call goes to the inner fetch unchanged.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "pipeline/fetch/fetch.cuh"

namespace twl::pipeline_cuda {

class ResidentFetch final : public ForwardingFetch {
 public:
  // Called with the group's index, the group and its kept lists (device) once the prune is
  // enqueued on `compute`; enqueues whatever the inner fetch must see after it on `compute`.
  using MakeResident = std::function<absl::Status(int32_t index, const SeqGroup& group,
                                                  const KeptView& kept, cudaStream_t compute)>;

  ResidentFetch(CudaFetch* inner, MakeResident make_resident)
      : ForwardingFetch(inner), make_resident_(std::move(make_resident)) {}

  absl::Status Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                     const BatchView& batch, const KeptView& kept, cudaStream_t compute,
                     const cudaEvent_t* marks) override {
    if (absl::Status s = make_resident_(index, group, kept, compute); !s.ok()) return s;
    return inner_->Fetch(index, group, g, batch, kept, compute, marks);
  }

 private:
  MakeResident make_resident_;
};

}  // namespace twl::pipeline_cuda
