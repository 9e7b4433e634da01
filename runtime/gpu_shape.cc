// Creation-time shape checks of the GPU stores (see gpu_shape.h).
#include "runtime/gpu_shape.h"

#include "gpu/kernels.h"
#include "absl/strings/str_format.h"

namespace twl {

absl::Status CheckGpuKernelShape(const RuntimeConfig& config, std::string_view store) {
  if (!GpuKernelsSupportHeadDim(config.head_dim)) {
    return absl::UnimplementedError(absl::StrFormat(
        "%s: head_dim %d unsupported (64, 96, 128 or 256; use the CPU backend)", store,
        config.head_dim));
  }
  if (config.num_q_heads / config.num_kv_heads > kGpuMaxGroup) {
    return absl::UnimplementedError(
        absl::StrFormat("%s: more than %d query heads per KV head", store, kGpuMaxGroup));
  }
  return absl::OkStatus();
}

}  // namespace twl
