// CPU reference of the GPU pruner's histogram top-p (see top_p_bins.h).
#include "reference/top_p_bins.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/half.h"

namespace twl {

namespace {

constexpr int kBins = 256;

int Bin1(float d) { return d < 31.875f ? int(std::max(d, 0.0f) * 8.0f) : kBins - 1; }
int Bin2(float d, int b1) {
  const float t = (d - float(b1) * 0.125f) * 2048.0f;
  return int(std::min(std::max(t, 0.0f), float(kBins - 1)));
}
uint64_t Fixed(float w) { return uint64_t(std::nearbyint(double(w) * 1099511627776.0)); }

// The first bin where the running sum reaches target; *before: the sum of the bins above.
int FindBin(const uint64_t* hist, uint64_t target, uint64_t* before) {
  uint64_t c = 0;
  for (int b = 0; b < kBins; ++b) {
    if (c + hist[b] >= target) {
      *before = c;
      return b;
    }
    c += hist[b];
  }
  *before = c - hist[kBins - 1];
  return kBins - 1;
}

}  // namespace

BinnedTopP TopPBinnedRef(absl::Span<const float> scores, float p) {
  const size_t n = scores.size();
  BinnedTopP r;
  r.keep.assign(n, 0);
  if (p >= 1.0f) {
    for (size_t i = 0; i < n; ++i) {
      if (scores[i] != -std::numeric_limits<float>::infinity()) {
        r.keep[i] = 1;
        ++r.kept;
      }
    }
    r.mass = r.kept > 0 ? 1.0 : 0.0;
    return r;
  }
  // FP16 as stored; the max ignores NaN (fmaxf), a NaN makes the head keep nothing.
  std::vector<float> x(n);
  float mx = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) {
    x[i] = HalfToFloat(FloatToHalf(scores[i]));
    if (std::isnan(x[i])) return r;
    mx = std::max(mx, x[i]);
  }
  if (!std::isfinite(mx)) return r;
  uint64_t h1[kBins] = {}, h2[kBins] = {};
  auto valid = [&](size_t i) { return x[i] != -std::numeric_limits<float>::infinity(); };
  for (size_t i = 0; i < n; ++i) {
    if (valid(i)) h1[Bin1(mx - x[i])] += Fixed(std::exp(-(mx - x[i])));
  }
  uint64_t total = 0;
  for (uint64_t v : h1) total += v;
  const uint64_t target = uint64_t(std::ceil(double(p) * double(total)));
  if (target == 0) return r;
  uint64_t before = 0, unused = 0;
  r.bin = FindBin(h1, target, &before);
  for (size_t i = 0; i < n; ++i) {
    const float d = mx - x[i];
    if (valid(i) && Bin1(d) == r.bin) h2[Bin2(d, r.bin)] += Fixed(std::exp(-d));
  }
  r.sub_bin = FindBin(h2, target - before, &unused);
  uint64_t kept_mass = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!valid(i)) continue;
    const float d = mx - x[i];
    const float w = std::exp(-d);
    const int b1 = Bin1(d);
    if (w > 0.0f && (b1 < r.bin || (b1 == r.bin && Bin2(d, b1) <= r.sub_bin))) {
      r.keep[i] = 1;
      ++r.kept;
      kept_mass += Fixed(w);
    }
  }
  r.mass = double(kept_mass) / double(total);
  return r;
}

}  // namespace twl
