// The accuracy harness's view of one layer's paged KV cache and of the sparse-attention
// methods it compares, all computed on the CPU (the stages' pipeline/<stage>/cpu/ code, the
// oracle of reference/; no GPU):
//
//   PagedLayer   one sequence's K/V of one layer in the layouts of core/page_layout.h
//                (FP16 blocks, Quest min/max through AppendRef, Double Sparsity's channel
//                sums through its append hook) plus estimation copies of K at several bit
//                widths (2/4/8), quantized with QuantizeRowRef.
//   RunMethod    dense | oracle top-p | Twilight (full selector + pruner) | Quest (fixed page
//                budget, dense over the selected pages; Method::selector picks Quest or
//                Double Sparsity) | the same + Twilight pruner, for a batch
//                of queries over prefixes of the cache (query i sees the first seq_len[i]
//                tokens). Reports per query head its own kept set (size, estimated and true
//                mass) and per KV head the union that attention reads, the true mass of that
//                union, and the FP32 attention output over it.
//
// Own sets are computed per query head by running the stage with a group size of 1 (one
// query head of each group at a time, over the group's selection), so that the true mass of
// each head's own top-p set can be compared with p; the union over the group equals what
// the pruner with the full group keeps (tests/cpu/accuracy_smoke_test.cc checks it).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/stage_views.h"

namespace twl::bench {

class PagedLayer {
 public:
  // Room for capacity_tokens tokens; page ids are the page indices (identity page table).
  PagedLayer(int32_t page_size, int32_t num_kv_heads, int32_t head_dim, int32_t capacity_tokens);

  // Appends n tokens, k and v [n][num_kv_heads][head_dim] FP16.
  absl::Status Append(int32_t n, const fp16_t* k, const fp16_t* v);
  int32_t length() const { return length_; }
  int32_t capacity() const { return capacity_; }
  int32_t max_pages() const { return max_pages_; }
  // Geometry with the given estimation width (16: FP16 K itself) and K scheme
  // (core/page_layout.h: kKSchemeToken or kKSchemePageChannel).
  PageGeometry Geometry(int32_t k_bits, int32_t k_scheme = kKSchemeToken) const;
  FpKvView Kv() { return FpKvView{kv_.data(), nullptr}; }
  // Estimation copy at k_bits (quantizing the rows appended since the last call). Not
  // thread-safe while rows are pending; once every width in use is up to date, calls only read.
  QuantKView Quant(int32_t k_bits, int32_t k_scheme = kKSchemeToken);
  const int32_t* page_table() const { return page_table_.data(); }

 private:
  struct QuantStore {
    int32_t rows_done = 0;
    std::vector<uint8_t> codes, range;  // range: channel ranges (k_scheme 1)
    std::vector<fp16_t> scale, zero;
    QuantKView View(fp16_t* kmin, fp16_t* kmax) {
      QuantKView v{codes.data(), scale.data(), zero.data(), kmin, kmax};
      v.range = range.empty() ? nullptr : range.data();
      return v;
    }
  };
  int32_t page_size_, num_kv_heads_, head_dim_, capacity_, max_pages_;
  int32_t length_ = 0;
  std::vector<fp16_t> kv_;           // [max_pages * num_kv_heads][2][page_size][head_dim]
  std::vector<fp16_t> kmin_, kmax_;  // [max_pages * num_kv_heads][head_dim]
  std::vector<uint8_t> ds_meta_;     // Double Sparsity's per-block metadata (QuantKView::meta)
  QuantKView WithMeta(QuantKView q);
  std::vector<int32_t> page_table_;  // [max_pages] identity
  std::map<std::pair<int32_t, int32_t>, QuantStore> quant_;  // (k_bits, k_scheme) -> store
};

enum class MethodKind { kDense, kOracle, kTwilight, kQuest, kQuestTwilight };

struct Method {
  std::string name;
  MethodKind kind = MethodKind::kDense;
  float p = 0.95f;               // oracle / pruner mass
  int32_t k_bits = 4;            // pruner estimation width (2, 4, 8, 16)
  int32_t k_scheme = kKSchemeToken;  // estimation scheme (core/page_layout.h)
  int32_t budget_tokens = 0;     // Quest B0 in tokens (used when > 0)
  float budget_fraction = 0.0f;  // else B0 as a fraction of the context
  int32_t sink_pages = 1;
  // The fixed-budget selector of kQuest / kQuestTwilight: kQuest or kDoubleSparsity.
  SelectorKind selector = SelectorKind::kQuest;
};

// Quest page budget of a method for a context of `len` tokens.
int32_t QuestBudgetPages(const Method& m, int32_t len, int32_t page_size);

struct MethodResult {
  int32_t num_seqs = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::vector<int32_t> seq_len;      // [num_seqs]
  std::vector<int32_t> selected;     // [num_seqs][num_q_heads] candidate tokens
  std::vector<int32_t> kept;         // [num_seqs][num_q_heads] own set size
  std::vector<float> est_mass;       // [num_seqs][num_q_heads] estimated mass of the own set
  std::vector<float> own_mass;       // [num_seqs][num_q_heads] true mass of the own set
  std::vector<float> union_mass;     // [num_seqs][num_q_heads] true mass of the group's union
  std::vector<int32_t> kept_kv;      // [num_seqs][num_kv_heads] union size (tokens attended)
  std::vector<int32_t> kept_tokens;  // [num_seqs][num_kv_heads][max_kept] union, ascending
  int32_t max_kept = 0;
  std::vector<float> out;  // [num_seqs][num_q_heads][head_dim] FP32 attention output
};

// Runs `m` for queries q [num_seqs][num_q_heads][head_dim] (FP16) where query i sees the
// first seq_len[i] tokens of `layer` (each <= layer.length()).
// Thread-safe for one layer when layer.Quant(m.k_bits) is up to date.
absl::StatusOr<MethodResult> RunMethod(PagedLayer& layer, const Method& m,
                                       const std::vector<int32_t>& seq_len, const fp16_t* q,
                                       int32_t num_q_heads);

// Relative L2 error ||a - b|| / ||b|| of each [head_dim] row: [rows].
std::vector<double> RowRelErrors(const std::vector<float>& a, const std::vector<float>& b,
                                 int32_t head_dim);

}  // namespace twl::bench
