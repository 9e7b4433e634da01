// The host page-channel estimator (estimate_cpu.h) with AVX2 + F16C: the same values, bit
// for bit (core/host_simd.h), about 5x faster per page. Called by estimate_cpu.cc when the
// host supports it.
#pragma once

#include <cstdint>

#include "core/stage_views.h"

namespace twl {

// EstimatePageChannelBlockMultiRef for INT4 codes, head_dim a multiple of 64 up to 256 and
// 1..16 rows; returns false, having written nothing, for any other shape or in a build for
// another ISA. The caller checks that the host has AVX2 + F16C (ActiveHostSimd).
bool EstimatePageChannelBlockAvx2(const PageGeometry& g, const float* const* q, int32_t heads,
                                  const QuantKView& qk, int64_t block, int32_t rows,
                                  float* const* out);

}  // namespace twl
