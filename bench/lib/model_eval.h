// Dense-vs-sparse comparison on the real model (llama2_model.h): greedy generation from BOS
// with a reference attention and with a method's attention, and next-token distributions
// compared step by step under teacher forcing (both fed the reference's greedy tokens, so
// one early difference does not make every later step incomparable).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/llama2_model.h"

namespace twl::bench {

// A fresh attention state (empty KV cache) per call; the object must outlive its AttentionFn.
struct AttentionInstance {
  std::shared_ptr<void> owner;
  AttentionFn fn;
};
using AttentionFactory = std::function<absl::StatusOr<AttentionInstance>()>;

// The reference run: greedy tokens from BOS (token 1) and the logits at every step.
struct GreedyRun {
  std::vector<int32_t> tokens;             // [steps] token chosen at each position
  std::vector<std::vector<float>> logits;  // [steps][vocab]
};
absl::StatusOr<GreedyRun> RunGreedy(const Llama2Model& model, const AttentionFn& attention,
                                    int32_t steps);

struct ModelComparison {
  int32_t steps = 0;
  int32_t free_identical = 0;       // positions where free-running greedy tokens are equal
  int32_t first_divergence = -1;    // first differing position (-1: none)
  int32_t forced_top1_agree = 0;    // teacher-forced steps with the same argmax
  double mean_kl = 0, max_kl = 0;   // KL(reference || method) per step, nats
  double mean_top1_margin = 0;      // reference's mean logit gap between its top two tokens
  double margin_at_divergence = 0;  // that gap at first_divergence (same prefix up to there)
  // Teacher-forced: the largest |logit - reference logit| of any token and step (the method's
  // numerical noise on the logits), and the largest reference gap at a step whose argmax
  // differs (0: none). A near-tie within twice the noise can flip either way.
  double max_logit_diff = 0;
  double max_margin_at_disagreement = 0;
};

// Compares `method` with the reference run `ref` (made by RunGreedy on the same model).
absl::StatusOr<ModelComparison> CompareWithReference(const Llama2Model& model, const GreedyRun& ref,
                                                     const AttentionFactory& method);

}  // namespace twl::bench
