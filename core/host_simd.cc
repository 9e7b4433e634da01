// CPU feature detection for the host kernels (see host_simd.h).
#include "core/host_simd.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace twl {
namespace {

bool DetectAvx2F16c() {
#if defined(__x86_64__)
  // The first call may come from a static constructor, before libgcc has read the CPU.
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  // F16C is CPUID.1:ECX bit 29 (__builtin_cpu_supports does not name it on every compiler);
  // AVX2 also needs the OS to save the YMM state, which __builtin_cpu_supports checks.
  const bool f16c = (ecx & (1u << 29)) != 0;
  return f16c && __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

HostSimd Detect() {
  const HostSimd best = DetectAvx2F16c() ? HostSimd::kAvx2F16c : HostSimd::kBaseline;
  const char* env = std::getenv("TWL_HOST_SIMD");
  if (env != nullptr && std::strcmp(env, "baseline") == 0) return HostSimd::kBaseline;
  return best;
}

std::atomic<int>& Active() {
  static std::atomic<int> level{int(Detect())};
  return level;
}

}  // namespace

HostSimd ActiveHostSimd() { return HostSimd(Active().load(std::memory_order_relaxed)); }

bool HostSupports(HostSimd level) {
  static const bool avx2 = DetectAvx2F16c();
  return level == HostSimd::kBaseline || avx2;
}

HostSimd SetHostSimdForTesting(HostSimd level) {
  if (!HostSupports(level)) level = HostSimd::kBaseline;
  return HostSimd(Active().exchange(int(level), std::memory_order_relaxed));
}

const char* HostSimdName(HostSimd level) {
  return level == HostSimd::kAvx2F16c ? "avx2+f16c" : "baseline";
}

}  // namespace twl
