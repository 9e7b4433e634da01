// Page locations and the coldest-first spill choice (see spill_policy.h).
#include "offload/spill_policy.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace twl {

SpillPolicy::SpillPolicy(int32_t num_pages)
    : loc_(std::max(num_pages, 0)),
      last_(std::max(num_pages, 0), -1),
      prev_(std::max(num_pages, 0), kNone),
      next_(std::max(num_pages, 0), kNone) {}

void SpillPolicy::LinkTail(int32_t page) {
  prev_[page] = tail_;
  next_[page] = kNone;
  if (tail_ != kNone) {
    next_[tail_] = page;
  } else {
    head_ = page;
  }
  tail_ = page;
}

void SpillPolicy::Unlink(int32_t page) {
  const int32_t p = prev_[page], n = next_[page];
  if (p != kNone) {
    next_[p] = n;
  } else {
    head_ = n;
  }
  if (n != kNone) {
    prev_[n] = p;
  } else {
    tail_ = p;
  }
  prev_[page] = next_[page] = kNone;
}

absl::Status SpillPolicy::Touch(int32_t page, int64_t step) {
  return Touch(absl::MakeConstSpan(&page, 1), step);
}

absl::Status SpillPolicy::Touch(absl::Span<const int32_t> pages, int64_t step) {
  if (step < clock_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "spill policy: step %d is older than the latest step %d", step, clock_));
  }
  for (const int32_t page : pages) {
    if (page < 0 || page >= num_pages()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "spill policy: page %d out of range [0, %d)", page, num_pages()));
    }
  }
  clock_ = step;
  for (const int32_t page : pages) {
    last_[page] = step;
    // step >= every recorded access, so the tail is the right place: order is kept.
    if (loc_[page].on_host()) {
      Unlink(page);
      LinkTail(page);
    }
  }
  return absl::OkStatus();
}

std::vector<int32_t> SpillPolicy::PickVictims(int32_t n, int64_t current_step,
                                              absl::Span<const int32_t> pinned) const {
  std::vector<int32_t> victims;
  if (n <= 0) return victims;
  std::vector<int32_t> pins(pinned.begin(), pinned.end());
  std::sort(pins.begin(), pins.end());
  for (int32_t p = head_; p != kNone && static_cast<int32_t>(victims.size()) < n;
       p = next_[p]) {
    // The list is ordered by last access: from here on every page is in use this step.
    if (last_[p] >= current_step) break;
    if (std::binary_search(pins.begin(), pins.end(), p)) continue;
    victims.push_back(p);
  }
  return victims;
}

absl::Status SpillPolicy::SetLocation(int32_t page, PageLocation location) {
  if (page < 0 || page >= num_pages()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("spill policy: page %d out of range [0, %d)", page, num_pages()));
  }
  if (location.host_slot < -1 || location.disk_record < -1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "spill policy: page %d: bad location (slot %d, record %d)", page, location.host_slot,
        location.disk_record));
  }
  PageLocation& cur = loc_[page];
  const bool was_host = cur.on_host(), was_disk_only = !cur.on_host() && cur.on_disk();
  const bool is_host = location.on_host(), is_disk_only = !location.on_host() && location.on_disk();
  if (!was_host && is_host) {
    // Arriving on the host counts as an access at the latest step (see the header).
    last_[page] = std::max(last_[page], clock_);
    LinkTail(page);
  } else if (was_host && !is_host) {
    Unlink(page);
  }
  num_on_host_ += int32_t(is_host) - int32_t(was_host);
  num_disk_only_ += int32_t(is_disk_only) - int32_t(was_disk_only);
  cur = location;
  return absl::OkStatus();
}

PageLocation SpillPolicy::GetLocation(int32_t page) const {
  if (page < 0 || page >= num_pages()) return PageLocation();
  return loc_[page];
}

int64_t SpillPolicy::LastAccess(int32_t page) const {
  if (page < 0 || page >= num_pages()) return -1;
  return last_[page];
}

std::vector<int32_t> SpillPolicy::NeedsLoad(absl::Span<const int32_t> pages) const {
  std::vector<int32_t> out;
  for (const int32_t page : pages) {
    if (page < 0 || page >= num_pages()) continue;
    const PageLocation& l = loc_[page];
    if (l.on_host() || !l.on_disk()) continue;
    if (std::find(out.begin(), out.end(), page) == out.end()) out.push_back(page);
  }
  return out;
}

PageLocation SpillPolicy::Forget(int32_t page) {
  if (page < 0 || page >= num_pages()) return PageLocation();
  const PageLocation old = loc_[page];
  (void)SetLocation(page, PageLocation());  // cannot fail: page in range, location valid
  last_[page] = -1;
  return old;
}

absl::Status SpillPolicy::CheckConsistency() const {
  int32_t count = 0;
  int64_t prev_step = -1;
  std::vector<char> seen(loc_.size(), 0);
  for (int32_t p = head_, before = kNone; p != kNone; before = p, p = next_[p]) {
    if (p < 0 || p >= num_pages() || seen[p]) {
      return absl::InternalError(absl::StrFormat("spill policy: list corrupt at page %d", p));
    }
    seen[p] = 1;
    if (prev_[p] != before) {
      return absl::InternalError(absl::StrFormat("spill policy: bad prev link at page %d", p));
    }
    if (!loc_[p].on_host()) {
      return absl::InternalError(absl::StrFormat("spill policy: page %d listed, not on host", p));
    }
    if (last_[p] < prev_step) {
      return absl::InternalError(absl::StrFormat("spill policy: page %d out of order", p));
    }
    prev_step = last_[p];
    ++count;
  }
  int32_t host = 0, disk_only = 0;
  for (const PageLocation& l : loc_) {
    host += l.on_host();
    disk_only += !l.on_host() && l.on_disk();
  }
  if (count != host || host != num_on_host_ || disk_only != num_disk_only_) {
    return absl::InternalError(absl::StrFormat(
        "spill policy: counts disagree (listed %d, on host %d/%d, disk only %d/%d)", count, host,
        num_on_host_, disk_only, num_disk_only_));
  }
  return absl::OkStatus();
}

}  // namespace twl
