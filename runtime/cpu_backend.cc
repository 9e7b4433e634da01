// The CPU backend (see cpu_backend.h): host block stores and the reference pipeline.
#include "runtime/cpu_backend.h"
#include "runtime/kept_capture.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "cache/host_arena.h"
#include "core/validate.h"
#include "offload/disk_tier.h"
#include "oneapi/tbb/parallel_for.h"
#include "pipeline/cpu/cpu_executor.h"
#include "pipeline/fetch/host_fetch.h"
#include "pipeline/select/selector.h"
#include "runtime/cpu/append_cpu.h"
#include "runtime/disk_io_status.h"
#include "runtime/disk_residency.h"
#include "runtime/dtype_convert.h"
#include "runtime/geometry.h"

namespace twl {
namespace {

std::atomic<int32_t> g_writes_before_failure{-1};

// True when the injected failure is due now (then disarmed).
bool InjectedWriteFailure() {
  int32_t n = g_writes_before_failure.load(std::memory_order_relaxed);
  while (n >= 0) {
    if (g_writes_before_failure.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) {
      return n == 0;
    }
  }
  return false;
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Distinct values of `v`, ascending.
std::vector<int32_t> Distinct(std::vector<int32_t> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

class CpuBackend final : public Backend {
 public:
  // disk: null for FP16 blocks of every page in host memory (block id addressing).
  // meta_selector: the runtime's selector, whose own per-block metadata this store keeps.
  CpuBackend(const PageGeometry& g, int64_t num_pages, std::unique_ptr<DiskResidency> disk,
             const Selector* meta_selector)
      : g_(g), num_pages_(num_pages), disk_(std::move(disk)), meta_sel_(meta_selector) {}

  absl::Status Init() {
    const int64_t blocks = num_pages_ * g_.num_kv_heads;
    const HostMemKind kind = HostMemKind::kAligned;
    if (!disk_) {
      auto fp = HostArena::Create(kind, g_.FpBlockBytes(), blocks, 2);
      if (!fp.ok()) return fp.status();
      fp16_ = std::move(*fp);
    }
    const bool quant = g_.k_bits < 16;
    auto codes = HostArena::Create(kind, quant ? g_.CodeBlockBytes() : 0, blocks);
    // Per-token scale/zero: the per-page-channel scheme (k_scheme 1) has none.
    const bool token_scale = g_.HasTokenScale();
    auto scale = HostArena::Create(kind, token_scale ? 2ll * g_.page_size : 0, blocks, 2);
    auto zero = HostArena::Create(kind, token_scale ? 2ll * g_.page_size : 0, blocks, 2);
    auto kmin = HostArena::Create(kind, 2ll * g_.head_dim, blocks, 2);
    auto kmax = HostArena::Create(kind, 2ll * g_.head_dim, blocks, 2);
    // The per-page-channel scheme's channel ranges, kept decoded (QuantKView::range_lo / hi):
    // the host estimator reads them as it read FP16 bounds, without decoding every step.
    const int64_t range_bytes = g_.HasChannelRange() ? 2ll * g_.head_dim : 0;
    auto range_lo = HostArena::Create(kind, range_bytes, blocks, 2);
    auto range_hi = HostArena::Create(kind, range_bytes, blocks, 2);
    const int64_t meta_bytes = meta_sel_->OwnMetadataBytesPerBlock(g_);
    auto meta = HostArena::Create(kind, meta_bytes, blocks, 4);
    for (auto* a : {&codes, &scale, &zero, &kmin, &kmax, &range_lo, &range_hi, &meta}) {
      if (!a->ok()) return a->status();
    }
    codes_ = std::move(*codes);
    scale_ = std::move(*scale);
    zero_ = std::move(*zero);
    kmin_ = std::move(*kmin);
    kmax_ = std::move(*kmax);
    range_lo_ = std::move(*range_lo);
    range_hi_ = std::move(*range_hi);
    meta_ = std::move(*meta);
    kv_ = disk_ ? disk_->View() : FpKvView{static_cast<fp16_t*>(fp16_->base()), nullptr};
    qk_ = QuantKView{static_cast<uint8_t*>(codes_->base()), static_cast<fp16_t*>(scale_->base()),
                     static_cast<fp16_t*>(zero_->base()), static_cast<fp16_t*>(kmin_->base()),
                     static_cast<fp16_t*>(kmax_->base())};
    if (g_.HasChannelRange()) {
      if (range_lo_->block_bytes() != range_bytes || range_hi_->block_bytes() != range_bytes) {
        return absl::InternalError("channel-range arena stride differs from head_dim");
      }
      qk_.range_lo = static_cast<fp16_t*>(range_lo_->base());
      qk_.range_hi = static_cast<fp16_t*>(range_hi_->base());
    }
    if (meta_bytes > 0) {
      qk_.meta = static_cast<uint8_t*>(meta_->base());
      qk_.meta_bytes = meta_->block_bytes();  // the arena's stride (>= meta_bytes)
    }
    return absl::OkStatus();
  }

  BackendKind Kind() const override { return BackendKind::kCpu; }
  std::string Name() const override {
    if (!disk_) return "cpu";
    const DiskTier& tier = disk_->tier();
    return absl::StrFormat("cpu + disk tier (%s%s, %d page slots in host memory)",
                           tier.engine_name(), tier.direct_io() ? ", O_DIRECT" : "",
                           disk_->num_slots());
  }

  // A batch of sequences arrives as one token list; the CPU writes in place (stream unused).
  absl::Status Append(const AppendView& tokens, DType dtype, MemSpace space,
                      void* /*stream*/) override {
    if (space != MemSpace::kHost) {
      return absl::InvalidArgumentError("the CPU backend needs host pointers for K/V");
    }
    if (!IsValidDType(dtype)) return absl::InvalidArgumentError("unknown dtype");
    if (tokens.num_tokens < 0) return absl::InvalidArgumentError("num_tokens < 0");
    if (tokens.num_tokens == 0) return absl::OkStatus();
    if (InjectedWriteFailure()) return absl::InternalError("append: injected failure");
    if (!tokens.k || !tokens.v || !tokens.page_id || !tokens.slot) {
      return absl::InvalidArgumentError("append: k, v, page_id and slot must not be null");
    }
    for (int32_t i = 0; i < tokens.num_tokens; ++i) {
      if (tokens.page_id[i] < 0 || tokens.page_id[i] >= num_pages_) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "append: page id %d out of range [0, %d)", tokens.page_id[i], num_pages_));
      }
      // Checked here too (AppendRef checks again) so that no page is written before a bad
      // row is found (with a disk tier pages are written in chunks).
      if (tokens.slot[i] < 0 || tokens.slot[i] >= g_.page_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "append: row %d of a %d-row page", tokens.slot[i], g_.page_size));
      }
    }
    AppendView in = tokens;
    std::vector<uint16_t> k16, v16;
    if (dtype != KvDType(g_)) {  // the Runtime converts host input; this is for direct use
      const int64_t n = int64_t(tokens.num_tokens) * g_.num_kv_heads * g_.head_dim;
      k16.resize(size_t(n));
      v16.resize(size_t(n));
      ConvertToKv(tokens.k, dtype, n, KvDType(g_), k16.data());
      ConvertToKv(tokens.v, dtype, n, KvDType(g_), v16.data());
      in.k = k16.data();
      in.v = v16.data();
    }
    if (disk_) return PrefixStatus(WriteThroughSlots(in), "append: ");
    return WriteDirect(in);
  }

  // Writes validated FP16 tokens into the block store indexed by page id (no disk tier).
  absl::Status WriteDirect(const AppendView& in) {
    // Runs of consecutive tokens on the same page are independent when no page appears in
    // two runs (AppendRef recomputes a touched page's bounds): write them in parallel.
    std::vector<int32_t> run_start;
    absl::flat_hash_set<int32_t> seen;
    bool disjoint = true;
    for (int32_t i = 0; i < in.num_tokens; ++i) {
      if (i == 0 || in.page_id[i] != in.page_id[i - 1]) {
        run_start.push_back(i);
        disjoint = disjoint && seen.insert(in.page_id[i]).second;
      }
    }
    run_start.push_back(in.num_tokens);
    const int32_t runs = int32_t(run_start.size()) - 1;
    if (!disjoint || runs == 1) return Write(in, kv_, qk_);
    const int64_t row = int64_t(g_.num_kv_heads) * g_.head_dim;
    std::vector<absl::Status> status(static_cast<size_t>(runs));
    tbb::parallel_for(0, runs, [&](int32_t r) {
      const int32_t b = run_start[size_t(r)];
      AppendView part;
      part.num_tokens = run_start[size_t(r) + 1] - b;
      part.k = in.k + b * row;
      part.v = in.v + b * row;
      part.page_id = in.page_id + b;
      part.slot = in.slot + b;
      status[size_t(r)] = Write(part, kv_, qk_);
    });
    for (const absl::Status& s : status) {
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status CopyPage(int32_t src_page, int32_t dst_page, int32_t rows) override {
    if (absl::Status s = CheckPage(src_page); !s.ok()) return s;
    if (absl::Status s = CheckPage(dst_page); !s.ok()) return s;
    if (rows < 0 || rows > g_.page_size) {
      return absl::InvalidArgumentError(absl::StrFormat("copy: %d rows of a %d-row page", rows,
                                                        g_.page_size));
    }
    if (rows == 0 || src_page == dst_page) return absl::OkStatus();
    if (InjectedWriteFailure()) return absl::InternalError("copy: injected failure");
    // Re-append the rows: the quantized copy and the page bounds come out exactly as if the
    // tokens had been appended to dst (quantization is deterministic).
    const int64_t n = int64_t(rows) * g_.num_kv_heads * g_.head_dim;
    std::vector<fp16_t> k(static_cast<size_t>(n)), v(static_cast<size_t>(n));
    if (absl::Status s = ReadPage(src_page, rows, k.data(), v.data()); !s.ok()) return s;
    std::vector<int32_t> page_id(static_cast<size_t>(rows), dst_page);
    std::vector<int32_t> slot(static_cast<size_t>(rows));
    for (int32_t r = 0; r < rows; ++r) slot[size_t(r)] = r;
    AppendView in;
    in.num_tokens = rows;
    in.k = k.data();
    in.v = v.data();
    in.page_id = page_id.data();
    in.slot = slot.data();
    if (disk_) return PrefixStatus(WriteThroughSlots(in), "copy-on-write: ");
    return Write(in, kv_, qk_);
  }

  absl::Status ReadPage(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const override {
    if (absl::Status s = CheckPage(page); !s.ok()) return s;
    if (rows < 0 || rows > g_.page_size) {
      return absl::InvalidArgumentError(absl::StrFormat("read: %d rows of a %d-row page", rows,
                                                        g_.page_size));
    }
    if (rows > 0 && (!k || !v)) return absl::InvalidArgumentError("read: null output");
    if (disk_) return disk_->ReadRows(page, rows, k, v);
    const size_t bytes = sizeof(fp16_t) * size_t(g_.head_dim);
    for (int32_t r = 0; r < rows; ++r) {
      for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
        const int64_t block = g_.BlockId(page, h);
        const int64_t at = (int64_t(r) * g_.num_kv_heads + h) * g_.head_dim;
        std::memcpy(k + at, kv_.K(g_, block, r), bytes);
        std::memcpy(v + at, kv_.V(g_, block, r), bytes);
      }
    }
    return absl::OkStatus();
  }

  absl::Status Decode(const DecodeRequest& request, StepTelemetry* telemetry) override {
    const auto t_start = std::chrono::steady_clock::now();
    if (request.space != MemSpace::kHost) {
      return absl::InvalidArgumentError("the CPU backend needs host q/out pointers");
    }
    if (!request.q || !request.out) return absl::InvalidArgumentError("decode: null q or out");
    const BatchView& b = request.batch;
    if (absl::Status s = ValidateBatch(g_, b, true); !s.ok()) return s;
    for (int32_t s = 0; s < b.num_seqs; ++s) {
      for (int32_t p = 0; p < b.NumPages(g_, s); ++p) {
        if (b.PageId(s, p) >= num_pages_) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "decode: page id %d out of range [0, %d)", b.PageId(s, p), num_pages_));
        }
      }
    }
    absl::StatusOr<const Selector*> selector = FindSelector(request.selector.kind);
    if (!selector.ok()) return selector.status();
    const int32_t max_select = (*selector)->Stride(request.selector, b.max_pages);
    const int64_t max_kept = int64_t(max_select) * g_.page_size;
    if (max_kept > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("decode: kept-token stride overflows int32");
    }
    const int64_t kv_items = int64_t(b.num_seqs) * g_.num_kv_heads;
    const int64_t q_items = int64_t(b.num_seqs) * b.num_q_heads;

    std::vector<int32_t> sel_pages(static_cast<size_t>(kv_items * max_select));
    std::vector<int32_t> sel_count(static_cast<size_t>(kv_items));
    const bool grow = request.selector.grow && request.selector.kind == SelectorKind::kQuest;
    std::vector<float> sel_bound(grow ? static_cast<size_t>(q_items * max_select) : 0);
    std::vector<int32_t> sel_limit(grow ? static_cast<size_t>(kv_items) : 0);
    std::vector<int32_t> kept_tokens(static_cast<size_t>(kv_items * max_kept));
    std::vector<int32_t> kept_count(static_cast<size_t>(kv_items));
    StepTelemetry local;
    StepTelemetry* t = telemetry ? telemetry : &local;
    t->selected_tokens.assign(size_t(q_items), 0);
    t->kept_tokens.assign(size_t(q_items), 0);
    t->est_mass.assign(size_t(q_items), 0.0f);
    t->full_mass.assign(size_t(q_items), 0.0f);
    t->cap_hit.assign(size_t(q_items), 0);

    SelectionView sel{sel_pages.data(), sel_count.data(), max_select,
                      grow ? sel_bound.data() : nullptr, grow ? sel_limit.data() : nullptr};
    KeptView kept{kept_tokens.data(), kept_count.data(), int32_t(max_kept)};
    HeadStatsView stats{t->selected_tokens.data(), t->kept_tokens.data(), t->est_mass.data(),
                        t->full_mass.data(), t->cap_hit.data()};
    QueryView q{request.q};

    // Fetch of this store: with a disk tier, pages are read back into host slots (the
    // candidates first when the pruner estimates with FP16 K), counted in `io`.
    DiskIoCounts io;
    struct DiskFetch final : HostFetch {
      const CpuBackend* self;
      DiskIoCounts* io;
      DiskFetch(const CpuBackend* b, DiskIoCounts* c) : self(b), io(c) {}
      absl::Status CandidatesBeforePrune(const BatchView& b, const SelectionView& sel,
                                         bool grow) override {
        if (!self->disk_) return absl::OkStatus();
        // Every candidate page must be resident. Growing: only the pages the growth may
        // take (the forced ones and, under a cap, the top-cap ranked ones) are read.
        absl::Status s = self->disk_->Reserve(
            grow ? self->GrowablePages(b, sel) : self->SelectedPages(b, sel), io);
        return s.ok() ? s
                      : PrefixStatus(
                            s, "decode (k_bits = 16: the pruner reads FP16 K of the candidates): ");
      }
      absl::Status KeptBeforeAttend(const BatchView& b, const KeptView& kept) override {
        if (!self->disk_) return absl::OkStatus();
        absl::Status s = self->disk_->Reserve(self->KeptPages(b, kept), io);
        return s.ok() ? s : PrefixStatus(s, "decode: this step ");
      }
    } fetch(this, &io);
    CpuStep step;
    step.g = g_;
    step.selector = *selector;
    step.selector_params = request.selector;
    step.pruner = request.pruner;
    step.batch = b;
    step.q = q;
    step.out = OutputView{request.out};
    step.qk = qk_;
    step.kv = kv_;
    step.sel = sel;
    step.kept = kept;
    step.stats = stats;
    CpuStageTimes times;
    const absl::Status run = RunCpuStep(step, fetch, &times);
    t->ms_select = times.ms_select;
    t->ms_prune = times.ms_prune;
    t->ms_attend = times.ms_attend;
    if (!run.ok()) return run;
    // Fetch stage of the CPU step: without a disk tier everything is already in host
    // memory; with one, fetching is reading the kept pages back from disk (Reserve above).
    t->ms_fetch = io.ms;
    t->ms_disk = io.ms;
    t->disk_pages_loaded = io.pages_loaded;
    t->disk_pages_spilled = io.pages_written;

    // Blocks the attention read: distinct pages of each (sequence, KV head) kept set
    // (tokens are ascending, so a page change is a new block).
    t->kept_tokens_kv.assign(kept_count.begin(), kept_count.end());
    if (request.capture_kept) {
      StoreKeptLists(kept_tokens.data(), kept_count.data(), kv_items, int32_t(max_kept), t);
    }
    int64_t blocks = 0;
    for (int64_t item = 0; item < kv_items; ++item) {
      const int32_t* tok = kept_tokens.data() + item * max_kept;
      int32_t last = -1;
      for (int32_t i = 0; i < kept_count[size_t(item)]; ++i) {
        const int32_t page = tok[i] / g_.page_size;
        if (page != last) ++blocks;
        last = page;
      }
    }
    t->blocks_needed = blocks;
    t->blocks_fetched = 0;
    t->bytes_h2d = 0;
    t->ms_total = MsSince(t_start);
    return absl::OkStatus();
  }

  MemoryUsage Memory() const override {
    MemoryUsage m;
    for (const auto* a :
         {&fp16_, &codes_, &scale_, &zero_, &kmin_, &kmax_, &range_lo_, &range_hi_, &meta_}) {
      if (*a) m.host_pool_bytes_total += (*a)->bytes();
    }
    if (disk_) {
      // The quantized store is used in proportion to the pages holding data; the FP16 slot
      // pool by the pages on the host. (Without a disk tier the Runtime fills in "used".)
      const int64_t quant = m.host_pool_bytes_total;
      m.host_pool_bytes_total += disk_->host_bytes();
      m.host_pool_bytes_used =
          disk_->host_bytes_used() +
          static_cast<int64_t>(double(quant) * disk_->num_live_pages() / double(num_pages_));
      m.disk_bytes = disk_->disk_bytes_used();
    }
    return m;
  }

  void ReleasePage(int32_t page) override {
    if (disk_) disk_->Release(page);
  }

 private:
  absl::Status CheckPage(int32_t page) const { return CheckPageId(page, num_pages_); }

  // AppendRef, then the selector's own metadata of the touched blocks.
  absl::Status Write(const AppendView& in, const FpKvView& kv, const QuantKView& qk) const {
    if (absl::Status s = AppendRef(g_, in, kv, qk); !s.ok()) return s;
    if (qk.meta_bytes == 0) return absl::OkStatus();
    return meta_sel_->UpdateMetadataOnHost(g_, in, kv, qk);
  }

  // The quantized K store seen from one page: its blocks are blocks 0..num_kv_heads-1.
  QuantKView QuantOfPage(int32_t page) const {
    const int64_t b0 = int64_t(page) * g_.num_kv_heads;
    QuantKView q = qk_;
    if (q.codes) q.codes += b0 * g_.CodeBlockBytes();
    if (q.scale) q.scale += b0 * g_.page_size;
    if (q.zero) q.zero += b0 * g_.page_size;
    q.kmin += b0 * g_.head_dim;
    q.kmax += b0 * g_.head_dim;
    if (q.range_lo) q.range_lo += b0 * g_.head_dim;
    if (q.range_hi) q.range_hi += b0 * g_.head_dim;
    if (q.meta) q.meta += b0 * q.meta_bytes;
    return q;
  }

  // With a disk tier: writes validated FP16 tokens page by page into host slots. Pages are
  // taken in order of first appearance, in chunks of at most num_slots pages that are
  // reserved (loaded or given empty slots, other pages spilled) and then written; chunks go
  // last to first, so the first page (the only one that can hold rows from before this
  // call) changes only after every other chunk succeeded: a failure changes no page that
  // existed before the call, and the Runtime frees the new ones.
  //
  // A batch of sequences has one such page per sequence (the first page of each, when its
  // first row is not row 0): all of them go first, so that they land in the chunk written
  // last; a batch with more of them than host slots is refused before anything is written.
  absl::Status WriteThroughSlots(const AppendView& in) {
    std::vector<int32_t> pages;
    std::vector<std::vector<int32_t>> tokens_of;  // [pages.size()] token indices, ascending
    std::vector<bool> had_rows;                     // [pages.size()] first row written > 0
    absl::flat_hash_map<int32_t, size_t> index;
    for (int32_t i = 0; i < in.num_tokens; ++i) {
      auto [it, inserted] = index.try_emplace(in.page_id[i], pages.size());
      if (inserted) {
        pages.push_back(in.page_id[i]);
        tokens_of.emplace_back();
        had_rows.push_back(in.slot[i] > 0);
      }
      tokens_of[it->second].push_back(i);
    }
    const size_t per_chunk = size_t(disk_->num_slots());
    {
      // Stable partition: pages holding rows from before this call first.
      std::vector<size_t> order(pages.size());
      for (size_t j = 0; j < order.size(); ++j) order[j] = j;
      std::stable_partition(order.begin(), order.end(), [&](size_t j) { return had_rows[j]; });
      size_t existing = 0;
      for (bool h : had_rows) existing += h ? 1 : 0;
      if (existing > per_chunk) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "the batch extends %d partially filled pages, more than the %d host page slots "
            "(append fewer sequences per call)",
            existing, per_chunk));
      }
      std::vector<int32_t> p2(pages.size());
      std::vector<std::vector<int32_t>> t2(pages.size());
      for (size_t j = 0; j < order.size(); ++j) {
        p2[j] = pages[order[j]];
        t2[j] = std::move(tokens_of[order[j]]);
      }
      pages = std::move(p2);
      tokens_of = std::move(t2);
    }
    const size_t chunks = (pages.size() + per_chunk - 1) / per_chunk;
    for (size_t c = chunks; c-- > 0;) {
      const size_t first = c * per_chunk;
      const size_t count = std::min(per_chunk, pages.size() - first);
      const absl::Span<const int32_t> chunk(pages.data() + first, count);
      if (absl::Status s = disk_->Reserve(chunk, nullptr); !s.ok()) return s;
      if (absl::Status s = disk_->MarkDirty(chunk); !s.ok()) return s;
      std::vector<absl::Status> status(count);
      tbb::parallel_for(size_t(0), count, [&](size_t j) {
        status[j] = WritePage(in, chunk[j], tokens_of[first + j]);
      });
      for (const absl::Status& s : status) {
        if (!s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

  // Writes the tokens `tokens` (indices into `in`, all of page `page`, which is on the host)
  // with AppendRef on views of this one page: its host slot as a block store of one page and
  // the quantized store shifted to its blocks, so rows, codes and bounds come out exactly as
  // with the direct store.
  absl::Status WritePage(const AppendView& in, int32_t page, const std::vector<int32_t>& tokens) {
    fp16_t* blocks = disk_->HostPage(page);
    if (blocks == nullptr) {
      return absl::InternalError(absl::StrFormat("page %d has no host slot after Reserve", page));
    }
    const int64_t row = int64_t(g_.num_kv_heads) * g_.head_dim;
    const int32_t n = static_cast<int32_t>(tokens.size());
    std::vector<int32_t> zero_page(tokens.size(), 0), slot(tokens.size());
    AppendView part;
    part.num_tokens = n;
    part.page_id = zero_page.data();
    std::vector<fp16_t> k, v;
    if (tokens.back() - tokens.front() + 1 == n) {  // contiguous: the usual case
      part.k = in.k + tokens.front() * row;
      part.v = in.v + tokens.front() * row;
    } else {
      k.resize(size_t(n * row));
      v.resize(size_t(n * row));
      for (int32_t i = 0; i < n; ++i) {
        std::memcpy(k.data() + i * row, in.k + tokens[size_t(i)] * row, sizeof(fp16_t) * row);
        std::memcpy(v.data() + i * row, in.v + tokens[size_t(i)] * row, sizeof(fp16_t) * row);
      }
      part.k = k.data();
      part.v = v.data();
    }
    for (int32_t i = 0; i < n; ++i) slot[size_t(i)] = in.slot[tokens[size_t(i)]];
    part.slot = slot.data();
    return Write(part, FpKvView{blocks, nullptr}, QuantOfPage(page));
  }

  // Distinct page ids of the selected pages of every (sequence, KV head).
  std::vector<int32_t> SelectedPages(const BatchView& b, const SelectionView& sel) const {
    std::vector<int32_t> pages;
    for (int32_t s = 0; s < b.num_seqs; ++s) {
      for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
        const int64_t item = int64_t(s) * g_.num_kv_heads + h;
        for (int32_t i = 0; i < sel.count[item]; ++i) {
          pages.push_back(b.PageId(s, sel.pages[item * sel.max_select + i]));
        }
      }
    }
    return Distinct(std::move(pages));
  }

  // Growing: distinct page ids of the pages the growth may score: per (sequence, KV head) the
  // forced pages and the top `limit` ranked pages by key (a superset of any level set within
  // the cap; every page without a cap).
  std::vector<int32_t> GrowablePages(const BatchView& b, const SelectionView& sel) const {
    std::vector<int32_t> pages;
    const int32_t group = b.num_q_heads / g_.num_kv_heads;
    for (int32_t s = 0; s < b.num_seqs; ++s) {
      for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
        const int64_t item = int64_t(s) * g_.num_kv_heads + h;
        const int32_t n = sel.count[item];
        std::vector<std::pair<float, int32_t>> ranked;
        for (int32_t i = 0; i < n; ++i) {
          float key = -std::numeric_limits<float>::infinity();
          for (int32_t j = 0; j < group; ++j) {
            const float bd =
                sel.bound[(int64_t(s) * b.num_q_heads + h * group + j) * sel.max_select + i];
            key = std::isnan(bd) ? std::numeric_limits<float>::infinity() : std::max(key, bd);
          }
          const int32_t page = b.PageId(s, sel.pages[item * sel.max_select + i]);
          if (key == std::numeric_limits<float>::infinity()) {
            pages.push_back(page);
          } else {
            ranked.emplace_back(-key, page);
          }
        }
        const size_t take = std::min(ranked.size(), size_t(std::max(0, sel.limit[item])));
        std::partial_sort(ranked.begin(), ranked.begin() + take, ranked.end());
        for (size_t k = 0; k < take; ++k) pages.push_back(ranked[k].second);
      }
    }
    return Distinct(std::move(pages));
  }

  // Distinct page ids of the kept tokens of every (sequence, KV head).
  std::vector<int32_t> KeptPages(const BatchView& b, const KeptView& kept) const {
    std::vector<int32_t> pages;
    for (int32_t s = 0; s < b.num_seqs; ++s) {
      for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
        const int64_t item = int64_t(s) * g_.num_kv_heads + h;
        int32_t last = -1;
        for (int32_t i = 0; i < kept.count[item]; ++i) {
          const int32_t idx = kept.tokens[item * kept.max_kept + i] / g_.page_size;
          if (idx != last) pages.push_back(b.PageId(s, idx));
          last = idx;
        }
      }
    }
    return Distinct(std::move(pages));
  }

  const PageGeometry g_;
  const int64_t num_pages_;
  std::unique_ptr<DiskResidency> disk_;  // null: no disk tier
  std::unique_ptr<HostArena> fp16_, codes_, scale_, zero_, kmin_, kmax_, range_lo_, range_hi_,
      meta_;
  const Selector* meta_sel_;
  FpKvView kv_;
  QuantKView qk_;
};

}  // namespace

void SetCpuBackendWriteFailureForTesting(int32_t n) {
  g_writes_before_failure.store(n, std::memory_order_relaxed);
}

int64_t CpuBackendBytesPerPage(const RuntimeConfig& config) {
  const PageGeometry g = GeometryOf(config);
  const int64_t quant =
      g.k_bits < 16 ? g.CodeBlockBytes() + (g.HasTokenScale() ? 4ll * g.page_size : 0) : 0;
  absl::StatusOr<const Selector*> sel = FindSelector(SelectorOf(config));
  const int64_t meta = sel.ok() ? (*sel)->OwnMetadataBytesPerBlock(g) : 0;
  const int64_t ranges = g.HasChannelRange() ? 4ll * g.head_dim : 0;  // decoded, FP16
  return int64_t(g.num_kv_heads) * (g.FpBlockBytes() + quant + 4ll * g.head_dim + ranges + meta);
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const RuntimeConfig& config,
                                                          int64_t num_pages) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (num_pages < 1 || num_pages > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CPU backend: num_pages %d outside [1, 2^31)", num_pages));
  }
  absl::StatusOr<const Selector*> sel = FindSelector(SelectorOf(config));
  if (!sel.ok()) return sel.status();
  auto backend = std::make_unique<CpuBackend>(GeometryOf(config), num_pages, nullptr, *sel);
  if (absl::Status s = backend->Init(); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackendWithDisk(const RuntimeConfig& config,
                                                                  int64_t num_pages,
                                                                  int64_t host_slots,
                                                                  std::unique_ptr<DiskTier> tier) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (num_pages < 1 || num_pages > std::numeric_limits<int32_t>::max() || host_slots < 1 ||
      host_slots > num_pages + 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CPU backend: %d pages with %d host slots (need 1 <= slots <= pages + 1 < 2^31)",
        num_pages, host_slots));
  }
  const PageGeometry g = GeometryOf(config);
  auto disk = DiskResidency::Create(g, static_cast<int32_t>(num_pages),
                                    static_cast<int32_t>(host_slots), std::move(tier));
  if (!disk.ok()) return disk.status();
  absl::StatusOr<const Selector*> sel = FindSelector(SelectorOf(config));
  if (!sel.ok()) return sel.status();
  auto backend = std::make_unique<CpuBackend>(g, num_pages, std::move(*disk), *sel);
  if (absl::Status s = backend->Init(); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace twl
