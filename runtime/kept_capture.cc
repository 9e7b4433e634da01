#include "runtime/kept_capture.h"

#include <algorithm>

namespace twl {

void StoreKeptLists(const int32_t* tokens, const int32_t* count, int64_t units, int32_t max_kept,
                    StepTelemetry* t) {
  t->kept_list_offsets.assign(size_t(units) + 1, 0);
  t->kept_list_tokens.clear();
  for (int64_t u = 0; u < units; ++u) {
    const int32_t n = std::clamp(count[u], 0, max_kept);
    const int32_t* row = tokens + u * max_kept;
    t->kept_list_tokens.insert(t->kept_list_tokens.end(), row, row + n);
    t->kept_list_offsets[size_t(u) + 1] = int64_t(t->kept_list_tokens.size());
  }
}

void StoreDenseKeptLists(const int32_t* seq_len, int32_t num_seqs, int32_t num_kv_heads,
                         StepTelemetry* t) {
  const int64_t units = int64_t(num_seqs) * num_kv_heads;
  t->kept_list_offsets.assign(size_t(units) + 1, 0);
  t->kept_list_tokens.clear();
  for (int64_t u = 0; u < units; ++u) {
    const int32_t len = seq_len[u / num_kv_heads];
    for (int32_t i = 0; i < len; ++i) t->kept_list_tokens.push_back(i);
    t->kept_list_offsets[size_t(u) + 1] = int64_t(t->kept_list_tokens.size());
  }
}

#if !TWL_HAVE_CUDA
absl::Status CaptureDeviceKeptLists(const int32_t*, const int32_t*, int64_t, int32_t, void*,
                                    StepTelemetry*) {
  return absl::UnavailableError("built without CUDA");
}
#endif

}  // namespace twl
