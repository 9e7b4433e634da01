// Device-side helpers shared by the stage kernels: launch checks, bounded head-dim dispatch,
// warp/block reductions and scans, FP16 conversions. Included only by gpu/cuda/*.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gpu/kernels.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "gpu/cuda/cuda_status.cuh"
#include "core/stage_views.h"

namespace twl::cuda {

using ::twl::cuda_status::AsStream;
using ::twl::cuda_status::LaunchStatus;

// Bounded head-dim dispatch: the body sees `constexpr int kHeadDim`; other sizes return
// Unimplemented (the CPU reference handles them). 64/128 (Llama, Mistral, Qwen), 96 (Phi-3),
// 256 (Gemma).
#define TWL_DISPATCH_HEAD_DIM(head_dim, ...)                                                  \
  [&]() -> absl::Status {                                                                     \
    switch (head_dim) {                                                                       \
      case 64: {                                                                              \
        constexpr int kHeadDim = 64;                                                          \
        return __VA_ARGS__();                                                                 \
      }                                                                                       \
      case 96: {                                                                              \
        constexpr int kHeadDim = 96;                                                          \
        return __VA_ARGS__();                                                                 \
      }                                                                                       \
      case 128: {                                                                             \
        constexpr int kHeadDim = 128;                                                         \
        return __VA_ARGS__();                                                                 \
      }                                                                                       \
      case 256: {                                                                             \
        constexpr int kHeadDim = 256;                                                         \
        return __VA_ARGS__();                                                                 \
      }                                                                                       \
      default:                                                                                \
        return ::twl::cuda::HeadDimError(head_dim);                                           \
    }                                                                                         \
  }()

inline absl::Status HeadDimError(int32_t head_dim) {
  return absl::UnimplementedError(absl::StrFormat(
      "GPU kernels support head_dim 64, 96, 128 and 256, got %d (use the CPU backend)",
      head_dim));
}

inline absl::Status CheckHeadDim(int32_t head_dim) {
  return GpuKernelsSupportHeadDim(head_dim) ? absl::OkStatus() : HeadDimError(head_dim);
}

// Lanes that share one head_dim row when a lane owns 8 channels: D / 8 rounded up to a power
// of two (shuffle reductions need one), so 96 uses 16 lanes of which 12 hold channels.
constexpr int RowLanes(int head_dim) {
  int l = 1;
  while (l < head_dim / 8) l <<= 1;
  return l;
}

// Query heads per KV head the pruner kernels (pipeline/prune/twilight/cuda) take: they size
// per-head shared arrays and warps by it. kGpuPruneMaxGroup (16, = kGpuMaxGroup); a wider
// group is refused with Unimplemented (CheckGroup's default bound).
constexpr int kMaxGroup = kGpuPruneMaxGroup;
static_assert(kMaxGroup <= kGpuMaxGroup, "the pruner cannot take more than the backends allow");

inline absl::Status CheckGroup(int32_t group, int32_t max_group = kMaxGroup) {
  if (group < 1 || group > max_group) {
    if (max_group < kGpuMaxGroup) {  // the pruner's bound (CheckGroup's default)
      return absl::UnimplementedError(absl::StrFormat(
          "the GPU pruner kernels support 1..%d query heads per KV head (the other stages %d), "
          "got %d: decode such layers densely or use the CPU backend",
          max_group, kGpuMaxGroup, group));
    }
    return absl::UnimplementedError(
        absl::StrFormat("GPU kernels support 1..%d query heads per KV head, got %d", max_group,
                        group));
  }
  return absl::OkStatus();
}

inline size_t AlignUp(size_t x, size_t a = 256) { return (x + a - 1) / a * a; }

// Carves aligned sub-buffers out of a caller workspace (same walk for size and pointers).
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* Take(size_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += AlignUp(count * sizeof(T));
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

constexpr float kLog2e = 1.4426950408889634f;
// 2^x by one MUFU op (ex2.approx: ~2 ulp; results below 2^-126 flush to 0). exp(x) as
// Exp2Approx(x * kLog2e) costs one multiply more, against expf's ~8 instructions of accurate
// range reduction; the argument's rounding adds a relative error ~|x| 2^-24.
__device__ __forceinline__ float Exp2Approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float H2F(fp16_t h) { return __half2float(__ushort_as_half(h)); }
// Two FP16 values packed in a 32-bit word (low half first) as __half2, and back: bit casts.
__device__ __forceinline__ __half2 U32Half2(uint32_t x) { return *reinterpret_cast<__half2*>(&x); }
__device__ __forceinline__ uint32_t Half2U32(__half2 x) {
  return *reinterpret_cast<uint32_t*>(&x);
}
__device__ __forceinline__ fp16_t F2H(float f) { return __half_as_ushort(__float2half_rn(f)); }
// A shared-memory pointer as its 32-bit shared-window address (what the .shared forms of
// cp.async, ldmatrix and red take). Formed once per loop where it can: from a generic pointer
// the conversion is redone at every use.
__device__ __forceinline__ uint32_t SharedAddress(const void* smem) {
  return unsigned(__cvta_generic_to_shared(smem));
}
// L2 prefetch of the line holding p (a hint: no register waits for it).
__device__ __forceinline__ void PrefetchL2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ float B2F(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
__device__ __forceinline__ uint16_t F2B(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
// A stored K/V element (PageGeometry::kv_dtype: FP16 or BF16) as float, and a float rounded
// to the stored type (nearest even, as PageGeometry::FloatToKv).
__device__ __forceinline__ float KvF(uint16_t x, bool bf16) { return bf16 ? B2F(x) : H2F(x); }
__device__ __forceinline__ uint16_t FKv(float f, bool bf16) { return bf16 ? F2B(f) : F2H(f); }

template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float WarpMin(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide exclusive prefix sum of one int per thread; *total gets the block sum.
// `scratch` holds 33 ints; every thread of the block must call it.
__device__ __forceinline__ int BlockExclusiveSum(int v, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < nwarps ? scratch[lane] : 0;
    int wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += y;
    }
    if (lane < nwarps) scratch[lane] = wi - w;  // exclusive warp offsets
    if (lane == 31) scratch[32] = wi;           // block total (nwarps <= 32)
  }
  __syncthreads();
  *total = scratch[32];
  return scratch[warp] + incl - v;
}

// One m16n8k16 tensor-core MMA, FP16 inputs, FP32 accumulate in place (d += a * b).
__device__ __forceinline__ void Mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One m16n8k8 tensor-core MMA, FP16 inputs, FP32 accumulate in place (d += a * b).
__device__ __forceinline__ void Mma1688(float* d, uint32_t a0, uint32_t a1, uint32_t b0) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(b0));
}

// Four 8x8 FP16 matrices from shared memory (lanes 8i..8i+7 give the 16-byte rows of matrix
// i); kTrans delivers each transposed. The "memory" clobber keeps the loads after the
// barrier that publishes the rows.
template <bool kTrans>
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* row) {
  const unsigned a = SharedAddress(row);
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  }
}

}  // namespace twl::cuda
