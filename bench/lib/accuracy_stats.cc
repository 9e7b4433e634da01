// Summaries and per-method accumulation for the accuracy harness (see accuracy_stats.h).
#include "lib/accuracy_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace twl::bench {

Summary Summarize(std::vector<double> v) {
  Summary s;
  s.n = int64_t(v.size());
  if (v.empty()) {
    s.mean = s.p50 = s.p99 = s.min = s.max = NAN;
    return s;
  }
  std::sort(v.begin(), v.end());
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  auto rank = [&](double q) {
    const size_t i = size_t(std::ceil(q * double(v.size()))) - 1;
    return v[std::min(v.size() - 1, i)];
  };
  s.p50 = rank(0.50);
  s.p99 = rank(0.99);
  s.min = v.front();
  s.max = v.back();
  return s;
}

void MethodAggregate::Add(const MethodResult& r, const MethodResult& dense) {
  const std::vector<double> err = RowRelErrors(r.out, dense.out, r.head_dim);
  const int32_t group = r.num_q_heads / r.num_kv_heads;
  for (int32_t s = 0; s < r.num_seqs; ++s) {
    const double ctx = r.seq_len[size_t(s)];
    for (int32_t h = 0; h < r.num_q_heads; ++h) {
      const size_t at = size_t(s) * r.num_q_heads + h;
      kept.push_back(r.kept[at]);
      kept_frac.push_back(r.kept[at] / ctx);
      attended_frac.push_back(r.kept_kv[size_t(s) * r.num_kv_heads + h / group] / ctx);
      own_mass.push_back(r.own_mass[at]);
      union_mass.push_back(r.union_mass[at]);
      est_mass.push_back(r.est_mass[at]);
      rel_err.push_back(err[at]);
    }
  }
}

double MethodAggregate::FractionBelow(double tolerance) const {
  if (own_mass.empty()) return NAN;
  int64_t below = 0;
  for (double m : own_mass) below += m < p - tolerance ? 1 : 0;
  return double(below) / double(own_mass.size());
}

}  // namespace twl::bench
