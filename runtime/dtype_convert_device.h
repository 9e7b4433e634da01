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

// dst[i] = convert(src[i]) for n elements, enqueued on `stream` of the current device. Either
// from is FP16 (FP16 -> to) or to is FP16 (from -> FP16).
absl::Status DeviceConvert(const void* src, DType from, void* dst, DType to, int64_t n,
                           void* stream);
// Stream-ordered scratch (cudaMallocAsync / cudaFreeAsync) on `device`.
absl::StatusOr<void*> DeviceScratchAlloc(int32_t device, size_t bytes, void* stream);
void DeviceScratchFree(void* p, void* stream);
// The legacy default stream's handle (cudaStreamLegacy).
void* LegacyDefaultStream();

}  // namespace twl
