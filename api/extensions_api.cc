// C entry points added in 0.2: twl_decode_ex (BF16/FP32 q and out around the FP16 pipeline),
// twl_capabilities, twl_set_log_callback.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <string_view>
#include <vector>

#include "gpu/kernels.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "api/handle.h"
#include "core/half.h"
#include "gpu/device.h"
#include "gpu/kernels.h"
#include "runtime/dtype_convert.h"
#include "runtime/dtype_convert_device.h"
#include "runtime/log.h"
#include "twilight.h"

#ifndef TWL_CUDA_ARCHS
#define TWL_CUDA_ARCHS ""
#endif

namespace twl::api {
namespace {

// Frees stream-ordered scratch when the call leaves, whatever the path.
struct ScratchGuard {
  int32_t device = 0;
  void* p = nullptr;
  void* stream = nullptr;
  ~ScratchGuard() { DeviceScratchFree(device, p, stream); }
};

// "90,100a-real" -> {90, 100}: the numbers of CMAKE_CUDA_ARCHITECTURES (comma-separated).
int32_t ParseArchs(std::string_view text, int32_t* out, int32_t capacity) {
  int32_t n = 0;
  size_t i = 0;
  while (i < text.size() && n < capacity) {
    if (text[i] >= '0' && text[i] <= '9') {
      int32_t v = 0;
      while (i < text.size() && text[i] >= '0' && text[i] <= '9') v = v * 10 + (text[i++] - '0');
      out[n++] = v;
      while (i < text.size() && text[i] != ',') ++i;  // skip "a-real" and the like
    } else {
      ++i;
    }
  }
  return n;
}

void SetHeadDims(int32_t* row, std::initializer_list<int32_t> dims) {
  int32_t i = 0;
  for (int32_t d : dims) row[i++] = d;
}

struct LogTarget {
  twl_log_fn fn;
  void* user_data;
};

void LogTrampoline(int level, const char* message, void* target) {
  const LogTarget* t = static_cast<const LogTarget*>(target);
  t->fn(static_cast<twl_log_level>(level), message, t->user_data);
}

}  // namespace
}  // namespace twl::api

extern "C" {

twl_status twl_decode_ex(twl_runtime* rt, int32_t layer, const twl_seq_id* seqs,
                         int32_t num_seqs, const void* q, void* out, twl_dtype dtype,
                         twl_memory_space space, const float* seq_p, void* stream) noexcept {
  const int32_t type = twl::api::EnumValue(dtype);
  if (type == TWL_DTYPE_FP16) {
    return twl_decode(rt, layer, seqs, num_seqs, q, out, space, seq_p, stream);
  }
  // Checks that the conversion itself depends on; twl_decode checks the rest.
  const twl_status early = twl::api::Guard(rt, "twl_decode_ex", [&]() -> absl::Status {
    if (absl::Status s = twl::api::CheckHandle(rt); !s.ok()) return s;
    if (type != TWL_DTYPE_BF16 && type != TWL_DTYPE_FP32) {
      return absl::InvalidArgumentError(absl::StrCat("dtype ", type, " unknown"));
    }
    if (num_seqs < 1) {
      return absl::InvalidArgumentError(absl::StrCat("num_seqs is ", num_seqs, ", must be >= 1"));
    }
    if (seqs == nullptr || q == nullptr || out == nullptr) {
      return absl::InvalidArgumentError("seqs, q and out must not be NULL");
    }
    return absl::OkStatus();
  });
  if (early != TWL_OK) return early;

  const twl::DType from = static_cast<twl::DType>(type);
  const int64_t n = int64_t(num_seqs) * rt->config.num_q_heads * rt->config.head_dim;
  const int32_t where = twl::api::EnumValue(space);
  if (where == TWL_MEMORY_DEVICE && rt->backend != TWL_BACKEND_CPU) {
    void* st = stream != nullptr ? stream : twl::LegacyDefaultStream();
    const int32_t device = rt->config.device_id;
    twl::api::ScratchGuard scratch{device, nullptr, st};
    const twl_status conv = twl::api::Guard(rt, "twl_decode_ex", [&]() -> absl::Status {
      absl::StatusOr<void*> p =
          twl::DeviceScratchAlloc(device, size_t(n) * 2 * sizeof(twl::fp16_t), st);
      if (!p.ok()) return p.status();
      scratch.p = *p;
      return twl::DeviceConvert(device, q, from, scratch.p, twl::DType::kFp16, n, st);
    });
    if (conv != TWL_OK) return conv;
    twl::fp16_t* q16 = static_cast<twl::fp16_t*>(scratch.p);
    twl::fp16_t* out16 = q16 + n;
    const twl_status s = twl_decode(rt, layer, seqs, num_seqs, q16, out16, space, seq_p, st);
    if (s != TWL_OK) return s;
    return twl::api::Guard(rt, "twl_decode_ex", [&]() -> absl::Status {
      return twl::DeviceConvert(device, out16, twl::DType::kFp16, out, from, n, st);
    });
  }
  if (where != TWL_MEMORY_HOST) {
    // Device memory on the CPU backend or an unknown space: twl_decode reports it.
    return twl_decode(rt, layer, seqs, num_seqs, q, out, space, seq_p, stream);
  }
  // Host memory: convert on the host around a synchronous FP16 step.
  thread_local std::vector<twl::fp16_t> q16, out16;
  const twl_status alloc = twl::api::Guard(rt, "twl_decode_ex", [&]() -> absl::Status {
    q16.resize(size_t(n));
    out16.resize(size_t(n));
    twl::ConvertToFp16(q, from, n, q16.data());
    return absl::OkStatus();
  });
  if (alloc != TWL_OK) return alloc;
  const twl_status s =
      twl_decode(rt, layer, seqs, num_seqs, q16.data(), out16.data(), space, seq_p, stream);
  if (s != TWL_OK) return s;
  twl::ConvertFromFp16(out16.data(), from, n, out);
  return TWL_OK;
}

twl_status twl_get_capabilities(twl_capabilities* out) noexcept {
  return twl::api::Guard(nullptr, "twl_get_capabilities", [&]() -> absl::Status {
    // The first version ends before kv_dtypes (appended); callers of either size are served.
    constexpr size_t kV1Size = offsetof(twl_capabilities, kv_dtypes);
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    if (out->struct_size < kV1Size) {
      return absl::InvalidArgumentError(absl::StrCat("twl_capabilities.struct_size is ",
                                                     out->struct_size, ", expected at least ",
                                                     kV1Size));
    }
    twl_capabilities c;
    std::memset(&c, 0, sizeof(c));
    c.struct_size = sizeof(c);
    const uint32_t all_dtypes =
        (1u << TWL_DTYPE_FP16) | (1u << TWL_DTYPE_BF16) | (1u << TWL_DTYPE_FP32);
    c.backends_built = 1u << TWL_BACKEND_CPU;
    // Kept in step with RuntimeConfig::Validate (CPU) and gpu/cuda/common.cuh (GPU kernels).
    twl::api::SetHeadDims(c.head_dims[TWL_BACKEND_CPU], {8, 16, 32, 64, 96, 128, 256});
    c.max_q_per_kv[TWL_BACKEND_CPU] = std::numeric_limits<int32_t>::max();
    c.decode_dtypes[TWL_BACKEND_CPU] = all_dtypes;
    const uint32_t kv_dtypes = (1u << TWL_DTYPE_FP16) | (1u << TWL_DTYPE_BF16);
    c.kv_dtypes[TWL_BACKEND_CPU] = kv_dtypes;
#if TWL_HAVE_CUDA
    for (twl_backend b : {TWL_BACKEND_GPU_HBM, TWL_BACKEND_GPU_OFFLOAD}) {
      c.backends_built |= 1u << b;
      twl::api::SetHeadDims(c.head_dims[b], {64, 96, 128, 256});
      c.max_q_per_kv[b] = twl::kGpuMaxGroup;
      c.decode_dtypes[b] = all_dtypes;
      c.kv_dtypes[b] = kv_dtypes;
    }
    c.gpu_usable = twl::gpu::GpuAvailable() ? 1 : 0;
#endif
    c.num_cuda_archs = twl::api::ParseArchs(TWL_CUDA_ARCHS, c.cuda_archs, TWL_CAPS_MAX_ARCHS);
    const size_t caller_size = out->struct_size;
    std::memcpy(out, &c, std::min(caller_size, sizeof(c)));
    out->struct_size = caller_size;
    return absl::OkStatus();
  });
}

void twl_set_log_callback(twl_log_fn fn, void* user_data, twl_log_level max_level) noexcept {
  int32_t level = twl::api::EnumValue(max_level);
  if (level < TWL_LOG_ERROR) level = TWL_LOG_ERROR;
  if (level > TWL_LOG_DEBUG) level = TWL_LOG_DEBUG;
  // The core's sink takes an int level; a trampoline calls the C function with its own type.
  // Delivery and replacement are serialized by the core, so the previous registration can be
  // deleted once SetLogCallback has returned.
  static std::mutex mu;
  static twl::api::LogTarget* current = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  twl::api::LogTarget* next = nullptr;
  if (fn != nullptr) {
    next = new (std::nothrow) twl::api::LogTarget{fn, user_data};
    if (next == nullptr) return;  // out of memory: keep the previous sink
  }
  twl::SetLogCallback(next ? &twl::api::LogTrampoline : nullptr, next,
                      static_cast<twl::LogLevel>(level));
  delete current;
  current = next;
}

}  // extern "C"
