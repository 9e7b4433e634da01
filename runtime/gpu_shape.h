// What the GPU stores refuse at creation, in one place: shapes the kernels do not handle.
// Refused when the store is made rather than at the first decode, after the caller has
// appended a prompt.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "runtime/runtime.h"

namespace twl {

// Unimplemented (prefixed with `store`, e.g. "GPU HBM backend") when the GPU kernels do not
// support config's head_dim or its query heads per KV head; OK otherwise.
absl::Status CheckGpuKernelShape(const RuntimeConfig& config, std::string_view store);

}  // namespace twl
