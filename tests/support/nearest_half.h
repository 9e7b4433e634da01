// Test support: whether an FP16 value is the correctly rounded one (nearest, ties to even) of
// an exact value computed in long double, a route independent of the library's roundings.
#pragma once

#include <cmath>

#include "core/half.h"

namespace twl::testing {

// Whether h is the FP16 value nearest to x (ties: even mantissa): x lies within half an ulp
// of h on both sides.
inline bool IsNearestHalf(long double x, fp16_t h) {
  // The representable neighbours of h toward +inf and -inf.
  auto next = [](fp16_t v, bool up) -> fp16_t {
    const bool neg = (v & 0x8000u) != 0;
    if ((v & 0x7fffu) == 0) return up ? fp16_t(0x0001u) : fp16_t(0x8001u);
    return neg == up ? fp16_t(v - 1) : fp16_t(v + 1);  // magnitude down, else up
  };
  const long double v = HalfToFloat(h);
  for (bool up : {true, false}) {
    const fp16_t n = next(h, up);
    if ((n & 0x7c00u) == 0x7c00u) continue;  // past the finite range
    const long double dv = std::fabs(x - v), dw = std::fabs(x - (long double)HalfToFloat(n));
    if (dw < dv) return false;
    if (dw == dv && (h & 1u)) return false;  // a tie goes to the even neighbour
  }
  return true;
}

}  // namespace twl::testing
