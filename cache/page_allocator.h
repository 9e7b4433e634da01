// Page ids of one page pool: ids in [0, capacity), a free list, and a reference count per
// page so that forked sequences can share pages (copy-on-write, see sequence_table.h).
//
// Contract:
//   Allocate(n) is all-or-nothing: either n pages with refcount 1, or ResourceExhausted and
//   no state change. Freed ids are reused last-in first-out (recently freed pages are the
//   ones most likely still in a CPU or GPU cache).
//   AddRef/Release on a page that is not allocated return FailedPrecondition and change
//   nothing; an id out of range is InvalidArgument.
// Thread-safety: every method is thread-safe (one internal mutex); batch calls are atomic.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace twl {

class PageAllocator {
 public:
  explicit PageAllocator(int32_t capacity);
  PageAllocator(const PageAllocator&) = delete;
  PageAllocator& operator=(const PageAllocator&) = delete;

  int32_t capacity() const { return capacity_; }
  int32_t num_free() const;
  int32_t num_used() const { return capacity_ - num_free(); }

  // n >= 0 pages, each with refcount 1, appended to *pages (which is otherwise untouched).
  absl::Status Allocate(int32_t n, std::vector<int32_t>* pages);
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t n);

  // refcount += 1 for every page (a page listed twice gets +2). All or nothing.
  absl::Status AddRef(absl::Span<const int32_t> pages);
  // refcount -= 1 for every page; pages that reach 0 go back to the free list and are
  // appended to *freed (nullable). All or nothing.
  absl::Status Release(absl::Span<const int32_t> pages, std::vector<int32_t>* freed);

  // 0 for a free page, -1 for an id out of range.
  int32_t RefCount(int32_t page) const;

 private:
  // Requires mu_ held.
  absl::Status CheckHeldLocked(absl::Span<const int32_t> pages) const;

  const int32_t capacity_;
  mutable std::mutex mu_;
  // Guarded by mu_:
  std::vector<int32_t> free_;      // stack: back() is allocated next
  std::vector<int32_t> refcount_;  // [capacity]
};

}  // namespace twl
