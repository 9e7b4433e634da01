// The page geometry a runtime configuration implies: shared by the Runtime and every
// backend so that they agree on where each byte of a page lives.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "core/page_layout.h"
#include "runtime/runtime.h"

namespace twl {

inline PageGeometry GeometryOf(const RuntimeConfig& config) {
  PageGeometry g;
  g.page_size = config.page_size;
  g.head_dim = config.head_dim;
  g.num_kv_heads = config.num_kv_heads;
  g.k_bits = config.k_bits;
  g.k_scheme = config.k_scheme;
  g.kv_dtype = config.kv_dtype == DType::kBf16 ? kKvBf16 : kKvFp16;
  return g;
}

// The DType of the stored K/V elements (PageGeometry::kv_dtype).
inline DType KvDType(const PageGeometry& g) {
  return g.kv_dtype == kKvBf16 ? DType::kBf16 : DType::kFp16;
}

// InvalidArgument unless 0 <= page < num_pages (a backend is sized for num_pages pages).
inline absl::Status CheckPageId(int32_t page, int64_t num_pages) {
  if (page < 0 || page >= num_pages) {
    return absl::InvalidArgumentError(
        absl::StrFormat("page id %d out of range [0, %d)", page, num_pages));
  }
  return absl::OkStatus();
}

}  // namespace twl
