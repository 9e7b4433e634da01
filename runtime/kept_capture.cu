#include <cuda_runtime.h>

#include <vector>

#include "absl/strings/str_format.h"
#include "runtime/kept_capture.h"

namespace twl {

absl::Status CaptureDeviceKeptLists(const int32_t* d_tokens, const int32_t* d_count,
                                    int64_t units, int32_t max_kept, void* stream,
                                    StepTelemetry* t) {
  std::vector<int32_t> count(static_cast<size_t>(units));
  std::vector<int32_t> tokens(static_cast<size_t>(units * max_kept));
  auto s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemcpyAsync(count.data(), d_count, count.size() * 4,
                                  cudaMemcpyDeviceToHost, s);
  if (e == cudaSuccess) {
    e = cudaMemcpyAsync(tokens.data(), d_tokens, tokens.size() * 4, cudaMemcpyDeviceToHost, s);
  }
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) {
    return absl::InternalError(
        absl::StrFormat("capture kept lists: %s", cudaGetErrorString(e)));
  }
  StoreKeptLists(tokens.data(), count.data(), units, max_kept, t);
  return absl::OkStatus();
}

}  // namespace twl
