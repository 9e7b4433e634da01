#include "pipeline/cuda/upload_ring.cuh"

#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/cuda/scratch.cuh"

namespace twl::pipeline_cuda {

UploadRing::~UploadRing() {
  for (cudaEvent_t e : released_) {
    if (e) cudaEventDestroy(e);
  }
}

absl::Status UploadRing::Init() {
  for (cudaEvent_t& e : released_) {
    TWL_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  return absl::OkStatus();
}

absl::StatusOr<UploadRing::Slot> UploadRing::Acquire(size_t bytes, size_t min_device_bytes) {
  const int32_t i = next_;
  next_ = (next_ + 1) % kSlots;
  TWL_CUDA(cudaEventSynchronize(released_[i]));  // that slot's last use is done
  TWL_RETURN_IF_ERROR(host_[i].Reserve(bytes));
  TWL_RETURN_IF_ERROR(GrowScratch(device_[i], bytes, min_device_bytes));
  return Slot{i, host_[i].data(), device_[i].as<char>()};
}

absl::Status UploadRing::Upload(const Slot& slot, size_t bytes, cudaStream_t stream) {
  TWL_CUDA(cudaMemcpyAsync(slot.device, slot.host, bytes, cudaMemcpyHostToDevice, stream));
  return absl::OkStatus();
}

absl::Status UploadRing::Release(const Slot& slot, cudaStream_t stream) {
  TWL_CUDA(cudaEventRecord(released_[slot.index], stream));
  return absl::OkStatus();
}

}  // namespace twl::pipeline_cuda
