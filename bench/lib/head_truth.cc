#include "lib/head_truth.h"

#include <algorithm>
#include <cmath>

namespace twl::bench {

HeadTruth HeadTruth::Of(const std::vector<float>& exact, const float* v, int32_t d) {
  HeadTruth h;
  h.v = v;
  const float top = *std::max_element(exact.begin(), exact.end());
  h.w.resize(exact.size());
  for (size_t t = 0; t < exact.size(); ++t) h.total += (h.w[t] = std::exp(double(exact[t] - top)));
  if (v == nullptr) return h;
  h.out.assign(size_t(d), 0.0);
  for (size_t t = 0; t < exact.size(); ++t) {
    for (int32_t j = 0; j < d; ++j) h.out[size_t(j)] += h.w[t] * v[t * size_t(d) + size_t(j)];
  }
  for (double& x : h.out) x /= h.total;
  return h;
}

double HeadTruth::Mass(const std::vector<uint8_t>& keep) const {
  double m = 0;
  for (size_t t = 0; t < keep.size(); ++t) {
    if (keep[t]) m += w[t];
  }
  return m / total;
}

void HeadTruth::Score(const std::vector<uint8_t>& keep, double* mass, double* error) const {
  const size_t d = out.size();
  std::vector<double> o(d, 0.0);
  double m = 0, norm = 0, diff = 0;
  for (size_t t = 0; t < keep.size(); ++t) {
    if (!keep[t]) continue;
    m += w[t];
    for (size_t j = 0; j < d; ++j) o[j] += w[t] * v[t * d + j];
  }
  for (size_t j = 0; j < d; ++j) {
    const double x = m > 0 ? o[j] / m : 0.0;
    diff += (x - out[j]) * (x - out[j]);
    norm += out[j] * out[j];
  }
  *mass = m / total;
  *error = std::sqrt(diff / std::max(norm, 1e-30));
}

}  // namespace twl::bench
