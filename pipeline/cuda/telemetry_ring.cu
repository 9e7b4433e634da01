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

absl::Status TelemetryRing::Publish(bool force_own,
                                    absl::FunctionRef<absl::Status(int32_t)> harvest) {
  const int32_t ts = current_;
  const int32_t prev = (ts + kSlots - 1) % kSlots;
  const bool own = force_own || !pending_[prev].valid;
  current_ = (current_ + 1) % kSlots;
  TWL_RETURN_IF_ERROR(harvest(own ? ts : prev));
  if (own) pending_[prev].valid = false;  // superseded by a newer report
  return absl::OkStatus();
}

absl::StatusOr<const PendingStep*> TelemetryRing::Claim(int32_t slot, const char* who) {
  PendingStep& p = pending_[slot];
  if (!p.valid) return absl::InternalError(absl::StrFormat("%s: no pending step in the slot", who));
  p.valid = false;
  TWL_CUDA(cudaEventSynchronize(landed_[slot]));
  return &p;
}

}  // namespace twl::pipeline_cuda
