// The ring of step-plan uploads shared by the GPU stores (HBM and offload): a decode step
// packs its host plan (sequence lengths, page tables, per-sequence p, and for the HBM store
// host q/out) into a pinned slot and copies it up in one cudaMemcpyAsync. Slots rotate, so
// the host waits only for the slot's use kSlots steps ago (long done), never for the step it
// just queued. Thread-safety: one caller at a time (the Runtime serializes steps).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gpu/device.h"

namespace twl::pipeline_cuda {

class UploadRing {
 public:
  // Step plans in flight before the host waits: a serving engine queues every layer of a step
  // (and the appends between them) before it waits on the sampled token.
  static constexpr int32_t kSlots = 16;

  struct Slot {
    int32_t index = 0;
    char* host = nullptr;    // pinned, at least the requested bytes
    char* device = nullptr;  // device copy target, at least the requested bytes
  };

  UploadRing() = default;
  UploadRing(const UploadRing&) = delete;
  UploadRing& operator=(const UploadRing&) = delete;
  ~UploadRing();  // the owner has synchronized the device before

  absl::Status Init();
  // Takes the next slot for `bytes`: waits until its previous user released it, then grows
  // its pinned and device buffers (device growth: GrowScratch with `min_device_bytes`).
  absl::StatusOr<Slot> Acquire(size_t bytes, size_t min_device_bytes);
  // Enqueues the slot's host -> device copy of `bytes` on `stream`.
  absl::Status Upload(const Slot& slot, size_t bytes, cudaStream_t stream);
  // The slot may be reused once `stream` reaches this point.
  absl::Status Release(const Slot& slot, cudaStream_t stream);

 private:
  cudaEvent_t released_[kSlots] = {};
  gpu::PinnedHostBuffer host_[kSlots];
  gpu::DeviceBuffer device_[kSlots];
  int32_t next_ = 0;
};

}  // namespace twl::pipeline_cuda
