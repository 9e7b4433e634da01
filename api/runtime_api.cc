// C entry points of the runtime object: version, create/free (config sentinels resolved here),
// error channels, backend, telemetry of the last step, memory usage, FP16 conversions.
#include <algorithm>
#include <cstddef>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "api/handle.h"
#include "core/half.h"
#include "runtime/log.h"
#include "twilight.h"

namespace twl::api {
namespace {

// Message of the last failure of a call that had no valid runtime handle, per thread.
thread_local std::string t_no_runtime_error;

static_assert(sizeof(twl_seq_id) == sizeof(twl::SeqId), "sequence ids cross the boundary");
static_assert(std::is_same_v<uint16_t, twl::fp16_t>, "FP16 crosses the boundary as uint16_t");

// The first version of each struct (its fields up to the first appended one); smaller
// struct_size values are rejected, larger ones come from newer headers and their extra fields
// are ignored. A caller's struct may end before appended fields (an older header): those
// take their defaults.
constexpr size_t kConfigV1Size = offsetof(twl_runtime_config, disk_path);
constexpr size_t kStepStatsV1Size = offsetof(twl_step_stats, disk_pages_loaded);
constexpr size_t kMemoryUsageV1Size = offsetof(twl_memory_usage, host_table_bytes);

// True when a caller struct of `struct_size` bytes holds the whole field at offset..+size.
constexpr bool HasField(size_t struct_size, size_t offset, size_t size) {
  return struct_size >= offset + size;
}

bool IsLive(const twl_runtime* rt) { return rt != nullptr && rt->magic == twl_runtime::kMagic; }

// Copies the fields the library knows from a caller struct of the given size.
template <typename T>
void WriteOut(const T& value, T* out) {
  const size_t caller_size = out->struct_size;
  std::memcpy(out, &value, std::min(caller_size, sizeof(T)));
  out->struct_size = caller_size;
}

absl::Status CheckOutStruct(size_t struct_size, size_t v1_size, const char* name) {
  if (struct_size < v1_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ".struct_size is ", struct_size, ", expected at least ", v1_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<twl::RuntimeConfig> ToRuntimeConfig(const twl_runtime_config& c) {
  const twl::RuntimeConfig defaults;
  twl::RuntimeConfig r;
  if (c.num_layers <= 0 || c.num_q_heads <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model shape must be set (num_layers ", c.num_layers, ", num_q_heads ", c.num_q_heads,
        ", num_kv_heads ", c.num_kv_heads, ", head_dim ", c.head_dim, ")"));
  }
  r.num_layers = c.num_layers;
  r.num_q_heads = c.num_q_heads;
  r.num_kv_heads = c.num_kv_heads;
  r.head_dim = c.head_dim;
  r.page_size = c.page_size == 0 ? defaults.page_size : c.page_size;
  r.k_bits = c.k_bits == 0 ? defaults.k_bits : c.k_bits;
  if (std::isnan(c.top_p)) return absl::InvalidArgumentError("top_p is NaN");
  r.top_p = c.top_p == 0.0f ? defaults.top_p : c.top_p;
  const int32_t selector = EnumValue(c.selector);
  switch (selector) {
    case TWL_SELECTOR_DEFAULT:
      r.selector.reset();  // the library's choice (twl::SelectorOf)
      break;
    case TWL_SELECTOR_QUEST:
      r.selector = twl::SelectorKind::kQuest;
      break;
    case TWL_SELECTOR_FULL:
      r.selector = twl::SelectorKind::kFull;
      break;
    case TWL_SELECTOR_DOUBLE_SPARSITY:
      r.selector = twl::SelectorKind::kDoubleSparsity;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("selector ", selector, " unknown"));
  }
  if (c.selector_budget_tokens < 0) {
    return absl::InvalidArgumentError("selector_budget_tokens must be >= 0");
  }
  r.selector_budget_tokens = c.selector_budget_tokens;
  if (std::isnan(c.selector_budget_fraction) || c.selector_budget_fraction < 0.0f ||
      c.selector_budget_fraction > 1.0f) {
    return absl::InvalidArgumentError(
        absl::StrFormat("selector_budget_fraction %.9g outside [0, 1] (0: library chooses)",
                        c.selector_budget_fraction));
  }
  r.selector_budget_fraction = c.selector_budget_fraction == 0.0f
                                   ? defaults.selector_budget_fraction
                                   : c.selector_budget_fraction;
  if (c.sink_pages < -1) return absl::InvalidArgumentError("sink_pages must be >= -1");
  r.sink_pages = c.sink_pages == -1 ? defaults.sink_pages : c.sink_pages;
  if (c.dense_layers < -1) return absl::InvalidArgumentError("dense_layers must be >= -1");
  r.dense_layers = c.dense_layers == -1 ? defaults.dense_layers : c.dense_layers;
  if (c.host_pool_bytes < 0 || c.gpu_cache_bytes < 0) {
    return absl::InvalidArgumentError("host_pool_bytes and gpu_cache_bytes must be >= 0");
  }
  r.host_pool_bytes = c.host_pool_bytes;
  r.gpu_cache_bytes = c.gpu_cache_bytes;
  const int32_t fetch_path = EnumValue(c.fetch_path);
  switch (fetch_path) {
    case TWL_FETCH_AUTO:
      r.fetch_path = twl::FetchPath::kAuto;
      break;
    case TWL_FETCH_GATHER:
      r.fetch_path = twl::FetchPath::kGather;
      break;
    case TWL_FETCH_COPY_ENGINE:
      r.fetch_path = twl::FetchPath::kCopyEngine;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("fetch_path ", fetch_path, " unknown"));
  }
  const int32_t backend = EnumValue(c.backend);
  switch (backend) {
    case TWL_BACKEND_AUTO:
      r.backend = twl::BackendKind::kAuto;
      break;
    case TWL_BACKEND_CPU:
      r.backend = twl::BackendKind::kCpu;
      break;
    case TWL_BACKEND_GPU_HBM:
      r.backend = twl::BackendKind::kGpuHbm;
      break;
    case TWL_BACKEND_GPU_OFFLOAD:
      r.backend = twl::BackendKind::kGpuOffload;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("backend ", backend, " unknown"));
  }
  if (c.device_id < -1) return absl::InvalidArgumentError("device_id must be >= -1");
  r.device_id = c.device_id == -1 ? 0 : c.device_id;
  if (c.collect_telemetry < -1 || c.collect_telemetry > 1) {
    return absl::InvalidArgumentError("collect_telemetry must be -1, 0 or 1");
  }
  if (c.disk_bytes < 0) return absl::InvalidArgumentError("disk_bytes must be >= 0");
  r.disk_path = c.disk_path != nullptr ? c.disk_path : "";
  r.disk_bytes = c.disk_bytes;
  switch (c.k_scheme) {  // the C values differ from core/page_layout.h's (0 is "auto" here)
    case TWL_K_SCHEME_AUTO:
      r.k_scheme = defaults.k_scheme;
      break;
    case TWL_K_SCHEME_PAGE_CHANNEL:
      r.k_scheme = twl::kKSchemePageChannel;
      break;
    case TWL_K_SCHEME_TOKEN:
      r.k_scheme = twl::kKSchemeToken;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "k_scheme %d unknown (0 library chooses, 1 per page channel, 2 per token)",
          c.k_scheme));
  }
  if (c.kv_dtype != TWL_DTYPE_FP16 && c.kv_dtype != TWL_DTYPE_BF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_dtype ", static_cast<int64_t>(c.kv_dtype), " unknown (FP16 or BF16)"));
  }
  r.kv_dtype = c.kv_dtype == TWL_DTYPE_BF16 ? twl::DType::kBf16 : twl::DType::kFp16;
  r.cache_rows = c.cache_rows;  // checked by RuntimeConfig::Validate
  return r;
}

twl_backend FromBackendKind(twl::BackendKind kind) {
  switch (kind) {
    case twl::BackendKind::kCpu:
      return TWL_BACKEND_CPU;
    case twl::BackendKind::kGpuHbm:
      return TWL_BACKEND_GPU_HBM;
    case twl::BackendKind::kGpuOffload:
      return TWL_BACKEND_GPU_OFFLOAD;
    case twl::BackendKind::kAuto:
      break;
  }
  return TWL_BACKEND_AUTO;
}

// The caller's view of the configuration in use: every sentinel replaced by its value.
twl_runtime_config ResolvedConfig(const twl_runtime_config& asked, const twl::Runtime& runtime) {
  const twl::RuntimeConfig& r = runtime.config();
  const twl::MemoryUsage memory = runtime.Memory();
  twl_runtime_config c = asked;
  c.struct_size = sizeof(twl_runtime_config);
  c.page_size = r.page_size;
  c.k_bits = r.k_bits;
  c.top_p = r.top_p;
  const twl::SelectorKind selector = twl::SelectorOf(r);  // the default resolved
  c.selector = selector == twl::SelectorKind::kFull              ? TWL_SELECTOR_FULL
               : selector == twl::SelectorKind::kDoubleSparsity ? TWL_SELECTOR_DOUBLE_SPARSITY
                                                                : TWL_SELECTOR_QUEST;
  c.selector_budget_tokens = r.selector_budget_tokens;
  c.selector_budget_fraction = r.selector_budget_fraction;
  c.sink_pages = r.sink_pages;
  c.dense_layers = r.dense_layers;
  c.host_pool_bytes = r.host_pool_bytes > 0 ? r.host_pool_bytes : memory.host_pool_bytes_total;
  c.gpu_cache_bytes = r.gpu_cache_bytes > 0 ? r.gpu_cache_bytes : memory.gpu_cache_bytes;
  c.fetch_path = static_cast<twl_fetch_path>(r.fetch_path);
  c.backend = FromBackendKind(runtime.backend_kind());
  c.device_id = r.device_id;
  c.collect_telemetry = asked.collect_telemetry == 0 ? 0 : 1;
  // Owned by the runtime (its config copy), so valid until twl_runtime_free.
  c.disk_path = r.disk_path.empty() ? nullptr : r.disk_path.c_str();
  c.disk_bytes = r.disk_bytes;
  c.k_scheme = r.k_scheme == twl::kKSchemeToken ? TWL_K_SCHEME_TOKEN : TWL_K_SCHEME_PAGE_CHANNEL;
  c.kv_dtype = r.kv_dtype == twl::DType::kBf16 ? TWL_DTYPE_BF16 : TWL_DTYPE_FP16;
  c.cache_rows = r.cache_rows;
  return c;
}

double Mean(const std::vector<int32_t>& v) {
  if (v.empty()) return 0.0;
  double sum = 0;
  for (int32_t x : v) sum += x;
  return sum / double(v.size());
}

// The calling thread's last step for the per-head accessors: a live handle with telemetry
// collection on; an empty step before the first decode.
absl::StatusOr<const twl::StepTelemetry*> LastStepHeads(const twl_runtime* rt) {
  if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
  if (!rt->collect_telemetry) {
    return absl::FailedPreconditionError(
        "telemetry collection is off (config.collect_telemetry = 0)");
  }
  static const twl::StepTelemetry kEmpty;
  const TwlThreadState* state = twl::api::ThreadState(rt, /*create=*/false);
  return state != nullptr && state->has_step ? &state->last_step : &kEmpty;
}

}  // namespace

absl::Status CheckHandle(const twl_runtime* rt) {
  if (rt == nullptr) return absl::InvalidArgumentError("runtime handle is NULL");
  if (rt->magic != twl_runtime::kMagic) {
    return absl::InvalidArgumentError("not a live twl_runtime handle (freed or corrupted)");
  }
  return absl::OkStatus();
}

void RecordError(const twl_runtime* rt, const char* fn, absl::string_view message,
                 absl::string_view detail) noexcept {
  try {
    std::string text = absl::StrCat(fn, ": ", message);
    if (!detail.empty()) absl::StrAppend(&text, " ", detail);
    twl::Log(twl::LogLevel::kDebug, text);
    if (IsLive(rt)) {
      ThreadState(rt, /*create=*/true)->last_error = std::move(text);
    } else {
      t_no_runtime_error = std::move(text);
    }
  } catch (...) {
    // Out of memory while recording: the status code still tells the caller what happened.
  }
}

}  // namespace twl::api

using twl::api::CheckHandle;
using twl::api::Guard;

extern "C" {

unsigned twl_version(void) noexcept { return TWL_VERSION_NUMBER; }
const char* twl_version_string(void) noexcept { return TWL_VERSION_STRING; }

twl_status twl_runtime_create(const twl_runtime_config* config, twl_runtime** out) noexcept {
  if (out != nullptr) *out = nullptr;
  return Guard(nullptr, "twl_runtime_create", [&]() -> absl::Status {
    if (config == nullptr || out == nullptr) {
      return absl::InvalidArgumentError("config and out must not be NULL");
    }
    if (config->struct_size < twl::api::kConfigV1Size) {
      return absl::InvalidArgumentError(
          absl::StrCat("config->struct_size is ", config->struct_size, ", expected ",
                       twl::api::kConfigV1Size, " (initialize with twl_runtime_config_default)"));
    }
    twl_runtime_config asked = TWL_RUNTIME_CONFIG_INIT;
    std::memcpy(&asked, config, std::min(config->struct_size, sizeof(asked)));
    // Appended fields only when the caller's struct holds them whole.
    const twl_runtime_config defaults = TWL_RUNTIME_CONFIG_INIT;
    if (!twl::api::HasField(config->struct_size, offsetof(twl_runtime_config, disk_path),
                            sizeof(asked.disk_path))) {
      asked.disk_path = defaults.disk_path;
    }
    if (!twl::api::HasField(config->struct_size, offsetof(twl_runtime_config, disk_bytes),
                            sizeof(asked.disk_bytes))) {
      asked.disk_bytes = defaults.disk_bytes;
    }
    if (!twl::api::HasField(config->struct_size, offsetof(twl_runtime_config, k_scheme),
                            sizeof(asked.k_scheme))) {
      asked.k_scheme = defaults.k_scheme;  // TWL_K_SCHEME_AUTO: the library's default scheme
    }
    if (!twl::api::HasField(config->struct_size, offsetof(twl_runtime_config, kv_dtype),
                            sizeof(asked.kv_dtype))) {
      asked.kv_dtype = defaults.kv_dtype;
    }
    if (!twl::api::HasField(config->struct_size, offsetof(twl_runtime_config, cache_rows),
                            sizeof(asked.cache_rows))) {
      asked.cache_rows = defaults.cache_rows;
    }
    absl::StatusOr<twl::RuntimeConfig> rc = twl::api::ToRuntimeConfig(asked);
    if (!rc.ok()) return rc.status();
    if (absl::Status valid = rc->Validate(); !valid.ok()) return valid;
    absl::StatusOr<std::unique_ptr<twl::Runtime>> runtime = twl::Runtime::Create(*rc);
    if (!runtime.ok()) return runtime.status();

    auto handle = std::make_unique<twl_runtime>();
    handle->generation = twl::api::RegisterRuntime();
    handle->runtime = std::move(*runtime);
    handle->config = twl::api::ResolvedConfig(asked, *handle->runtime);
    handle->backend = handle->config.backend;
    handle->backend_name = handle->runtime->backend_name();
    handle->collect_telemetry = handle->config.collect_telemetry != 0;
    *out = handle.release();
    return absl::OkStatus();
  });
}

void twl_runtime_free(twl_runtime* rt) noexcept {
  if (rt == nullptr || rt->magic != twl_runtime::kMagic) return;
  rt->magic = twl_runtime::kDeadMagic;
  twl::api::UnregisterRuntime(rt->generation);
  try {
    delete rt;
  } catch (...) {
    // Destructors do not throw; nothing more can be done for the caller here.
  }
}

const char* twl_runtime_last_error(const twl_runtime* rt) noexcept {
  if (!twl::api::IsLive(rt)) return twl::api::t_no_runtime_error.c_str();
  const TwlThreadState* state = twl::api::ThreadState(rt, /*create=*/false);
  return state == nullptr ? "" : state->last_error.c_str();
}

twl_status twl_runtime_async_error(twl_runtime* rt) noexcept {
  return Guard(rt, "twl_runtime_async_error", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(rt->mu);
    return rt->runtime->TakeAsyncError();
  });
}

twl_status twl_runtime_get_config(const twl_runtime* rt, twl_runtime_config* out) noexcept {
  return Guard(rt, "twl_runtime_get_config", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    if (absl::Status s = twl::api::CheckOutStruct(out->struct_size, twl::api::kConfigV1Size,
                                                  "twl_runtime_config");
        !s.ok()) {
      return s;
    }
    twl::api::WriteOut(rt->config, out);
    return absl::OkStatus();
  });
}

twl_backend twl_runtime_backend(const twl_runtime* rt) noexcept {
  return twl::api::IsLive(rt) ? rt->backend : TWL_BACKEND_AUTO;
}

const char* twl_runtime_backend_name(const twl_runtime* rt) noexcept {
  return twl::api::IsLive(rt) ? rt->backend_name.c_str() : "";
}

twl_status twl_runtime_memory(const twl_runtime* rt, twl_memory_usage* out) noexcept {
  return Guard(rt, "twl_runtime_memory", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    if (absl::Status s = twl::api::CheckOutStruct(out->struct_size, twl::api::kMemoryUsageV1Size,
                                                  "twl_memory_usage");
        !s.ok()) {
      return s;
    }
    twl::MemoryUsage m;
    {
      std::lock_guard<std::mutex> lock(rt->mu);
      m = rt->runtime->Memory();
    }
    twl_memory_usage usage{};
    usage.struct_size = sizeof(usage);
    usage.host_pool_bytes_used = m.host_pool_bytes_used;
    usage.host_pool_bytes_total = m.host_pool_bytes_total;
    usage.gpu_quant_bytes = m.gpu_quant_bytes;
    usage.gpu_cache_bytes = m.gpu_cache_bytes;
    usage.gpu_fp16_bytes = m.gpu_fp16_bytes;
    usage.disk_bytes = m.disk_bytes;
    usage.host_table_bytes = m.host_table_bytes;
    twl::api::WriteOut(usage, out);
    return absl::OkStatus();
  });
}

twl_status twl_runtime_last_step(const twl_runtime* rt, twl_step_stats* out) noexcept {
  return Guard(rt, "twl_runtime_last_step", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    if (absl::Status s = twl::api::CheckOutStruct(out->struct_size, twl::api::kStepStatsV1Size,
                                                  "twl_step_stats");
        !s.ok()) {
      return s;
    }
    twl_step_stats stats{};
    stats.struct_size = sizeof(stats);
    stats.layer = -1;
    stats.num_q_heads = rt->config.num_q_heads;
    stats.num_kv_heads = rt->config.num_kv_heads;
    stats.cache_hit_rate = 1.0;
    {
      const TwlThreadState* state = twl::api::ThreadState(rt, /*create=*/false);
      if (state != nullptr && state->has_step) {
        const twl::StepTelemetry& t = state->last_step;
        stats.layer = t.layer;
        stats.num_seqs = t.num_seqs;
        stats.blocks_needed = t.blocks_needed;
        stats.blocks_fetched = t.blocks_fetched;
        stats.bytes_h2d = t.bytes_h2d;
        stats.cache_hit_rate = t.CacheHitRate();
        stats.ms_select = t.ms_select;
        stats.ms_prune = t.ms_prune;
        stats.ms_fetch = t.ms_fetch;
        stats.ms_attend = t.ms_attend;
        stats.ms_total = t.ms_total;
        stats.mean_kept_tokens = twl::api::Mean(t.kept_tokens);
        stats.mean_kept_tokens_kv = twl::api::Mean(t.kept_tokens_kv);
        stats.disk_pages_loaded = t.disk_pages_loaded;
        stats.disk_pages_spilled = t.disk_pages_spilled;
        stats.ms_disk = t.ms_disk;
        stats.step = t.step_id;
        stats.disk_bytes_read = t.disk_bytes_read;
        stats.disk_pages_read_ahead = t.disk_pages_read_ahead;
        stats.disk_waits = t.disk_waits;
        stats.ms_disk_wait = t.ms_disk_wait;
        stats.blocks_in_place = t.blocks_in_place;
        stats.bytes_in_place = t.bytes_in_place;
      }
    }
    twl::api::WriteOut(stats, out);
    return absl::OkStatus();
  });
}

twl_status twl_runtime_last_step_heads(const twl_runtime* rt, int32_t* selected, int32_t* kept,
                                       float* est_mass, int64_t q_capacity, int32_t* kept_kv,
                                       int64_t kv_capacity) noexcept {
  return Guard(rt, "twl_runtime_last_step_heads", [&]() -> absl::Status {
    absl::StatusOr<const twl::StepTelemetry*> last = twl::api::LastStepHeads(rt);
    if (!last.ok()) return last.status();
    const twl::StepTelemetry& t = **last;
    const int64_t q_entries = int64_t(t.num_seqs) * rt->config.num_q_heads;
    const int64_t kv_entries = int64_t(t.num_seqs) * rt->config.num_kv_heads;
    const bool want_q = selected != nullptr || kept != nullptr || est_mass != nullptr;
    if (want_q && q_capacity < q_entries) {
      return absl::InvalidArgumentError(
          absl::StrCat("q_capacity ", q_capacity, " < ", q_entries, " (num_seqs * num_q_heads)"));
    }
    if (kept_kv != nullptr && kv_capacity < kv_entries) {
      return absl::InvalidArgumentError(absl::StrCat("kv_capacity ", kv_capacity, " < ", kv_entries,
                                                     " (num_seqs * num_kv_heads)"));
    }
    if (int64_t(t.selected_tokens.size()) != q_entries ||
        int64_t(t.kept_tokens.size()) != q_entries || int64_t(t.est_mass.size()) != q_entries ||
        int64_t(t.kept_tokens_kv.size()) != kv_entries) {
      return absl::InternalError(absl::StrCat(
          "backend telemetry has ", t.selected_tokens.size(), "/", t.kept_tokens.size(), "/",
          t.est_mass.size(), "/", t.kept_tokens_kv.size(), " entries, expected ", q_entries,
          " per q head array and ", kv_entries, " per KV head array"));
    }
    if (selected) std::copy(t.selected_tokens.begin(), t.selected_tokens.end(), selected);
    if (kept) std::copy(t.kept_tokens.begin(), t.kept_tokens.end(), kept);
    if (est_mass) std::copy(t.est_mass.begin(), t.est_mass.end(), est_mass);
    if (kept_kv) std::copy(t.kept_tokens_kv.begin(), t.kept_tokens_kv.end(), kept_kv);
    return absl::OkStatus();
  });
}

twl_status twl_runtime_set_capture_kept(twl_runtime* rt, int32_t enable) noexcept {
  return Guard(rt, "twl_runtime_set_capture_kept", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (enable != 0 && enable != 1) {
      return absl::InvalidArgumentError(absl::StrCat("enable must be 0 or 1, got ", enable));
    }
    std::lock_guard<std::mutex> lock(rt->mu);
    rt->capture_kept = enable == 1;
    rt->runtime->SetCaptureKept(enable == 1);
    return absl::OkStatus();
  });
}

twl_status twl_runtime_last_step_kept(const twl_runtime* rt, int32_t seq_index, int32_t kv_head,
                                      int32_t* tokens, int64_t capacity,
                                      int32_t* out_count) noexcept {
  return Guard(rt, "twl_runtime_last_step_kept", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out_count == nullptr) return absl::InvalidArgumentError("out_count is NULL");
    std::lock_guard<std::mutex> lock(rt->mu);
    if (rt->kept_num_seqs < 0) {
      return absl::FailedPreconditionError(
          "no decode step with capture on yet (twl_runtime_set_capture_kept)");
    }
    const int32_t H = rt->config.num_kv_heads;
    if (seq_index < 0 || seq_index >= rt->kept_num_seqs || kv_head < 0 || kv_head >= H) {
      return absl::InvalidArgumentError(absl::StrCat(
          "seq_index ", seq_index, " / kv_head ", kv_head, " outside [0, ", rt->kept_num_seqs,
          ") x [0, ", H, ")"));
    }
    const size_t u = size_t(seq_index) * size_t(H) + size_t(kv_head);
    if (u + 1 >= rt->kept_offsets.size()) {
      return absl::InternalError("captured kept lists are incomplete");
    }
    const int64_t begin = rt->kept_offsets[u], end = rt->kept_offsets[u + 1];
    *out_count = int32_t(end - begin);
    if (capacity < end - begin) {
      return absl::InvalidArgumentError(
          absl::StrCat("capacity ", capacity, " < ", end - begin, " kept tokens"));
    }
    if (end > begin) {
      if (tokens == nullptr) return absl::InvalidArgumentError("tokens is NULL");
      std::copy(rt->kept_tokens.begin() + begin, rt->kept_tokens.begin() + end, tokens);
    }
    return absl::OkStatus();
  });
}

twl_status twl_runtime_last_step_mass(const twl_runtime* rt, float* full_mass,
                                      int32_t* cap_hit, int64_t q_capacity) noexcept {
  return Guard(rt, "twl_runtime_last_step_mass", [&]() -> absl::Status {
    absl::StatusOr<const twl::StepTelemetry*> last = twl::api::LastStepHeads(rt);
    if (!last.ok()) return last.status();
    const twl::StepTelemetry& t = **last;
    const int64_t q_entries = int64_t(t.num_seqs) * rt->config.num_q_heads;
    if ((full_mass != nullptr || cap_hit != nullptr) && q_capacity < q_entries) {
      return absl::InvalidArgumentError(
          absl::StrCat("q_capacity ", q_capacity, " < ", q_entries, " (num_seqs * num_q_heads)"));
    }
    // A backend that does not report them: unknown mass, no cap.
    const bool have_mass = int64_t(t.full_mass.size()) == q_entries;
    const bool have_cap = int64_t(t.cap_hit.size()) == q_entries;
    for (int64_t i = 0; i < q_entries; ++i) {
      if (full_mass) full_mass[i] = have_mass ? t.full_mass[size_t(i)] : -1.0f;
      if (cap_hit) cap_hit[i] = have_cap ? t.cap_hit[size_t(i)] : 0;
    }
    return absl::OkStatus();
  });
}

// Element access through memcpy: the buffers may be at any address.
void twl_fp32_to_fp16(const float* src, uint16_t* dst, size_t n) noexcept {
  if (src == nullptr || dst == nullptr) return;
  for (size_t i = 0; i < n; ++i) {
    twl::StoreU16(dst, int64_t(i), twl::FloatToHalf(twl::LoadF32(src, int64_t(i))));
  }
}

void twl_fp16_to_fp32(const uint16_t* src, float* dst, size_t n) noexcept {
  if (src == nullptr || dst == nullptr) return;
  for (size_t i = 0; i < n; ++i) {
    twl::StoreF32(dst, int64_t(i), twl::HalfToFloat(twl::LoadU16(src, int64_t(i))));
  }
}

}  // extern "C"
