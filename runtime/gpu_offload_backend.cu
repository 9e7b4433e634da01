// The GPU offload backend (see runtime/gpu_offload_backend.h for the design): the offload
// store (pinned host pool, estimation store, appends) over three streams: compute (the
// caller's or our own), fetch, append. The step itself runs in pipeline/cuda/CudaExecutor
// with the GPU hot cache as its fetch stage. This file: page releases, memory figures and
// the factories; the class and its other members: runtime/gpu_offload_backend_impl.cuh.
#include "runtime/gpu_offload_backend_impl.cuh"

namespace twl {
namespace offload_store {

absl::Status GpuOffloadBackend::ApplyPendingReleases() {
  if (pending_release_.empty()) return absl::OkStatus();
  if (!disk_release_.empty()) {
    // The slots of freed pages are reused at once: nothing may read them any more.
    TWL_RETURN_IF_ERROR(QuiesceDevice());
    std::vector<int32_t> blocks;
    BlocksOfPages(disk_release_, &blocks);
    for (const int32_t block : blocks) disk_->Release(block);
    disk_release_.clear();
  }
  const int32_t n = int32_t(pending_release_.size());
  // The staging may still be read by the previous release's upload (only that is waited
  // for, not the whole fetch stream).
  TWL_CUDA(cudaEventSynchronize(ev_release_staged_));
  TWL_RETURN_IF_ERROR(h_release_.Reserve(size_t(n) * 4));
  TWL_RETURN_IF_ERROR(Grow(d_release_, size_t(n) * 4));
  std::memcpy(h_release_.as<int32_t>(), pending_release_.data(), size_t(n) * 4);
  pending_release_.clear();
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_step_done_, 0));
  // ev_append_done_ is recorded again below: it must still cover the appends (and bound
  // table writes) it stood for, which may have run on the callers' streams.
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_append_done_, 0));
  TWL_CUDA(cudaMemcpyAsync(d_release_.get(), h_release_.as<int32_t>(), size_t(n) * 4,
                               cudaMemcpyHostToDevice, fetch_stream_));
  TWL_CUDA(cudaEventRecord(ev_release_staged_, fetch_stream_));
  TWL_RETURN_IF_ERROR(fetch_stage_->InvalidatePages(d_release_.as<int32_t>(), n, fetch_stream_));
  TWL_CUDA(cudaEventRecord(ev_append_done_, fetch_stream_));
  return absl::OkStatus();
}

MemoryUsage GpuOffloadBackend::Memory() const {
  MemoryUsage m;
  m.host_pool_bytes_total = pool_ ? pool_->bytes() : 0;
  if (disk_) {
    // The pinned slots in use hold pages; the rest of the KV cache is on disk.
    m.host_pool_bytes_total = disk_->host_bytes();
    m.host_pool_bytes_used = disk_->host_bytes_used();
    m.disk_bytes = disk_->disk_bytes_used();
  }
  m.gpu_quant_bytes = quant_bytes_;
  m.gpu_cache_bytes = fetch_stage_->device_bytes();  // slots + maps and stamps
  return m;
}

}  // namespace offload_store

absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendEx(
    const RuntimeConfig& config, int64_t num_pages) {
  if (!gpu::GpuAvailable()) return absl::UnavailableError("GPU offload backend: no GPU found");
  if (num_pages < 1) return absl::InvalidArgumentError("GPU offload backend: no pages");
  // Refused here rather than at the first decode, after the caller has appended a prompt.
  if (absl::Status s = CheckGpuKernelShape(config, "GPU offload backend"); !s.ok()) return s;
  auto b = std::make_unique<offload_store::GpuOffloadBackend>(config, num_pages);
  if (absl::Status s = b->Init(); !s.ok()) return s;
  return std::unique_ptr<OffloadBackend>(std::move(b));
}

absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendWithDiskEx(
    const RuntimeConfig& config, int64_t num_pages, int64_t host_slots,
    std::unique_ptr<DiskTier> tier) {
  if (!gpu::GpuAvailable()) return absl::UnavailableError("GPU offload backend: no GPU found");
  if (num_pages < 1) return absl::InvalidArgumentError("GPU offload backend: no pages");
  if (tier == nullptr) return absl::InvalidArgumentError("GPU offload backend: no disk tier");
  auto b = std::make_unique<offload_store::GpuOffloadBackend>(config, num_pages, host_slots,
                                                              std::move(tier));
  if (absl::Status s = b->Init(); !s.ok()) return s;
  return std::unique_ptr<OffloadBackend>(std::move(b));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackendWithDisk(
    const RuntimeConfig& config, int64_t num_pages, int64_t host_slots,
    std::unique_ptr<DiskTier> tier) {
  absl::StatusOr<std::unique_ptr<OffloadBackend>> b =
      CreateGpuOffloadBackendWithDiskEx(config, num_pages, host_slots, std::move(tier));
  if (!b.ok()) return b.status();
  return std::unique_ptr<Backend>(std::move(*b));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackend(const RuntimeConfig& config,
                                                                 int64_t num_pages) {
  absl::StatusOr<std::unique_ptr<OffloadBackend>> b = CreateGpuOffloadBackendEx(config, num_pages);
  if (!b.ok()) return b.status();
  return std::unique_ptr<Backend>(std::move(*b));
}

}  // namespace twl
