// e^x for the host's softmax weights (the pruner's top-p weights, the attention's
// probabilities): a fixed sequence of float operations, so that the baseline loop and the
// AVX2 one give the same bits (core/host_simd.h), at a fraction of libm's cost per element
// (std::exp is a scalar call: ~4 ns on the build machine, a sixth of the host pruner's time
// at 64k tokens).
#pragma once

#include <cstddef>

namespace twl {

// e^x within 2 ulp of the exact value for every float x (subnormal results included); 0 for
// x < -104, +inf above 88.7228 (e^x past FLT_MAX), NaN for NaN. Range reduction
// x = k ln 2 + r (|r| <= ln 2 / 2, ln 2 split in two so k ln2_hi is exact), e^r by a degree-7
// polynomial, then times 2^k in two factors so that a subnormal result is rounded once.
float HostExp(float x);

// w[i] = HostExp(w[i] - m) for i < n: the softmax weights of scores against their max m.
// Eight at a time where AVX2 is active (ActiveHostSimd), the same bits either way.
void ExpMinusMax(float* w, size_t n, float m);

// The two builds of ExpMinusMax, for the tests that compare them.
void ExpMinusMaxBaseline(float* w, size_t n, float m);
void ExpMinusMaxAvx2(float* w, size_t n, float m);

}  // namespace twl
