#include "pipeline/cuda/telemetry_ring.cuh"

#include <algorithm>
#include <cstdint>

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

namespace {

struct CopyParts {
  const uint32_t* src[TelemetryRing::kMaxParts];
  uint32_t words[TelemetryRing::kMaxParts];
  uint32_t at[TelemetryRing::kMaxParts];  // first destination word
  int32_t n;
};

// Grid-stride copy of every part into the mapped pinned slot (a few KB per step).
__global__ void CopyPartsKernel(CopyParts parts, uint32_t* __restrict__ dst) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (int32_t k = 0; k < parts.n; ++k) {
    const uint32_t* src = parts.src[k];
    uint32_t* out = dst + parts.at[k];
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < parts.words[k]; i += stride) {
      out[i] = src[i];
    }
  }
}

}  // namespace

absl::Status TelemetryRing::CopyIn(int32_t slot, absl::Span<const Part> parts,
                                   cudaStream_t stream) {
  if (parts.size() > size_t(kMaxParts)) {
    return absl::InternalError(absl::StrFormat("telemetry: %d parts, at most %d", parts.size(),
                                               kMaxParts));
  }
  CopyParts cp{};
  size_t words = 0;
  for (const Part& part : parts) {
    if (part.bytes % 4 != 0 || part.bytes / 4 > UINT32_MAX - words) {
      return absl::InternalError(
          absl::StrFormat("telemetry: a part of %d bytes (whole words only)", part.bytes));
    }
    if (part.bytes == 0) continue;
    if (part.src == nullptr) {  // a kernel reading it would fault the context
      return absl::InternalError("telemetry: a part with no source");
    }
    cp.src[cp.n] = static_cast<const uint32_t*>(part.src);
    cp.words[cp.n] = uint32_t(part.bytes / 4);
    cp.at[cp.n] = uint32_t(words);
    words += part.bytes / 4;
    ++cp.n;
  }
  TWL_RETURN_IF_ERROR(host_[slot].Reserve(words * 4));
  if (words == 0) return absl::OkStatus();
  // Pinned memory from cudaMallocHost is mapped (unified addressing); the device's address
  // of it is asked for rather than assumed.
  void* dev = nullptr;
  TWL_CUDA(cudaHostGetDevicePointer(&dev, host_[slot].data(), 0));
  constexpr int kThreads = 256;
  const unsigned blocks = unsigned(std::min<size_t>((words + kThreads - 1) / kThreads, 32));
  CopyPartsKernel<<<blocks, kThreads, 0, stream>>>(cp, static_cast<uint32_t*>(dev));
  TWL_CUDA(cudaGetLastError());
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
