// The top-p window's baseline loops: build, split, compact (see top_p_window.h).
#include "pipeline/prune/twilight/cpu/top_p_window.h"

#include <limits>

#include "pipeline/prune/twilight/cpu/top_p_window_lanes.h"

namespace twl {

WindowSplit SplitWindowBaseline(const float* x, size_t n, float low, float high, float mid) {
  WindowLanes lanes;
  for (size_t i = 0; i < n; ++i) lanes.Add(x[i], i % WindowLanes::kLanes, low, high, mid);
  return lanes.Combine();
}

WindowStart BuildWindowBaseline(const float* w, size_t n, float low, float high, float tiny,
                                float* window) {
  WindowStart s;
  for (size_t i = 0; i < n; ++i) {  // without a branch: which side a weight lies is data
    const float x = w[i];
    const bool is_tiny = (x > 0.0f) & (x < tiny);
    window[s.live] = x;
    s.live += (x > low) & (x < high) & !is_tiny;
    s.tiny_count += is_tiny;
    s.tiny_max = (is_tiny & (x > s.tiny_max)) ? x : s.tiny_max;
    s.at_high += x >= high;
  }
  return s;
}

size_t CompactWindowBaseline(float* x, size_t n, float low, float high) {
  size_t kept = 0;
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    x[kept] = v;  // kept <= i: never past what was read
    kept += (v > low) & (v < high);
  }
  return kept;
}

}  // namespace twl
