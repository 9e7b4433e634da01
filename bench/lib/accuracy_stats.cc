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

double StudentT975(int64_t df) {
  static const double kTable[] = {NAN,    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
                                  2.306,  2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
                                  2.120,  2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
                                  2.064,  2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) return NAN;
  if (df <= 30) return kTable[df];
  return 1.959964 + 2.4 / double(df);  // within 0.003 of the exact value for df > 30
}

Interval MeanInterval95(const std::vector<double>& v) {
  Interval r;
  r.n = int64_t(v.size());
  if (v.empty()) {
    r.mean = r.lo = r.hi = NAN;
    return r;
  }
  r.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  if (v.size() < 2) {
    r.lo = r.hi = NAN;
    return r;
  }
  double ss = 0;
  for (double x : v) ss += (x - r.mean) * (x - r.mean);
  const double se = std::sqrt(ss / double(v.size() - 1) / double(v.size()));
  const double t = StudentT975(r.n - 1);
  r.lo = r.mean - t * se;
  r.hi = r.mean + t * se;
  return r;
}

double FractionAtLeast(const std::vector<double>& v, double threshold) {
  if (v.empty()) return NAN;
  int64_t n = 0;
  for (double x : v) n += x >= threshold ? 1 : 0;
  return double(n) / double(v.size());
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
