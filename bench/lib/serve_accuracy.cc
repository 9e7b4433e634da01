#include "lib/serve_accuracy.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace twl::bench {
namespace {

double RelErr(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace

HeadAccuracy MeasureHead(const fp16_t* k, const fp16_t* v, int32_t len, int32_t num_kv_heads,
                         int32_t head_dim, int32_t kv_head, const fp16_t* q, const fp16_t* out,
                         const std::vector<int32_t>& attended, double p) {
  HeadAccuracy r;
  r.attended = int32_t(attended.size());
  if (len <= 0) return r;
  const int64_t row = int64_t(num_kv_heads) * head_dim;
  std::vector<double> qf(size_t(head_dim), 0.0);
  for (int32_t c = 0; c < head_dim; ++c) qf[size_t(c)] = HalfToFloat(q[c]);
  const double scale = 1.0 / std::sqrt(double(head_dim));
  std::vector<double> w(static_cast<size_t>(len));
  double mx = -INFINITY;
  for (int32_t t = 0; t < len; ++t) {
    const fp16_t* kr = k + t * row + int64_t(kv_head) * head_dim;
    double s = 0;
    for (int32_t c = 0; c < head_dim; ++c) s += qf[size_t(c)] * HalfToFloat(kr[c]);
    w[size_t(t)] = s * scale;
    mx = std::max(mx, w[size_t(t)]);
  }
  double z = 0;
  for (double& x : w) {
    x = std::exp(x - mx);
    z += x;
  }
  for (double& x : w) x /= z;

  // Output of attention restricted to a set of positions, renormalized over the set.
  auto attend = [&](const std::vector<int32_t>& set) {
    std::vector<double> o(size_t(head_dim), 0.0);
    double mass = 0;
    for (int32_t t : set) {
      if (t < 0 || t >= len) continue;
      mass += w[size_t(t)];
      const fp16_t* vr = v + t * row + int64_t(kv_head) * head_dim;
      for (int32_t c = 0; c < head_dim; ++c) o[size_t(c)] += w[size_t(t)] * HalfToFloat(vr[c]);
    }
    if (mass > 0) {
      for (double& x : o) x /= mass;
    }
    return o;
  };
  std::vector<int32_t> all(static_cast<size_t>(len));
  std::iota(all.begin(), all.end(), 0);
  const std::vector<double> dense = attend(all);

  for (int32_t t : attended) {
    if (t >= 0 && t < len) r.true_mass += w[size_t(t)];
  }
  std::vector<double> got(static_cast<size_t>(head_dim));
  for (int32_t c = 0; c < head_dim; ++c) got[size_t(c)] = HalfToFloat(out[c]);
  r.rel_err = RelErr(got, dense);

  // Exact top-p: the largest weights until their mass reaches p.
  std::vector<int32_t> order(all);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return w[size_t(a)] > w[size_t(b)]; });
  double acc = 0;
  std::vector<int32_t> oracle;
  for (int32_t t : order) {
    oracle.push_back(t);
    acc += w[size_t(t)];
    if (acc >= p) break;
  }
  r.oracle_kept = int32_t(oracle.size());
  r.oracle_err = RelErr(attend(oracle), dense);
  std::sort(oracle.begin(), oracle.end());
  r.oracle_tokens = std::move(oracle);
  return r;
}

}  // namespace twl::bench
