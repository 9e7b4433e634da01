// Threshold drift between decode steps (see threshold_drift.h).
#include "lib/threshold_drift.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "lib/model_methods.h"

namespace twl::bench {

HeadStep MeasureHeadStep(const std::vector<float>& scores, double p) {
  HeadStep h;
  const int32_t n = int32_t(scores.size());
  if (n == 0) return h;
  h.max = *std::max_element(scores.begin(), scores.end());
  std::vector<double> w(static_cast<size_t>(n));
  double total = 0;
  for (int32_t t = 0; t < n; ++t)
    total += (w[size_t(t)] = std::exp(double(scores[size_t(t)]) - h.max));
  for (double& x : w) x /= total;
  std::vector<double> scratch;
  const double wt = TopPWeightThreshold(w.data(), n, p, &scratch);
  // The threshold as a score (the lowest kept one), so that comparing scores with it is exact.
  h.threshold = h.max;
  for (int32_t t = 0; t < n; ++t) {
    if (w[size_t(t)] < wt) continue;
    ++h.kept;
    h.threshold = std::min(h.threshold, double(scores[size_t(t)]));
  }
  return h;
}

DriftTally::DriftTally(std::vector<double> d) : deltas(std::move(d)) {
  for (int f = 0; f < 2; ++f) {
    valid[f].assign(deltas.size(), 0);
    share[f].assign(deltas.size(), {});
    over_kept[f].assign(deltas.size(), {});
  }
}

void DriftTally::Add(const HeadStep& prev, const HeadStep& now, const std::vector<float>& scores) {
  ++transitions;
  theta_change.push_back(now.threshold - prev.threshold);
  depth_change.push_back((now.max - now.threshold) - (prev.max - prev.threshold));
  max_change.push_back(now.max - prev.max);
  const double n = double(scores.size());
  for (size_t i = 0; i < deltas.size(); ++i) {
    const double floors[2] = {prev.threshold - deltas[i],
                              now.max - (prev.max - prev.threshold) - deltas[i]};
    for (int f = 0; f < 2; ++f) {
      // Valid when the step's own threshold is at or above the floor.
      if (now.threshold < floors[f]) continue;
      ++valid[f][i];
      int64_t survivors = 0;
      for (float s : scores) survivors += double(s) >= floors[f] ? 1 : 0;
      share[f][i].push_back(double(survivors) / n);
      over_kept[f][i].push_back(double(survivors) / double(std::max<int64_t>(1, now.kept)));
    }
  }
}

}  // namespace twl::bench
