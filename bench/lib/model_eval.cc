// Greedy runs and teacher-forced comparisons on the real model (see model_eval.h).
#include "lib/model_eval.h"

#include <algorithm>
#include <cmath>

namespace twl::bench {

absl::StatusOr<GreedyRun> RunGreedy(const Llama2Model& model, const AttentionFn& attention,
                                    int32_t steps) {
  if (steps < 1 || steps > model.config().seq_len)
    return absl::InvalidArgumentError("RunGreedy: steps outside [1, seq_len]");
  GreedyRun run;
  int32_t token = 1;  // BOS
  std::vector<float> logits;
  for (int32_t pos = 0; pos < steps; ++pos) {
    if (absl::Status s = model.Forward(token, pos, attention, &logits); !s.ok()) return s;
    token = Argmax(logits);
    run.tokens.push_back(token);
    run.logits.push_back(logits);
  }
  return run;
}

absl::StatusOr<ModelComparison> CompareWithReference(const Llama2Model& model, const GreedyRun& ref,
                                                     const AttentionFactory& method) {
  ModelComparison c;
  c.steps = int32_t(ref.tokens.size());
  // Free-running greedy generation.
  absl::StatusOr<AttentionInstance> free_run = method();
  if (!free_run.ok()) return free_run.status();
  absl::StatusOr<GreedyRun> mine = RunGreedy(model, free_run->fn, c.steps);
  if (!mine.ok()) return mine.status();
  for (int32_t i = 0; i < c.steps; ++i) {
    if (mine->tokens[size_t(i)] == ref.tokens[size_t(i)]) {
      ++c.free_identical;
    } else if (c.first_divergence < 0) {
      c.first_divergence = i;
    }
  }
  // Teacher forcing on the reference's tokens.
  absl::StatusOr<AttentionInstance> forced = method();
  if (!forced.ok()) return forced.status();
  int32_t token = 1;
  std::vector<float> logits;
  for (int32_t pos = 0; pos < c.steps; ++pos) {
    if (absl::Status s = model.Forward(token, pos, forced->fn, &logits); !s.ok()) return s;
    const std::vector<float>& r = ref.logits[size_t(pos)];
    const double kl = KlDivergence(Softmax(r), Softmax(logits));
    c.mean_kl += kl;
    c.max_kl = std::max(c.max_kl, kl);
    for (size_t v = 0; v < r.size() && v < logits.size(); ++v) {
      c.max_logit_diff = std::max(c.max_logit_diff, std::fabs(double(logits[v]) - double(r[v])));
    }
    std::vector<float> sorted = r;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    const double margin = double(sorted[0]) - double(sorted[1]);
    c.mean_top1_margin += margin;
    if (Argmax(logits) == Argmax(r)) {
      ++c.forced_top1_agree;
    } else {
      c.max_margin_at_disagreement = std::max(c.max_margin_at_disagreement, margin);
    }
    if (pos == c.first_divergence) c.margin_at_divergence = margin;
    token = ref.tokens[size_t(pos)];
  }
  c.mean_kl /= c.steps;
  c.mean_top1_margin /= c.steps;
  return c;
}

}  // namespace twl::bench
