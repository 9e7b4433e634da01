// The top-p window split, baseline loop and lane combination (see top_p_window.h).
#include "pipeline/prune/twilight/cpu/top_p_window.h"

#include <limits>

#include "pipeline/prune/twilight/cpu/top_p_window_lanes.h"

namespace twl {

WindowSplit SplitWindowBaseline(const float* x, size_t n, float low, float high, float mid) {
  WindowLanes lanes;
  for (size_t i = 0; i < n; ++i) lanes.Add(x[i], i % WindowLanes::kLanes, low, high, mid);
  return lanes.Combine();
}

}  // namespace twl
