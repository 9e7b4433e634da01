// Host-only parts of the GPU offload backend: cache sizing, and the factory's stand-in when
// the library is built without CUDA (runtime/gpu_offload_backend.cu replaces it).
#include <algorithm>

#include "offload/disk_tier.h"
#include "runtime/geometry.h"
#include "runtime/gpu_offload_backend.h"

namespace twl {

int64_t OffloadCacheSlots(const RuntimeConfig& config, int64_t num_pages) {
  const PageGeometry g = GeometryOf(config);
  const int64_t block = g.FpBlockBytes();
  if (config.gpu_cache_bytes > 0) return std::max<int64_t>(config.gpu_cache_bytes / block, 1);
  return std::max<int64_t>(num_pages * config.num_kv_heads * block / 10 / block, 64);
}

#if !TWL_HAVE_CUDA
absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendEx(
    const RuntimeConfig& /*config*/, int64_t /*num_pages*/) {
  return absl::UnavailableError("GPU offload backend: built without CUDA");
}

absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendWithDiskEx(
    const RuntimeConfig& /*config*/, int64_t /*num_pages*/, int64_t /*host_slots*/,
    std::unique_ptr<DiskTier> /*tier*/) {
  return absl::UnavailableError("GPU offload backend: built without CUDA");
}
#endif

}  // namespace twl
