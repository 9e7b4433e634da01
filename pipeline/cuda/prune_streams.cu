#include "pipeline/cuda/prune_streams.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "gpu/cuda/cuda_status.cuh"

namespace twl::pipeline_cuda {

PruneStreamSet::~PruneStreamSet() {
  for (void* e : streams_.events) {
    if (e) (void)cudaEventDestroy(static_cast<cudaEvent_t>(e));
  }
  if (streams_.aux) (void)cudaStreamDestroy(static_cast<cudaStream_t>(streams_.aux));
}

absl::Status PruneStreamSet::Ensure() {
  if (streams_.aux) return absl::OkStatus();
  PruneStreams made;
  int least = 0, greatest = 0;
  TWL_CUDA(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  const char* env = std::getenv("TWL_PRUNE_AUX_PRIORITY");
  const int priority = env && std::strcmp(env, "0") == 0 ? least : greatest;
  cudaStream_t aux = nullptr;
  auto make = [&]() -> absl::Status {
    for (void*& e : made.events) {
      cudaEvent_t ev = nullptr;
      TWL_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
      e = ev;
    }
    TWL_CUDA(cudaStreamCreateWithPriority(&aux, cudaStreamNonBlocking, priority));
    return absl::OkStatus();
  };
  if (absl::Status status = make(); !status.ok()) {
    for (void* e : made.events) {
      if (e) (void)cudaEventDestroy(static_cast<cudaEvent_t>(e));
    }
    return status;
  }
  made.aux = aux;
  streams_ = made;
  return absl::OkStatus();
}

}  // namespace twl::pipeline_cuda
