// Evaluation aid behind Runtime::SetCaptureKept: copies the kept token lists of a step into
// StepTelemetry (CSR per (sequence, KV head)), so that a benchmark can measure the TRUE
// softmax mass and error of what was attended, from the FP16 K/V, through the public API.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/runtime.h"

namespace twl {

// Host kept lists: tokens [units][max_kept], count [units].
void StoreKeptLists(const int32_t* tokens, const int32_t* count, int64_t units, int32_t max_kept,
                    StepTelemetry* t);

// Dense steps attend every token: unit u keeps 0 .. seq_len[u / num_kv_heads] - 1.
void StoreDenseKeptLists(const int32_t* seq_len, int32_t num_seqs, int32_t num_kv_heads,
                         StepTelemetry* t);

// GPU backends: the same from device arrays, after the work queued on `stream` (waits for it).
absl::Status CaptureDeviceKeptLists(const int32_t* d_tokens, const int32_t* d_count,
                                    int64_t units, int32_t max_kept, void* stream,
                                    StepTelemetry* t);

}  // namespace twl
