// Where each page's FP16 data lives (host pool slot, disk tier record, or both) and which
// host-resident pages to spill to disk when the host pool is full: the coldest first by last
// access step, never one used in the current step or pinned by the caller.
//
// The policy decides and remembers; it moves no bytes. The caller (the runtime) does the I/O
// with DiskTier and reports each move with SetLocation:
//
//   spill:  victims = PickVictims(n, step, pinned); write the victims' host slots (skip the
//           write for a page that still has a clean disk copy); for each success
//           SetLocation(page, {-1, record}) and free its slot; a failed write keeps the page
//           on the host.
//   load:   for the pages a step will read, NeedsLoad(pages) lists those on disk only; give
//           each a host slot, read its record, SetLocation(page, {slot, record}) (the disk
//           copy stays clean until the page is written again: then Free the record and
//           SetLocation(page, {slot, -1})).
//
// Recency: Touch(page, step) records an access; `step` is a clock that never goes back (the
// decode step counter). A page that arrives on the host (SetLocation with a slot, from no
// slot) counts as accessed at the latest step seen, so that a page just loaded is not the
// next victim. Pages are kept in a list ordered by last access, so Touch and SetLocation
// are O(1) and PickVictims is O(victims + pinned pages skipped).
//
// Value order (EnableValueOrder; the disk residency turns it on): victims are chosen by value
// instead of recency, like the GPU cache's residency by value (cache/gpu_page_cache.h). Each
// page has a value: the rows it was used for (AddValue), summed over the steps that used it,
// halved every `decay_steps` steps (a count and the epoch it was last brought to, decayed
// lazily). Values compare in log buckets, 4 per octave (level = floor(4 log2 value)); a
// page that arrived by displacing another one is "transient" until it is used again, and a
// page that is not counts `margin` levels more (~1.41x) when victims are chosen: a cyclic
// working set slightly larger than the pool keeps its resident part (the newcomers of one
// step are the next step's victims) instead of replacing everything every step, as LRU does.
// Newcomers and established pages are kept in two lists, each in order of last access: the
// next victim is the newest newcomer (the slot a cyclic working set lends to its overflow;
// the oldest newcomer instead when its value decayed below it: stale), unless the coldest
// established page's level + margin is below that newcomer's. PickVictims stays
// O(victims + pages skipped: pinned, in use, or just picked), whatever the pool size (a full
// scan of a half-million-slot pool per evicting call would cost milliseconds per step).
// Thread-safety: none; the caller serializes (the runtime holds its lock around it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace twl {

struct PageLocation {
  int32_t host_slot = -1;    // slot in the host FP16 pool, or -1
  int64_t disk_record = -1;  // record in the disk tier, or -1
  bool on_host() const { return host_slot >= 0; }
  bool on_disk() const { return disk_record >= 0; }
  bool operator==(const PageLocation& o) const {
    return host_slot == o.host_slot && disk_record == o.disk_record;
  }
};

class SpillPolicy {
 public:
  // Pages are ids in [0, num_pages); all start nowhere (no slot, no record).
  explicit SpillPolicy(int32_t num_pages);
  SpillPolicy(const SpillPolicy&) = delete;
  SpillPolicy& operator=(const SpillPolicy&) = delete;

  int32_t num_pages() const { return static_cast<int32_t>(loc_.size()); }
  int32_t num_on_host() const { return num_on_host_; }
  int32_t num_disk_only() const { return num_disk_only_; }
  int64_t clock() const { return clock_; }  // latest step seen (-1 before any)

  // Records an access of `page` (wherever it is) at `step`. InvalidArgument for a page out
  // of range or a step older than clock(); then nothing changes (for the span form: all or
  // nothing).
  absl::Status Touch(int32_t page, int64_t step);
  absl::Status Touch(absl::Span<const int32_t> pages, int64_t step);

  // Value order (see the header comment); off (pure LRU) by default. decay_steps >= 1.
  void EnableValueOrder(int64_t decay_steps);
  // Value order, pages used in a cycle of `steps` steps (a serving loop's layers: every kept
  // block is used once per pass): an established page unused for longer has left the
  // working set and goes before any newcomer, whatever value it has left. Else a top-p
  // tail's new blocks (few kept rows: low value) were the victims while the blocks that
  // left the kept sets kept their decaying value, and each new block was read twice. 0
  // (default): off.
  void set_cycle_steps(int64_t steps) { cycle_steps_ = std::max<int64_t>(steps, 0); }
  bool value_order() const { return decay_steps_ > 0; }
  // Adds `rows` (>= 0) to the page's value at `step` (decayed to step's epoch first). Pages
  // out of range are ignored.
  void AddValue(int32_t page, int64_t rows, int64_t step);
  // The page's value decayed to `step`'s epoch (0 if never valued).
  double ValueAt(int32_t page, int64_t step) const;
  // A host page that arrived by displacing another one (value order; see the header).
  void SetTransient(int32_t page, bool transient);
  bool transient(int32_t page) const {
    return page >= 0 && page < num_pages() && transient_[size_t(page)] != 0;
  }

  // Up to n host-resident pages to spill, coldest first (ties: the one touched first;
  // value order: see the header). Excluded: pages accessed at a step >= current_step (in
  // use this step) and `pinned` pages (e.g. pages with a transfer in flight, or being
  // appended to). Fewer than n when
  // too few are eligible.
  std::vector<int32_t> PickVictims(int32_t n, int64_t current_step,
                                   absl::Span<const int32_t> pinned = {}) const;

  // Sets where a page lives. InvalidArgument for a page out of range or an index < -1.
  absl::Status SetLocation(int32_t page, PageLocation location);
  // {-1, -1} for a page out of range.
  PageLocation GetLocation(int32_t page) const;
  // -1 if never accessed (or out of range).
  int64_t LastAccess(int32_t page) const;

  // The pages of `pages` that are on disk and not on the host, in first-seen order without
  // duplicates: what must be read back before a step can use them. Ids out of range are
  // skipped (the caller validates page tables).
  std::vector<int32_t> NeedsLoad(absl::Span<const int32_t> pages) const;

  // The page was freed: returns its location (the caller frees the slot / record) and
  // resets it to nowhere, never accessed. {-1, -1} for a page out of range.
  PageLocation Forget(int32_t page);

  // Checks the internal list against the locations (tests).
  absl::Status CheckConsistency() const;

 private:
  void LinkTail(int32_t page);
  void Unlink(int32_t page);
  int ListOf(int32_t page) const {
    return decay_steps_ > 0 && transient_[size_t(page)] ? 1 : 0;
  }
  // Absolute log level of a page's value (decay-invariant: 4 * epoch added); see the header.
  int64_t Level(int32_t page) const;

  static constexpr int32_t kNone = -1;
  std::vector<PageLocation> loc_;  // [num_pages]
  std::vector<int64_t> last_;      // [num_pages] last access step, -1 never
  // Doubly linked lists of host-resident pages in order of last access (head = coldest).
  std::vector<int32_t> prev_, next_;  // [num_pages]
  // Two lists: [0] established pages, [1] newcomers (value order only; see the header).
  int32_t head_[2] = {kNone, kNone}, tail_[2] = {kNone, kNone};
  int64_t clock_ = -1;
  int32_t num_on_host_ = 0;
  int32_t num_disk_only_ = 0;
  // Value order (decay_steps_ 0: off).
  int64_t decay_steps_ = 0;
  int64_t cycle_steps_ = 0;
  std::vector<uint32_t> count_;    // [num_pages] value at epoch_ (saturating)
  std::vector<int32_t> epoch_;     // [num_pages]
  std::vector<uint8_t> transient_;  // [num_pages]
};

}  // namespace twl
