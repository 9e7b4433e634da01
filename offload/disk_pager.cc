// Page eviction to and loading from the disk tier (see disk_pager.h).
#include "offload/disk_pager.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"

namespace twl {

DiskPager::DiskPager(DiskTier* tier, SpillPolicy* policy, SlotAddress slot_address)
    : tier_(tier), policy_(policy), slot_address_(std::move(slot_address)) {}

absl::Status DiskPager::Evict(int32_t n, int64_t step, absl::Span<const int32_t> pinned,
                              std::vector<int32_t>* freed_slots) {
  if (freed_slots == nullptr) return absl::InvalidArgumentError("pager: freed_slots is null");
  if (n <= 0) return absl::OkStatus();
  const std::vector<int32_t> victims = policy_->PickVictims(n, step, pinned);
  absl::Status first;

  // Pages with a clean disk copy just give up their slot.
  std::vector<int32_t> dirty;
  for (const int32_t page : victims) {
    const PageLocation loc = policy_->GetLocation(page);
    if (loc.on_disk()) {
      freed_slots->push_back(loc.host_slot);
      (void)policy_->SetLocation(page, {-1, loc.disk_record});  // valid by construction
      ++stats_.pages_clean;
    } else {
      dirty.push_back(page);
    }
  }

  // The tier allocates all or nothing: write the coldest that fit, report the rest.
  const int64_t fit = std::min<int64_t>(static_cast<int64_t>(dirty.size()), tier_->num_free());
  if (fit < static_cast<int64_t>(dirty.size())) {
    first = absl::ResourceExhaustedError(absl::StrFormat(
        "disk tier full: %d of %d pages to spill fit (%d records of %d in use)", fit,
        dirty.size(), tier_->num_used(), tier_->capacity()));
    dirty.resize(static_cast<size_t>(fit));
  }
  if (!dirty.empty()) {
    std::vector<const void*> src;
    src.reserve(dirty.size());
    for (const int32_t page : dirty) {
      src.push_back(slot_address_(policy_->GetLocation(page).host_slot));
    }
    std::vector<int64_t> records;
    std::vector<absl::Status> per_op;
    const absl::Status s = tier_->Write(src, &records, &per_op);
    if (per_op.size() != dirty.size()) {  // refused as a whole (e.g. raced for records)
      ++stats_.write_failures;
      return first.ok() ? s : first;
    }
    for (size_t i = 0; i < dirty.size(); ++i) {
      if (!per_op[i].ok()) {
        ++stats_.write_failures;  // the page stays on the host; the tier freed the record
        if (first.ok()) first = per_op[i];
        continue;
      }
      const PageLocation loc = policy_->GetLocation(dirty[i]);
      freed_slots->push_back(loc.host_slot);
      (void)policy_->SetLocation(dirty[i], {-1, records[i]});
      ++stats_.pages_written;
    }
  }
  if (first.ok() && static_cast<int32_t>(victims.size()) < n) {
    first = absl::ResourceExhaustedError(absl::StrFormat(
        "host pool full: only %d of %d pages can be spilled (the rest are in use at step %d "
        "or pinned)",
        victims.size(), n, step));
  }
  return first;
}

absl::Status DiskPager::Load(absl::Span<const int32_t> pages, absl::Span<const int32_t> slots,
                             std::vector<int32_t>* unused_slots) {
  if (pages.size() != slots.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pager: %d pages but %d slots to load them into", pages.size(), slots.size()));
  }
  absl::flat_hash_set<int32_t> seen;
  std::vector<DiskReadOp> reads;
  reads.reserve(pages.size());
  for (size_t i = 0; i < pages.size(); ++i) {
    const PageLocation loc = policy_->GetLocation(pages[i]);
    if (loc.on_host() || !loc.on_disk() || slots[i] < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "pager: cannot load page %d into slot %d: not a disk-only page (slot %d, record %d)",
          pages[i], slots[i], loc.host_slot, loc.disk_record));
    }
    if (!seen.insert(pages[i]).second) {
      return absl::InvalidArgumentError(absl::StrFormat("pager: page %d listed twice", pages[i]));
    }
    reads.push_back({loc.disk_record, slot_address_(slots[i])});
  }
  std::vector<absl::Status> per_op;
  const absl::Status s = tier_->Read(reads, &per_op);
  if (per_op.size() != pages.size()) {  // refused as a whole
    if (unused_slots) unused_slots->insert(unused_slots->end(), slots.begin(), slots.end());
    stats_.read_failures += static_cast<int64_t>(pages.size());
    return s;
  }
  for (size_t i = 0; i < pages.size(); ++i) {
    if (!per_op[i].ok()) {
      ++stats_.read_failures;
      if (unused_slots) unused_slots->push_back(slots[i]);
      continue;
    }
    (void)policy_->SetLocation(pages[i], {slots[i], reads[i].record});
    ++stats_.pages_loaded;
  }
  return s;
}

absl::Status DiskPager::MarkDirty(int32_t page) {
  const PageLocation loc = policy_->GetLocation(page);
  if (!loc.on_disk()) return absl::OkStatus();
  if (!loc.on_host()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("pager: page %d is on disk only; load it before changing it", page));
  }
  absl::Status s = tier_->Free({loc.disk_record});
  if (!s.ok()) return s;
  return policy_->SetLocation(page, {loc.host_slot, -1});
}

absl::StatusOr<int32_t> DiskPager::Release(int32_t page) {
  if (page < 0 || page >= policy_->num_pages()) {
    return absl::InvalidArgumentError(absl::StrFormat("pager: page %d out of range", page));
  }
  const PageLocation loc = policy_->GetLocation(page);
  if (loc.on_disk()) {
    absl::Status s = tier_->Free({loc.disk_record});
    if (!s.ok()) return s;
  }
  policy_->Forget(page);
  return loc.host_slot;
}

}  // namespace twl
