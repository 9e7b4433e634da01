// PagedLayer and the method runner of the accuracy harness (see ref_pipeline.h).
#include "lib/ref_pipeline.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "core/quantize.h"
#include "oneapi/tbb/parallel_for.h"
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"
#include "pipeline/cpu/cpu_executor.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/select/double_sparsity/ds_selector.h"
#include "reference/oracle_top_p.h"
#include "runtime/cpu/append_cpu.h"

namespace twl::bench {

PagedLayer::PagedLayer(int32_t page_size, int32_t num_kv_heads, int32_t head_dim,
                       int32_t capacity_tokens)
    : page_size_(page_size),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      capacity_(capacity_tokens),
      max_pages_(std::max(1, (capacity_tokens + page_size - 1) / page_size)) {
  const int64_t blocks = int64_t(max_pages_) * num_kv_heads_;
  kv_.assign(size_t(blocks) * 2 * page_size_ * head_dim_, 0);
  kmin_.assign(size_t(blocks) * head_dim_, 0);
  kmax_.assign(size_t(blocks) * head_dim_, 0);
  ds_meta_.assign(size_t(blocks * DsMetadataBytesPerBlock(Geometry(16))), 0);
  page_table_.resize(size_t(max_pages_));
  for (int32_t i = 0; i < max_pages_; ++i) page_table_[size_t(i)] = i;
}

PageGeometry PagedLayer::Geometry(int32_t k_bits, int32_t k_scheme) const {
  PageGeometry g;
  g.page_size = page_size_;
  g.head_dim = head_dim_;
  g.num_kv_heads = num_kv_heads_;
  g.k_bits = k_bits;
  g.k_scheme = k_scheme;
  return g;
}

absl::Status PagedLayer::Append(int32_t n, const fp16_t* k, const fp16_t* v) {
  if (n < 0 || length_ + n > capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("PagedLayer: %d + %d tokens exceed capacity %d", length_, n, capacity_));
  }
  std::vector<int32_t> page(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    page[size_t(i)] = (length_ + i) / page_size_;
    slot[size_t(i)] = (length_ + i) % page_size_;
  }
  AppendView in{n, k, v, page.data(), slot.data()};
  // FP16 store + Quest min/max only: estimation copies are made per bit width in Quant().
  QuantKView meta{nullptr, nullptr, nullptr, kmin_.data(), kmax_.data()};
  if (absl::Status s = AppendRef(Geometry(16), in, Kv(), meta); !s.ok()) return s;
  if (absl::Status s = DoubleSparsitySelector().UpdateMetadataOnHost(Geometry(16), in, Kv(),
                                                                     WithMeta(meta));
      !s.ok())
    return s;
  length_ += n;
  return absl::OkStatus();
}

QuantKView PagedLayer::WithMeta(QuantKView q) {
  q.meta = ds_meta_.data();
  q.meta_bytes = DsMetadataBytesPerBlock(Geometry(16));
  return q;
}

QuantKView PagedLayer::Quant(int32_t k_bits, int32_t k_scheme) {
  if (k_bits >= 16) {
    return WithMeta(QuantKView{nullptr, nullptr, nullptr, kmin_.data(), kmax_.data()});
  }
  const PageGeometry g = Geometry(k_bits, k_scheme);
  const std::pair<int32_t, int32_t> key(k_bits, k_scheme);
  // Up to date: read-only, so concurrent RunMethod calls may share the layer.
  if (auto it = quant_.find(key); it != quant_.end() && it->second.rows_done == length_) {
    QuantStore& qs = it->second;
    return WithMeta(qs.View(kmin_.data(), kmax_.data()));
  }
  QuantStore& qs = quant_[key];
  if (qs.codes.empty()) {
    const int64_t rows = int64_t(max_pages_) * num_kv_heads_ * page_size_;
    qs.codes.assign(size_t(rows * g.CodeBytesPerToken()), 0);
    qs.scale.assign(size_t(rows), 0);
    qs.zero.assign(size_t(rows), 0);
    qs.range.assign(size_t(int64_t(max_pages_) * num_kv_heads_ * g.RangeBlockBytes()), 0);
  }
  const QuantKView view = WithMeta(qs.View(kmin_.data(), kmax_.data()));
  const int32_t from = qs.rows_done;
  if (k_scheme == kKSchemePageChannel) {
    // Codes are relative to each block's Quest min/max (kept over the filled rows by
    // Append): re-quantize every filled row of each page that gained rows.
    const int32_t first_page = from / page_size_, end_page = (length_ + page_size_ - 1) / page_size_;
    tbb::parallel_for(first_page, end_page, [&](int32_t page) {
      const int32_t rows = std::min(page_size_, length_ - page * page_size_);
      for (int32_t h = 0; h < num_kv_heads_; ++h) {
        QuantizeBlockRowsRef(g, Kv(), view, g.BlockId(page, h), rows);
      }
    });
    qs.rows_done = length_;
    return view;
  }
  tbb::parallel_for(from, length_, [&](int32_t t) {
    for (int32_t h = 0; h < num_kv_heads_; ++h) {
      const int64_t block = g.BlockId(t / page_size_, h);
      const int32_t row = t % page_size_;
      QuantizeRowRef(g, Kv().K(g, block, row), view.Codes(g, block, row),
                     &view.scale[block * page_size_ + row], &view.zero[block * page_size_ + row]);
    }
  });
  qs.rows_done = length_;
  return view;
}

int32_t QuestBudgetPages(const Method& m, int32_t len, int32_t page_size) {
  const double tokens =
      m.budget_tokens > 0 ? double(m.budget_tokens) : double(m.budget_fraction) * len;
  return std::max(1, int32_t(std::ceil(tokens / page_size)));
}

namespace {

// Queries of one query head per group: [num_seqs][num_kv_heads][head_dim].
std::vector<fp16_t> QuerySlice(const fp16_t* q, int32_t num_seqs, int32_t num_q_heads,
                               int32_t num_kv_heads, int32_t head_dim, int32_t r) {
  const int32_t group = num_q_heads / num_kv_heads;
  std::vector<fp16_t> out(size_t(num_seqs) * num_kv_heads * head_dim);
  for (int32_t s = 0; s < num_seqs; ++s)
    for (int32_t h = 0; h < num_kv_heads; ++h)
      std::copy_n(q + (int64_t(s) * num_q_heads + h * group + r) * head_dim, head_dim,
                  out.begin() + (int64_t(s) * num_kv_heads + h) * head_dim);
  return out;
}

}  // namespace

absl::StatusOr<MethodResult> RunMethod(PagedLayer& layer, const Method& m,
                                       const std::vector<int32_t>& seq_len, const fp16_t* q,
                                       int32_t num_q_heads) {
  const int32_t num_seqs = int32_t(seq_len.size());
  const PageGeometry g = layer.Geometry(m.k_bits, m.k_scheme);
  const int32_t hkv = g.num_kv_heads, d = g.head_dim;
  if (num_seqs < 1 || num_q_heads < hkv || num_q_heads % hkv != 0) {
    return absl::InvalidArgumentError("RunMethod: bad batch or head counts");
  }
  for (int32_t len : seq_len) {
    if (len < 1 || len > layer.length()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("RunMethod: seq_len %d outside [1, %d]", len, layer.length()));
    }
  }
  const int32_t group = num_q_heads / hkv;
  const int32_t max_pages = layer.max_pages();
  std::vector<int32_t> table(size_t(num_seqs) * max_pages);
  for (int32_t s = 0; s < num_seqs; ++s)
    std::copy_n(layer.page_table(), max_pages, table.begin() + int64_t(s) * max_pages);
  BatchView full{num_seqs, num_q_heads, seq_len.data(), table.data(), max_pages};
  BatchView single = full;
  single.num_q_heads = hkv;  // one query head per group at a time
  const FpKvView kv = layer.Kv();
  const QuantKView qk = layer.Quant(m.k_bits, m.k_scheme);

  MethodResult res;
  res.num_seqs = num_seqs;
  res.num_q_heads = num_q_heads;
  res.num_kv_heads = hkv;
  res.head_dim = d;
  res.seq_len = seq_len;
  const size_t nq = size_t(num_seqs) * num_q_heads, nkv = size_t(num_seqs) * hkv;
  res.selected.assign(nq, 0);
  res.kept.assign(nq, 0);
  res.est_mass.assign(nq, 0);
  res.own_mass.assign(nq, 0);
  res.union_mass.assign(nq, 0);
  res.kept_kv.assign(nkv, 0);
  res.max_kept = max_pages * g.page_size;
  res.out.assign(nq * d, 0.0f);

  // 1. The decode step itself, by the library's CPU executor (select -> prune -> fetch ->
  // attend): candidate pages per (sequence, KV head), chosen with the whole group (Quest's
  // GQA rule), and the kept lists that attention reads. Budgets depend on each sequence's
  // length, so a fixed-budget selector runs one step per sequence. The oracle has no step:
  // its sets are measured in 2.
  SelectorParams sel;
  const bool quest = m.kind == MethodKind::kQuest || m.kind == MethodKind::kQuestTwilight;
  sel.kind = quest ? m.selector : SelectorKind::kFull;
  sel.sink_pages = m.sink_pages;
  int32_t stride = max_pages;
  if (quest) {
    stride = 0;
    for (int32_t len : seq_len) {
      SelectorParams p = sel;
      p.budget_pages = QuestBudgetPages(m, len, g.page_size);
      stride = std::max(stride, SelectStride(p, max_pages));
    }
  }
  std::vector<int32_t> sel_pages(nkv * stride, 0), sel_count(nkv);
  const SelectionView selection{sel_pages.data(), sel_count.data(), stride};
  std::vector<int32_t> step_tokens, step_count;  // the executor's kept lists (KV-head union)
  if (m.kind != MethodKind::kOracle) {
    absl::StatusOr<const Selector*> selector = FindSelector(sel.kind);
    if (!selector.ok()) return selector.status();
    PrunerParams pp;
    pp.dense = m.kind == MethodKind::kDense || m.kind == MethodKind::kQuest;
    pp.p = pp.dense ? 1.0f : m.p;  // p is unused (but validated) when keeping everything
    step_tokens.assign(nkv * res.max_kept, 0);
    step_count.assign(nkv, 0);
    std::vector<fp16_t> out16(nq * d);
    HostFetch in_memory;  // every block is in host memory: nothing to fetch
    const int32_t steps = quest ? num_seqs : 1;
    for (int32_t i = 0; i < steps; ++i) {
      const int32_t s0 = quest ? i : 0, n = quest ? 1 : num_seqs;
      CpuStep step;
      step.g = g;
      step.selector = *selector;
      step.selector_params = sel;
      if (quest) step.selector_params.budget_pages = QuestBudgetPages(m, seq_len[s0], g.page_size);
      step.pruner = pp;
      step.batch = BatchView{n, num_q_heads, &seq_len[size_t(s0)], table.data(), max_pages};
      step.q = QueryView{q + int64_t(s0) * num_q_heads * d};
      step.out = OutputView{out16.data() + int64_t(s0) * num_q_heads * d};
      step.qk = qk;
      step.kv = kv;
      step.sel = SelectionView{sel_pages.data() + int64_t(s0) * hkv * stride,
                               sel_count.data() + int64_t(s0) * hkv, stride};
      step.kept = KeptView{step_tokens.data() + int64_t(s0) * hkv * res.max_kept,
                           step_count.data() + int64_t(s0) * hkv, res.max_kept};
      CpuStageTimes times;
      if (absl::Status st = RunCpuStep(step, in_memory, &times); !st.ok()) return st;
    }
  }

  // 2. Own set of each query head (group size 1 over the group's selection).
  const int32_t own_stride = selection.max_select * g.page_size;
  std::vector<std::vector<int32_t>> own_tokens(static_cast<size_t>(group)),
      own_count(static_cast<size_t>(group));
  for (int32_t r = 0; r < group; ++r) {
    const std::vector<fp16_t> qr = QuerySlice(q, num_seqs, num_q_heads, hkv, d, r);
    own_tokens[size_t(r)].assign(nkv * (m.kind == MethodKind::kOracle ? res.max_kept : own_stride),
                                 0);
    own_count[size_t(r)].assign(nkv, 0);
    std::vector<int32_t> st_sel(nkv), st_kept(nkv);
    std::vector<float> st_mass(nkv), true_mass(nkv);
    HeadStatsView stats{st_sel.data(), st_kept.data(), st_mass.data()};
    KeptView own{own_tokens[size_t(r)].data(), own_count[size_t(r)].data(),
                 m.kind == MethodKind::kOracle ? res.max_kept : own_stride};
    absl::Status st;
    if (m.kind == MethodKind::kOracle) {
      st = OracleTopPRef(g, single, QueryView{qr.data()}, kv, m.p, own, stats);
    } else {
      PrunerParams pp;
      pp.dense = m.kind == MethodKind::kDense || m.kind == MethodKind::kQuest;
      pp.p = pp.dense ? 1.0f : m.p;  // p is unused (but validated) when keeping everything
      st = PruneRef(g, pp, single, QueryView{qr.data()}, qk, kv, selection, own, stats);
    }
    if (!st.ok()) return st;
    st = TrueKeptMassRef(g, single, QueryView{qr.data()}, kv, own, true_mass.data());
    if (!st.ok()) return st;
    for (int32_t s = 0; s < num_seqs; ++s)
      for (int32_t h = 0; h < hkv; ++h) {
        const size_t at = size_t(s) * num_q_heads + h * group + r, from = size_t(s) * hkv + h;
        res.selected[at] = st_sel[from];
        res.kept[at] = st_kept[from];
        res.est_mass[at] = st_mass[from];
        res.own_mass[at] = true_mass[from];
      }
  }

  // 3. Union over each group: the tokens the KV head's attention reads. Where the executor
  // ran, it must be exactly the step's kept lists (the pruner's GQA union).
  res.kept_tokens.assign(nkv * res.max_kept, 0);
  tbb::parallel_for(size_t(0), nkv, [&](size_t item) {
    std::vector<int32_t> merged;
    for (int32_t r = 0; r < group; ++r) {
      const KeptView own{own_tokens[size_t(r)].data(), own_count[size_t(r)].data(),
                         m.kind == MethodKind::kOracle ? res.max_kept : own_stride};
      const int32_t* t = own.tokens + int64_t(item) * own.max_kept;
      merged.insert(merged.end(), t, t + own.count[item]);
    }
    std::sort(merged.begin(), merged.end());
    merged.erase(std::unique(merged.begin(), merged.end()), merged.end());
    std::copy(merged.begin(), merged.end(), res.kept_tokens.begin() + int64_t(item) * res.max_kept);
    res.kept_kv[item] = int32_t(merged.size());
  });
  if (!step_count.empty() &&
      (step_count != res.kept_kv || step_tokens != res.kept_tokens)) {
    return absl::InternalError(
        "RunMethod: the union of the per-head sets differs from the executor's kept lists");
  }
  const KeptView uni{res.kept_tokens.data(), res.kept_kv.data(), res.max_kept};
  if (absl::Status st = TrueKeptMassRef(g, full, QueryView{q}, kv, uni, res.union_mass.data());
      !st.ok())
    return st;

  // 4. Attention over the union, FP32 output (a measurement: the executor's output is FP16).
  if (absl::Status st = SparseAttentionRefF32(g, full, QueryView{q}, kv, uni, res.out.data());
      !st.ok())
    return st;
  return res;
}

std::vector<double> RowRelErrors(const std::vector<float>& a, const std::vector<float>& b,
                                 int32_t head_dim) {
  const size_t rows = std::min(a.size(), b.size()) / size_t(head_dim);
  std::vector<double> err(rows);
  for (size_t r = 0; r < rows; ++r) {
    double num = 0, den = 0;
    for (int32_t j = 0; j < head_dim; ++j) {
      const double x = a[r * head_dim + j], y = b[r * head_dim + j];
      num += (x - y) * (x - y);
      den += y * y;
    }
    err[r] = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  }
  return err;
}

}  // namespace twl::bench
