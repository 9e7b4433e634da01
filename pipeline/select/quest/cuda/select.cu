// Launchers of the Quest selector kernels (see select.cuh and gpu/kernels.h).
// Instantiations: PageBoundKernel<D, T> for D in {64, 96, 128, 256} x T head tiles in {1, 2}. Launches per call: fixed Quest
// 2 (bounds, top-B0), growing Quest 1 (bounds write the whole output), FULL 1 (page list).
#include <algorithm>
#include <atomic>

#include "pipeline/select/quest/cuda/select.cuh"
#include "core/validate.h"
#include "gpu/device.h"
#include "pipeline/select/quest/cuda/select_launch.h"

namespace twl {

using cuda::AsStream;
using cuda::LaunchStatus;

size_t SelectWorkspaceBytes(const PageGeometry& g, const SelectorParams& params,
                            int32_t num_seqs, int32_t max_pages) {
  if (params.kind == SelectorKind::kFull || params.grow) return 0;  // growing: bounds in out
  return cuda::AlignUp(size_t(num_seqs) * size_t(g.num_kv_heads) * size_t(max_pages) *
                       sizeof(float));
}

namespace {

// Pages per warp of the bound kernel: runs of 16 * 2^k pages, the longest (up to
// kBoundMaxTilesPerWarp tiles: fewer q loads and page-table warm-ups per byte) that still
// gives the GPU about 2 full waves of warps (16 resident per SM at ~128 registers; small
// batches split finer to fill the GPU).
int32_t BoundPagesPerWarp(int64_t pairs, int32_t max_pages) {
  const int64_t want_warps = int64_t(std::max(gpu::SmCount(), 1)) * 16 * 2;
  int32_t tiles = cuda::kBoundMaxTilesPerWarp;
  while (tiles > 1) {
    const int64_t runs = (int64_t(max_pages) + 16 * tiles - 1) / (16 * tiles);
    if (pairs * runs >= want_warps) break;
    tiles /= 2;
  }
  return 16 * tiles;
}

// Keys TopPagesKernel may stage in dynamic shared memory on the current device: up to
// 32k pages (128 KiB, a 512k-token sequence at page 16), within the opt-in limit less the
// kernel's static shared memory. The attribute is set once per device (host-side, no stream
// work), never while `st` is being captured into a graph (then the 48 KiB every launch may
// use without opting in, not cached: sequences beyond ~11k pages read global memory).
int32_t TopKeysCapacity(cudaStream_t st) {
  constexpr int kMaxDevices = 64;
  constexpr int32_t kDefaultKeys = (48 * 1024 - 2048) / 4;
  static std::atomic<int32_t> cached[kMaxDevices] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 0;
  const int32_t have = cached[dev].load(std::memory_order_acquire);
  if (have > 0) return have - 1;  // stored + 1 so that 0 means "not yet known"
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(st, &capture) != cudaSuccess ||
      capture != cudaStreamCaptureStatusNone) {
    return kDefaultKeys;
  }
  int optin = 0;
  cudaFuncAttributes attr{};
  int32_t keys = kDefaultKeys;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) ==
          cudaSuccess &&
      cudaFuncGetAttributes(&attr, cuda::TopPagesKernel) == cudaSuccess) {
    const size_t avail = size_t(optin) > attr.sharedSizeBytes + 1024
                             ? size_t(optin) - attr.sharedSizeBytes - 1024
                             : 0;
    const size_t bytes = std::min<size_t>(avail, size_t(128) << 10) / 4 * 4;
    if (bytes / 4 > size_t(kDefaultKeys)) {
      if (cudaFuncSetAttribute(cuda::TopPagesKernel,
                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(bytes)) == cudaSuccess) {
        keys = int32_t(bytes / 4);
      } else {
        cudaGetLastError();  // refused: keep the default (clears only this call's error)
      }
    }
  }
  cached[dev].store(keys + 1, std::memory_order_release);
  return keys;
}

absl::Status RunSelect(const PageGeometry& g, const SelectorParams& params,
                       const BatchView& batch, const QueryView& q, const QuantKView& qk,
                       const SelectionView& out, void* workspace, size_t workspace_bytes,
                       void* stream, cudaEvent_t* ev, float softmax_scale) {
  TWL_RETURN_IF_ERROR(ValidateGeometry(g));
  TWL_RETURN_IF_ERROR(ValidateBatch(g, batch, /*check_host_data=*/false));
  TWL_RETURN_IF_ERROR(cuda::CheckHeadDim(g.head_dim));
  TWL_RETURN_IF_ERROR(cuda::CheckGroup(batch.num_q_heads / g.num_kv_heads, kGpuMaxGroup));
  TWL_RETURN_IF_ERROR(ValidateSelect(params, batch, q, qk, out));
  const bool quest = params.kind == SelectorKind::kQuest;
  const bool grow = quest && params.grow;
  const float scale = softmax_scale > 0.0f ? softmax_scale : 1.0f / sqrtf(float(g.head_dim));
  const size_t need = SelectWorkspaceBytes(g, params, batch.num_seqs, batch.max_pages);
  if (workspace_bytes < need || (need && !workspace)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("select: workspace of %d bytes, needs %d", workspace_bytes, need));
  }
  const int64_t pairs = int64_t(batch.num_seqs) * g.num_kv_heads;
  if (pairs > INT32_MAX) return absl::InvalidArgumentError("select: batch too large");
  float* scores = static_cast<float*>(workspace);
  cudaStream_t st = AsStream(stream);
  if (ev && cudaEventRecord(ev[0], st) != cudaSuccess) return LaunchStatus("select event");
  if (quest) {
    TWL_RETURN_IF_ERROR(TWL_DISPATCH_HEAD_DIM(g.head_dim, [&] {
      // Groups of 9..16: two warps (head tiles of 8) per task.
      const int32_t tiles = batch.num_q_heads / g.num_kv_heads > 8 ? 2 : 1;
      const int32_t ppw = BoundPagesPerWarp(pairs * tiles, batch.max_pages);
      const int32_t runs = int32_t((int64_t(batch.max_pages) + ppw - 1) / ppw);
      const int64_t grid = (pairs * runs * tiles + cuda::kBoundWarps - 1) / cuda::kBoundWarps;
      if (grid > INT32_MAX) return absl::InvalidArgumentError("select: batch too large");
      if (tiles == 2) {
        cuda::PageBoundKernel<kHeadDim, 2><<<unsigned(grid), cuda::kBoundWarps * 32, 0, st>>>(
            g, params, batch, q, qk, scores, runs, ppw, out, scale);
      } else {
        cuda::PageBoundKernel<kHeadDim, 1><<<unsigned(grid), cuda::kBoundWarps * 32, 0, st>>>(
            g, params, batch, q, qk, scores, runs, ppw, out, scale);
      }
      return LaunchStatus("PageBoundKernel");
    }));
  }
  if (ev && cudaEventRecord(ev[1], st) != cudaSuccess) return LaunchStatus("select event");
  if (!grow) {  // growing Quest: the bound kernel wrote the whole output
    const int32_t keys = TopKeysCapacity(st);
    const int32_t staged = std::min(keys, batch.max_pages);
    cuda::TopPagesKernel<<<unsigned(pairs), cuda::kSelectThreads, size_t(staged) * 4, st>>>(
        g, params, batch, scores, out, staged);
    TWL_RETURN_IF_ERROR(LaunchStatus("TopPagesKernel"));
  }
  if (ev && cudaEventRecord(ev[2], st) != cudaSuccess) return LaunchStatus("select event");
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchSelectPages(const PageGeometry& g, const SelectorParams& params,
                               const BatchView& batch, const QueryView& q, const QuantKView& qk,
                               const SelectionView& out, void* workspace,
                               size_t workspace_bytes, void* stream, float softmax_scale) {
  return RunSelect(g, params, batch, q, qk, out, workspace, workspace_bytes, stream, nullptr,
                   softmax_scale);
}

absl::Status ProfileSelect(const PageGeometry& g, const SelectorParams& params,
                           const BatchView& batch, const QueryView& q, const QuantKView& qk,
                           const SelectionView& out, void* workspace, size_t workspace_bytes,
                           void* stream, SelectProfile* profile, float softmax_scale) {
  cudaEvent_t ev[3] = {};
  for (cudaEvent_t& e : ev) {
    if (cudaEventCreate(&e) != cudaSuccess) return LaunchStatus("select profile events");
  }
  absl::Status s =
      RunSelect(g, params, batch, q, qk, out, workspace, workspace_bytes, stream, ev, softmax_scale);
  if (s.ok() && cudaEventSynchronize(ev[2]) != cudaSuccess) s.Update(LaunchStatus("select profile"));
  if (s.ok() && profile) {
    cudaEventElapsedTime(&profile->ms_bounds, ev[0], ev[1]);
    cudaEventElapsedTime(&profile->ms_top, ev[1], ev[2]);
  }
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
  return s;
}

}  // namespace twl
