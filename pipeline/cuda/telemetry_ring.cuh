// The telemetry ring shared by the GPU stores: a step's figures (per-head stats, kept
// counts, cache counters) are copied into a pinned slot on the step's own stream, and a later
// decode publishes them once they have landed, so with device pointers the host never waits
// for a step: each decode publishes the newest earlier step whose figures have landed by
// then (checked with cudaEventQuery, no wait), or nothing new when none has (the first step
// of a runtime, for one). A step with host pointers (synchronous anyway) or with captured
// kept lists publishes its own figures. The host waits only when it runs
// kSlots steps ahead of the GPU (a slot is reused while its figures are still in flight).
// Each slot also holds the timing events of its step (how many: the store's choice). One
// caller at a time.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gpu/device.h"

namespace twl::pipeline_cuda {

// What the host must remember of a queued step to interpret its pinned figures.
struct PendingStep {
  bool valid = false;
  bool ran_pruner = true;  // HBM store: false for a dense step (figures from seq_len)
  int32_t layer = -1, num_seqs = 0, num_q_heads = 0, num_groups = 0;
  int64_t step_id = 0;           // DecodeRequest::step_id of the step
  std::vector<int32_t> seq_len;  // HBM store, dense steps only
};

class TelemetryRing {
 public:
  // Steps whose figures may be in flight at once; a serving engine queues every layer of a
  // step (and appends between them) before it waits on the sampled token.
  static constexpr int32_t kSlots = 8;

  TelemetryRing() = default;
  TelemetryRing(const TelemetryRing&) = delete;
  TelemetryRing& operator=(const TelemetryRing&) = delete;
  ~TelemetryRing();  // the owner has synchronized the device before

  // `timing_events`: timing events per slot (created with timing on).
  absl::Status Init(int32_t timing_events);

  // The slot the step being queued writes.
  int32_t current() const { return current_; }
  cudaEvent_t timing(int32_t slot, int32_t i) const {
    return timing_[size_t(slot) * size_t(timing_events_) + size_t(i)];
  }
  gpu::PinnedHostBuffer& host(int32_t slot) { return host_[slot]; }
  PendingStep& pending(int32_t slot) { return pending_[slot]; }
  // A device array of a step's figures: `bytes` (a multiple of 4) from `src`.
  struct Part {
    const void* src = nullptr;
    size_t bytes = 0;
  };
  static constexpr int kMaxParts = 8;
  // Grows the slot's pinned buffer to hold `parts` back to back and enqueues their copy on
  // `stream` as one kernel that writes the mapped buffer directly: one launch, where a
  // cudaMemcpyAsync per part cost a copy-engine round trip each on the step's stream.
  absl::Status CopyIn(int32_t slot, absl::Span<const Part> parts, cudaStream_t stream);
  // The slot's figures have landed in pinned memory once `stream` gets here.
  absl::Status MarkLanded(int32_t slot, cudaStream_t stream);

  // After the step of current() was queued: picks the slot to report (this step's when
  // `force_own`, else the newest older step whose figures have landed, found without
  // waiting), calls `harvest(slot)` (not at all when none has landed:
  // returns false then), drops every older pending step (superseded), and advances
  // current() to a slot whose previous figures have landed (waits only if the host is
  // kSlots steps ahead).
  absl::StatusOr<bool> Publish(bool force_own, absl::FunctionRef<absl::Status(int32_t)> harvest);
  // For harvest: takes the slot's pending step (InternalError "<who>: no pending step in the
  // slot" when none) and waits until its figures have landed.
  absl::StatusOr<const PendingStep*> Claim(int32_t slot, const char* who);

 private:
  int32_t timing_events_ = 0;
  std::vector<cudaEvent_t> timing_;  // [kSlots][timing_events_]
  cudaEvent_t landed_[kSlots] = {};
  gpu::PinnedHostBuffer host_[kSlots];
  PendingStep pending_[kSlots];
  int32_t current_ = 0;
};

}  // namespace twl::pipeline_cuda
