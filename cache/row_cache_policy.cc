// Host implementation of the GPU row cache policy (see row_cache_policy.h): the specification
// the device kernels in pipeline/fetch/row_cache/cuda/row_plan.cu follow, and its CPU tests'
// subject.
#include "cache/row_cache_policy.h"

#include "absl/strings/str_format.h"

namespace twl {

RowCounters& RowCounters::operator+=(const RowCounters& o) {
  needed += o.needed;
  hits += o.hits;
  fetched += o.fetched;
  direct += o.direct;
  evictions += o.evictions;
  return *this;
}

absl::StatusOr<RowCachePolicy> RowCachePolicy::Create(int64_t num_rows, int32_t num_slots,
                                                      uint32_t window, int32_t list_capacity) {
  if (num_rows < 0) return absl::InvalidArgumentError("RowCachePolicy: num_rows < 0");
  if (num_slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("RowCachePolicy: num_slots %d < 1", num_slots));
  }
  if (list_capacity < 0 || list_capacity > num_slots) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RowCachePolicy: list_capacity %d outside [0, %d]", list_capacity, num_slots));
  }
  RowCachePolicy c;
  c.slot_of_row_.assign(size_t(num_rows), kRowAbsent);
  c.row_of_slot_.assign(size_t(num_slots), -1);
  c.last_use_.assign(size_t(num_slots), 0);
  c.free_.resize(size_t(num_slots));
  for (int32_t i = 0; i < num_slots; ++i) c.free_[size_t(i)] = num_slots - 1 - i;  // 0 on top
  c.window_ = window;
  c.list_capacity_ = list_capacity ? list_capacity : num_slots;
  return c;
}

absl::StatusOr<RowGroupPlan> RowCachePolicy::PlanGroup(
    absl::Span<const std::vector<int64_t>> units, bool starts_step) {
  const int64_t nr = num_rows();
  for (size_t u = 0; u < units.size(); ++u) {
    for (const int64_t r : units[u]) {
      if (r < 0 || r >= nr) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "RowCachePolicy::PlanGroup: unit %d keeps row %d outside [0, %d)", u, r, nr));
      }
    }
  }
  if (starts_step || step_ == 0) ++step_;
  RowGroupPlan plan;
  plan.step = step_;
  plan.unit_hits.assign(units.size(), 0);
  RowCounters& cnt = plan.counters;

  // 1. Hits stamped, misses claimed and listed (up to the list's capacity).
  std::vector<int64_t> list;
  for (size_t u = 0; u < units.size(); ++u) {
    for (const int64_t r : units[u]) {
      ++cnt.needed;
      int32_t& s = slot_of_row_[size_t(r)];
      if (s >= 0) {
        last_use_[size_t(s)] = step_;
        ++cnt.hits;
        ++plan.unit_hits[u];
      } else if (s == kRowClaimed) {
        ++cnt.hits;  // another unit of the group claimed it: one copy serves both
        ++plan.unit_hits[u];
      } else if (int32_t(list.size()) < list_capacity_) {
        s = kRowClaimed;
        list.push_back(r);
      } else {
        ++cnt.direct;  // past the list: in place
      }
    }
  }

  // 2. Victims: free slots first, then occupied ones from the hand (one pass at most).
  const int32_t n = num_slots();
  std::vector<int32_t> victims;
  while (victims.size() < list.size() && !free_.empty()) {
    victims.push_back(free_.back());
    free_.pop_back();
  }
  int32_t last = -1;
  for (int32_t i = 0; i < n && victims.size() < list.size(); ++i) {
    const int32_t s = (hand_ + i) % n;
    if (row_of_slot_[size_t(s)] >= 0 &&
        RowSlotEvictable(row_of_slot_[size_t(s)], last_use_[size_t(s)], step_, window_)) {
      victims.push_back(s);
      last = s;
    }
  }
  if (last >= 0) hand_ = (last + 1) % n;

  // 3. Misses take their victims (copy, then publish); the rest are read in place.
  for (size_t i = 0; i < list.size(); ++i) {
    const int64_t r = list[i];
    if (i < victims.size()) {
      const int32_t s = victims[i];
      const int64_t old = row_of_slot_[size_t(s)];
      if (old >= 0) {
        slot_of_row_[size_t(old)] = kRowAbsent;
        ++cnt.evictions;
      }
      row_of_slot_[size_t(s)] = r;
      last_use_[size_t(s)] = step_;
      plan.fetch.push_back(RowFetch{r, s, 0});
      ++cnt.fetched;
    } else {
      ++cnt.direct;
    }
  }
  for (size_t i = 0; i < list.size(); ++i) {
    slot_of_row_[size_t(list[i])] = i < victims.size() ? victims[i] : kRowAbsent;
  }
  return plan;
}

void RowCachePolicy::InvalidateRow(int64_t row) {
  if (row < 0 || row >= num_rows()) return;
  const int32_t s = slot_of_row_[size_t(row)];
  slot_of_row_[size_t(row)] = kRowAbsent;
  if (s < 0) return;
  row_of_slot_[size_t(s)] = -1;
  last_use_[size_t(s)] = 0;
  free_.push_back(s);
}

void RowCachePolicy::InvalidateRows(int64_t first, int64_t count) {
  for (int64_t i = 0; i < count; ++i) InvalidateRow(first + i);
}

int32_t RowCachePolicy::ResidentRows() const {
  int32_t n = 0;
  for (const int64_t r : row_of_slot_) n += r >= 0;
  return n;
}

absl::Status RowCachePolicy::CheckConsistent() const {
  for (int32_t s = 0; s < num_slots(); ++s) {
    const int64_t r = row_of_slot_[size_t(s)];
    if (r >= 0 && (r >= num_rows() || slot_of_row_[size_t(r)] != s)) {
      return absl::InternalError(absl::StrFormat("slot %d holds row %d, mapped elsewhere", s, r));
    }
  }
  int32_t free_slots = 0;
  for (const int64_t r : row_of_slot_) free_slots += r < 0;
  if (free_slots != FreeSlots()) {
    return absl::InternalError(absl::StrFormat("%d free slots, %d on the free stack", free_slots,
                                               FreeSlots()));
  }
  for (const int32_t s : free_) {
    if (row_of_slot_[size_t(s)] >= 0) {
      return absl::InternalError(absl::StrFormat("slot %d on the free stack holds a row", s));
    }
  }
  for (int64_t r = 0; r < num_rows(); ++r) {
    const int32_t s = slot_of_row_[size_t(r)];
    if (s == kRowClaimed) return absl::InternalError(absl::StrFormat("row %d left claimed", r));
    if (s >= 0 && (s >= num_slots() || row_of_slot_[size_t(s)] != r)) {
      return absl::InternalError(absl::StrFormat("row %d maps to slot %d of another row", r, s));
    }
  }
  return absl::OkStatus();
}

}  // namespace twl
