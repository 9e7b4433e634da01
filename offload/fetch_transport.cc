// Host-only parts of the fetch transports: run coalescing (shared by the copy engine and the
// tests) and the factories' stand-ins when the library is built without CUDA.
#include "offload/fetch_transport.h"

namespace twl {

void CoalesceFetchRuns(const FetchEntry* entries, int32_t count, std::vector<FetchRun>* runs) {
  runs->clear();
  for (int32_t i = 0; i < count; ++i) {
    if (!runs->empty()) {
      FetchRun& r = runs->back();
      const FetchEntry& last = entries[r.first + r.length - 1];
      if (entries[i].block == last.block + 1 && entries[i].slot == last.slot + 1) {
        ++r.length;
        continue;
      }
    }
    runs->push_back(FetchRun{i, 1});
  }
}

#if !TWL_HAVE_CUDA
absl::StatusOr<std::unique_ptr<FetchTransport>> CreateGatherTransport(const FetchSource&,
                                                                      const FetchDest&) {
  return absl::UnavailableError("zero-copy gather: built without CUDA");
}
absl::StatusOr<std::unique_ptr<FetchTransport>> CreateCopyEngineTransport(const FetchSource&,
                                                                          const FetchDest&) {
  return absl::UnavailableError("copy-engine transport: built without CUDA");
}
#endif

}  // namespace twl
