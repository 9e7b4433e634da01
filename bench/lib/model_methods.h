// Attention methods and sequence scoring for the real-model sections of twl_accuracy
// (stories260K and the byte-level model trained on Austen, bench/train/):
//
//   OracleTopPAttention  exact FP32 scores; each query head keeps its smallest top-p set by
//                        true weight; each query head then attends over its KV group's union
//                        (what a kernel reads), the rule Twilight follows with estimated
//                        scores. Tells top-p loss from estimation loss.
//   MethodInstance       a fresh attention state (empty cache) with its read telemetry.
//   ScoreTokens          teacher-forced next-token NLL (and optionally logits) of a sequence.
//   SampleTokens         temperature sampling with a seeded generator.
//   GreedyAfter          prefill a prompt, then greedy tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/llama2_model.h"
#include "lib/read_stats.h"

namespace twl::bench {

// The smallest weight of the top-p set of w[0, n) (normalized weights, 0 < p < 1): walking
// the weights from the largest down, the one at which the running sum first reaches p.
// Keeping every w >= it keeps that set plus the weights tied with it.
double TopPWeightThreshold(const double* w, int32_t n, double p, std::vector<double>* scratch);

class OracleTopPAttention {
 public:
  OracleTopPAttention(const LlamaConfig& c, float p);
  absl::Status operator()(int32_t layer, int32_t pos, const float* q, const float* k,
                          const float* v, float* out);
  AttentionFn Fn() {
    return [this](int32_t l, int32_t p, const float* q, const float* k, const float* v, float* o) {
      return (*this)(l, p, q, k, v, o);
    };
  }
  const ReadStats& read() const { return read_; }
  ReadStats& read() { return read_; }

 private:
  LlamaConfig c_;
  float p_;
  ModelKvCache kv_;
  ReadStats read_;
};

// Quest in FP32 outside the runtime, to tell the method from its implementation: pages of
// page_size tokens, per KV head the top ceil(fraction x context / page_size) pages by the
// Quest bound sum_i max(q_i kmin_i, q_i kmax_i) (max over the group's query heads), plus the
// first sink_pages pages and the last page; exact attention over the selected tokens.
class QuestRefAttention {
 public:
  QuestRefAttention(const LlamaConfig& c, int32_t page_size, float fraction, int32_t sink_pages);
  absl::Status operator()(int32_t layer, int32_t pos, const float* q, const float* k,
                          const float* v, float* out);
  AttentionFn Fn() {
    return [this](int32_t l, int32_t p, const float* q, const float* k, const float* v, float* o) {
      return (*this)(l, p, q, k, v, o);
    };
  }
  ReadStats& read() { return read_; }

 private:
  LlamaConfig c_;
  int32_t page_size_, sink_pages_;
  float fraction_;
  ModelKvCache kv_;
  ReadStats read_;
};

struct MethodInstance {
  std::shared_ptr<void> owner;
  AttentionFn fn;
  std::function<ReadStats*()> read;  // the instance's telemetry; null: reads everything (dense)
};
using MethodFactory = std::function<absl::StatusOr<MethodInstance>()>;

// The first n bytes of the file at `path` as tokens of a byte-level model (vocab 256): fewer
// when the file is shorter; NotFound when it cannot be read, InvalidArgument when the model's
// vocabulary is not bytes.
absl::StatusOr<std::vector<int32_t>> ReadByteTokens(const std::string& path, int32_t n,
                                                    const LlamaConfig& model);

// Feeds tokens[0..n-1] at positions 0..n-1; nll[t] = -ln P(tokens[t+1] | tokens[0..t]) for
// t < n - 1. logits (optional) gets the logits after each position [n][vocab].
absl::Status ScoreTokens(const Llama2Model& model, const std::vector<int32_t>& tokens,
                         const AttentionFn& attention, std::vector<double>* nll,
                         std::vector<std::vector<float>>* logits = nullptr);

// tokens[0] = first, then `steps` - 1 tokens drawn from softmax(logits / temperature).
absl::StatusOr<std::vector<int32_t>> SampleTokens(const Llama2Model& model,
                                                  const AttentionFn& attention, int32_t first,
                                                  int32_t steps, double temperature,
                                                  uint64_t seed);

// Prefills `prompt`, then returns `n` greedy tokens.
absl::StatusOr<std::vector<int32_t>> GreedyAfter(const Llama2Model& model,
                                                 const std::vector<int32_t>& prompt,
                                                 const AttentionFn& attention, int32_t n);

}  // namespace twl::bench
