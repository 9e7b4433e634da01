// Internal interface between the Runtime (sequences, page allocation, validation) and the
// place where pages live and the decode step runs. Page ids come from the Runtime's page
// allocator (cache/); a backend is sized for `num_pages` pages at creation and stores, per
// block (page id * num_kv_heads + KV head), the FP16 K/V and the quantized K + metadata.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/stage_views.h"
#include "runtime/runtime.h"

namespace twl {

// One decode step of one layer, as the Runtime hands it to a backend. Host-side plan:
// batch.seq_len and batch.page_table are host pointers, valid for the call.
struct DecodeRequest {
  int32_t layer = 0;
  BatchView batch;                 // host pointers
  const fp16_t* q = nullptr;       // [num_seqs][num_q_heads][head_dim] in `space`
  fp16_t* out = nullptr;           // [num_seqs][num_q_heads][head_dim] in `space`
  MemSpace space = MemSpace::kHost;
  SelectorParams selector;
  PrunerParams pruner;             // pruner.seq_p is a host pointer or null
  void* stream = nullptr;          // caller's cudaStream_t or null
  bool capture_kept = false;       // fill StepTelemetry::kept_list_* (telemetry non-null)
  int64_t step_id = 0;             // the Runtime's count of decodes (StepTelemetry::step_id)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind Kind() const = 0;
  virtual std::string Name() const = 0;

  // Writes appended tokens, of one sequence or of a whole batch of sequences (the Runtime
  // concatenates them): tokens.k/v in `space` and `dtype`; tokens.page_id/slot host arrays.
  // One call is one pass over the batch (GPU backends: one kernel launch plus bulk copies,
  // not one per sequence). `stream`: the caller's cudaStream_t as void* (null: the backend's
  // own). GPU backends enqueue the work on it and return without waiting for the device:
  // device input is read when the stream gets there; host input is copied before return.
  // Work that reads the cache afterwards (Decode on any stream, CopyPage, ReadPage) is
  // ordered after the append by the backend. Nothing is written when a check fails.
  virtual absl::Status Append(const AppendView& tokens, DType dtype, MemSpace space,
                              void* stream) = 0;
  // Blocks the host until every append issued so far has completed on the device (input
  // consumed, rows and metadata written). CPU backend: nothing to wait for.
  virtual absl::Status WaitAppends() { return absl::OkStatus(); }
  // Copies the first `rows` rows of every block of page src into page dst (copy-on-write).
  virtual absl::Status CopyPage(int32_t src_page, int32_t dst_page, int32_t rows) = 0;
  // Reads `rows` rows of a page: k, v host arrays [rows][num_kv_heads][head_dim].
  virtual absl::Status ReadPage(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const = 0;
  // Forgets anything cached about a freed page (e.g. GPU hot-cache slots).
  virtual void ReleasePage(int32_t /*page*/) {}

  virtual absl::Status Decode(const DecodeRequest& request, StepTelemetry* telemetry) = 0;
  virtual MemoryUsage Memory() const = 0;
  virtual absl::Status TakeAsyncError() { return absl::OkStatus(); }
};

// Factories (each in its own file). GPU ones return Unavailable without a usable GPU.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const RuntimeConfig& config,
                                                          int64_t num_pages);
absl::StatusOr<std::unique_ptr<Backend>> CreateGpuHbmBackend(const RuntimeConfig& config,
                                                             int64_t num_pages);
absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackend(const RuntimeConfig& config,
                                                                 int64_t num_pages);
// The GPU offload backend over a disk tier: `num_pages` logical pages (at most host_slots - 1
// + tier->capacity()), `host_slots` pinned page slots (runtime/gpu_offload_backend.h).
class DiskTier;  // offload/disk_tier.h
absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackendWithDisk(
    const RuntimeConfig& config, int64_t num_pages, int64_t host_slots,
    std::unique_ptr<DiskTier> tier);

}  // namespace twl
