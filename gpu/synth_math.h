// Element formulas of the synthetic workloads (gpu/synth.h), shared by the CUDA generator
// and the host one so that a CPU run and a GPU run of a benchmark see the same K/V/queries
// (up to the last bit of logf/cosf): counter-based hashes, so every element is a pure function
// of (seed, sequence, position, head, channel) and no state is carried between calls.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/half.h"
#include "gpu/synth.h"

namespace twl::synth {

TWL_HD uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

TWL_HD uint64_t Hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return Mix(seed ^ Mix(a * 0x9e3779b97f4a7c15ull ^ Mix(b + 0x632be59bd9b4e019ull) ^
                        Mix(c * 0xd6e8feb86659fd93ull)));
}

// Standard normal from one 64-bit hash (Box-Muller on its two halves).
TWL_HD float Normal(uint64_t h) {
  const float u1 = (float(uint32_t(h >> 40)) + 0.5f) * (1.0f / 16777216.0f);
  const float u2 = float(uint32_t(h) & 0xffffffu) * (1.0f / 16777216.0f);
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
#else
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
#endif
}

// The hot direction of (sequence, KV head) for tokens of `region` (drifting workloads give
// each region of region_tokens tokens its own direction; region 0 is the classic one).
TWL_HD float Direction(const SynthSpec& sp, int32_t seq, int32_t h, int c, int32_t region) {
  return Normal(Hash(sp.seed ^ 0x5555, uint64_t(seq), uint64_t(h),
                     uint64_t(c) + (uint64_t(uint32_t(region)) << 20)));
}

TWL_HD bool IsFlat(const SynthSpec& sp, int32_t h) { return (sp.flat_mask >> (h & 31)) & 1u; }

TWL_HD int32_t RegionOf(const SynthSpec& sp, int32_t t) {
  return sp.region_tokens > 0 ? t / sp.region_tokens : 0;
}

// K and V of element (token t of `seq` whose final length is len, KV head h, channel c).
TWL_HD void KvElement(const SynthSpec& sp, int32_t seq, int32_t t, int32_t len, int32_t h, int c,
                      fp16_t* k, fp16_t* v) {
  const uint64_t tok = (uint64_t(uint32_t(seq)) << 32) | uint32_t(t);
  const float gamma = IsFlat(sp, h) && sp.gamma_flat >= 0.0f ? sp.gamma_flat : sp.gamma;
  const bool heavy = t >= len - sp.local_window ||
                     Hash(sp.seed ^ 0x7777, tok, uint64_t(h), 0) % uint64_t(sp.heavy_every) == 0;
  float kv = Normal(Hash(sp.seed ^ 0x1111, tok, uint64_t(h), uint64_t(c)));
  if (heavy && gamma != 0.0f) {
    kv += gamma / sqrtf(float(sp.head_dim)) * Direction(sp, seq, h, c, RegionOf(sp, t));
  }
  *k = FloatToHalf(kv);
  *v = FloatToHalf(Normal(Hash(sp.seed ^ 0x2222, tok, uint64_t(h), uint64_t(c))));
}

// Query element of query head qh (KV head qh / group) of sequence `seq`, looking at `region`.
TWL_HD fp16_t QueryElement(const SynthSpec& sp, int32_t seq, int32_t qh, int32_t group, int c,
                           int32_t region) {
  const int32_t h = qh / group;
  const float beta = IsFlat(sp, h) ? sp.beta_flat : sp.beta_peaked;
  return FloatToHalf(beta * Direction(sp, seq, h, c, region) +
                     0.1f * Normal(Hash(sp.seed ^ 0x3333, uint64_t(seq), uint64_t(qh),
                                        uint64_t(c))));
}

}  // namespace twl::synth
