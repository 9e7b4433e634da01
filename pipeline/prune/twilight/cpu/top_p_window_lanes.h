// The eight lanes of a top-p window split (top_p_window.h): the per-lane rule both builds
// follow, and the one order in which lanes combine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "pipeline/prune/twilight/cpu/top_p_window.h"

namespace twl {

struct WindowLanes {
  static constexpr size_t kLanes = 8;
  double mass[kLanes] = {};
  float below[kLanes] = {-1.0f, -1.0f, -1.0f, -1.0f, -1.0f, -1.0f, -1.0f, -1.0f};
  float above[kLanes];
  int64_t n_above[kLanes] = {}, n_below[kLanes] = {};

  WindowLanes() {
    for (float& a : above) a = std::numeric_limits<float>::infinity();
  }
  // Adding 0.0 for a weight not above mid leaves a lane's sum as it is (sums are >= +0).
  void Add(float v, size_t k, float low, float high, float mid) {
    const bool in = (v > low) & (v < high), gt = v > mid;
    const bool up = in & gt, down = in & !gt;
    mass[k] += up ? double(v) : 0.0;
    above[k] = (up & (v < above[k])) ? v : above[k];
    below[k] = (down & (v > below[k])) ? v : below[k];
    n_above[k] += up;
    n_below[k] += down;
  }
  // The one order in which eight lane sums combine (the top-p search's total uses it too).
  static double SumLanes(const double* l) {
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
  }
  WindowSplit Combine() const {
    WindowSplit s;
    s.mass_above = SumLanes(mass);
    s.above = std::numeric_limits<float>::infinity();
    for (size_t k = 0; k < kLanes; ++k) {
      s.below = below[k] > s.below ? below[k] : s.below;
      s.above = above[k] < s.above ? above[k] : s.above;
      s.n_above += n_above[k];
      s.n_below += n_below[k];
    }
    return s;
  }
};

}  // namespace twl
