// Which vector instructions the host kernels may use: detected once from the CPU, so one
// binary runs everywhere and uses AVX2 + F16C where the host has them. Each wide kernel
// does, lane by lane, the same FP32 operations in the same order as its baseline loop (no
// fused multiply-add, no reassociation), so its results are bit for bit the baseline's and
// a host's results do not depend on which path ran; the tests force each level and compare.
#pragma once

// The attribute of a function built for AVX2 + F16C (the twins carry it per function rather
// than a file-wide -mavx2, so that inline functions of shared headers compiled beside them stay
// baseline code, with no AVX copy the linker could pick for everyone). x86-64 only.
#if defined(__x86_64__)
#define TWL_TARGET_AVX2_F16C __attribute__((target("avx2,f16c")))
#endif

namespace twl {

enum class HostSimd {
  kBaseline,  // x86-64's SSE2 (what the compiler vectorizes by itself), or any other ISA
  kAvx2F16c,  // AVX2 integer and float lanes of 8, F16C FP16 <-> FP32 conversions
};

// The most the CPU supports, lowered by TWL_HOST_SIMD=baseline in the environment (A/B runs).
HostSimd ActiveHostSimd();
// Whether the CPU supports `level` at all.
bool HostSupports(HostSimd level);
// Forces `level` (clamped to what the CPU supports) for this process; returns the previous
// one. For tests and benchmarks that compare the paths.
HostSimd SetHostSimdForTesting(HostSimd level);

const char* HostSimdName(HostSimd level);

}  // namespace twl
