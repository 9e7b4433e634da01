// AttentionFn (llama2_model.h) backed by the Twilight runtime through its public C API
// (api/twilight.h): per layer and token, twl_sequence_append of the token's K/V (FP16) and
// twl_decode of its queries, with the per-head kept-token telemetry collected for reports.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/llama2_model.h"
#include "lib/read_stats.h"
#include "twilight.h"

namespace twl::bench {

struct CApiAttentionOptions {
  float p = 0.95f;  // top-p (1.0: keep every token: dense through the runtime)
  int32_t k_bits = 4;
  int32_t k_scheme = TWL_K_SCHEME_AUTO;  // twl_runtime_config.k_scheme (C values: 2 per token)
  int32_t page_size = 4;
  twl_selector selector = TWL_SELECTOR_FULL;
  int32_t budget_tokens = 0;  // Quest B0 (selector QUEST)
  float budget_fraction = 0;  // Quest B0 as a fraction of the context, when tokens is 0
  int32_t dense_layers = 0;
  int32_t dense_below = 0;  // contexts shorter than this decode with p = 1 (dense)
};

class CApiAttention {
 public:
  static absl::StatusOr<std::unique_ptr<CApiAttention>> Create(const LlamaConfig& model,
                                                               const CApiAttentionOptions& o);
  ~CApiAttention();
  CApiAttention(const CApiAttention&) = delete;
  CApiAttention& operator=(const CApiAttention&) = delete;

  absl::Status operator()(int32_t layer, int32_t pos, const float* q, const float* k,
                          const float* v, float* out);
  AttentionFn Fn() {
    return [this](int32_t l, int32_t p, const float* q, const float* k, const float* v, float* o) {
      return (*this)(l, p, q, k, v, o);
    };
  }

  // Per decode call and query head: own kept tokens and the context length then.
  const std::vector<int32_t>& kept() const { return kept_; }
  const std::vector<int32_t>& context() const { return context_; }
  const std::vector<int32_t>& layer_of() const { return layer_of_; }
  // Tokens read per call and KV head (the union over its group), against the context.
  const ReadStats& read() const { return read_; }
  ReadStats& read() { return read_; }

 private:
  CApiAttention() = default;
  LlamaConfig model_;
  CApiAttentionOptions opt_;
  twl_runtime* rt_ = nullptr;
  twl_seq_id seq_ = TWL_INVALID_SEQ_ID;
  std::vector<int32_t> kept_, context_, layer_of_;
  ReadStats read_;
};

}  // namespace twl::bench
