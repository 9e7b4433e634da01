// Page id allocator with reference counts (see page_allocator.h).
#include "cache/page_allocator.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace twl {

PageAllocator::PageAllocator(int32_t capacity)
    : capacity_(std::max<int32_t>(capacity, 0)), refcount_(capacity_, 0) {
  free_.reserve(capacity_);
  // Pushed in reverse so that a fresh pool hands out 0, 1, 2, ... (contiguous, readable).
  for (int32_t p = capacity_ - 1; p >= 0; --p) free_.push_back(p);
}

int32_t PageAllocator::num_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int32_t>(free_.size());
}

absl::Status PageAllocator::Allocate(int32_t n, std::vector<int32_t>* pages) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrFormat("Allocate: n = %d < 0", n));
  if (pages == nullptr) return absl::InvalidArgumentError("Allocate: null output");
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<size_t>(n) > free_.size()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "host pool exhausted: need %d pages, %d free (capacity %d)", n, free_.size(),
        capacity_));
  }
  pages->reserve(pages->size() + n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    refcount_[p] = 1;
    pages->push_back(p);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> PageAllocator::Allocate(int32_t n) {
  std::vector<int32_t> pages;
  absl::Status s = Allocate(n, &pages);
  if (!s.ok()) return s;
  return pages;
}

absl::Status PageAllocator::CheckHeldLocked(absl::Span<const int32_t> pages) const {
  for (int32_t p : pages) {
    if (p < 0 || p >= capacity_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("page id %d out of range [0, %d)", p, capacity_));
    }
    if (refcount_[p] <= 0) {
      return absl::FailedPreconditionError(absl::StrFormat("page %d is not allocated", p));
    }
  }
  return absl::OkStatus();
}

absl::Status PageAllocator::AddRef(absl::Span<const int32_t> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status s = CheckHeldLocked(pages);
  if (!s.ok()) return s;
  for (int32_t p : pages) ++refcount_[p];
  return absl::OkStatus();
}

absl::Status PageAllocator::Release(absl::Span<const int32_t> pages,
                                    std::vector<int32_t>* freed) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status s = CheckHeldLocked(pages);
  if (!s.ok()) return s;
  // A page listed k times needs refcount >= k; check on a sorted copy so that a failing
  // call changes nothing.
  if (pages.size() > 1) {
    std::vector<int32_t> sorted(pages.begin(), pages.end());
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size();) {
      size_t j = i;
      while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
      if (static_cast<int64_t>(j - i) > refcount_[sorted[i]]) {
        return absl::FailedPreconditionError(
            absl::StrFormat("page %d released %d times but has %d references", sorted[i],
                            j - i, refcount_[sorted[i]]));
      }
      i = j;
    }
  }
  for (int32_t p : pages) {
    if (--refcount_[p] == 0) {
      free_.push_back(p);
      if (freed != nullptr) freed->push_back(p);
    }
  }
  return absl::OkStatus();
}

int32_t PageAllocator::RefCount(int32_t page) const {
  if (page < 0 || page >= capacity_) return -1;
  std::lock_guard<std::mutex> lock(mu_);
  return refcount_[page];
}

}  // namespace twl
