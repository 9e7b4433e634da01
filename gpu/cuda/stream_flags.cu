// Stream flags through the driver's stream memory operations (see stream_flags.cuh).
#include "gpu/cuda/stream_flags.cuh"

#include <cuda.h>

#include <mutex>

#include "absl/strings/str_format.h"

namespace twl::stream_flags {
namespace {

using WaitFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
using WriteFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

struct Calls {
  WaitFn wait = nullptr;
  WriteFn write = nullptr;
  bool usable = false;
};

void* Entry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  // The 12.0 ABI of the calls (their _v2 variants).
  if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found) !=
          cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return fn;
}

// Both calls run eagerly and inside a stream capture (a graph that holds them instantiates).
bool Probe(const Calls& c) {
  if (!c.wait || !c.write) return false;
  cudaStream_t s = nullptr;
  uint32_t* flag = nullptr;
  bool ok = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess &&
            cudaMalloc(reinterpret_cast<void**>(&flag), 4) == cudaSuccess;
  const CUdeviceptr at = reinterpret_cast<CUdeviceptr>(flag);
  ok = ok && c.write(s, at, 1, CU_STREAM_WRITE_VALUE_DEFAULT) == CUDA_SUCCESS &&
       c.wait(s, at, 1, CU_STREAM_WAIT_VALUE_EQ) == CUDA_SUCCESS &&
       cudaStreamSynchronize(s) == cudaSuccess;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (ok && cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    const bool calls = c.write(s, at, 2, CU_STREAM_WRITE_VALUE_DEFAULT) == CUDA_SUCCESS &&
                       c.wait(s, at, 2, CU_STREAM_WAIT_VALUE_EQ) == CUDA_SUCCESS;
    const bool ended = cudaStreamEndCapture(s, &graph) == cudaSuccess && graph != nullptr;
    ok = calls && ended && cudaGraphInstantiate(&exec, graph, 0ULL) == cudaSuccess &&
         cudaGraphLaunch(exec, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess;
  } else {
    ok = false;
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  if (flag) cudaFree(flag);
  if (s) cudaStreamDestroy(s);
  cudaGetLastError();  // a failed probe leaves no sticky error behind
  return ok;
}

const Calls& Get() {
  static Calls calls;
  static std::once_flag once;
  std::call_once(once, [] {
    calls.wait = reinterpret_cast<WaitFn>(Entry("cuStreamWaitValue32"));
    calls.write = reinterpret_cast<WriteFn>(Entry("cuStreamWriteValue32"));
    calls.usable = Probe(calls);
  });
  return calls;
}

absl::Status Check(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s: CUDA driver error %d", what, int(r)));
}

}  // namespace

bool Available() { return Get().usable; }

absl::Status Write(cudaStream_t stream, uint32_t* flag, uint32_t value) {
  const Calls& c = Get();
  if (!c.usable) return absl::FailedPreconditionError("stream flags are not available");
  return Check(c.write(stream, reinterpret_cast<CUdeviceptr>(flag), value,
                       CU_STREAM_WRITE_VALUE_DEFAULT),
               "cuStreamWriteValue32");
}

absl::Status WaitEqual(cudaStream_t stream, uint32_t* flag, uint32_t value) {
  const Calls& c = Get();
  if (!c.usable) return absl::FailedPreconditionError("stream flags are not available");
  return Check(c.wait(stream, reinterpret_cast<CUdeviceptr>(flag), value,
                      CU_STREAM_WAIT_VALUE_EQ),
               "cuStreamWaitValue32");
}

}  // namespace twl::stream_flags
