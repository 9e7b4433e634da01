// Asynchronous global -> shared copies (cp.async, sm_80+), shared by the kernels that stage
// their inputs through shared memory (the score pass, the attention). Sizes below 16 bytes
// must go through L1 (.ca); 16-byte copies bypass it (.cg): the staged data is read once.
#pragma once

#include <cstdint>

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

// To a shared-window address (SharedAddress: formed once per loop where it can).
__device__ __forceinline__ void CpAsync16(uint32_t smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem));
}
// Issued only where pred holds, as one predicated instruction: a branch around the copy
// costs a warp-divergence region (BSSY / BSYNC) in an unrolled copy loop.
__device__ __forceinline__ void CpAsync16If(bool pred, uint32_t smem, const void* gmem) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n"
      " @p cp.async.cg.shared.global [%0], [%1], 16;\n}\n" ::"r"(smem),
      "l"(gmem), "r"(int(pred)));
}
__device__ __forceinline__ void CpAsync8(uint32_t smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem), "l"(gmem));
}
// To a generic shared pointer (converted at each copy).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  CpAsync16(SharedAddress(smem), gmem);
}
__device__ __forceinline__ void CpAsync8(void* smem, const void* gmem) {
  CpAsync8(SharedAddress(smem), gmem);
}
__device__ __forceinline__ void CpAsync4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(SharedAddress(smem)),
               "l"(gmem));
}
// 16 bytes, or 16 zero bytes without reading global memory when !valid (src-size 0).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(smem)),
               "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace twl::cuda
