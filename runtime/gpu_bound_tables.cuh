// Device side of a bound batch (runtime/bound_batch.h) for the GPU stores: the tables
// ([num_layers][n lengths | n * max_pages page ids], device memory) and everything one step of
// the batch's fixed shape needs (step scratch, q/out conversion buffers), all allocated at
// bind time so that a step allocates nothing and its pointers never change (CUDA graphs).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gpu/device.h"
#include "pipeline/cuda/step_scratch.cuh"
#include "runtime/backend.h"

namespace twl {

class GpuBoundTables final : public BoundTables {
 public:
  GpuBoundTables(int32_t num_seqs, int32_t max_pages)
      : num_seqs_(num_seqs), max_pages_(max_pages) {}
  // A queued step (any stream) may still read the tables or the scratch.
  ~GpuBoundTables() override { cudaDeviceSynchronize(); }

  int64_t WordsPerLayer() const { return int64_t(num_seqs_) * (1 + int64_t(max_pages_)); }
  int32_t* Layer(int32_t layer) const { return words_.as<int32_t>() + layer * WordsPerLayer(); }
  int32_t num_seqs() const { return num_seqs_; }
  int32_t max_pages() const { return max_pages_; }

  gpu::DeviceBuffer& words() { return words_; }
  pipeline_cuda::StepScratch& scratch() { return scratch_; }
  gpu::DeviceBuffer& conv() { return conv_; }  // q16 | out16 for BF16/FP32 callers

 private:
  const int32_t num_seqs_, max_pages_;
  gpu::DeviceBuffer words_;
  pipeline_cuda::StepScratch scratch_{256};  // never empty: valid pointers for every view
  gpu::DeviceBuffer conv_;
};

// base[w.index] = w.value for every write, enqueued on `stream` (the writes travel as kernel
// parameters: no staging buffer, nothing for the host to wait on).
absl::Status LaunchTableWrites(int32_t* base, absl::Span<const TableWrite> writes,
                               cudaStream_t stream);

}  // namespace twl
