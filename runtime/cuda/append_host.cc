// Host parts of runtime/cuda/append_launch.h: the append plans, and Unavailable stand-ins
// for the launchers when the library is built without CUDA (append.cu replaces them).
#include "runtime/cuda/append_launch.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"

namespace twl {

void PlanAppendPages(const int32_t* h_page_id, const int32_t* h_slot, int32_t n,
                     std::vector<int32_t>* pages, std::vector<int32_t>* rows) {
  pages->clear();
  rows->clear();
  absl::flat_hash_map<int32_t, size_t> at;
  for (int32_t i = 0; i < n; ++i) {
    auto [it, fresh] = at.try_emplace(h_page_id[i], pages->size());
    if (fresh) {
      pages->push_back(h_page_id[i]);
      rows->push_back(0);
    }
    (*rows)[it->second] = std::max((*rows)[it->second], h_slot[i] + 1);
  }
}

bool PlanAppendSegments(const int32_t* h_page_id, const int32_t* h_slot, int32_t n,
                        std::vector<AppendSegment>* segments) {
  segments->clear();
  absl::flat_hash_set<int32_t> seen;
  for (int32_t i = 0; i < n; ++i) {
    if (!segments->empty()) {
      AppendSegment& last = segments->back();
      if (h_page_id[i] == last.page && h_slot[i] == last.row_end) {
        ++last.row_end;
        continue;
      }
    }
    if (!seen.insert(h_page_id[i]).second) return false;
    AppendSegment s;
    s.page = h_page_id[i];
    s.row_begin = h_slot[i];
    s.row_end = h_slot[i] + 1;
    s.src_token = i;
    segments->push_back(s);
  }
  return true;
}

#if !TWL_HAVE_CUDA
absl::Status LaunchAppend(const PageGeometry&, const AppendView&, KvInputType,
                          const AppendPagePlan&, const FpKvView&, const QuantKView&, void*) {
  return NoCudaKernels();
}
absl::Status LaunchAppendSegments(const PageGeometry&, const AppendSegment*, int32_t,
                                  const void*, const void*, KvInputType, const FpKvView&,
                                  fp16_t*, const QuantKView&, void*) {
  return NoCudaKernels();
}
absl::Status LaunchAppendSegmentsInline(const PageGeometry&, const AppendSegment*, int32_t,
                                        const void*, const void*, KvInputType, const FpKvView&,
                                        fp16_t*, const QuantKView&, const DeviceRowCache*,
                                        void*) {
  return NoCudaKernels();
}
absl::Status LaunchRecomputeMinMax(const PageGeometry&, const AppendPagePlan&, const FpKvView&,
                                   const QuantKView&, void*) {
  return NoCudaKernels();
}
#endif  // !TWL_HAVE_CUDA

}  // namespace twl
