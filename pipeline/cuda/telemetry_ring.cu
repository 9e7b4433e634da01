#include "pipeline/cuda/telemetry_ring.cuh"

#include "absl/strings/str_format.h"
#include "gpu/cuda/cuda_status.cuh"

namespace twl::pipeline_cuda {

TelemetryRing::~TelemetryRing() {
  for (cudaEvent_t e : timing_) {
    if (e) cudaEventDestroy(e);
  }
  for (cudaEvent_t e : landed_) {
    if (e) cudaEventDestroy(e);
  }
}

absl::Status TelemetryRing::Init(int32_t timing_events) {
  for (cudaEvent_t& e : landed_) {
    TWL_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  timing_events_ = timing_events;
  timing_.assign(size_t(kSlots) * size_t(timing_events), nullptr);
  for (cudaEvent_t& e : timing_) TWL_CUDA(cudaEventCreate(&e));
  return absl::OkStatus();
}

absl::Status TelemetryRing::MarkLanded(int32_t slot, cudaStream_t stream) {
  TWL_CUDA(cudaEventRecord(landed_[slot], stream));
  return absl::OkStatus();
}

absl::StatusOr<bool> TelemetryRing::Publish(
    bool force_own, absl::FunctionRef<absl::Status(int32_t)> harvest) {
  const int32_t ts = current_;
  auto older = [&](int32_t k) { return (ts + kSlots - k) % kSlots; };  // k steps back
  int32_t report = -1;
  if (force_own) {
    report = ts;
  } else {
    for (int32_t k = 1; k < kSlots && report < 0; ++k) {
      const int32_t i = older(k);
      if (!pending_[i].valid) continue;
      const cudaError_t q = cudaEventQuery(landed_[i]);
      if (q == cudaSuccess) {
        report = i;
      } else if (q != cudaErrorNotReady) {
        TWL_CUDA(q);  // a device fault shows here
      }
    }
  }
  if (report >= 0) {
    TWL_RETURN_IF_ERROR(harvest(report));
    // Steps older than the one reported are superseded.
    const int32_t back = (ts - report + kSlots) % kSlots;
    for (int32_t k = back + 1; k < kSlots; ++k) pending_[older(k)].valid = false;
  }
  current_ = (current_ + 1) % kSlots;
  // The next step writes this slot: figures still in flight there (the host is kSlots steps
  // ahead) must land before their pinned buffer is rewritten or regrown.
  if (pending_[current_].valid) {
    TWL_CUDA(cudaEventSynchronize(landed_[current_]));
    pending_[current_].valid = false;
  }
  return report >= 0;
}

absl::StatusOr<const PendingStep*> TelemetryRing::Claim(int32_t slot, const char* who) {
  PendingStep& p = pending_[slot];
  if (!p.valid) return absl::InternalError(absl::StrFormat("%s: no pending step in the slot", who));
  p.valid = false;
  TWL_CUDA(cudaEventSynchronize(landed_[slot]));
  return &p;
}

}  // namespace twl::pipeline_cuda
