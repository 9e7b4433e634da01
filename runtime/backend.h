// Internal interface between the Runtime (sequences, page allocation, validation) and the
// place where pages live and the decode step runs. Page ids come from the Runtime's page
// allocator (cache/); a backend is sized for `num_pages` pages at creation and stores, per
// block (page id * num_kv_heads + KV head), the FP16 K/V and the quantized K + metadata.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
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

// Device copy of a bound batch's tables and its fixed-shape step scratch (runtime/bound_batch.h),
// made by a backend that can decode a bound batch; owned by the batch.
class BoundTables {
 public:
  virtual ~BoundTables() = default;
};

// One layer's words of a bound batch (runtime/bound_batch.h), host mirror and device copy
// alike: n lengths, n page-table rows of max_pages, then the n reserved rows as append
// segments (AppendSegment, 5 words each: page, row_begin, row_end, src_token, stage).
inline constexpr int32_t kBoundSegmentWords = int32_t(sizeof(AppendSegment) / sizeof(int32_t));
static_assert(sizeof(AppendSegment) == kBoundSegmentWords * sizeof(int32_t) &&
                  alignof(AppendSegment) == alignof(int32_t),
              "an AppendSegment must be a run of int32 words");
inline int64_t BoundSegmentsOffset(int32_t num_seqs, int32_t max_pages) {
  return int64_t(num_seqs) * (1 + int64_t(max_pages));
}
inline int64_t BoundWordsPerLayer(int32_t num_seqs, int32_t max_pages) {
  return BoundSegmentsOffset(num_seqs, max_pages) + int64_t(num_seqs) * kBoundSegmentWords;
}

inline constexpr int32_t kAllBoundLayers = -1;

// One word of a bound batch's layer tables to overwrite (layout: runtime/bound_batch.h).
struct TableWrite {
  int32_t index = 0;
  int32_t value = 0;
};

// What a bound batch fixes at bind time.
struct BoundShape {
  int32_t num_seqs = 0;
  int32_t max_pages = 0;        // page-table row stride
  SelectorParams selector;      // of the non-dense layers (sink_pages clamped to max_pages)
};

// One decode step of a bound batch: everything the device needs is in `tables` or fixed by
// the shape; nothing of it depends on the host state at the time of the call.
struct BoundDecodeRequest {
  int32_t layer = 0;
  BoundTables* tables = nullptr;
  int32_t num_seqs = 0, num_q_heads = 0, max_pages = 0;
  const void* q = nullptr;      // [num_seqs][num_q_heads][head_dim] of dtype, device memory
  void* out = nullptr;
  DType dtype = DType::kFp16;
  SelectorParams selector;
  PrunerParams pruner;          // seq_p null
  void* stream = nullptr;       // caller's cudaStream_t or null
};

// One token per sequence of a bound batch written into the rows its last reservation took
// (the layer's segment words): nothing of it depends on the host state at the call.
struct BoundAppendRequest {
  int32_t layer = 0;
  BoundTables* tables = nullptr;
  int32_t num_seqs = 0, max_pages = 0;
  const void* k = nullptr;      // [num_seqs][num_kv_heads][head_dim] of dtype, device memory
  const void* v = nullptr;
  DType dtype = DType::kFp16;
  void* stream = nullptr;       // caller's cudaStream_t or null
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

  // Bound batches (runtime/bound_batch.h). A backend that does not override these cannot
  // hold one on the device (Unimplemented); the CPU store needs no device copy (the Runtime
  // decodes from the host mirror).
  // Device tables initialized from `words` ([num_layers][BoundWordsPerLayer]), plus
  // everything a step of this shape needs, allocated now: a step never allocates.
  virtual absl::StatusOr<std::unique_ptr<BoundTables>> CreateBoundTables(
      const BoundShape& /*shape*/, absl::Span<const int32_t> /*words*/) {
    return absl::UnimplementedError("bound batches are not supported by the " + Name() +
                                    " backend");
  }
  // Overwrites words of one layer, enqueued on `stream` (null: the backend's own) after the
  // appends issued so far; later decodes (any stream, eager) are ordered after it. With
  // layer == kAllBoundLayers the indices run over every layer's words (layer l's word i is
  // l * BoundWordsPerLayer + i): one launch for a reservation's writes of all layers.
  virtual absl::Status WriteBoundTables(BoundTables* /*tables*/, int32_t /*layer*/,
                                        absl::Span<const TableWrite> /*writes*/,
                                        void* /*stream*/) {
    return absl::UnimplementedError("bound batches: no device tables");
  }
  // Reads one layer's device words back (waits for the writes issued so far).
  virtual absl::Status ReadBoundTables(BoundTables* /*tables*/, int32_t /*layer*/,
                                       absl::Span<int32_t> /*words*/) {
    return absl::UnimplementedError("bound batches: no device tables");
  }
  virtual absl::Status DecodeBound(const BoundDecodeRequest& /*request*/) {
    return absl::UnimplementedError("bound batches: no device decode");
  }
  // Writes the rows the layer's segment words name (enqueued, capturable like DecodeBound;
  // ordered after the appends and table writes issued so far, later decodes after it).
  virtual absl::Status AppendBound(const BoundAppendRequest& /*request*/) {
    return absl::UnimplementedError("bound batches: no device append");
  }
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
