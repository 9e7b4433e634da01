// Launcher of the SM-driven zero-copy gather (pipeline/fetch/cache/cuda/gather.cu): FP16 blocks read from
// mapped pinned host memory with 16-byte loads and written into GPU cache slots. No device
// code and no CUDA types here; `stream` is a cudaStream_t as void*.
#pragma once

#include "absl/status/status.h"
#include "offload/fetch_transport.h"

namespace twl {

// Copies entries [0, *list.d_count) of the device list. Enqueues only (never synchronizes);
// the grid is sized from list.max_entries and the SM count, and warps beyond the real count
// exit at once, so the host never needs the count. InvalidArgument for bad arguments.
absl::Status LaunchGather(const FetchSource& src, const FetchDest& dst,
                          const DeviceFetchList& list, void* stream);

}  // namespace twl
