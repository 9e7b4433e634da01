// FETCH of the HBM store: every block is device resident, so nothing moves and the
// attention reads the pool (identity addressed) with the pruner's kept counts.
#pragma once

#include "pipeline/fetch/fetch.cuh"

namespace twl::pipeline_cuda {

class IdentityFetch final : public CudaFetch {
 public:
  explicit IdentityFetch(const FpKvView& pool) : pool_(pool) {}
  absl::Status Fetch(int32_t, const SeqGroup&, const PageGeometry&, const BatchView&,
                     const KeptView&, cudaStream_t, const cudaEvent_t*) override {
    return absl::OkStatus();
  }
  absl::Status WaitFetched(int32_t, cudaStream_t) override { return absl::OkStatus(); }
  AttendSource Source() const override {
    AttendSource s;
    s.kv = pool_;
    return s;
  }
  absl::Status MergeDirect(const PageGeometry&, const SeqGroup&, int32_t, const fp16_t*,
                           fp16_t*, cudaStream_t) override {
    return absl::OkStatus();  // never called: no direct units
  }

 private:
  const FpKvView pool_;
};

}  // namespace twl::pipeline_cuda
