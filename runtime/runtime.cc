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
#include <cstdlib>
#include <limits>
#include <mutex>
#include <shared_mutex>

#include "absl/strings/str_format.h"
#include "cache/page_allocator.h"
#include "cache/sequence_table.h"
#include "gpu/reference/validate.h"
#include "offload/disk_tier.h"
#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "runtime/disk_residency.h"
#include "runtime/device_probe.h"
#include "runtime/dtype_convert.h"
#include "runtime/geometry.h"

namespace twl {
namespace {

constexpr int64_t kDefaultHostPoolBytes = int64_t(1) << 30;

bool OneOf(int32_t v, std::initializer_list<int32_t> set) {
  return std::find(set.begin(), set.end(), v) != set.end();
}

}  // namespace

absl::Status RuntimeConfig::Validate() const {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError("config: " + msg); };
  if (num_layers < 1) return bad(absl::StrFormat("num_layers must be >= 1, got %d", num_layers));
  if (num_kv_heads < 1) {
    return bad(absl::StrFormat("num_kv_heads must be >= 1, got %d", num_kv_heads));
  }
  if (num_q_heads < 1 || num_q_heads % num_kv_heads != 0) {
    return bad(absl::StrFormat("num_q_heads (%d) must be a positive multiple of num_kv_heads (%d)",
                               num_q_heads, num_kv_heads));
  }
  if (!OneOf(head_dim, {8, 16, 32, 64, 128, 256})) {
    return bad(absl::StrFormat("head_dim must be 8, 16, 32, 64, 128 or 256, got %d", head_dim));
  }
  if (page_size < 1 || page_size > 4096) {
    return bad(absl::StrFormat("page_size must be in [1, 4096], got %d", page_size));
  }
  if (!OneOf(k_bits, {2, 4, 8, 16})) {
    return bad(absl::StrFormat("k_bits must be 2, 4, 8 or 16, got %d", k_bits));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return bad(absl::StrFormat("top_p must be in (0, 1], got %g", top_p));
  }
  if (selector != SelectorKind::kFull && selector != SelectorKind::kQuest) {
    return bad(absl::StrFormat("unknown selector kind %d", static_cast<int32_t>(selector)));
  }
  if (selector_budget_tokens < 0) {
    return bad(absl::StrFormat("selector_budget_tokens must be >= 0, got %d",
                               selector_budget_tokens));
  }
  if (selector_budget_tokens == 0 &&
      !(selector_budget_fraction > 0.0f && selector_budget_fraction <= 1.0f)) {
    return bad(absl::StrFormat("selector_budget_fraction must be in (0, 1], got %g",
                               selector_budget_fraction));
  }
  if (sink_pages < 0) return bad(absl::StrFormat("sink_pages must be >= 0, got %d", sink_pages));
  if (dense_layers < 0 || dense_layers > num_layers) {
    return bad(absl::StrFormat("dense_layers must be in [0, num_layers=%d], got %d", num_layers,
                               dense_layers));
  }
  if (host_pool_bytes < 0) return bad("host_pool_bytes must be >= 0 (0: library chooses)");
  if (gpu_cache_bytes < 0) return bad("gpu_cache_bytes must be >= 0 (0: library chooses)");
  if (!OneOf(static_cast<int32_t>(fetch_path), {0, 1, 2})) return bad("unknown fetch_path");
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
  std::unique_ptr<PageAllocator> allocator;
  std::unique_ptr<SequenceTable> table;
  std::unique_ptr<Backend> backend;
  std::string backend_name;
  mutable std::shared_mutex mu;

  void ReleasePages(const std::vector<int32_t>& freed) {
    for (int32_t p : freed) backend->ReleasePage(p);
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
    // The disk tier is wired into the CPU backend only (docs/DESIGN.md): the GPU backends
    // would need to gather from host slots that change under them.
    if (config.backend == BackendKind::kGpuHbm || config.backend == BackendKind::kGpuOffload) {
      return absl::UnimplementedError(
          "config: a disk tier (disk_bytes > 0) is supported by the CPU backend only; use "
          "backend kCpu (or kAuto, which then picks the CPU)");
    }
    absl::StatusOr<std::unique_ptr<DiskTier>> tier = CreatePageDiskTier(config);
    if (!tier.ok()) return tier.status();
    // Host slots + disk records - 1 logical pages (the slack is explained in
    // runtime/disk_residency.h).
    const int64_t host_slots = im.num_pages;
    im.num_pages = std::min<int64_t>(host_slots - 1 + (*tier)->capacity(),
                                     std::numeric_limits<int32_t>::max());
    backend = CreateCpuBackendWithDisk(config, im.num_pages, host_slots, std::move(*tier));
    if (backend.ok()) {
      im.backend_name = (*backend)->Name();
      if (config.backend == BackendKind::kAuto) {
        im.backend_name += " (the disk tier needs the CPU backend)";
      }
    }
  }
  switch (im.disk_tier ? BackendKind::kCpu : config.backend) {
    case BackendKind::kCpu:
      if (im.disk_tier) break;  // created above
      backend = CreateCpuBackend(config, im.num_pages);
      im.backend_name = "cpu";
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
        im.backend_name = absl::StrFormat("cpu (%s)", why);
      }
      break;
    }
  }
  if (!backend.ok()) return backend.status();
  im.backend = std::move(*backend);
  if (im.backend_name.empty()) im.backend_name = im.backend->Name();
  if (config.backend == BackendKind::kAuto) {
    // A library embedded in a server stays quiet by default (backend_name() tells the
    // caller); TWL_VERBOSE=1 says once per process which backend the automatic choice gave.
    static std::atomic<bool> logged{false};
    const char* verbose = std::getenv("TWL_VERBOSE");
    if (verbose && verbose[0] == '1' && !logged.exchange(true)) {
      std::fprintf(stderr, "twilight: backend %s\n", im.backend_name.c_str());
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
  Impl& im = *impl_;
  // Every check comes before the first mutation, so a failed call changes nothing.
  if (k == nullptr || v == nullptr) return absl::InvalidArgumentError("append: null k or v");
  if (n <= 0) return absl::InvalidArgumentError(absl::StrFormat("append: n = %d, need >= 1", n));
  if (layer < 0 || layer >= config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("append: layer %d out of range [0, %d)", layer, config_.num_layers));
  }
  if (!IsValidDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("append: unknown dtype %d", static_cast<int32_t>(dtype)));
  }
  if (space != MemSpace::kHost && space != MemSpace::kDevice) {
    return absl::InvalidArgumentError("append: unknown memory space");
  }
  if (space == MemSpace::kDevice && im.backend->Kind() == BackendKind::kCpu) {
    return absl::InvalidArgumentError("append: device pointers need a GPU backend");
  }
  if (!im.table->Contains(seq)) {
    return absl::NotFoundError(absl::StrFormat("append: unknown sequence %d", seq));
  }
  // Host input in BF16/FP32 becomes FP16 here, so backends see one host format.
  const int64_t elems = int64_t(n) * config_.num_kv_heads * config_.head_dim;
  const void* k_in = k;
  const void* v_in = v;
  DType dtype_in = dtype;
  std::vector<fp16_t> k16, v16;
  if (space == MemSpace::kHost && dtype != DType::kFp16) {
    k16.resize(size_t(elems));
    v16.resize(size_t(elems));
    ConvertToFp16(k, dtype, elems, k16.data());
    ConvertToFp16(v, dtype, elems, v16.data());
    k_in = k16.data();
    v_in = v16.data();
    dtype_in = DType::kFp16;
  }

  std::unique_lock lock(im.mu);
  absl::StatusOr<AppendPlan> plan = im.table->PlanAppend(seq, layer, n);
  if (!plan.ok()) return plan.status();
  auto abort = [&](absl::Status s) {
    std::vector<int32_t> freed;
    im.table->AbortAppend(*plan, &freed);
    im.ReleasePages(freed);
    return s;
  };
  if (plan->has_cow()) {
    if (absl::Status s = im.backend->CopyPage(plan->cow_src, plan->cow_dst, plan->cow_rows);
        !s.ok()) {
      return abort(s);
    }
  }
  AppendView view = plan->View(static_cast<const fp16_t*>(k_in), static_cast<const fp16_t*>(v_in));
  if (absl::Status s = im.backend->Append(view, dtype_in, space); !s.ok()) return abort(s);
  std::vector<int32_t> freed;
  if (absl::Status s = im.table->CommitAppend(*plan, &freed); !s.ok()) return abort(s);
  im.ReleasePages(freed);
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
      return absl::InvalidArgumentError(
          absl::StrFormat("decode: p of sequence %d is %g, must be in (0, 1]", seqs[i], seq_p[i]));
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
  const bool dense = layer < config_.dense_layers;
  req.selector.kind = dense ? SelectorKind::kFull : config_.selector;
  req.selector.sink_pages = config_.sink_pages;
  // Quest grows each head's candidates (no base budget); the configured budget is only a
  // cap, and a fraction caps each sequence by its own length, so that a sequence's output
  // does not depend on its batch-mates.
  req.selector.grow = true;
  req.selector.budget_pages =
      config_.selector_budget_tokens > 0
          ? static_cast<int32_t>((int64_t(config_.selector_budget_tokens) + config_.page_size - 1) /
                                 config_.page_size)
          : 0;
  req.selector.budget_fraction =
      config_.selector_budget_tokens > 0 ? 0.0f : config_.selector_budget_fraction;
  req.pruner.p = config_.top_p;
  req.pruner.seq_p = seq_p.empty() ? nullptr : seq_p.data();
  req.pruner.dense = dense;

  StepTelemetry local;
  StepTelemetry* t = telemetry ? telemetry : &local;
  *t = StepTelemetry();
  if (absl::Status s = im.backend->Decode(req, t); !s.ok()) return s;
  t->layer = layer;
  t->num_seqs = req.batch.num_seqs;
  t->ms_total = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                          t_start).count();
  return absl::OkStatus();
}

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
