// Host e^x (see host_exp.h). Both builds compile one vector-extension body, so they run the
// same float operations in the same order lane by lane (the library is built without FP
// contraction): no FMA, no reassociation.
#include "core/host_exp.h"

#include <cstdint>
#include <cstring>
#include <limits>

#include "core/host_simd.h"

namespace twl {
namespace {

constexpr float kLog2e = 1.44269502163f;     // FP32(1 / ln 2)
constexpr float kLn2Hi = 0.693145751953125f;  // 0x3f317200: k * kLn2Hi is exact for |k| <= 2^9
constexpr float kLn2Lo = 1.42860676533e-06f;  // FP32(ln 2 - kLn2Hi)
// Adding and subtracting 1.5 * 2^23 rounds a float of magnitude < 2^22 to an integer, to
// nearest even (the default rounding), without a rounding instruction.
constexpr float kRoundMagic = 12582912.0f;
constexpr float kLowest = -104.0f;      // e^-104 < 2^-150: rounds to 0
constexpr float kHighest = 88.7228f;    // e^88.7228 is just below FLT_MAX
// 1 / i! for i = 7 down to 0 (Taylor: the error of degree 7 on |r| <= ln 2 / 2 is 2^-27).
constexpr float kPoly[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                            1.0f / 6.0f,    0.5f,           1.0f,           1.0f};

// Lanes of floats as GCC / Clang vector extensions: one source for both builds, four lanes
// (SSE2's width) in the baseline and eight in the AVX2 one, the same operations lane by lane.
typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));

// In place (a 32-byte vector passed or returned by value would change the ABI without AVX).
template <typename F, typename I>
__attribute__((always_inline)) inline void ExpLanes(F* v) {
  const F x = *v;
  const F zero = {}, lowest = zero + kLowest, highest = zero + kHighest;
  // NaN-safe clamp (a NaN becomes kLowest here and is restored below).
  const F xc = x > kLowest ? (x < kHighest ? x : highest) : lowest;
  const F k = (xc * kLog2e + kRoundMagic) - kRoundMagic;
  const F r = (xc - k * kLn2Hi) - k * kLn2Lo;
  F p = zero + kPoly[0];
  for (int i = 1; i < 8; ++i) p = p * r + kPoly[i];
  const I ki = __builtin_convertvector(k, I);  // integral, in [-150, 128]: exact
  const I lo_k = I{} - 126, hi_k = I{} + 127;
  const I k1 = ki < -126 ? lo_k : (ki > 127 ? hi_k : ki);
  const F s1 = (F)((k1 + 127) << 23), s2 = (F)((ki - k1 + 127) << 23);  // 2^k1, 2^(k - k1)
  F e = (p * s1) * s2;  // k - k1 in [-24, 1]: a subnormal result is rounded once
  e = x > kHighest ? zero + std::numeric_limits<float>::infinity() : e;
  e = x < kLowest ? zero : e;
  *v = x != x ? x : e;
}

// ExpMinusMax's body, inlined into each build with its lane count.
template <typename F, typename I>
__attribute__((always_inline)) inline void ExpMinusMaxBody(float* w, size_t n, float m) {
  constexpr size_t kLanes = sizeof(F) / sizeof(float);
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    F x;
    std::memcpy(&x, w + i, sizeof(x));
    x -= m;
    ExpLanes<F, I>(&x);
    std::memcpy(w + i, &x, sizeof(x));
  }
  if (i < n) {
    F x = {};
    std::memcpy(&x, w + i, (n - i) * sizeof(float));
    x -= m;
    ExpLanes<F, I>(&x);
    std::memcpy(w + i, &x, (n - i) * sizeof(float));
  }
}

}  // namespace

float HostExp(float x) {
  F4 v = {x};
  ExpLanes<F4, I4>(&v);
  return v[0];
}

void ExpMinusMaxBaseline(float* w, size_t n, float m) { ExpMinusMaxBody<F4, I4>(w, n, m); }

#if defined(__x86_64__)
TWL_TARGET_AVX2_F16C void ExpMinusMaxAvx2(float* w, size_t n, float m) {
  ExpMinusMaxBody<F8, I8>(w, n, m);
}
#else  // another ISA: never selected (core/host_simd.h), the baseline if called
void ExpMinusMaxAvx2(float* w, size_t n, float m) { ExpMinusMaxBaseline(w, n, m); }
#endif

void ExpMinusMax(float* w, size_t n, float m) {
  (ActiveHostSimd() == HostSimd::kAvx2F16c ? ExpMinusMaxAvx2 : ExpMinusMaxBaseline)(w, n, m);
}

}  // namespace twl
