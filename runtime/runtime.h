// The C++ face of the runtime: sequences, appends and the Twilight decode step of one layer
// for a batch of sequences. The C API (api/) is a thin layer over this class.
//
// Decode step (per layer, per KV head):  select (Quest) -> prune (top-p on INT4 K)
//   -> fetch surviving FP16 pages (offload backend) -> sparse attention.
// Backends: CPU reference (always available), GPU with all KV in HBM, GPU offload
// (FP16 KV in pinned host memory, INT4 K + page metadata + hot-page cache on the GPU).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/stage_views.h"

namespace twl {

enum class BackendKind : int32_t {
  kAuto = 0,        // GPU offload when a GPU is present, else CPU
  kCpu = 1,         // CPU reference pipeline
  kGpuHbm = 2,      // GPU, all FP16 KV in device memory
  kGpuOffload = 3,  // GPU, FP16 KV in pinned host memory
};

enum class DType : int32_t { kFp16 = 0, kBf16 = 1, kFp32 = 2 };
enum class MemSpace : int32_t { kHost = 0, kDevice = 1 };

enum class FetchPath : int32_t {
  kAuto = 0,      // chosen by measurement
  kGather = 1,    // SM-driven zero-copy gather from mapped pinned memory
  kCopyEngine = 2 // cudaMemcpyBatchAsync / cudaMemcpyAsync
};

// Upper bounds of the configuration (RuntimeConfig::Validate refuses larger values): far
// above any model, and low enough that sizes derived from them cannot overflow.
inline constexpr int32_t kMaxLayers = 4096;       // each sequence holds a table per layer
inline constexpr int32_t kMaxHeads = 1024;        // query heads (and so KV heads)
inline constexpr int32_t kMaxSinkTokens = 1 << 30;  // sink_pages * page_size

struct RuntimeConfig {
  // Model shape.
  int32_t num_layers = 1;
  int32_t num_q_heads = 32;
  int32_t num_kv_heads = 8;
  int32_t head_dim = 128;
  // Cache layout.
  int32_t page_size = 16;
  int32_t k_bits = 4;  // 2, 4, 8 or 16 (estimate with FP16 K)
  // How the estimation copy is scaled (core/page_layout.h): kKSchemePageChannel (per block
  // and channel over the Quest min/max; the default, kKSchemeDefault) or kKSchemeToken (one
  // scale/zero per token, the default before 2026-12). Every backend; k_bits 16 ignores it.
  int32_t k_scheme = kKSchemeDefault;
  // Twilight.
  float top_p = 0.95f;
  // Unset: the library chooses (SelectorOf below), as TWL_SELECTOR_DEFAULT does in the C API.
  std::optional<SelectorKind> selector;
  // Quest grows each head's candidates until the kept set provably holds >= top_p of the
  // full-context estimated mass (see SelectorParams::grow); these only cap the ranked
  // candidate pages: a token count (> 0), else a fraction of each sequence's own context
  // (< 1); 0 tokens and fraction 1: no cap (the default).
  int32_t selector_budget_tokens = 0;
  float selector_budget_fraction = 1.0f;
  int32_t sink_pages = 1;
  int32_t dense_layers = 0;                 // first layers decoded densely (paper: 2)
  // Memory.
  int64_t host_pool_bytes = 0;  // 0: library chooses (1 GiB)
  int64_t gpu_cache_bytes = 0;  // 0: library chooses (hot FP16 page cache)
  FetchPath fetch_path = FetchPath::kAuto;
  // Placement.
  BackendKind backend = BackendKind::kAuto;
  int32_t device_id = 0;
  // Disk tier (NVMe, io_uring; CPU and GPU offload backends): FP16 pages that do not fit in the host pool
  // are spilled to a file in `disk_path` (a directory) of at most `disk_bytes` bytes, and read
  // back when a step keeps them. Both set = on; both empty/0 = off. The page capacity becomes
  // host pool pages + disk records - 1; one decode step still needs every page it attends to
  // in the host pool at once (else ResourceExhausted).
  std::string disk_path;
  int64_t disk_bytes = 0;
  // Element type of the stored K/V pages (host pool, HBM pool, GPU cache, disk records):
  // kFp16 (default) or kBf16 (same bytes per page; appends round to it, attention and the
  // quantizer read it). kBf16 needs k_bits < 16 (the pruner's exact-K path reads FP16).
  DType kv_dtype = DType::kFp16;
  // GPU offload backend: what its GPU cache holds (pipeline/fetch/): 0 the library chooses
  // (rows, unless the row map would take more than a quarter of the cache's bytes), 1 whole
  // blocks (page x KV head, residency by value: cache/gpu_page_cache.h), 2 single rows
  // (cache/row_cache_policy.h: only the rows the attention reads). Other backends ignore it.
  int32_t cache_rows = 0;

  // Validates ranges and divisibility (num_q_heads % num_kv_heads, head_dim, bits, p).
  absl::Status Validate() const;
};

// The selector a configuration runs: the one it names, or the library's choice when it names
// none: FULL without a cap (every page a candidate), Quest growing up to the cap with one
// (a cap needs a ranking of pages). Every reader of RuntimeConfig::selector goes through it.
SelectorKind SelectorOf(const RuntimeConfig& config);

using SeqId = int64_t;

// Telemetry of the last decode step (one layer, one batch).
struct StepTelemetry {
  int32_t layer = -1;
  int32_t num_seqs = 0;
  // Which decode of the runtime these figures describe (1 = its first). GPU backends with
  // device memory publish the newest earlier step whose figures have landed, without waiting;
  // when none has since the last publication, no_new_figures is set and the rest is empty.
  int64_t step_id = 0;
  bool no_new_figures = false;
  std::vector<int32_t> selected_tokens;   // [num_seqs][num_q_heads]
  std::vector<int32_t> kept_tokens;       // [num_seqs][num_q_heads] own top-p set
  std::vector<float> est_mass;            // [num_seqs][num_q_heads]
  std::vector<int32_t> kept_tokens_kv;    // [num_seqs][num_kv_heads] union (what is attended)
  // GPU offload store: where each (sequence, KV head) lives: its distinct kept blocks, and
  // how many of them were resident in the GPU cache when planned (hits); the rest were
  // fetched or read in place. Empty for other backends. Under the row cache (cache_rows)
  // these, blocks_needed / blocks_fetched / blocks_in_place and the hit rate count rows.
  std::vector<int32_t> blocks_kv;
  std::vector<int32_t> resident_blocks_kv;
  // Of blocks_fetched: blocks read in place (not admitted to the GPU cache), and their
  // kept rows' bytes (part of bytes_h2d). GPU offload store only.
  int64_t blocks_in_place = 0;
  int64_t bytes_in_place = 0;
  int64_t blocks_needed = 0;   // FP16 blocks the attention reads
  int64_t blocks_fetched = 0;  // of those, fetched from host this step
  int64_t bytes_h2d = 0;
  double ms_select = 0, ms_prune = 0, ms_fetch = 0, ms_attend = 0, ms_total = 0;
  double CacheHitRate() const {
    return blocks_needed ? 1.0 - double(blocks_fetched) / double(blocks_needed) : 1.0;
  }
  // Disk tier (RuntimeConfig::disk_bytes > 0): pages read back from disk into the host pool
  // for this step, pages written to disk to make room, and the wall time of that I/O (CPU:
  // also counted in ms_fetch; GPU offload: host time, outside the GPU stage times).
  int64_t disk_pages_loaded = 0;
  int64_t disk_pages_spilled = 0;
  double ms_disk = 0;
  // Evaluation aid (Runtime::SetCaptureKept): the ascending token positions each (sequence,
  // KV head) attended, as CSR: unit u = s * num_kv_heads + h holds
  // kept_list_tokens[kept_list_offsets[u] .. kept_list_offsets[u + 1]). Empty when off.
  std::vector<int64_t> kept_list_offsets;
  std::vector<int32_t> kept_list_tokens;
  // Growing Quest, per query head [num_seqs][num_q_heads]: lower bound of the estimated
  // full-context mass of the head's kept set (est_mass is its mass within the candidates;
  // -1: unknown), and 1 where the growth stopped at the configured cap.
  std::vector<float> full_mass;
  std::vector<int32_t> cap_hit;
  // Disk tier under the GPU offload backend: payload bytes read from disk for this step
  // (loads + reaped read-ahead), pages whose read-ahead was submitted after it and pages of
  // an earlier read-ahead that arrived, times the step blocked on a disk read and how long.
  int64_t disk_bytes_read = 0;
  int64_t disk_pages_read_ahead = 0;
  int64_t disk_pages_read_ahead_used = 0;
  int64_t disk_waits = 0;
  double ms_disk_wait = 0;
};

struct MemoryUsage {
  int64_t host_pool_bytes_used = 0, host_pool_bytes_total = 0;
  int64_t gpu_quant_bytes = 0;     // INT4 K + metadata on the GPU
  int64_t gpu_cache_bytes = 0;     // hot FP16 page cache on the GPU
  int64_t gpu_fp16_bytes = 0;      // FP16 KV on the GPU (HBM backend)
  int64_t disk_bytes = 0;          // disk tier file in use (records of spilled pages)
  int64_t host_table_bytes = 0;    // sequence and page tables (num_layers records a sequence)
};

class Backend;        // runtime/backend.h
class SequenceTable;  // cache/sequence_table.h

class Runtime {
 public:
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(const RuntimeConfig& config);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const RuntimeConfig& config() const { return config_; }
  BackendKind backend_kind() const;
  std::string backend_name() const;

  absl::StatusOr<SeqId> CreateSequence();
  absl::Status FreeSequence(SeqId seq);
  // New sequence sharing all of `parent`'s pages (copy-on-write): a shared partial last
  // page is copied on the first append that writes into it.
  absl::StatusOr<SeqId> ForkSequence(SeqId parent);
  absl::StatusOr<int32_t> SequenceLength(SeqId seq, int32_t layer) const;

  // Appends n tokens of K and V, each [n][num_kv_heads][head_dim] in `dtype`, to `layer`.
  // All-or-nothing: on error the sequence is unchanged. Synchronous: device input has been
  // consumed when it returns (it is AppendBatch of one sequence, then a wait).
  absl::Status Append(SeqId seq, int32_t layer, int32_t n, const void* k, const void* v,
                      DType dtype, MemSpace space);

  // Appends counts[i] tokens to seqs[i] in `layer`, for every i, in one pass: k and v are
  // each packed [sum(counts)][num_kv_heads][head_dim] in `dtype`, sequence after sequence in
  // the order of `seqs`. counts[i] == 0 appends nothing to seqs[i] (the id is still
  // checked). All-or-nothing across the batch: pages of every sequence are allocated first
  // (rolled back if any sequence does not fit), then ONE backend call writes every token;
  // on any error no sequence changes. Errors: InvalidArgument (sizes differ, a count < 0,
  // a duplicate id, null k/v with tokens, total over 2^31-1, bad layer/dtype/space),
  // NotFound (an unknown id), ResourceExhausted (the pool cannot hold the batch).
  // GPU backends with device input: enqueued on `stream` (cudaStream_t as void*) without
  // blocking the host; k/v must stay valid until the stream reaches the append (null stream:
  // the backend's own, and the call returns once the input has been read). A later Decode
  // (any stream) sees the rows.
  absl::Status AppendBatch(int32_t layer, absl::Span<const SeqId> seqs,
                           absl::Span<const int32_t> counts, const void* k, const void* v,
                           DType dtype, MemSpace space, void* stream);

  // One decode step of `layer` for `seqs`: q and out are [num_seqs][num_q_heads][head_dim]
  // FP16 in `space` (device pointers on GPU backends). seq_p: per-sequence p or empty.
  // stream: the caller's cudaStream_t (as void*), or null for the runtime's own.
  absl::Status Decode(int32_t layer, absl::Span<const SeqId> seqs, const fp16_t* q,
                      fp16_t* out, MemSpace space, absl::Span<const float> seq_p,
                      void* stream, StepTelemetry* telemetry);

  // Bound batches (runtime/bound_batch.h, issue 11.3): `seqs` (distinct, existing) bound
  // for decode steps of fixed shape, rows of max_tokens tokens. While bound, every append to
  // one of them also updates the batch's tables (host mirror and device copy, on the append's
  // stream), an append past max_tokens fails (FailedPrecondition, nothing appended) and the
  // sequence cannot be freed (FailedPrecondition). Unimplemented on the GPU offload backend
  // over a disk tier or with a GPU cache of blocks (cache_rows 1): their fetch stages plan on
  // the host.
  absl::StatusOr<int64_t> BindBatch(absl::Span<const SeqId> seqs, int32_t max_tokens);
  absl::Status UnbindBatch(int64_t batch);
  // One decode step of `layer` for the whole batch. q and out: [n][num_q_heads][head_dim] of
  // dtype; device memory on GPU backends (capturable in a CUDA graph: no host plan, no
  // allocation, no host wait, no event wait while `stream` is capturing, no telemetry), host
  // memory on the CPU backend (synchronous).
  absl::Status DecodeBatch(int64_t batch, int32_t layer, const void* q, void* out, DType dtype,
                           void* stream);
  // Takes the next row of every sequence of the batch in every layer (lengths + 1; pages
  // allocated, shared partial pages copied, as an append of one token would) without writing
  // it: the row holds unspecified values until AppendBatchRows of its layer writes it. The
  // batch's tables, host mirror and device copy (on `stream`), name the rows. All-or-nothing
  // across sequences and layers: FailedPrecondition (a sequence at the batch's max_tokens),
  // ResourceExhausted (the pool), NotFound (unknown batch); nothing reserved on failure.
  absl::Status ReserveBatchRows(int64_t batch, void* stream);
  // Writes k/v ([n][num_kv_heads][head_dim] of dtype, one token per sequence in bind order)
  // into the rows the batch's last ReserveBatchRows took in `layer`. GPU backends: device
  // memory, enqueued on `stream`, capturable (the rows are read from the batch's device
  // tables when the work runs: a replay writes the rows the reservation before it took).
  // CPU backend: host memory, synchronous. FailedPrecondition before the first reservation.
  absl::Status AppendBatchRows(int64_t batch, int32_t layer, const void* k, const void* v,
                               DType dtype, void* stream);
  // The batch's tables of `layer`: lengths [n] and page table [n][max_pages] (-1 past each
  // sequence's pages); `device`: read the device copy (GPU backends; waits for the appends),
  // else the host mirror.
  absl::Status BatchTables(int64_t batch, int32_t layer, bool device, std::vector<int32_t>* lens,
                           std::vector<int32_t>* pages, int32_t* max_pages) const;

  // Reads back a sequence's cached FP16 K/V of one layer ([len][num_kv_heads][head_dim]).
  absl::Status ReadKv(SeqId seq, int32_t layer, std::vector<fp16_t>* k,
                      std::vector<fp16_t>* v) const;

  MemoryUsage Memory() const;
  // Evaluation aid: when on, every decode step also returns the token positions it attended
  // (StepTelemetry::kept_list_*), at the cost of a device-to-host copy and a host wait per
  // step on GPU backends. Off by default; not for serving.
  void SetCaptureKept(bool on);
  // First error of a background transfer since the last call (then cleared).
  absl::Status TakeAsyncError();

 private:
  explicit Runtime(const RuntimeConfig& config);
  // Shared body of Append and AppendBatch; `what` prefixes messages; `wait`: block until
  // the device has consumed the input.
  absl::Status AppendImpl(const char* what, int32_t layer, absl::Span<const SeqId> seqs,
                          absl::Span<const int32_t> counts, const void* k, const void* v,
                          DType dtype, MemSpace space, void* stream, bool wait);
  RuntimeConfig config_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace twl
