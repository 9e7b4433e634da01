// Page locations and the coldest-first spill choice (see spill_policy.h).
#include "offload/spill_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"

namespace twl {

SpillPolicy::SpillPolicy(int32_t num_pages)
    : loc_(std::max(num_pages, 0)),
      last_(std::max(num_pages, 0), -1),
      prev_(std::max(num_pages, 0), kNone),
      next_(std::max(num_pages, 0), kNone) {}

void SpillPolicy::EnableValueOrder(int64_t decay_steps) {
  decay_steps_ = std::max<int64_t>(decay_steps, 1);
  count_.assign(loc_.size(), 0);
  epoch_.assign(loc_.size(), 0);
  transient_.assign(loc_.size(), 0);
}

void SpillPolicy::AddValue(int32_t page, int64_t rows, int64_t step) {
  if (decay_steps_ == 0 || page < 0 || page >= num_pages()) return;
  const int64_t e = std::max<int64_t>(step, 0) / decay_steps_;
  const size_t i = size_t(page);
  const int64_t shift = e - epoch_[i];
  uint64_t c = shift >= 32 ? 0 : (shift > 0 ? count_[i] >> shift : count_[i]);
  c += uint64_t(std::max<int64_t>(rows, 0));
  count_[i] = uint32_t(std::min<uint64_t>(c, std::numeric_limits<uint32_t>::max()));
  epoch_[i] = int32_t(std::max<int64_t>(e, epoch_[i]));
}

double SpillPolicy::ValueAt(int32_t page, int64_t step) const {
  if (decay_steps_ == 0 || page < 0 || page >= num_pages()) return 0;
  const int64_t shift = std::max<int64_t>(step, 0) / decay_steps_ - epoch_[size_t(page)];
  return std::ldexp(double(count_[size_t(page)]), -int(std::clamp<int64_t>(shift, 0, 1000)));
}

void SpillPolicy::SetTransient(int32_t page, bool transient) {
  if (decay_steps_ == 0 || page < 0 || page >= num_pages()) return;
  if ((transient_[size_t(page)] != 0) == transient) return;
  const bool listed = loc_[page].on_host();
  if (listed) Unlink(page);
  transient_[size_t(page)] = transient ? 1 : 0;
  // Set on arrival (last access = the latest step): the tail keeps the list in order.
  if (listed) LinkTail(page);
}

int64_t SpillPolicy::Level(int32_t page) const {
  const size_t i = size_t(page);
  // A value of 0 ranks below every valued page of any epoch.
  if (count_[i] == 0) return std::numeric_limits<int64_t>::min() / 2;
  return int64_t(std::floor(4.0 * std::log2(double(count_[i])))) + 4 * int64_t(epoch_[i]);
}

void SpillPolicy::LinkTail(int32_t page) {
  const int l = ListOf(page);
  prev_[page] = tail_[l];
  next_[page] = kNone;
  if (tail_[l] != kNone) {
    next_[tail_[l]] = page;
  } else {
    head_[l] = page;
  }
  tail_[l] = page;
}

void SpillPolicy::Unlink(int32_t page) {
  const int l = ListOf(page);
  const int32_t p = prev_[page], n = next_[page];
  if (p != kNone) {
    next_[p] = n;
  } else {
    head_[l] = n;
  }
  if (n != kNone) {
    prev_[n] = p;
  } else {
    tail_[l] = p;
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
      // Used again while on the host: no longer a newcomer (value order).
      if (decay_steps_ > 0) transient_[size_t(page)] = 0;
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
  auto eligible = [&](int32_t p) {
    return last_[p] < current_step && !std::binary_search(pins.begin(), pins.end(), p);
  };
  if (decay_steps_ > 0) {
    // Value order (see the header). Newcomers: the most recent one goes first (a newcomer
    // not used again is the slot a cyclic working set lends to its overflow), unless the
    // oldest newcomer is worth less (it decayed: stale); established pages: coldest first,
    // taken instead when worth less than the newcomer even with the margin.
    constexpr int64_t kMargin = 2;  // levels (~1.41x) an established page is worth extra
    absl::flat_hash_set<int32_t> taken;
    auto usable = [&](int32_t p) { return eligible(p) && !taken.contains(p); };
    auto forward = [&](int32_t p) {  // from p towards the newest: stops at the in-use part
      while (p != kNone && last_[p] < current_step && !usable(p)) p = next_[p];
      return p != kNone && last_[p] < current_step ? p : kNone;
    };
    auto backward = [&](int32_t p) {  // from p towards the oldest, over the in-use part
      while (p != kNone && !usable(p)) p = prev_[p];
      return p;
    };
    // Cursors: oldest and newest usable newcomers, coldest usable established page.
    int32_t old_t = forward(head_[1]), new_t = backward(tail_[1]), a = forward(head_[0]);
    while (int32_t(victims.size()) < n) {
      if (old_t != kNone && !usable(old_t)) old_t = forward(old_t);
      if (new_t != kNone && !usable(new_t)) new_t = backward(new_t);
      int32_t t = new_t;
      if (old_t != kNone && new_t != kNone && Level(old_t) < Level(new_t)) t = old_t;
      if (t == kNone && a == kNone) break;
      // An established page unused for a whole cycle has left the working set (every page
      // of it is used once per cycle): it goes first, whatever value it has left.
      const bool stale = a != kNone && cycle_steps_ > 0 && last_[a] < current_step - cycle_steps_;
      const bool take_a =
          t == kNone || (a != kNone && (stale || Level(a) + kMargin < Level(t)));
      const int32_t v = take_a ? a : t;
      victims.push_back(v);
      taken.insert(v);
      if (take_a) a = forward(next_[a]);
    }
    return victims;
  }
  for (int32_t p = head_[0]; p != kNone && static_cast<int32_t>(victims.size()) < n;
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
    if (decay_steps_ > 0) transient_[size_t(page)] = 0;
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
  absl::flat_hash_set<int32_t> seen;  // a step lists tens of thousands of pages
  for (const int32_t page : pages) {
    if (page < 0 || page >= num_pages()) continue;
    const PageLocation& l = loc_[page];
    if (l.on_host() || !l.on_disk()) continue;
    if (seen.insert(page).second) out.push_back(page);
  }
  return out;
}

PageLocation SpillPolicy::Forget(int32_t page) {
  if (page < 0 || page >= num_pages()) return PageLocation();
  const PageLocation old = loc_[page];
  (void)SetLocation(page, PageLocation());  // cannot fail: page in range, location valid
  last_[page] = -1;
  if (decay_steps_ > 0) {
    count_[size_t(page)] = 0;
    epoch_[size_t(page)] = 0;
  }
  return old;
}

absl::Status SpillPolicy::CheckConsistency() const {
  int32_t count = 0;
  std::vector<char> seen(loc_.size(), 0);
  for (int l = 0; l < 2; ++l) {
    int64_t prev_step = -1;
    for (int32_t p = head_[l], before = kNone; p != kNone; before = p, p = next_[p]) {
      if (p < 0 || p >= num_pages() || seen[p]) {
        return absl::InternalError(absl::StrFormat("spill policy: list corrupt at page %d", p));
      }
      seen[p] = 1;
      if (prev_[p] != before || ListOf(p) != l) {
        return absl::InternalError(absl::StrFormat("spill policy: bad link at page %d", p));
      }
      if (!loc_[p].on_host()) {
        return absl::InternalError(
            absl::StrFormat("spill policy: page %d listed, not on host", p));
      }
      if (last_[p] < prev_step) {
        return absl::InternalError(absl::StrFormat("spill policy: page %d out of order", p));
      }
      prev_step = last_[p];
      ++count;
    }
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
