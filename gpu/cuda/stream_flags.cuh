// Stream flags: a 32-bit word in device memory that a stream waits on (a stream memory
// operation: the GPU's front end polls the word, no kernel and no SM is held) and that a
// kernel on another stream sets. A cross-stream dependency decided on the device: the waiter
// goes on as soon as the producer sets the word, whichever of the producer's kernels does so.
// Used by the row cache's plan (pipeline/fetch/row_cache/): an all-hit group's attention
// starts after the plan's first kernel instead of after its last.
// The driver calls (cuStreamWaitValue32 / cuStreamWriteValue32) come through the runtime's
// driver entry points, so nothing links libcuda directly. Available() is false where they are
// missing or cannot be captured in a CUDA graph (probed once per process), and then callers
// fall back to events.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace twl::stream_flags {

// True when both calls exist, run eagerly and can be captured (probed once, thread-safe).
bool Available();
// Enqueues *flag = value on `stream` (after the stream's earlier work).
absl::Status Write(cudaStream_t stream, uint32_t* flag, uint32_t value);
// Enqueues a wait on `stream` until *flag == value (later work of the stream waits).
absl::Status WaitEqual(cudaStream_t stream, uint32_t* flag, uint32_t value);

}  // namespace twl::stream_flags
