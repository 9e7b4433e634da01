// IEEE binary16 / bfloat16 storage types and conversions, usable from host and device code.
// The runtime stores K/V as raw 16-bit patterns (uint16_t) so that no CUDA type leaks
// into host headers; kernels reinterpret them as __half.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TWL_HD __host__ __device__ __forceinline__
#else
#define TWL_HD inline
#endif

namespace twl {

using fp16_t = uint16_t;  // IEEE binary16 bit pattern
using bf16_t = uint16_t;  // bfloat16 bit pattern

TWL_HD float BitsToFloat(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}
TWL_HD uint32_t FloatToBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

// A K value as the min / max behind the Quest bounds and the per-token zero see it: -0 as
// +0 (x + 0 is x for every other value, NaN included). Of equal zeros the GPU's fminf and the
// host's std::min keep different ones, so without this a channel whose minimum is a zero got
// bounds of different bits on the two (found by a signed-zero append test, thirty-eighth
// session). No fast-math anywhere in the build, so the add is not folded away.
TWL_HD float BoundInput(float x) { return x + 0.0f; }

// Exact conversion (every binary16 value is a float).
TWL_HD float HalfToFloat(fp16_t h) {
  const uint32_t sign = (uint32_t(h) & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return BitsToFloat(sign);
  // Subnormal: value = mant * 2^-24.
  const float v = float(mant) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

// HalfToFloat without a branch (host only), for loops that convert whole rows: the
// magnitude's bits shifted into float's place and scaled by 2^112 give every normal and
// subnormal exactly; inf and NaN take their bits by a select.
inline float HalfToFloatBranchless(fp16_t h) {
  const uint32_t mag = uint32_t(h & 0x7fffu) << 13;
  float f = BitsToFloat(mag) * 0x1p112f;
  f = (h & 0x7c00u) == 0x7c00u ? BitsToFloat(0x7f800000u | mag) : f;
  return BitsToFloat(FloatToBits(f) | ((uint32_t(h) & 0x8000u) << 16));
}

// Round to nearest even, overflow to inf, NaN preserved.
TWL_HD fp16_t FloatToHalf(float f) {
  const uint32_t u = FloatToBits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) return fp16_t(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return fp16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                                // below 2^-14: subnormal or zero
    const float mag = BitsToFloat(abs) * 16777216.0f;     // in units of 2^-24
    uint32_t m = uint32_t(mag);
    const float rem = mag - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return fp16_t(sign | m);
  }
  const uint32_t exp = (abs >> 23) - 112;
  uint32_t mant = abs & 0x7fffffu;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return fp16_t(sign | h);
}

// d rounded to FP16 (nearest, ties to even; inf past 65520, NaN kept; host only), as a float
// value: where an FP16 operation's one rounding is emulated, its exact result fits a double,
// so this is the operation's own result (FloatToHalf of a float would round twice). Adding
// and subtracting m = 1.5 * 2^(q + 52), q the exponent of FP16's last place at |d| (at least
// -24), rounds d to a multiple of 2^q, ties to even (the sum's last place is 2^q). m comes
// from d's exponent bits by a mask, a multiply and a max, and the special cases are selects:
// no branch, so a loop over it vectorizes. The host estimator dequantizes every (channel,
// code) of a page with it (core/quantize.h).
inline float HalfRoundValue(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof(u));
  const uint64_t pow2_bits = u & 0x7ff0000000000000ull;  // 2^e (0 for zero and subnormals)
  double pow2;
  std::memcpy(&pow2, &pow2_bits, sizeof(pow2));
  // q + 52 = max(e, -14) - 10 + 52; inf (and then NaN below) past e = 981, selected away.
  const double scaled = pow2 * 0x1.8p42;
  const double m = scaled > 0x1.8p28 ? scaled : 0x1.8p28;
  const double a = std::fabs(d);
  double mag = std::fabs((d + m) - m);
  mag = ((a >= 65536.0) | (mag >= 65536.0)) ? double(INFINITY) : mag;  // NaN stays NaN
  // A nonzero result has d's sign; copysign also keeps the sign of a zero.
  return float(std::copysign(mag, d));
}

// f rounded to FP16 as a float value (nearest, ties to even; inf past 65520, NaN kept):
// FloatToHalf's result as a value, by HalfRoundValue's method in float (m = 1.5 * 2^(q + 23)).
// Branch-free, so loops over it vectorize four wide; exact only as one FP16 rounding of f
// itself, so where f is an operation's result that operation must have been exact.
inline float HalfRoundFloat(float f) {
  const float pow2 = BitsToFloat(FloatToBits(f) & 0x7f800000u);  // 2^e (0 for subnormals)
  const float scaled = pow2 * 0x1.8p13f;  // inf past e = 114: selected away below
  const float m = scaled > 0x1.8p-1f ? scaled : 0x1.8p-1f;
  const float a = std::fabs(f);
  float mag = std::fabs((f + m) - m);
  mag = ((a >= 65536.0f) | (mag >= 65536.0f)) ? INFINITY : mag;  // NaN stays NaN
  return std::copysign(mag, f);
}

// Round to nearest even from double, overflow to inf, NaN preserved (host only): the bits
// of HalfRoundValue's value (an FP16 value, so FloatToHalf converts it exactly).
inline fp16_t DoubleToHalf(double d) { return FloatToHalf(HalfRoundValue(d)); }

TWL_HD float Bf16ToFloat(bf16_t b) { return BitsToFloat(uint32_t(b) << 16); }
TWL_HD bf16_t FloatToBf16(float f) {
  const uint32_t u = FloatToBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t((u >> 16) | 0x40u);
  return bf16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Elements of caller buffers, which need no alignment (api/twilight.h): read and written
// through memcpy, never through a typed pointer, so an odd address is defined behaviour (one
// unaligned load or store on x86-64 and ARM64). Host code only.
template <typename T>
inline T LoadUnaligned(const void* base, int64_t i) {
  T v;
  std::memcpy(&v, static_cast<const unsigned char*>(base) + i * int64_t(sizeof(T)), sizeof(T));
  return v;
}
template <typename T>
inline void StoreUnaligned(void* base, int64_t i, T v) {
  std::memcpy(static_cast<unsigned char*>(base) + i * int64_t(sizeof(T)), &v, sizeof(T));
}
inline uint16_t LoadU16(const void* base, int64_t i) { return LoadUnaligned<uint16_t>(base, i); }
inline void StoreU16(void* base, int64_t i, uint16_t v) { StoreUnaligned(base, i, v); }
inline float LoadF32(const void* base, int64_t i) { return LoadUnaligned<float>(base, i); }
inline void StoreF32(void* base, int64_t i, float v) { StoreUnaligned(base, i, v); }

}  // namespace twl
