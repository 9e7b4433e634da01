// C entry points of bound batches (issue 11.3): twl_batch_create, twl_batch_free,
// twl_decode_batch, twl_batch_tables, twl_batch_reserve, twl_batch_append. Thin: twl::Runtime (runtime/bound_batch.h) does the work.
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "api/handle.h"
#include "twilight.h"

namespace {

using twl::api::CheckHandle;
using twl::api::Guard;

absl::Status CheckAligned(const char* what, const void* p, size_t align) {
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s (device memory) at %p is not %d-byte aligned", what, p, align));
  }
  return absl::OkStatus();
}

// The dtypes of q/out and k/v (FP16, BF16, FP32), as their C value.
absl::StatusOr<int32_t> KnownDtype(twl_dtype dtype) {
  const int32_t type = twl::api::EnumValue(dtype);
  if (type != TWL_DTYPE_FP16 && type != TWL_DTYPE_BF16 && type != TWL_DTYPE_FP32) {
    return absl::InvalidArgumentError(absl::StrFormat("dtype %d unknown", type));
  }
  return type;
}

}  // namespace

extern "C" {

twl_status twl_batch_create(twl_runtime* rt, const twl_seq_id* seqs, int32_t num_seqs,
                            int32_t max_tokens, twl_batch_id* out) noexcept {
  if (out != nullptr) *out = TWL_INVALID_BATCH_ID;
  return Guard(rt, "twl_batch_create", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out must not be NULL");
    if (num_seqs < 1) {
      return absl::InvalidArgumentError(absl::StrFormat("num_seqs is %d, must be >= 1", num_seqs));
    }
    if (seqs == nullptr) return absl::InvalidArgumentError("seqs must not be NULL");
    std::vector<twl::SeqId> ids(static_cast<size_t>(num_seqs));
    std::memcpy(ids.data(), seqs, sizeof(twl_seq_id) * size_t(num_seqs));
    std::lock_guard<std::mutex> lock(rt->mu);
    absl::StatusOr<int64_t> id = rt->runtime->BindBatch(ids, max_tokens);
    if (!id.ok()) return id.status();
    *out = *id;
    return absl::OkStatus();
  });
}

twl_status twl_batch_free(twl_runtime* rt, twl_batch_id batch) noexcept {
  return Guard(rt, "twl_batch_free", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(rt->mu);
    return rt->runtime->UnbindBatch(batch);
  });
}

twl_status twl_decode_batch(twl_runtime* rt, twl_batch_id batch, int32_t layer, const void* q,
                            void* out, twl_dtype dtype, void* stream) noexcept {
  return Guard(rt, "twl_decode_batch", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (q == nullptr || out == nullptr) {
      return absl::InvalidArgumentError("q and out must not be NULL");
    }
    absl::StatusOr<int32_t> known = KnownDtype(dtype);
    if (!known.ok()) return known.status();
    const int32_t type = *known;
    if (rt->backend != TWL_BACKEND_CPU) {
      // FP16 q is loaded as 16-byte vectors; other dtypes are converted elementwise first.
      const size_t elem = type == TWL_DTYPE_FP32 ? 4 : 2;
      if (absl::Status s = CheckAligned("q", q, type == TWL_DTYPE_FP16 ? 16 : elem); !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckAligned("out", out, elem); !s.ok()) return s;
    }
    std::lock_guard<std::mutex> lock(rt->mu);
    return rt->runtime->DecodeBatch(batch, layer, q, out, static_cast<twl::DType>(type), stream);
  });
}

twl_status twl_batch_reserve(twl_runtime* rt, twl_batch_id batch, void* stream) noexcept {
  return Guard(rt, "twl_batch_reserve", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(rt->mu);
    return rt->runtime->ReserveBatchRows(batch, stream);
  });
}

twl_status twl_batch_append(twl_runtime* rt, twl_batch_id batch, int32_t layer, const void* k,
                            const void* v, twl_dtype dtype, void* stream) noexcept {
  return Guard(rt, "twl_batch_append", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (k == nullptr || v == nullptr) {
      return absl::InvalidArgumentError("k and v must not be NULL");
    }
    absl::StatusOr<int32_t> known = KnownDtype(dtype);
    if (!known.ok()) return known.status();
    const int32_t type = *known;
    if (rt->backend != TWL_BACKEND_CPU) {
      // Rows are read elementwise (vector loads only where 16-byte aligned).
      const size_t elem = type == TWL_DTYPE_FP32 ? 4 : 2;
      if (absl::Status s = CheckAligned("k", k, elem); !s.ok()) return s;
      if (absl::Status s = CheckAligned("v", v, elem); !s.ok()) return s;
    }
    std::lock_guard<std::mutex> lock(rt->mu);
    return rt->runtime->AppendBatchRows(batch, layer, k, v, static_cast<twl::DType>(type),
                                        stream);
  });
}

twl_status twl_batch_tables(twl_runtime* rt, twl_batch_id batch, int32_t layer, int32_t* lens,
                            int64_t lens_capacity, int32_t* pages, int64_t pages_capacity,
                            int32_t* out_max_pages) noexcept {
  return Guard(rt, "twl_batch_tables", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    std::vector<int32_t> l, p;
    int32_t max_pages = 0;
    std::lock_guard<std::mutex> lock(rt->mu);
    if (absl::Status s = rt->runtime->BatchTables(batch, layer, /*device=*/true, &l, &p,
                                                  &max_pages);
        !s.ok()) {
      return s;
    }
    if (lens != nullptr && lens_capacity < int64_t(l.size())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "lens_capacity %d is below the batch's %d sequences", lens_capacity, l.size()));
    }
    if (pages != nullptr && pages_capacity < int64_t(p.size())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "pages_capacity %d is below the %d entries of the page table", pages_capacity,
          p.size()));
    }
    if (lens != nullptr) std::memcpy(lens, l.data(), l.size() * sizeof(int32_t));
    if (pages != nullptr) std::memcpy(pages, p.data(), p.size() * sizeof(int32_t));
    if (out_max_pages != nullptr) *out_max_pages = max_pages;
    return absl::OkStatus();
  });
}

}  // extern "C"
