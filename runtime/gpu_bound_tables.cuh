// Device side of a bound batch (runtime/bound_batch.h) for the GPU stores: the tables
// ([num_layers][n lengths | n * max_pages page ids], device memory) and everything one step of
// the batch's fixed shape needs (step scratch, q/out conversion buffers, and for the offload
// store its fetch stage's own buffers), all allocated at bind time so that a step allocates
// nothing and its pointers never change (CUDA graphs). Also what both GPU stores do alike
// with them: creation, the checks of writes, reads and steps, the read-back, and a step's
// q/out conversion.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gpu/device.h"
#include "pipeline/cuda/cuda_executor.cuh"
#include "pipeline/cuda/step_scratch.cuh"
#include "pipeline/fetch/fetch.cuh"
#include "runtime/backend.h"

namespace twl {

class GpuBoundTables final : public BoundTables {
 public:
  GpuBoundTables(int32_t num_seqs, int32_t max_pages)
      : num_seqs_(num_seqs), max_pages_(max_pages) {}
  // A queued step (any stream) may still read the tables, the scratch or the fetch buffers.
  ~GpuBoundTables() override { cudaDeviceSynchronize(); }

  int64_t WordsPerLayer() const { return BoundWordsPerLayer(num_seqs_, max_pages_); }
  int32_t* Layer(int32_t layer) const { return words_.as<int32_t>() + layer * WordsPerLayer(); }
  // Where a write's index counts from: the layer's words, or all of them (kAllBoundLayers).
  int32_t* WriteBase(int32_t layer) const { return Layer(layer == kAllBoundLayers ? 0 : layer); }
  int32_t num_seqs() const { return num_seqs_; }
  int32_t max_pages() const { return max_pages_; }
  // The layer's plan: lengths and page table (device pointers), row stride max_pages.
  BatchView Batch(int32_t layer, int32_t num_q_heads) const {
    BatchView b;
    b.num_seqs = num_seqs_;
    b.num_q_heads = num_q_heads;
    b.seq_len = Layer(layer);
    b.page_table = Layer(layer) + num_seqs_;
    b.max_pages = max_pages_;
    return b;
  }

  // The layer's reserved rows as append segments (device pointer, num_seqs of them).
  const AppendSegment* Segments(int32_t layer) const {
    return reinterpret_cast<const AppendSegment*>(Layer(layer) +
                                                  BoundSegmentsOffset(num_seqs_, max_pages_));
  }

  gpu::DeviceBuffer& words() { return words_; }
  pipeline_cuda::StepScratch& scratch() { return scratch_; }
  gpu::DeviceBuffer& conv() { return conv_; }  // q16 | out16 for BF16/FP32 callers
  // The offload store's fetch stage for this batch (null for the HBM store).
  pipeline_cuda::CudaFetch* fetch() const { return fetch_.get(); }
  void set_fetch(std::unique_ptr<pipeline_cuda::CudaFetch> f) { fetch_ = std::move(f); }

 private:
  const int32_t num_seqs_, max_pages_;
  gpu::DeviceBuffer words_;
  pipeline_cuda::StepScratch scratch_{256};  // never empty: valid pointers for every view
  gpu::DeviceBuffer conv_;
  std::unique_ptr<pipeline_cuda::CudaFetch> fetch_;  // declared last: freed first
};

// Tables for `shape` over `num_layers` layers: the step scratch shaped by `executor` for the
// shape's selector (select and prune included), the conversion buffers, and the device words
// copied from `words` (synchronously: not a hot path).
absl::StatusOr<std::unique_ptr<GpuBoundTables>> CreateGpuBoundTables(
    const pipeline_cuda::CudaExecutor& executor, const PageGeometry& g, int32_t num_layers,
    int32_t num_q_heads, const BoundShape& shape, absl::Span<const int32_t> words);

// `tables` as GpuBoundTables after checking the layer and every write's index (Internal: the
// Runtime never sends bad ones). kAllBoundLayers: indices over every layer's words, whose
// base is then Layer(0) (WriteBase).
absl::StatusOr<GpuBoundTables*> CheckBoundWrites(BoundTables* tables, int32_t layer,
                                                 int32_t num_layers,
                                                 absl::Span<const TableWrite> writes);
// Copies one layer's device words into `words` on `stream` (which the caller has ordered
// after the writes) and waits for it.
absl::Status ReadBoundWords(BoundTables* tables, int32_t layer, int32_t num_layers,
                            absl::Span<int32_t> words, cudaStream_t stream);

// A bound append's checks (before anything is enqueued): tables, k, v, layer, shape, dtype.
absl::StatusOr<GpuBoundTables*> CheckBoundAppend(const BoundAppendRequest& req,
                                                 int32_t num_layers);
// A bound step's checks (before anything is enqueued): tables, q, out, layer, shape, p.
absl::StatusOr<GpuBoundTables*> CheckBoundStep(const BoundDecodeRequest& req,
                                               int32_t num_layers);
// q and out as the pipeline's FP16: the caller's own, or the batch's conversion buffers with
// q converted on `stream` (the caller has ordered it after the batch's previous step).
struct BoundIo {
  const fp16_t* q = nullptr;
  fp16_t* out = nullptr;
  int64_t elems = 0;
};
absl::StatusOr<BoundIo> BoundInput(const BoundDecodeRequest& req, GpuBoundTables& t,
                                   const PageGeometry& g, int32_t device_id,
                                   cudaStream_t stream);
// Converts out back into the caller's dtype (nothing for FP16).
absl::Status BoundOutput(const BoundDecodeRequest& req, const BoundIo& io, int32_t device_id,
                         cudaStream_t stream);

// base[w.index] = w.value for every write, enqueued on `stream` (the writes travel as kernel
// parameters: no staging buffer, nothing for the host to wait on).
absl::Status LaunchTableWrites(int32_t* base, absl::Span<const TableWrite> writes,
                               cudaStream_t stream);

}  // namespace twl
