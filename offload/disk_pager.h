// Moves whole pages between host pool slots and the disk tier, as SpillPolicy decides: the
// two calls a runtime needs around a decode step when its KV is larger than the host pool.
//
//   before a step:  missing = policy.NeedsLoad(pages of the step)
//                   if free host slots < missing.size():
//                     pager.Evict(shortfall, step, /*pinned=*/pages of the step, &free_slots)
//                   pager.Load(missing, slots taken from free_slots, &unused)
//                   policy.Touch(pages of the step, step)
//   on append:      pager.MarkDirty(page) before writing into a page that has a disk copy
//   on free:        slot = pager.Release(page)   (frees its record; caller frees the slot)
//
// A host page keeps its disk record after a Load (a clean copy), so evicting it again
// costs no write until MarkDirty drops the copy. A host slot is `record_bytes` of host
// memory at slot_address(slot) (for the FP16 pool with per-page slots: all KV heads'
// blocks of one page, num_kv_heads * FpBlockBytes).
//
// Failures never lose data: a page whose write fails stays on the host (its slot is not
// freed); a page whose read fails stays on disk (its slot is handed back unused). Both
// calls report the first failure's status (DiskTier's codes) after finishing the rest.
// Thread-safety: none (as SpillPolicy); the caller serializes. I/O is waited for inside
// the calls (the tier runs the batch at its queue depth).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "offload/disk_tier.h"
#include "offload/spill_policy.h"

namespace twl {

struct DiskPagerStats {
  int64_t pages_written = 0;   // evictions that wrote the page
  int64_t pages_clean = 0;     // evictions that reused a clean disk copy
  int64_t pages_loaded = 0;
  int64_t write_failures = 0, read_failures = 0;
};

class DiskPager {
 public:
  using SlotAddress = std::function<void*(int32_t slot)>;

  // Borrows tier and policy (both outlive the pager).
  DiskPager(DiskTier* tier, SpillPolicy* policy, SlotAddress slot_address);

  // Frees up to n host slots by moving the coldest pages not used at `step` and not pinned
  // to disk; the freed slots are appended to *freed_slots (also on error). OK when n slots
  // were freed; ResourceExhausted "host pool full" when too few pages are eligible or
  // "disk tier full" when the tier has too few free records (the coldest are still
  // written); else the first failed write's status.
  absl::Status Evict(int32_t n, int64_t step, absl::Span<const int32_t> pinned,
                     std::vector<int32_t>* freed_slots);

  // Reads disk-only pages into host slots (pages[i] -> slots[i]); each loaded page's
  // location becomes {slot, record}. InvalidArgument (nothing done) for different lengths,
  // a page listed twice, or a page that is not disk-only. A failed read leaves its page on
  // disk and appends its slot to *unused_slots (nullable); returns the first failure.
  absl::Status Load(absl::Span<const int32_t> pages, absl::Span<const int32_t> slots,
                    std::vector<int32_t>* unused_slots);

  // The host copy of `page` is about to change: frees its clean disk copy, if any.
  // FailedPrecondition for a page that is on disk only (Load it first).
  absl::Status MarkDirty(int32_t page);

  // The page was freed: frees its disk record (if any), forgets its location and returns
  // its host slot (-1 if none) for the caller to free.
  absl::StatusOr<int32_t> Release(int32_t page);

  const DiskPagerStats& stats() const { return stats_; }

 private:
  DiskTier* tier_;
  SpillPolicy* policy_;
  SlotAddress slot_address_;
  DiskPagerStats stats_;
};

}  // namespace twl
