// What the host launchers of every decode stage's CUDA kernels share: their contract and
// the shapes the kernels take. The launchers are declared beside their kernels:
// runtime/cuda/append_launch.h, pipeline/select/quest/cuda/select_launch.h,
// pipeline/prune/twilight/cuda/prune_launch.h, pipeline/attend/sparse/cuda/attend_launch.h
// (Double Sparsity: pipeline/select/double_sparsity/ds_kernels.h). No device code and no
// CUDA types: every pointer inside the views is a DEVICE pointer
// (including BatchView.seq_len/page_table and PrunerParams.seq_p), `stream` is a
// cudaStream_t passed as void* (null: the legacy default stream), and each launcher only
// enqueues work: it never synchronizes, so a decode step never waits for the host.
//
// Outputs are exactly those of the CPU stages (pipeline/<stage>/cpu/): same views, same fixed
// strides, same algorithms; float sums run in a different order, so scores can differ in the
// last bits and top-p / top-B0 sets can differ at near ties (see tests/gpu/).
//
// Supported on the GPU: head_dim 64, 96, 128 and 256, group size (num_q_heads /
// num_kv_heads) 1..16 (kGpuMaxGroup; the pruner kGpuPruneMaxGroup, also 16), any
// page_size; INT4 K at head_dim 64/128 uses the tensor-core
// estimator, other head dims and k_bits 2/8/16 a scalar one; under the
// per-page-channel K scheme (g.k_scheme 1) INT4 uses the tensor cores when page_size is a
// multiple of 16 (a 16-token tile in one block), the scalar estimator otherwise. Under
// k_scheme 1 the append launchers re-quantize every filled row of each touched block against
// its new Quest range (QuantKView.scale/zero are unused and may be null).
// Anything else returns Unimplemented before enqueueing work.
//
// Temporaries live in a caller-owned workspace sized by the matching *WorkspaceBytes query
// (it depends only on shapes, so it can be allocated once; CUDA-graph safe). Workspaces must
// be 256-byte aligned (cudaMalloc is). A workspace may be reused by the next launch on the
// same stream, never concurrently by two streams.
//
// Status codes: InvalidArgument (bad shape/null pointer/small workspace), Unimplemented
// (shape outside the list above), Unavailable (built without CUDA), Internal (launch failed).
// Built without CUDA, every launcher returns Unavailable.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// The shapes the GPU kernels take (backends refuse others at creation).
constexpr bool GpuKernelsSupportHeadDim(int32_t head_dim) {
  return head_dim == 64 || head_dim == 96 || head_dim == 128 || head_dim == 256;
}
constexpr int32_t kGpuMaxGroup = 16;  // query heads per KV head
// Query heads per KV head the pruner kernels (pipeline/prune/twilight/cuda) take: all of
// kGpuMaxGroup (verified on the H200, groups 12 and 16 against the CPU reference). Kept as a
// separate bound so that a wider kGpuMaxGroup cannot outrun the pruner: a group past it
// decodes through the dense path and LaunchPrune returns Unimplemented.
constexpr int32_t kGpuPruneMaxGroup = 16;

// What every launcher answers in a library built without CUDA (the stages' cuda/*_stub.cc).
inline absl::Status NoCudaKernels() {
  return absl::UnavailableError("GPU kernels: built without CUDA");
}

}  // namespace twl
