// C entry points of sequences and of the decode step: argument checks that the C contract
// promises (so that the documented status comes back whatever the backend checks), then one
// call into twl::Runtime under the handle's mutex.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "api/handle.h"
#include "twilight.h"

namespace twl::api {
namespace {

absl::Status CheckLayer(const twl_runtime* rt, int32_t layer) {
  if (layer < 0 || layer >= rt->config.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " outside [0, ", rt->config.num_layers, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<twl::MemSpace> CheckSpace(const twl_runtime* rt, const twl_memory_space& space) {
  const int32_t value = EnumValue(space);
  switch (value) {
    case TWL_MEMORY_HOST:
      return twl::MemSpace::kHost;
    case TWL_MEMORY_DEVICE:
      if (rt->backend == TWL_BACKEND_CPU) {
        return Unsupported("device memory needs a GPU backend (this runtime uses the CPU)");
      }
      return twl::MemSpace::kDevice;
  }
  return absl::InvalidArgumentError(absl::StrCat("memory space ", value, " unknown"));
}

void ResetTelemetry(twl::StepTelemetry* t) {
  // Keeps the vectors' capacity: this runs once per layer per decode step.
  t->layer = -1;
  t->num_seqs = 0;
  t->selected_tokens.clear();
  t->kept_tokens.clear();
  t->est_mass.clear();
  t->kept_tokens_kv.clear();
  t->full_mass.clear();
  t->cap_hit.clear();
  t->blocks_needed = t->blocks_fetched = t->bytes_h2d = 0;
  t->ms_select = t->ms_prune = t->ms_fetch = t->ms_attend = t->ms_total = 0;
  t->disk_pages_loaded = t->disk_pages_spilled = 0;
  t->ms_disk = 0;
  t->disk_bytes_read = t->disk_pages_read_ahead = t->disk_pages_read_ahead_used = 0;
  t->disk_waits = 0;
  t->ms_disk_wait = 0;
}

// Host arrays of the caller copied out with memcpy: the header asks no alignment of them.
struct DecodeArgs {
  std::vector<twl_seq_id> seqs;
  std::vector<float> seq_p;  // empty: the runtime's top_p
};

absl::Status CheckDecodeArgs(const twl_runtime* rt, int32_t layer, const twl_seq_id* seqs,
                             int32_t num_seqs, const void* q, void* out, const float* seq_p,
                             DecodeArgs* args) {
  if (absl::Status s = CheckLayer(rt, layer); !s.ok()) return s;
  if (num_seqs < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_seqs is ", num_seqs, ", must be >= 1"));
  }
  if (seqs == nullptr || q == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("seqs, q and out must not be NULL");
  }
  args->seqs.resize(size_t(num_seqs));
  std::memcpy(args->seqs.data(), seqs, sizeof(twl_seq_id) * size_t(num_seqs));
  args->seq_p.clear();
  if (seq_p != nullptr) {
    args->seq_p.resize(size_t(num_seqs));
    std::memcpy(args->seq_p.data(), seq_p, sizeof(float) * size_t(num_seqs));
    for (int32_t i = 0; i < num_seqs; ++i) {
      const float p = args->seq_p[size_t(i)];
      if (!(p > 0.0f && p <= 1.0f)) {  // also rejects NaN
        // %.9g: every float prints distinctly (1.0000001 is not "1").
        return absl::InvalidArgumentError(
            absl::StrFormat("seq_p[%d] = %.9g outside (0, 1]", i, p));
      }
    }
  }
  // Duplicates would make two outputs of one sequence; sort a copy (batches are small).
  thread_local std::vector<twl_seq_id> sorted;
  sorted = args->seqs;
  std::sort(sorted.begin(), sorted.end());
  const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", *dup, " listed twice"));
  }
  return absl::OkStatus();
}

// The element type of appended K/V: FP16, BF16 or FP32.
absl::Status CheckKvDtype(int32_t dtype_value) {
  if (dtype_value != TWL_DTYPE_FP16 && dtype_value != TWL_DTYPE_BF16 &&
      dtype_value != TWL_DTYPE_FP32) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", dtype_value, " unknown"));
  }
  return absl::OkStatus();
}

// Device buffers: the GPU kernels load q rows as 16-byte vectors and read K/V and write out
// element by element, so device pointers must be aligned to that (host buffers need none).
absl::Status CheckDeviceAlignment(const char* what, const void* p, size_t align) {
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s (device memory) at %p is not %d-byte aligned (host buffers need no alignment)",
        what, p, align));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace twl::api

using twl::api::CheckHandle;
using twl::api::Guard;

extern "C" {

twl_status twl_sequence_create(twl_runtime* rt, twl_seq_id* out) noexcept {
  if (out != nullptr) *out = TWL_INVALID_SEQ_ID;
  return Guard(rt, "twl_sequence_create", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    std::lock_guard<std::mutex> lock(rt->mu);
    absl::StatusOr<twl::SeqId> seq = rt->runtime->CreateSequence();
    if (!seq.ok()) return seq.status();
    *out = *seq;
    return absl::OkStatus();
  });
}

twl_status twl_sequence_free(twl_runtime* rt, twl_seq_id seq) noexcept {
  return Guard(rt, "twl_sequence_free", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(rt->mu);
    return rt->runtime->FreeSequence(seq);
  });
}

twl_status twl_sequence_fork(twl_runtime* rt, twl_seq_id parent, twl_seq_id* out) noexcept {
  if (out != nullptr) *out = TWL_INVALID_SEQ_ID;
  return Guard(rt, "twl_sequence_fork", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    std::lock_guard<std::mutex> lock(rt->mu);
    absl::StatusOr<twl::SeqId> child = rt->runtime->ForkSequence(parent);
    if (!child.ok()) return child.status();
    *out = *child;
    return absl::OkStatus();
  });
}

twl_status twl_sequence_length(const twl_runtime* rt, twl_seq_id seq, int32_t layer,
                               int32_t* out) noexcept {
  return Guard(rt, "twl_sequence_length", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    if (absl::Status s = twl::api::CheckLayer(rt, layer); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(rt->mu);
    absl::StatusOr<int32_t> len = rt->runtime->SequenceLength(seq, layer);
    if (!len.ok()) return len.status();
    *out = *len;
    return absl::OkStatus();
  });
}

twl_status twl_sequence_append(twl_runtime* rt, twl_seq_id seq, int32_t layer, int32_t n,
                               const void* k, const void* v, twl_dtype dtype,
                               twl_memory_space space) noexcept {
  return Guard(rt, "twl_sequence_append", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (absl::Status s = twl::api::CheckLayer(rt, layer); !s.ok()) return s;
    if (n < 0) return absl::InvalidArgumentError(absl::StrCat("n is ", n, ", must be >= 0"));
    const int32_t dtype_value = twl::api::EnumValue(dtype);
    if (absl::Status s = twl::api::CheckKvDtype(dtype_value); !s.ok()) return s;
    absl::StatusOr<twl::MemSpace> mem = twl::api::CheckSpace(rt, space);
    if (!mem.ok()) return mem.status();
    std::lock_guard<std::mutex> lock(rt->mu);
    if (n == 0) return rt->runtime->SequenceLength(seq, layer).status();  // NotFound only
    if (k == nullptr || v == nullptr) {
      return absl::InvalidArgumentError("k and v must not be NULL when n > 0");
    }
    if (*mem == twl::MemSpace::kDevice) {
      const size_t elem = dtype_value == TWL_DTYPE_FP32 ? 4 : 2;
      if (absl::Status s = twl::api::CheckDeviceAlignment("k", k, elem); !s.ok()) return s;
      if (absl::Status s = twl::api::CheckDeviceAlignment("v", v, elem); !s.ok()) return s;
    }
    return rt->runtime->Append(seq, layer, n, k, v, static_cast<twl::DType>(dtype), *mem);
  });
}

twl_status twl_append_batch(twl_runtime* rt, int32_t layer, const twl_seq_id* seqs,
                            const int32_t* counts, int32_t num_seqs, const void* k,
                            const void* v, twl_dtype dtype, twl_memory_space space,
                            void* stream) noexcept {
  return Guard(rt, "twl_append_batch", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (absl::Status s = twl::api::CheckLayer(rt, layer); !s.ok()) return s;
    if (num_seqs < 0) {
      return absl::InvalidArgumentError(absl::StrCat("num_seqs is ", num_seqs, ", must be >= 0"));
    }
    if (num_seqs > 0 && (seqs == nullptr || counts == nullptr)) {
      return absl::InvalidArgumentError("seqs and counts must not be NULL when num_seqs > 0");
    }
    const int32_t dtype_value = twl::api::EnumValue(dtype);
    if (absl::Status s = twl::api::CheckKvDtype(dtype_value); !s.ok()) return s;
    absl::StatusOr<twl::MemSpace> mem = twl::api::CheckSpace(rt, space);
    if (!mem.ok()) return mem.status();
    if (num_seqs == 0) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(rt->mu);
    // Counts, duplicates, ids and capacity are checked by the runtime before anything changes.
    return rt->runtime->AppendBatch(layer, absl::MakeConstSpan(seqs, size_t(num_seqs)),
                                    absl::MakeConstSpan(counts, size_t(num_seqs)), k, v,
                                    static_cast<twl::DType>(dtype), *mem, stream);
  });
}

twl_status twl_sequence_read_kv(const twl_runtime* rt, twl_seq_id seq, int32_t layer, uint16_t* k,
                                uint16_t* v, int64_t capacity_tokens, int32_t* out_len) noexcept {
  return Guard(rt, "twl_sequence_read_kv", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    if (out_len == nullptr) return absl::InvalidArgumentError("out_len is NULL");
    if (absl::Status s = twl::api::CheckLayer(rt, layer); !s.ok()) return s;
    if (capacity_tokens < 0) return absl::InvalidArgumentError("capacity_tokens < 0");
    if (capacity_tokens > 0 && (k == nullptr || v == nullptr)) {
      return absl::InvalidArgumentError("k and v must not be NULL when capacity_tokens > 0");
    }
    std::lock_guard<std::mutex> lock(rt->mu);
    absl::StatusOr<int32_t> len = rt->runtime->SequenceLength(seq, layer);
    if (!len.ok()) return len.status();
    *out_len = *len;
    if (capacity_tokens == 0 && k == nullptr && v == nullptr) return absl::OkStatus();
    if (capacity_tokens < *len) {
      return absl::InvalidArgumentError(
          absl::StrCat("capacity_tokens ", capacity_tokens, " < length ", *len));
    }
    std::vector<twl::fp16_t> kk, vv;
    if (absl::Status s = rt->runtime->ReadKv(seq, layer, &kk, &vv); !s.ok()) return s;
    const size_t expect =
        size_t(*len) * size_t(rt->config.num_kv_heads) * size_t(rt->config.head_dim);
    if (kk.size() != expect || vv.size() != expect) {
      return absl::InternalError(absl::StrCat("ReadKv returned ", kk.size(), "/", vv.size(),
                                              " elements, expected ", expect));
    }
    // memcpy: k and v may be at any address (no alignment is asked of host buffers). An
    // empty layer has no data pointer to copy from (memcpy from NULL is undefined even for 0).
    if (!kk.empty()) {
      std::memcpy(static_cast<void*>(k), kk.data(), kk.size() * sizeof(twl::fp16_t));
      std::memcpy(static_cast<void*>(v), vv.data(), vv.size() * sizeof(twl::fp16_t));
    }
    return absl::OkStatus();
  });
}

twl_status twl_decode(twl_runtime* rt, int32_t layer, const twl_seq_id* seqs, int32_t num_seqs,
                      const void* q, void* out, twl_memory_space space, const float* seq_p,
                      void* stream) noexcept {
  return Guard(rt, "twl_decode", [&]() -> absl::Status {
    if (absl::Status s = CheckHandle(rt); !s.ok()) return s;
    thread_local twl::api::DecodeArgs args;
    if (absl::Status s =
            twl::api::CheckDecodeArgs(rt, layer, seqs, num_seqs, q, out, seq_p, &args);
        !s.ok()) {
      return s;
    }
    absl::StatusOr<twl::MemSpace> mem = twl::api::CheckSpace(rt, space);
    if (!mem.ok()) return mem.status();
    if (*mem == twl::MemSpace::kDevice) {
      if (absl::Status s = twl::api::CheckDeviceAlignment("q", q, 16); !s.ok()) return s;
      if (absl::Status s = twl::api::CheckDeviceAlignment("out", out, 2); !s.ok()) return s;
    }
    const absl::Span<const float> p_span = absl::MakeConstSpan(args.seq_p);

    std::lock_guard<std::mutex> lock(rt->mu);
    twl::StepTelemetry* telemetry = nullptr;
    if (rt->collect_telemetry || rt->capture_kept) {
      telemetry = &rt->scratch_step;
      twl::api::ResetTelemetry(telemetry);
    }
    absl::Status status = rt->runtime->Decode(
        layer, absl::MakeConstSpan(args.seqs), static_cast<const twl::fp16_t*>(q),
        static_cast<twl::fp16_t*>(out), *mem, p_span, stream, telemetry);
    if (!status.ok() || telemetry == nullptr) return status;
    // No step had completed since the last publication: the caller keeps the figures it has.
    if (telemetry->no_new_figures) return status;
    if (rt->capture_kept) {
      rt->kept_num_seqs = num_seqs;
      rt->kept_offsets = std::move(telemetry->kept_list_offsets);
      rt->kept_tokens = std::move(telemetry->kept_list_tokens);
      telemetry->kept_list_offsets.clear();
      telemetry->kept_list_tokens.clear();
    }
    if (!rt->collect_telemetry) return status;
    if (telemetry->layer < 0) {  // a backend reporting an earlier step sets these itself
      telemetry->layer = layer;
      telemetry->num_seqs = num_seqs;
    }
    // Publish to this thread's last step; the old one becomes the next scratch.
    TwlThreadState& state = *twl::api::ThreadState(rt, /*create=*/true);
    std::swap(state.last_step, rt->scratch_step);
    state.has_step = true;
    return absl::OkStatus();
  });
}

}  // extern "C"
