// GPU backend factories when the library is built without CUDA (they then only say so),
// and the device probe. With TWL_HAVE_CUDA the factories live in runtime/*.cu.
#include "absl/status/status.h"
#include "gpu/device.h"
#include "offload/disk_tier.h"
#include "runtime/backend.h"
#include "runtime/device_probe.h"

namespace twl {

std::string NoGpuReason() {
#if TWL_HAVE_CUDA
  return gpu::GpuAvailable() ? "" : "no GPU found";
#else
  return "no GPU found; built without CUDA";
#endif
}

#if !TWL_HAVE_CUDA
absl::StatusOr<std::unique_ptr<Backend>> CreateGpuHbmBackend(const RuntimeConfig& /*config*/,
                                                             int64_t /*num_pages*/) {
  return absl::UnavailableError("GPU HBM backend: built without CUDA");
}

absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackend(
    const RuntimeConfig& /*config*/, int64_t /*num_pages*/) {
  return absl::UnavailableError("GPU offload backend: built without CUDA");
}

absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackendWithDisk(
    const RuntimeConfig& /*config*/, int64_t /*num_pages*/, int64_t /*host_slots*/,
    std::unique_ptr<DiskTier> /*tier*/) {
  return absl::UnavailableError("GPU offload backend: built without CUDA");
}
#endif

}  // namespace twl
