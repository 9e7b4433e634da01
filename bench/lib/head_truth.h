// One query head's exact attention over a context, to score any kept set against it (the CPU
// studies twl_est_study, twl_coarse_study and twl_plane_study): the exact softmax weights
// and, given the values, the dense output.
#pragma once

#include <cstdint>
#include <vector>

namespace twl::bench {

struct HeadTruth {
  std::vector<double> w;    // exp(exact - max exact), per token
  double total = 0;         // sum of w
  std::vector<double> out;  // the dense attention output [d] (empty without values)
  const float* v = nullptr; // [len][d] values, or null

  // From exact logits (not empty) and optional values v [len][d].
  static HeadTruth Of(const std::vector<float>& exact, const float* v, int32_t d);
  // The true mass share of `keep` (its summed w over the total).
  double Mass(const std::vector<uint8_t>& keep) const;
  // Mass, and the relative L2 error of the output over `keep` against the dense output
  // (needs the values).
  void Score(const std::vector<uint8_t>& keep, double* mass, double* error) const;
};

}  // namespace twl::bench
