// Test support for the growing (adaptive) Quest selection: a store with one flat KV head and
// peaked ones, and the exact softmax weights of a head from its FP16 K (the truth a kept set
// is measured against). Shared by tests/cpu/adaptive_test.cc, tests/cpu/grow_radix_test.cc
// and tests/gpu/grow_gpu_test.cc.
#pragma once

#include <cstdint>
#include <vector>

#include "support/ref_store.h"

namespace twl::testing {

// The geometry the CPU growing-selection tests (adaptive_test, grow_radix_test) run: two KV
// heads of d = 64, pages of 16, INT4 K.
inline PageGeometry GrowTestGeometry() {
  PageGeometry g;
  g.num_kv_heads = 2;
  g.head_dim = 64;
  g.page_size = 16;
  g.k_bits = 4;
  return g;
}

// KV head 0 "flat": K = N(0, 1), queries N(0, flat_gain^2) (top-p needs a large share of the
// context). Other KV heads "peaked": quiet keys 0.1 * N(0, 1), every 997th token a loud key
// 2 * N(0, 1); each query points at one loud key with norm `peak` (it stands out by about
// 2 * peak logits, and Quest's bounds of quiet pages stay low). Pages in order.
RefStore MakeGrowStore(const PageGeometry& g, int32_t num_q_heads,
                       const std::vector<int32_t>& seq_len, float flat_gain, float peak,
                       uint64_t seed);

// Exact softmax weights (double, normalized) of (s, qh) from the appended FP16 K.
std::vector<double> TrueWeights(const RefStore& st, int32_t s, int32_t qh);

// True mass of a kept token list (positions) for (s, qh).
double TrueMassOf(const RefStore& st, int32_t s, int32_t qh, const int32_t* tokens, int32_t n);

}  // namespace twl::testing
