// Programmatic dependent launch (Hopper) for the pruner's top-p chain: HistKernel ->
// KeptKernel -> BoundaryKernel -> CompactKeptKernel. Each of those kernels lets the next one
// be scheduled from its start (PdlLetNextLaunch), and the next one, launched with
// LaunchAfterPrevious, is placed on the SMs as the previous one's blocks exit, does only
// what needs nothing of the previous kernel (an L2 prefetch of data written two or more
// kernels earlier) and then waits for it (PdlWaitForPrevious: the previous grid complete, its
// writes visible) before reading or writing anything the chain shares. So a kernel boundary
// costs no launch ramp and no tail of idle SMs (~5 us each at B = 8, 128k, on the H200:
// 0.241 ms by events against 0.226 ms of the three top-p kernels in ncu).
// Every block of such a kernel waits before it exits, so a kernel's completion implies its
// predecessors' (the chain's writes stay ordered transitively, as without PDL).
// Opt-in: TWL_PRUNE_PDL=1 in the environment; otherwise they launch plainly (the waits then
// return at once).
#pragma once

#include <cstdlib>
#include <cstring>
#include <utility>

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

__device__ __forceinline__ void PdlLetNextLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void PdlWaitForPrevious() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Read at every launch (a getenv: far below a launch's cost), so that a test can compare.
// Off unless TWL_PRUNE_PDL=1: measured, it gains nothing (H200 at B = 1, sixth session; H100
// at B = 1 and 8 in CUDA graphs, thirty-second; bench/RESULTS.md): the passes' time is their
// own chains of loads, not the launch ramps between them.
inline bool PdlEnabled() {
  const char* v = std::getenv("TWL_PRUNE_PDL");
  return v && std::strcmp(v, "1") == 0;
}

// kernel<<<grid, threads, 0, st>>>(args...), allowed to overlap the stream's previous kernel
// (see above); the kernel must call PdlWaitForPrevious in every block.
template <typename... Params, typename... Args>
absl::Status LaunchAfterPrevious(const char* name, void (*kernel)(Params...), dim3 grid,
                                 int threads, cudaStream_t st, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(unsigned(threads), 1u, 1u);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = PdlEnabled() ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);  // its error: LaunchStatus
  return LaunchStatus(name);
}

}  // namespace twl::cuda
