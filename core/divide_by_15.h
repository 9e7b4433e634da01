// x / 15 in FP32, correctly rounded, without a division: the INT4 per-page-channel step
// (kmax - kmin) / 15 (PageChannelStep at k_bits 4) as the GPU estimators compute it, once
// per channel and page, where an IEEE division costs a reciprocal, four FMAs and a range
// check. q0 = x * RN(1/15) is within an ulp; the remainder x - q0 * 15 is exact in one FMA;
// q0 + remainder * RN(1/15) is then the correctly rounded quotient (Markstein), checked
// against x / 15.0f for every finite FP32 x (tests/cpu/quantize_ref_test.cc samples it).
// Non-finite x: the remainder of +-inf is NaN, so q0 (+-inf, NaN) is returned as is; so is a
// zero q0 (the correction would turn -0 into +0; a nonzero x / 15 below half the smallest
// subnormal rounds to zero either way).
#pragma once

#include <cmath>

#include "core/half.h"

namespace twl {

TWL_HD float DivideBy15(float x) {
  constexpr float kInv15 = 1.0f / 15.0f;
  const float q0 = x * kInv15;
  const float rem = fmaf(-q0, 15.0f, x);
  const float q1 = fmaf(rem, kInv15, q0);
  return fabsf(q0) > 0.0f && fabsf(q0) < INFINITY ? q1 : q0;
}

}  // namespace twl
