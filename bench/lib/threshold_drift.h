// How far a query head's top-p threshold moves between consecutive decode steps, for
// twl_threshold_drift. Design input for a pruner whose score pass would keep only the scores
// at or above a floor predicted from the head's previous step (and sum the weight below it):
// the top-p passes would then run over those survivors instead of the whole context. A floor
// is valid for a step when the step's own top-p threshold lies at or above it (the kept set is
// then among the survivors, and the mass below the floor is <= 1 - p); otherwise that step
// would fall back to the full passes.
//
// Two floors, each lowered by a margin delta (logits):
//   absolute  L = theta_prev - delta                     (no information about this step)
//   relative  L = max_now - (max_prev - theta_prev) - delta
//             (the previous step's depth below its max, under this step's max: a pass that
//             knows this step's max, e.g. from a first pass over a sample)
#pragma once

#include <cstdint>
#include <vector>

namespace twl::bench {

// One query head's exact scores at one step: max, top-p threshold (in logits) and the size of
// the smallest top-p set (the tokens at or above the threshold).
struct HeadStep {
  double max = 0;
  double threshold = 0;
  int64_t kept = 0;
};
// scores: exact logits q . k / sqrt(d) of every token; 0 < p < 1.
HeadStep MeasureHeadStep(const std::vector<float>& scores, double p);

struct DriftTally {
  explicit DriftTally(std::vector<double> deltas);
  // Adds the transition prev -> now of one query head (`scores` are now's).
  void Add(const HeadStep& prev, const HeadStep& now, const std::vector<float>& scores);

  std::vector<double> deltas;
  int64_t transitions = 0;
  // Per delta, [0] absolute and [1] relative floor: steps with a valid floor; per valid step
  // the survivors' share of the context and their count over the step's own top-p set.
  std::vector<int64_t> valid[2];
  std::vector<std::vector<double>> share[2], over_kept[2];
  std::vector<double> theta_change;  // theta_now - theta_prev, every transition
  std::vector<double> depth_change;  // (max - theta) now minus prev
  // max_now - max_prev: whether a histogram anchored at the previous step's max plus a margin
  // (known before this step's scores) would hold this step's max.
  std::vector<double> max_change;
};

}  // namespace twl::bench
