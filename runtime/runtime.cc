// twl::Runtime: validation, sequences and page tables, and the hand-off of appends and
// decode steps to a backend (see runtime.h).
//
// Locking: one reader-writer mutex per runtime. Mutations of the cache (Append, Fork, Free)
// and Decode (whose backends keep per-runtime scratch) hold it exclusively; ReadKv,
// SequenceLength and Memory hold it shared. Every public method is therefore thread-safe,
// and calls on different sequences serialize for now (the CPU backend parallelizes inside
// a call).
#include "runtime/runtime.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstddef>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <new>
#include <shared_mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "cache/page_allocator.h"
#include "cache/sequence_table.h"
#include "core/host_simd.h"
#include "core/validate.h"
#include "offload/disk_tier.h"
#include "runtime/backend.h"
#include "runtime/bound_batch.h"
#include "runtime/cpu_backend.h"
#include "runtime/disk_residency.h"
#include "runtime/log.h"
#include "runtime/device_probe.h"
#include "runtime/dtype_convert.h"
#include "pipeline/select/selector.h"
#include "runtime/geometry.h"

namespace twl {
namespace {

#define TWL_RETURN_IF_ERROR_RT(expr)            \
  do {                                          \
    if (absl::Status s_ = (expr); !s_.ok()) return s_; \
  } while (0)

constexpr int64_t kDefaultHostPoolBytes = int64_t(1) << 30;

bool OneOf(int32_t v, std::initializer_list<int32_t> set) {
  return std::find(set.begin(), set.end(), v) != set.end();
}

// Selector and pruner parameters of a step of `layer` over page tables of stride max_pages
// (shared by Decode and DecodeBatch, so a bound batch decodes with the same rules).
void StepParams(const RuntimeConfig& config, int32_t layer, int32_t max_pages,
                SelectorParams* sel, PrunerParams* pr) {
  const bool dense = layer < config.dense_layers;
  sel->kind = dense ? SelectorKind::kFull : SelectorOf(config);
  // Sinks past the longest sequence change nothing; clamped so that the selector's sums
  // (budget + sinks + 1) stay far from int32 overflow.
  sel->sink_pages = std::min(config.sink_pages, max_pages);
  // Quest grows each head's candidates (no base budget); the configured budget is only a
  // cap, and a fraction caps each sequence by its own length, so that a sequence's output
  // does not depend on its batch-mates.
  sel->grow = true;
  sel->budget_pages =
      config.selector_budget_tokens > 0
          ? static_cast<int32_t>((int64_t(config.selector_budget_tokens) + config.page_size - 1) /
                                 config.page_size)
          : 0;
  sel->budget_fraction = config.selector_budget_tokens > 0 ? 0.0f : config.selector_budget_fraction;
  pr->p = config.top_p;
  pr->seq_p = nullptr;
  pr->dense = dense;
}

}  // namespace

SelectorKind SelectorOf(const RuntimeConfig& config) {
  if (config.selector) return *config.selector;
  // Without a cap every page is a candidate (top-p over every token's INT4 estimate: the
  // full-context mass is estimated, not bounded). At 128k the Quest bound (d = 128) is too
  // loose to let the growth skip pages, so growing Quest scored every page anyway and paid
  // its bound and search passes on top (H200 serving loop, B = 8: 0.92 vs 1.60 ms per
  // layer-step, same kept mass; bench/RESULTS.md).
  const bool capped = config.selector_budget_tokens > 0 || config.selector_budget_fraction < 1.0f;
  return capped ? SelectorKind::kQuest : SelectorKind::kFull;
}

absl::Status RuntimeConfig::Validate() const {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError("config: " + msg); };
  // Upper bounds keep every product and sum of these in range (see kMaxLayers, kMaxHeads and
  // kMaxSinkTokens in runtime.h): a value past them would overflow an int32 somewhere in a
  // decode step instead of being refused here.
  if (num_layers < 1 || num_layers > kMaxLayers) {
    return bad(absl::StrFormat("num_layers must be in [1, %d], got %d", kMaxLayers, num_layers));
  }
  if (num_kv_heads < 1 || num_kv_heads > kMaxHeads) {
    return bad(
        absl::StrFormat("num_kv_heads must be in [1, %d], got %d", kMaxHeads, num_kv_heads));
  }
  if (num_q_heads < 1 || num_q_heads > kMaxHeads || num_q_heads % num_kv_heads != 0) {
    return bad(absl::StrFormat(
        "num_q_heads (%d) must be a multiple of num_kv_heads (%d) in [1, %d]", num_q_heads,
        num_kv_heads, kMaxHeads));
  }
  if (!OneOf(head_dim, {8, 16, 32, 64, 96, 128, 256})) {
    return bad(absl::StrFormat("head_dim must be 8, 16, 32, 64, 96, 128 or 256, got %d", head_dim));
  }
  if (page_size < 1 || page_size > 4096) {
    return bad(absl::StrFormat("page_size must be in [1, 4096], got %d", page_size));
  }
  if (!OneOf(k_bits, {2, 4, 8, 16})) {
    return bad(absl::StrFormat("k_bits must be 2, 4, 8 or 16, got %d", k_bits));
  }
  if (!OneOf(k_scheme, {kKSchemeToken, kKSchemePageChannel})) {
    return bad(absl::StrFormat("k_scheme must be %d (per token) or %d (per page channel), got %d",
                               kKSchemeToken, kKSchemePageChannel, k_scheme));
  }
  if (kv_dtype != DType::kFp16 && kv_dtype != DType::kBf16) {
    return bad(absl::StrFormat("kv_dtype must be FP16 (0) or BF16 (1), got %d",
                               static_cast<int32_t>(kv_dtype)));
  }
  if (kv_dtype == DType::kBf16 && k_bits >= 16) {
    return bad("kv_dtype BF16 needs k_bits 2, 4 or 8 (k_bits 16 estimates with FP16 K)");
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    // %.9g: every float prints distinctly (1.0000001 is not "1").
    return bad(absl::StrFormat("top_p must be in (0, 1], got %.9g", top_p));
  }
  const SelectorKind kind = SelectorOf(*this);
  absl::StatusOr<const Selector*> sel = FindSelector(kind);
  if (!sel.ok()) return bad(absl::StrFormat("unknown selector kind %d", static_cast<int32_t>(kind)));
  if (absl::Status st = (*sel)->CheckGeometry(GeometryOf(*this)); !st.ok()) {
    return bad(std::string(st.message()));
  }
  if (selector_budget_tokens < 0) {
    return bad(absl::StrFormat("selector_budget_tokens must be >= 0, got %d",
                               selector_budget_tokens));
  }
  if (selector_budget_tokens == 0 &&
      !(selector_budget_fraction > 0.0f && selector_budget_fraction <= 1.0f)) {
    return bad(absl::StrFormat("selector_budget_fraction must be in (0, 1], got %.9g",
                               selector_budget_fraction));
  }
  if (sink_pages < 0 || int64_t(sink_pages) * page_size > kMaxSinkTokens) {
    return bad(absl::StrFormat(
        "sink_pages must be in [0, %d] (at most %d sink tokens with page_size %d), got %d",
        kMaxSinkTokens / page_size, kMaxSinkTokens, page_size, sink_pages));
  }
  if (dense_layers < 0 || dense_layers > num_layers) {
    return bad(absl::StrFormat("dense_layers must be in [0, num_layers=%d], got %d", num_layers,
                               dense_layers));
  }
  if (host_pool_bytes < 0) return bad("host_pool_bytes must be >= 0 (0: library chooses)");
  if (gpu_cache_bytes < 0) return bad("gpu_cache_bytes must be >= 0 (0: library chooses)");
  if (!OneOf(static_cast<int32_t>(fetch_path), {0, 1, 2})) return bad("unknown fetch_path");
  if (!OneOf(cache_rows, {0, 1, 2})) {
    return bad(absl::StrFormat("cache_rows must be 0, 1 (blocks) or 2 (rows), got %d", cache_rows));
  }
  if (!OneOf(static_cast<int32_t>(backend), {0, 1, 2, 3})) return bad("unknown backend kind");
  if (device_id < 0) return bad(absl::StrFormat("device_id must be >= 0, got %d", device_id));
  if (disk_bytes < 0) return bad(absl::StrFormat("disk_bytes must be >= 0, got %d", disk_bytes));
  if (disk_bytes > 0 && disk_path.empty()) {
    return bad("disk_bytes > 0 needs disk_path (a directory for the disk tier's file)");
  }
  if (disk_bytes == 0 && !disk_path.empty()) {
    return bad(absl::StrFormat("disk_path '%s' needs disk_bytes > 0 (the disk tier's size)",
                               disk_path));
  }
  return ValidateGeometry(GeometryOf(*this));
}

struct Runtime::Impl {
  PageGeometry g;
  int64_t num_pages = 0;
  bool disk_tier = false;  // the backend reports its own pool usage
  int64_t host_slots = 0;    // with a disk tier: host pool pages, and
  int64_t disk_records = 0;  // records of the disk tier (num_pages = their sum - 1)
  std::unique_ptr<PageAllocator> allocator;
  std::unique_ptr<SequenceTable> table;
  std::unique_ptr<Backend> backend;
  std::string backend_name;
  mutable std::shared_mutex mu;
  std::atomic<bool> capture_kept{false};
  int64_t decode_count = 0;  // decodes so far (under mu): StepTelemetry::step_id
  BoundBatches bound;        // under mu

  void ReleasePages(const std::vector<int32_t>& freed) {
    for (int32_t p : freed) backend->ReleasePage(p);
  }

  // Gives back the pages of plans that will not be committed.
  void AbortPlans(const std::vector<AppendPlan>& plans) {
    std::vector<int32_t> freed;
    for (const AppendPlan& p : plans) table->AbortAppend(p, &freed);
    ReleasePages(freed);
  }

  // Copy-on-write of the shared partial pages the plans write into (forks; rare).
  absl::Status CopySharedPages(const std::vector<AppendPlan>& plans) {
    for (const AppendPlan& p : plans) {
      if (!p.has_cow()) continue;
      TWL_RETURN_IF_ERROR_RT(backend->CopyPage(p.cow_src, p.cow_dst, p.cow_rows));
    }
    return absl::OkStatus();
  }

  // A plan that found no free page: with a disk tier the ids span pool and tier, so running
  // out means the disk tier is full; say so rather than "pool exhausted".
  absl::Status NoPagesStatus(absl::Status st, int64_t tokens) const {
    if (!disk_tier || !absl::IsResourceExhausted(st)) return st;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "disk tier full: the host pool (%d pages) and the disk tier (%d records) hold %d "
        "pages; %d are free, too few for %d more tokens",
        host_slots, disk_records, num_pages, allocator->num_free(), tokens));
  }

  // Installs append plans whose data is written (or, for a reservation, enqueued). Nothing
  // else mutates the table while the exclusive lock is held, so a commit cannot find its
  // sequence changed; the error is for a broken invariant (the rest are aborted then).
  absl::Status CommitPlans(const char* what, const std::vector<AppendPlan>& plans) {
    std::vector<int32_t> freed;
    for (size_t i = 0; i < plans.size(); ++i) {
      if (absl::Status s = table->CommitAppend(plans[i], &freed); !s.ok()) {
        std::vector<int32_t> aborted;
        for (size_t j = i; j < plans.size(); ++j) table->AbortAppend(plans[j], &aborted);
        ReleasePages(aborted);
        ReleasePages(freed);
        return absl::InternalError(absl::StrFormat(
            "%s: commit of plan %d failed after %d committed: %s", what, i, i, s.message()));
      }
    }
    ReleasePages(freed);
    return absl::OkStatus();
  }

  // Hands the writes of an append to the device copies of the batches they touch, one
  // backend call per batch (batches without a device copy: the CPU store, nothing to do).
  // `layer` may be kAllBoundLayers (indices over every layer's words).
  absl::Status WriteBoundDevice(int32_t layer,
                                const std::vector<std::pair<BoundBatch*, TableWrite>>& writes,
                                void* stream) {
    std::vector<BoundBatch*> order;
    for (const auto& w : writes) {
      if (w.first->device && std::find(order.begin(), order.end(), w.first) == order.end()) {
        order.push_back(w.first);
      }
    }
    std::vector<TableWrite> mine;
    for (BoundBatch* b : order) {
      mine.clear();
      for (const auto& w : writes) {
        if (w.first == b) mine.push_back(w.second);
      }
      TWL_RETURN_IF_ERROR_RT(backend->WriteBoundTables(b->device.get(), layer, mine, stream));
    }
    return absl::OkStatus();
  }
};

Runtime::Runtime(const RuntimeConfig& config) : config_(config), impl_(new Impl) {}
Runtime::~Runtime() = default;

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Create(const RuntimeConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  std::unique_ptr<Runtime> rt(new Runtime(config));
  Impl& im = *rt->impl_;
  im.g = GeometryOf(config);
  const int64_t pool = config.host_pool_bytes > 0 ? config.host_pool_bytes : kDefaultHostPoolBytes;
  const int64_t page_bytes = int64_t(config.num_kv_heads) * im.g.FpBlockBytes();
  im.num_pages = std::min<int64_t>(pool / page_bytes, std::numeric_limits<int32_t>::max());
  if (im.num_pages < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "config: host_pool_bytes %d holds no page (one page is %d bytes)", pool, page_bytes));
  }

  absl::StatusOr<std::unique_ptr<Backend>> backend;
  im.disk_tier = config.disk_bytes > 0;
  if (im.disk_tier) {
    // The disk tier sits under the CPU backend and under the GPU offload backend (its pinned
    // pool becomes the host slots). The HBM backend keeps every page in device memory: no
    // host tier to spill from. kAuto keeps choosing the CPU with a disk tier.
    if (config.backend == BackendKind::kGpuHbm) {
      return absl::UnimplementedError(
          "config: a disk tier (disk_bytes > 0) is supported by the CPU and GPU offload "
          "backends; use backend kCpu, kGpuOffload (or kAuto, which then picks the CPU)");
    }
    absl::StatusOr<std::unique_ptr<DiskTier>> tier = CreatePageDiskTier(config);
    if (!tier.ok()) return tier.status();
    // Host slots + disk records - 1 residency units, in logical pages (the slack is
    // explained in runtime/disk_residency.h; units are blocks under the GPU offload backend).
    const int64_t host_slots = im.num_pages;
    im.host_slots = host_slots;
    im.disk_records = (*tier)->capacity();
    im.num_pages = std::min<int64_t>(DiskTierPages(config, host_slots, **tier),
                                     std::numeric_limits<int32_t>::max());
    if (config.backend == BackendKind::kGpuOffload) {
      backend = CreateGpuOffloadBackendWithDisk(config, im.num_pages, host_slots, std::move(*tier));
    } else {
      backend = CreateCpuBackendWithDisk(config, im.num_pages, host_slots, std::move(*tier));
    }
    if (backend.ok()) {
      im.backend_name = (*backend)->Name();
      if (config.backend == BackendKind::kAuto) {
        im.backend_name += " (the disk tier needs the CPU backend)";
      }
    }
  }
  // Every backend supports both K schemes (k_scheme 1 on the GPU: runtime/cuda/append.cuh
  // re-quantizes a block's rows on every append, pipeline/prune/twilight/cuda/prune.cuh
  // scores with its bounds).
  const BackendKind kind = im.disk_tier ? BackendKind::kCpu : config.backend;
  switch (kind) {
    case BackendKind::kCpu:
      if (im.disk_tier) break;  // created above (CPU or GPU offload)
      backend = CreateCpuBackend(config, im.num_pages);
      if (im.backend_name.empty()) {
        im.backend_name = absl::StrFormat("cpu (host kernels %s)", HostSimdName(ActiveHostSimd()));
      }
      break;
    case BackendKind::kGpuHbm:
      backend = CreateGpuHbmBackend(config, im.num_pages);
      break;
    case BackendKind::kGpuOffload:
      backend = CreateGpuOffloadBackend(config, im.num_pages);
      break;
    case BackendKind::kAuto: {
      std::string why = NoGpuReason();
      if (why.empty()) {
        backend = CreateGpuOffloadBackend(config, im.num_pages);
        if (!backend.ok()) {
          why = absl::StrFormat("GPU offload backend failed: %s", backend.status().message());
        }
      }
      if (!why.empty()) {
        backend = CreateCpuBackend(config, im.num_pages);
        im.backend_name =
            absl::StrFormat("cpu (%s; host kernels %s)", why, HostSimdName(ActiveHostSimd()));
      }
      break;
    }
  }
  if (!backend.ok()) return backend.status();
  im.backend = std::move(*backend);
  if (im.backend_name.empty()) im.backend_name = im.backend->Name();
  if (config.backend == BackendKind::kAuto) {
    // A library embedded in a server stays quiet by default (backend_name() tells the
    // caller); at info level (TWL_VERBOSE=1 or a log callback) it says once per process which
    // backend the automatic choice gave.
    static std::atomic<bool> logged{false};
    if (LogEnabled(LogLevel::kInfo) && !logged.exchange(true)) {
      Log(LogLevel::kInfo, absl::StrFormat("backend %s", im.backend_name));
    }
  }
  im.allocator = std::make_unique<PageAllocator>(static_cast<int32_t>(im.num_pages));
  im.table = std::make_unique<SequenceTable>(config.num_layers, config.page_size,
                                             im.allocator.get());
  return rt;
}

BackendKind Runtime::backend_kind() const { return impl_->backend->Kind(); }
std::string Runtime::backend_name() const { return impl_->backend_name; }

absl::StatusOr<SeqId> Runtime::CreateSequence() {
  std::unique_lock lock(impl_->mu);
  return impl_->table->Create();
}

absl::Status Runtime::FreeSequence(SeqId seq) {
  std::unique_lock lock(impl_->mu);
  if (const int64_t b = impl_->bound.BatchOf(seq); b != 0 && impl_->table->Contains(seq)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "free: sequence %d is bound to batch %d; free the batch first", seq, b));
  }
  std::vector<int32_t> freed;
  if (absl::Status s = impl_->table->Free(seq, &freed); !s.ok()) return s;
  impl_->ReleasePages(freed);
  return absl::OkStatus();
}

absl::StatusOr<SeqId> Runtime::ForkSequence(SeqId parent) {
  std::unique_lock lock(impl_->mu);
  return impl_->table->Fork(parent);
}

absl::StatusOr<int32_t> Runtime::SequenceLength(SeqId seq, int32_t layer) const {
  std::shared_lock lock(impl_->mu);
  return impl_->table->Length(seq, layer);
}

absl::Status Runtime::Append(SeqId seq, int32_t layer, int32_t n, const void* k, const void* v,
                             DType dtype, MemSpace space) {
  if (n <= 0) return absl::InvalidArgumentError(absl::StrFormat("append: n = %d, need >= 1", n));
  const SeqId seqs[1] = {seq};
  const int32_t counts[1] = {n};
  return AppendImpl("append", layer, seqs, counts, k, v, dtype, space, /*stream=*/nullptr,
                    /*wait=*/true);
}

absl::Status Runtime::AppendBatch(int32_t layer, absl::Span<const SeqId> seqs,
                                  absl::Span<const int32_t> counts, const void* k, const void* v,
                                  DType dtype, MemSpace space, void* stream) {
  // Without a stream the caller has no way to know when device input was read: wait.
  return AppendImpl("append batch", layer, seqs, counts, k, v, dtype, space, stream,
                    /*wait=*/stream == nullptr && space == MemSpace::kDevice);
}

absl::Status Runtime::AppendImpl(const char* what, int32_t layer, absl::Span<const SeqId> seqs,
                                 absl::Span<const int32_t> counts, const void* k, const void* v,
                                 DType dtype, MemSpace space, void* stream, bool wait) {
  Impl& im = *impl_;
  auto bad = [&](const std::string& msg) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", what, msg));
  };
  // Every check comes before the first mutation, so a failed call changes nothing.
  if (seqs.size() != counts.size()) {
    return bad(absl::StrFormat("%d sequences but %d counts", seqs.size(), counts.size()));
  }
  if (seqs.size() > size_t(std::numeric_limits<int32_t>::max())) return bad("batch too large");
  if (layer < 0 || layer >= config_.num_layers) {
    return bad(absl::StrFormat("layer %d out of range [0, %d)", layer, config_.num_layers));
  }
  if (!IsValidDType(dtype)) {
    return bad(absl::StrFormat("unknown dtype %d", static_cast<int32_t>(dtype)));
  }
  if (space != MemSpace::kHost && space != MemSpace::kDevice) return bad("unknown memory space");
  if (space == MemSpace::kDevice && im.backend->Kind() == BackendKind::kCpu) {
    return bad("device pointers need a GPU backend");
  }
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0) {
      return bad(absl::StrFormat("count %d of entry %d (sequence %d) is negative", counts[i], i,
                                 seqs[i]));
    }
    total += counts[i];
  }
  if (total > std::numeric_limits<int32_t>::max()) {
    return bad(absl::StrFormat("%d tokens in one call, at most 2^31-1", total));
  }
  if (total > 0 && (k == nullptr || v == nullptr)) return bad("null k or v");
  {
    absl::flat_hash_map<SeqId, size_t> first;
    first.reserve(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      auto [it, inserted] = first.try_emplace(seqs[i], i);
      if (!inserted) {
        return bad(absl::StrFormat("sequence %d listed twice (entries %d and %d)", seqs[i],
                                   it->second, i));
      }
    }
  }
  std::unique_lock lock(im.mu);
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (!im.table->Contains(seqs[i])) {
      return absl::NotFoundError(
          absl::StrFormat("%s: unknown sequence %d (entry %d)", what, seqs[i], i));
    }
  }
  if (total == 0) return absl::OkStatus();

  // Phase 1: pages for every sequence, before any input is read or converted (a 4M-token
  // FP32 append to a full cache costs nothing). All-or-nothing: a failure returns the pages
  // of the sequences planned before it.
  std::vector<AppendPlan> plans;
  plans.reserve(seqs.size());
  auto abort = [&](absl::Status s) {
    im.AbortPlans(plans);
    return s;
  };
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (counts[i] == 0) continue;
    absl::StatusOr<AppendPlan> plan = im.table->PlanAppend(seqs[i], layer, counts[i]);
    if (!plan.ok()) {
      const absl::Status st = im.NoPagesStatus(plan.status(), counts[i]);
      return abort(absl::Status(
          st.code(), seqs.size() == 1
                         ? absl::StrFormat("%s: %s", what, st.message())
                         : absl::StrFormat("%s: sequence %d (entry %d of %d, %d tokens): %s",
                                           what, seqs[i], i, seqs.size(), counts[i],
                                           st.message())));
    }
    plans.push_back(std::move(*plan));
    if (absl::Status b = im.bound.CheckAppend(plans.back()); !b.ok()) {
      return abort(absl::FailedPreconditionError(absl::StrFormat("%s: %s", what, b.message())));
    }
  }
  // Host input of another dtype becomes the stored one (FP16, or BF16 under kv_dtype) here,
  // so backends see one host format.
  const int64_t elems = total * config_.num_kv_heads * config_.head_dim;
  const void* k_in = k;
  const void* v_in = v;
  DType dtype_in = dtype;
  std::vector<uint16_t> k16, v16;
  if (space == MemSpace::kHost && dtype != config_.kv_dtype) {
    try {
      k16.resize(size_t(elems));
      v16.resize(size_t(elems));
    } catch (const std::bad_alloc&) {
      abort(absl::OkStatus()).IgnoreError();
      throw;  // the C API reports TWL_OUT_OF_MEMORY
    }
    ConvertToKv(k, dtype, elems, config_.kv_dtype, k16.data());
    ConvertToKv(v, dtype, elems, config_.kv_dtype, v16.data());
    k_in = k16.data();
    v_in = v16.data();
    dtype_in = config_.kv_dtype;
  }
  // Phase 2: copy-on-write of shared partial pages (forks; rare).
  if (absl::Status s = im.CopySharedPages(plans); !s.ok()) return abort(s);
  // Phase 3: one backend call for every token of the batch (packed input order = plan order).
  AppendView view;
  std::vector<int32_t> page_id, slot;
  if (plans.size() == 1) {
    view = plans[0].View(nullptr, nullptr);
  } else {
    page_id.reserve(size_t(total));
    slot.reserve(size_t(total));
    for (const AppendPlan& p : plans) {
      page_id.insert(page_id.end(), p.page_id.begin(), p.page_id.end());
      slot.insert(slot.end(), p.slot.begin(), p.slot.end());
    }
    view.num_tokens = static_cast<int32_t>(total);
    view.page_id = page_id.data();
    view.slot = slot.data();
  }
  view.k = static_cast<const fp16_t*>(k_in);
  view.v = static_cast<const fp16_t*>(v_in);
  if (absl::Status s = im.backend->Append(view, dtype_in, space, stream); !s.ok()) {
    return abort(s);
  }
  if (wait) {
    if (absl::Status s = im.backend->WaitAppends(); !s.ok()) return abort(s);
  }
  // Bound batches holding these sequences: their device tables follow on the same stream,
  // after the rows (the host mirror once committed, below).
  std::vector<std::pair<BoundBatch*, TableWrite>> bound_writes;
  if (im.bound.size() > 0) {
    for (const AppendPlan& p : plans) im.bound.CollectWrites(p, &bound_writes);
    if (absl::Status s = im.WriteBoundDevice(layer, bound_writes, stream); !s.ok()) {
      return abort(s);
    }
  }
  // Phase 4: install.
  TWL_RETURN_IF_ERROR_RT(im.CommitPlans(what, plans));
  for (const auto& [batch, w] : bound_writes) {
    BoundBatches::ApplyToMirror(batch, layer, absl::MakeConstSpan(&w, 1));
  }
  return absl::OkStatus();
}

absl::Status Runtime::Decode(int32_t layer, absl::Span<const SeqId> seqs, const fp16_t* q,
                             fp16_t* out, MemSpace space, absl::Span<const float> seq_p,
                             void* stream, StepTelemetry* telemetry) {
  const auto t_start = std::chrono::steady_clock::now();
  Impl& im = *impl_;
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("decode: layer %d out of range [0, %d)", layer, config_.num_layers));
  }
  if (seqs.empty()) return absl::InvalidArgumentError("decode: empty batch");
  // (sequence, head) items are counted in int32 by the stages.
  if (int64_t(seqs.size()) * config_.num_q_heads > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "decode: %d sequences x %d query heads is more than 2^31 - 1 heads", seqs.size(),
        config_.num_q_heads));
  }
  if (q == nullptr || out == nullptr) return absl::InvalidArgumentError("decode: null q or out");
  if (space != MemSpace::kHost && space != MemSpace::kDevice) {
    return absl::InvalidArgumentError("decode: unknown memory space");
  }
  if (space == MemSpace::kDevice && im.backend->Kind() == BackendKind::kCpu) {
    return absl::InvalidArgumentError("decode: device pointers need a GPU backend");
  }
  if (!seq_p.empty() && seq_p.size() != seqs.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "decode: %d per-sequence p values for %d sequences", seq_p.size(), seqs.size()));
  }
  for (size_t i = 0; i < seq_p.size(); ++i) {
    if (!(seq_p[i] > 0.0f && seq_p[i] <= 1.0f)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "decode: p of sequence %d is %.9g, must be in (0, 1]", seqs[i], seq_p[i]));
    }
  }

  std::unique_lock lock(im.mu);
  BatchArrays arrays;
  if (absl::Status s = im.table->BuildBatch(layer, seqs, &arrays); !s.ok()) return s;

  DecodeRequest req;
  req.layer = layer;
  req.batch = arrays.View(config_.num_q_heads);
  req.q = q;
  req.out = out;
  req.space = space;
  req.stream = stream;
  StepParams(config_, layer, arrays.max_pages, &req.selector, &req.pruner);
  req.pruner.seq_p = seq_p.empty() ? nullptr : seq_p.data();
  req.capture_kept = im.capture_kept.load(std::memory_order_relaxed);

  req.step_id = ++im.decode_count;
  // No telemetry wanted: the backends then skip their timing events and read-backs.
  if (telemetry == nullptr) return im.backend->Decode(req, nullptr);
  StepTelemetry* t = telemetry;
  *t = StepTelemetry();
  if (absl::Status s = im.backend->Decode(req, t); !s.ok()) return s;
  if (t->no_new_figures) return absl::OkStatus();
  if (t->layer < 0) {  // GPU backends with device memory report an earlier step (layer set)
    t->layer = layer;
    t->num_seqs = req.batch.num_seqs;
    t->step_id = req.step_id;
  }
  t->ms_total = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                          t_start).count();
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Runtime::BindBatch(absl::Span<const SeqId> seqs, int32_t max_tokens) {
  Impl& im = *impl_;
  std::unique_lock lock(im.mu);
  absl::StatusOr<std::unique_ptr<BoundBatch>> b = BoundBatches::Build(*im.table, seqs, max_tokens,
                                                                    im.num_pages);
  if (!b.ok()) return b.status();
  if (int64_t((*b)->num_seqs()) * config_.num_q_heads > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("batch: too many sequences x query heads");
  }
  if (im.backend->Kind() != BackendKind::kCpu) {
    BoundShape shape;
    shape.num_seqs = (*b)->num_seqs();
    shape.max_pages = (*b)->max_pages;
    PrunerParams unused;
    // The non-dense layers' selector (dense layers run dense attention, no selection).
    StepParams(config_, config_.num_layers - 1, shape.max_pages, &shape.selector, &unused);
    shape.selector.kind = SelectorOf(config_);
    absl::StatusOr<std::unique_ptr<BoundTables>> dev =
        im.backend->CreateBoundTables(shape, (*b)->words);
    if (!dev.ok()) return dev.status();
    (*b)->device = std::move(*dev);
  }
  return im.bound.Add(std::move(*b));
}

absl::Status Runtime::UnbindBatch(int64_t batch) {
  Impl& im = *impl_;
  std::unique_lock lock(im.mu);
  absl::StatusOr<std::unique_ptr<BoundBatch>> b = im.bound.Remove(batch);
  if (!b.ok()) return b.status();
  // Device memory a queued step may still read: the backend's BoundTables waits in its
  // destructor for the work queued on the device so far.
  return absl::OkStatus();
}

absl::Status Runtime::DecodeBatch(int64_t batch, int32_t layer, const void* q, void* out,
                                  DType dtype, void* stream) {
  Impl& im = *impl_;
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("decode batch: layer %d out of range [0, %d)", layer, config_.num_layers));
  }
  if (q == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("decode batch: null q or out");
  }
  if (!IsValidDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("decode batch: unknown dtype %d", static_cast<int32_t>(dtype)));
  }
  std::unique_lock lock(im.mu);
  BoundBatch* b = im.bound.Find(batch);
  if (b == nullptr) return absl::NotFoundError(absl::StrFormat("decode batch: unknown batch %d", batch));
  const int32_t n = b->num_seqs();
  // Lengths only grow while bound (no free, no shrink), so a check passed here (also while a
  // graph is being captured) holds for every later replay.
  const int32_t* lens = b->Layer(layer);
  for (int32_t i = 0; i < n; ++i) {
    if (lens[i] == 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "decode batch: sequence %d (entry %d) has no tokens in layer %d", b->seqs[size_t(i)], i,
          layer));
    }
  }
  if (b->device) {
    BoundDecodeRequest req;
    req.layer = layer;
    req.tables = b->device.get();
    req.num_seqs = n;
    req.num_q_heads = config_.num_q_heads;
    req.max_pages = b->max_pages;
    req.q = q;
    req.out = out;
    req.dtype = dtype;
    StepParams(config_, layer, b->max_pages, &req.selector, &req.pruner);
    req.stream = stream;
    return im.backend->DecodeBound(req);
  }
  // CPU store: the host mirror is the plan (same stride as the device copy would have).
  BatchView view;
  view.num_seqs = n;
  view.num_q_heads = config_.num_q_heads;
  view.seq_len = lens;
  view.page_table = lens + n;
  view.max_pages = b->max_pages;
  const int64_t elems = int64_t(n) * config_.num_q_heads * config_.head_dim;
  std::vector<fp16_t> q16, out16;
  const fp16_t* qh = static_cast<const fp16_t*>(q);
  fp16_t* oh = static_cast<fp16_t*>(out);
  if (dtype != DType::kFp16) {
    q16.resize(size_t(elems));
    out16.resize(size_t(elems));
    ConvertToFp16(q, dtype, elems, q16.data());
    qh = q16.data();
    oh = out16.data();
  }
  DecodeRequest req;
  req.layer = layer;
  req.batch = view;
  req.q = qh;
  req.out = oh;
  req.space = MemSpace::kHost;
  req.stream = stream;
  StepParams(config_, layer, b->max_pages, &req.selector, &req.pruner);
  req.step_id = ++im.decode_count;
  TWL_RETURN_IF_ERROR_RT(im.backend->Decode(req, nullptr));
  if (dtype != DType::kFp16) ConvertFromFp16(out16.data(), dtype, elems, out);
  return absl::OkStatus();
}

absl::Status Runtime::ReserveBatchRows(int64_t batch, void* stream) {
  Impl& im = *impl_;
  std::unique_lock lock(im.mu);
  BoundBatch* b = im.bound.Find(batch);
  if (b == nullptr) {
    return absl::NotFoundError(absl::StrFormat("batch reserve: unknown batch %d", batch));
  }
  const int32_t n = b->num_seqs(), num_layers = config_.num_layers;
  // max_tokens first, for every (layer, sequence), so that a batch with no room says so
  // whatever the pool holds (and nothing is allocated for a call that cannot succeed).
  // The lengths come from the batch's host mirror, which follows every commit of its
  // sequences (no table lookup or lock per row).
  AppendPlan probe;
  probe.num_tokens = 1;
  for (int32_t l = 0; l < num_layers; ++l) {
    const int32_t* lens = b->Layer(l);
    for (int32_t i = 0; i < n; ++i) {
      probe.seq = b->seqs[size_t(i)];
      probe.layer = l;
      probe.old_len = lens[i];
      if (absl::Status c = im.bound.CheckAppend(probe); !c.ok()) {
        return absl::FailedPreconditionError(absl::StrFormat("batch reserve: %s", c.message()));
      }
    }
  }
  // Phase 1: one token's plan per (layer, sequence), all before anything is written.
  std::vector<AppendPlan> plans;
  plans.reserve(size_t(n) * size_t(num_layers));
  auto abort = [&](absl::Status s) {
    im.AbortPlans(plans);
    return s;
  };
  for (int32_t l = 0; l < num_layers; ++l) {
    for (int32_t i = 0; i < n; ++i) {
      const SeqId seq = b->seqs[size_t(i)];
      absl::StatusOr<AppendPlan> plan = im.table->PlanAppend(seq, l, 1);
      if (!plan.ok()) {
        const absl::Status st = im.NoPagesStatus(plan.status(), 1);
        return abort(absl::Status(
            st.code(), absl::StrFormat("batch reserve: sequence %d (entry %d), layer %d: %s",
                                       seq, i, l, st.message())));
      }
      plans.push_back(std::move(*plan));
    }
  }
  // Phase 2: copy-on-write of shared partial pages (forks; rare).
  if (absl::Status s = im.CopySharedPages(plans); !s.ok()) return abort(s);
  // Phase 3: every batch's words these plans change, plus this batch's reserved rows, on the
  // device (on `stream`, ordered after the appends and steps issued so far).
  // Indices over every layer's words (kAllBoundLayers): one launch per batch for all layers.
  std::vector<std::pair<BoundBatch*, TableWrite>> writes;
  std::vector<TableWrite> rows;
  for (size_t k = 0; k < plans.size(); ++k) {
    const AppendPlan& p = plans[k];
    const size_t first = writes.size();
    im.bound.CollectWrites(p, &writes);
    rows.clear();
    BoundBatches::ReservedRowWrites(*b, int32_t(k % size_t(n)), p.page_id[0], p.slot[0], &rows);
    for (const TableWrite& w : rows) writes.push_back({b, w});
    for (size_t j = first; j < writes.size(); ++j) {
      auto& [bb, w] = writes[j];
      w.index = static_cast<int32_t>(w.index + int64_t(p.layer) * bb->WordsPerLayer());
    }
  }
  if (absl::Status s = im.WriteBoundDevice(kAllBoundLayers, writes, stream); !s.ok()) {
    return abort(s);
  }
  // Phase 4: install, then the host mirrors.
  TWL_RETURN_IF_ERROR_RT(im.CommitPlans("batch reserve", plans));
  for (const auto& [bb, w] : writes) {
    BoundBatches::ApplyToMirror(bb, kAllBoundLayers, absl::MakeConstSpan(&w, 1));
  }
  b->reserved = true;
  return absl::OkStatus();
}

absl::Status Runtime::AppendBatchRows(int64_t batch, int32_t layer, const void* k, const void* v,
                                      DType dtype, void* stream) {
  Impl& im = *impl_;
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batch append: layer %d out of range [0, %d)", layer, config_.num_layers));
  }
  if (k == nullptr || v == nullptr) return absl::InvalidArgumentError("batch append: null k or v");
  if (!IsValidDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("batch append: unknown dtype %d", static_cast<int32_t>(dtype)));
  }
  std::unique_lock lock(im.mu);
  BoundBatch* b = im.bound.Find(batch);
  if (b == nullptr) {
    return absl::NotFoundError(absl::StrFormat("batch append: unknown batch %d", batch));
  }
  if (!b->reserved) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "batch append: batch %d has no reserved rows; call twl_batch_reserve before each "
        "step's appends", batch));
  }
  const int32_t n = b->num_seqs();
  if (b->device) {
    BoundAppendRequest req;
    req.layer = layer;
    req.tables = b->device.get();
    req.num_seqs = n;
    req.max_pages = b->max_pages;
    req.k = k;
    req.v = v;
    req.dtype = dtype;
    req.stream = stream;
    return im.backend->AppendBound(req);
  }
  // CPU store: the host mirror names the rows; input of another dtype becomes the stored one.
  std::vector<int32_t> page_id(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
  const int32_t* segs = b->Layer(layer) + b->SegmentsOffset();
  for (int32_t i = 0; i < n; ++i) {
    const int32_t* seg = segs + int64_t(i) * kBoundSegmentWords;
    page_id[size_t(i)] = seg[offsetof(AppendSegment, page) / sizeof(int32_t)];
    slot[size_t(i)] = seg[offsetof(AppendSegment, row_begin) / sizeof(int32_t)];
  }
  const int64_t elems = int64_t(n) * config_.num_kv_heads * config_.head_dim;
  std::vector<uint16_t> k16, v16;
  AppendView view;
  view.num_tokens = n;
  view.page_id = page_id.data();
  view.slot = slot.data();
  view.k = static_cast<const fp16_t*>(k);
  view.v = static_cast<const fp16_t*>(v);
  DType stored = dtype;
  if (dtype != config_.kv_dtype) {
    k16.resize(size_t(elems));
    v16.resize(size_t(elems));
    ConvertToKv(k, dtype, elems, config_.kv_dtype, k16.data());
    ConvertToKv(v, dtype, elems, config_.kv_dtype, v16.data());
    view.k = reinterpret_cast<const fp16_t*>(k16.data());
    view.v = reinterpret_cast<const fp16_t*>(v16.data());
    stored = config_.kv_dtype;
  }
  return im.backend->Append(view, stored, MemSpace::kHost, stream);
}

absl::Status Runtime::BatchTables(int64_t batch, int32_t layer, bool device,
                                  std::vector<int32_t>* lens, std::vector<int32_t>* pages,
                                  int32_t* max_pages) const {
  Impl& im = *impl_;
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("batch tables: layer %d out of range [0, %d)", layer, config_.num_layers));
  }
  std::unique_lock lock(im.mu);
  BoundBatch* b = im.bound.Find(batch);
  if (b == nullptr) return absl::NotFoundError(absl::StrFormat("batch tables: unknown batch %d", batch));
  const int32_t n = b->num_seqs();
  std::vector<int32_t> words(b->Layer(layer), b->Layer(layer) + b->WordsPerLayer());
  if (device && b->device) {
    TWL_RETURN_IF_ERROR_RT(im.backend->ReadBoundTables(b->device.get(), layer,
                                                       absl::MakeSpan(words)));
  }
  if (lens) lens->assign(words.begin(), words.begin() + n);
  if (pages) pages->assign(words.begin() + n, words.begin() + b->SegmentsOffset());
  if (max_pages) *max_pages = b->max_pages;
  return absl::OkStatus();
}

void Runtime::SetCaptureKept(bool on) { impl_->capture_kept.store(on); }

absl::Status Runtime::ReadKv(SeqId seq, int32_t layer, std::vector<fp16_t>* k,
                             std::vector<fp16_t>* v) const {
  if (k == nullptr || v == nullptr) return absl::InvalidArgumentError("read: null output");
  const Impl& im = *impl_;
  std::shared_lock lock(im.mu);
  absl::StatusOr<LayerPages> lp = im.table->Pages(seq, layer);
  if (!lp.ok()) return lp.status();
  const int64_t row = int64_t(config_.num_kv_heads) * config_.head_dim;
  k->assign(size_t(lp->len * row), 0);
  v->assign(size_t(lp->len * row), 0);
  for (size_t i = 0; i < lp->pages.size(); ++i) {
    const int64_t first = int64_t(i) * config_.page_size;
    const int32_t rows = static_cast<int32_t>(std::min<int64_t>(config_.page_size, lp->len - first));
    absl::Status s = im.backend->ReadPage(lp->pages[i], rows, k->data() + first * row,
                                          v->data() + first * row);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

MemoryUsage Runtime::Memory() const {
  std::shared_lock lock(impl_->mu);
  MemoryUsage m = impl_->backend->Memory();
  m.host_table_bytes = impl_->table->TableBytes() + impl_->bound.HostBytes();
  if (impl_->disk_tier) return m;  // the backend knows which pages are on the host
  // Pages have a fixed size, so the used share of the pool is the used share of the ids.
  m.host_pool_bytes_used = static_cast<int64_t>(double(m.host_pool_bytes_total) *
                                                impl_->allocator->num_used() /
                                                double(impl_->num_pages));
  return m;
}

absl::Status Runtime::TakeAsyncError() {
  std::unique_lock lock(impl_->mu);
  return impl_->backend->TakeAsyncError();
}

}  // namespace twl
