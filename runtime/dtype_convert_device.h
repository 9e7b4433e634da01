// Conversion of decode q/out between the caller's dtype (BF16, FP32) and the FP16 the pipeline
// runs on, for device memory: one elementwise kernel on the caller's stream, so nothing
// synchronizes. No CUDA types here (streams travel as void*). Built without CUDA, every call
// returns Unavailable.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/runtime.h"

namespace twl {

// Each call selects `device` for its duration and restores the calling thread's device after.
// dst[i] = convert(src[i]) for n elements, enqueued on `stream`. Either from is FP16
// (FP16 -> to) or to is FP16 (from -> FP16).
absl::Status DeviceConvert(int32_t device, const void* src, DType from, void* dst, DType to,
                           int64_t n, void* stream);
// Stream-ordered scratch (cudaMallocAsync / cudaFreeAsync).
absl::StatusOr<void*> DeviceScratchAlloc(int32_t device, size_t bytes, void* stream);
void DeviceScratchFree(int32_t device, void* p, void* stream);
// The legacy default stream's handle (cudaStreamLegacy).
void* LegacyDefaultStream();

}  // namespace twl
