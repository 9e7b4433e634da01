// One step of the host top-p search (TopPThresholdRef, twilight_prune_cpu.cc) over its
// window: the weights strictly between low and high, split at mid. Eight lanes (lane k takes
// elements k, k + 8, ... of the array) so that the double sums are independent chains, and
// the lanes combine in a fixed order: the baseline loop and the AVX2 build give the same
// bits (core/host_simd.h). Internal to prune/twilight/cpu.
#pragma once

#include <cstddef>
#include <cstdint>

namespace twl {

struct WindowSplit {
  double mass_above = 0.0;  // sum of the window's weights > mid
  float below = -1.0f;      // the largest window weight <= mid (-1: none)
  float above = 0.0f;       // the smallest window weight > mid (inf: none)
  int64_t n_above = 0;      // window weights > mid
  int64_t n_below = 0;      // window weights <= mid
};

// Weights outside (low, high) in x[0, n) are skipped: the array may hold weights that have
// left the window. Weights are finite and >= 0.
WindowSplit SplitWindowBaseline(const float* x, size_t n, float low, float high, float mid);
WindowSplit SplitWindowAvx2(const float* x, size_t n, float low, float high, float mid);

}  // namespace twl
