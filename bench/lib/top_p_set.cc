#include "lib/top_p_set.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace twl::bench {

std::vector<uint8_t> TopPSet(const std::vector<float>& x, float p, float* log_threshold) {
  const size_t n = x.size();
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return x[size_t(a)] > x[size_t(b)]; });
  const float mx = x[size_t(order[0])];
  double total = 0;
  for (float v : x) total += std::exp(double(v - mx));
  std::vector<uint8_t> keep(n, 0);
  double m = 0;
  *log_threshold = mx;
  for (int32_t t : order) {
    if (m >= double(p) * total) break;
    m += std::exp(double(x[size_t(t)] - mx));
    keep[size_t(t)] = 1;
    *log_threshold = x[size_t(t)];
  }
  return keep;
}

}  // namespace twl::bench
