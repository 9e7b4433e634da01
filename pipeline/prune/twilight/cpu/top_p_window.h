// The host top-p search's window (TopPThresholdRef, twilight_prune_cpu.cc): the weights
// strictly between low and high, built once, split at mid each step, compacted when it has
// halved. The split runs in eight lanes (lane k takes elements k, k + 8, ... of the array)
// so that the double sums are independent chains, and the lanes combine in a fixed order:
// the baseline loops and the AVX2 builds give the same bits (core/host_simd.h). Internal to
// prune/twilight/cpu.
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

// The search's first window from all n weights w (finite, >= 0): window[0, live) holds, in
// their order, the weights in (low, high) that are not tiny, where tiny means in (0, tiny).
// window has room for n floats (the AVX2 build writes past `live` but never past n).
struct WindowStart {
  size_t live = 0;         // weights written to the window
  int64_t tiny_count = 0;  // weights in (0, tiny)
  float tiny_max = -1.0f;  // the largest of them (-1: none)
  int64_t at_high = 0;     // weights >= high
};
WindowStart BuildWindowBaseline(const float* w, size_t n, float low, float high, float tiny,
                                float* window);
WindowStart BuildWindowAvx2(const float* w, size_t n, float low, float high, float tiny,
                            float* window);

// Keeps the weights of x[0, n) that lie in (low, high), in their order, at the front of x;
// returns how many. Both builds leave the same front (the order fixes the split's lanes).
size_t CompactWindowBaseline(float* x, size_t n, float low, float high);
size_t CompactWindowAvx2(float* x, size_t n, float low, float high);

}  // namespace twl
