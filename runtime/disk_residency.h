// Host slots for the FP16 KV blocks when the KV cache is larger than the host pool: which
// unit of blocks sits in which slot, and the moves between the slots and the disk tier
// (offload/disk_tier.h, io_uring) that put the units a call needs into host memory.
//
// Units. A unit is heads_per_unit consecutive blocks of one page (block ids page * H + h, H
// = num_kv_heads): the CPU backend uses whole pages (heads_per_unit = H: unit id = page id),
// the GPU offload backend single blocks (heads_per_unit = 1: unit id = block id = (page, KV
// head)), the unit its cache, fetch and attention already use, so that a step makes resident
// and reads only the blocks it keeps (top-p keeps different tokens per KV head: a page-sized
// unit drags the other heads' blocks along). Units are [0, num_units); slots [0, num_slots)
// are one host arena of num_slots * heads_per_unit FP16 blocks: the unit in slot s has its
// j-th block at block index s * heads_per_unit + j, so one unit is one contiguous disk record
// (the tier's record_bytes must be heads_per_unit * FpBlockBytes), and View() (an FpKvView
// with slot_of_block) lets the attention and pruner references read resident blocks by block
// id unchanged. The API below says "page" for a unit (they are pages for the CPU backend). A
// unit is nowhere (free, or allocated and not written yet), on the host (possibly with a
// clean copy on disk), or on disk only.
//
// Capacity: num_units <= num_slots - 1 + disk records. The one record of slack is what makes
// every swap possible: when all slots are full, at most records - 1 units are disk-only, so
// after dropping the clean disk copies of units that stay on the host a dirty victim always
// finds a free record. (With num_slots + records units, a step needing the disk-only units
// while every slot holds a dirty unit could neither write a victim nor read a unit.)
//
// Victims by value (offload/spill_policy.h, value order): each Reserve adds to its units'
// values the rows the step uses of them (1 per unit when not given), decayed by half every
// decay_steps() steps; the lowest-value units not in the current Reserve step go first, and a
// unit that came in by displacing another stays "transient" (first to leave again) until a
// later step uses it again. So a cyclic working set slightly larger than the pool keeps most
// of itself resident (LRU would re-read all of it every cycle). Every Reserve with new_step
// is a new step of the clock.
//
// Failures move no data out of existence: a failed write keeps its unit on the host, a
// failed read keeps its unit on disk (its slot is given back), so the call can be retried.
// Disk I/O errors come back as the tier's codes (DataLoss for a read, Internal for a write)
// marked with runtime/disk_io_status.h, prefixed with what was being done; "disk tier full"
// and "host pool too small" are ResourceExhausted.
//
// Read-ahead (the GPU offload backend): StartReadAhead submits reads of disk-only units a
// later step will likely keep into free slots (or slots of low-value units, spilled as
// usual, never the current step's nor the read-ahead's own) and returns without waiting; the
// units become host units when FinishReadAhead reaps the reads. A call reaps first only when
// it has to (a unit it needs is in flight, it must evict, or it frees an in-flight unit), so
// an append to resident units never waits for the disk. A failed read-ahead keeps its unit
// on disk (a later Reserve reads it again and reports the error there); its slot goes back to
// the free list.
//
// Appends that never wait (the GPU offload backend's serving loop). An append writes the
// newest block of each (sequence, KV head): a fresh block every page_size tokens, else the
// block the previous append wrote. Three rules keep such a call off the disk and off the
// device:
//  - Open units. ReserveForAppend marks the units whose page stays partial ("open": the next
//    append writes them again). Victims are never open units while anything else can go
//    (soft pins), so the block being appended to stays resident (before, a decode-time
//    block not kept by the decode was the newest low-value newcomer: the next step's
//    decode or read-ahead evicted it and the next append read it back, after waiting for
//    the device and for the whole read-ahead in flight).
//  - The append reserve (set_append_reserve): RefillFreeSlots, called where no GPU work
//    reads a unit outside the current step (after a decode step's Reserves), sets the next
//    clean victims on standby: they stay resident and readable, but an append may drop
//    them and take their slots without waiting for the device, as long as nothing used
//    them since (every GPU use of a unit is preceded by a Reserve that touches it), so a
//    fresh block needs no eviction. StartReadAhead leaves them alone; Reserve may evict them
//    like any victim (the next refill sets others aside). Standby units instead of free
//    slots: when the kept blocks of all layers exceed the pool, free slots held back would
//    make every layer re-read that many blocks per step.
//  - The refill also writes the next dirty victims behind (asynchronously: a unit being
//    written stays on the host and readable; reaped without waiting by later calls, it
//    gains a clean copy), so that the next evictions, the decode's included, drop rather
//    than write.
// A unit changed while its write behind is in flight (MarkDirty) keeps no copy (the record
// is freed when reaped); Release waits for it. A failed write behind leaves the unit dirty
// on the host, and the next eviction that writes it reports the error.
//
// Host memory: the slot arena is aligned host memory, or pinned and mapped into the GPU's
// address space (HostMemKind::kPinnedMapped) so that the GPU reads resident blocks through
// slot_of_block() (a copy of it on the device, refreshed when map_version() changes).
//
// Thread-safety: Reserve, MarkDirty, Release, StartReadAhead, FinishReadAhead mutate and
// need the caller's exclusive lock;
// ReadRows, View, the accessors and Usage are const and may run concurrently with each other
// (the tier is thread-safe; nothing else changes under a shared lock).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/host_arena.h"
#include "core/page_layout.h"
#include "offload/disk_pager.h"
#include "offload/disk_tier.h"
#include "offload/spill_policy.h"
#include "runtime/runtime.h"

namespace twl {

// I/O of one Reserve call (or a sum of them), for the step telemetry.
struct DiskIoCounts {
  int64_t pages_loaded = 0;   // read from disk into a slot, waited for by the caller
  int64_t pages_written = 0;  // written to disk to free a slot
  int64_t pages_dropped = 0;  // slots freed without a write (a clean disk copy existed)
  double ms = 0;              // wall time of the moves
  // Read-ahead: pages whose reads were submitted, and pages reaped into slots.
  int64_t pages_read_ahead = 0;
  int64_t pages_read_ahead_done = 0;
  int64_t bytes_read = 0;     // payload read from disk (loads + reaped read-ahead)
  int64_t waits = 0;          // calls that blocked on a disk read (load or read-ahead)
  double ms_wait = 0;         // time blocked on disk reads
  // Write-behind: dirty units whose writes were submitted without waiting for them, and
  // those whose writes completed (clean copies from then on).
  int64_t pages_written_behind = 0;
  int64_t pages_cleaned_behind = 0;
};

// Disk tier for the KV of `config`: a new file in the directory config.disk_path (which
// must exist), records of one residency unit (DiskUnitHeads(config) FP16 blocks: a page's
// num_kv_heads blocks under the CPU backend, one block under the GPU offload backend),
// capacity config.disk_bytes (reserved at creation). Records are packed at the file's I/O
// alignment (512 bytes where O_DIRECT allows it, else 4 KiB): a block of 8 KiB (d = 128,
// page 16) takes exactly 8 KiB. InvalidArgument for a path that is not a directory or a size
// below one record; ResourceExhausted when the disk lacks the space.
absl::StatusOr<std::unique_ptr<DiskTier>> CreatePageDiskTier(const RuntimeConfig& config);

// Blocks per residency unit for `config`'s backend (see above).
int32_t DiskUnitHeads(const RuntimeConfig& config);

// Logical pages a runtime can hold with `host_slots` pages of host pool over `tier` (units of
// DiskUnitHeads(config) blocks): the largest n with n * units per page <= host units - 1 +
// records (the slack explained below).
int64_t DiskTierPages(const RuntimeConfig& config, int64_t host_slots, const DiskTier& tier);

class DiskResidency {
 public:
  // num_pages (units) <= num_slots - 1 + tier->capacity() (InvalidArgument otherwise).
  // host_kind: where the slot arena lives (kPinnedMapped needs a GPU). heads_per_unit: blocks
  // per unit, a divisor of num_kv_heads (0: num_kv_heads, page units).
  static absl::StatusOr<std::unique_ptr<DiskResidency>> Create(
      const PageGeometry& g, int32_t num_pages, int32_t num_slots,
      std::unique_ptr<DiskTier> tier, HostMemKind host_kind = HostMemKind::kAligned,
      int32_t heads_per_unit = 0);
  ~DiskResidency();  // waits for a read-ahead in flight (its reads target the arena)
  DiskResidency(const DiskResidency&) = delete;
  DiskResidency& operator=(const DiskResidency&) = delete;

  int32_t num_pages() const { return policy_.num_pages(); }
  int32_t num_slots() const { return num_slots_; }
  int32_t num_free_slots() const { return static_cast<int32_t>(free_slots_.size()); }
  const DiskTier& tier() const { return *tier_; }
  int32_t heads_per_unit() const { return hpu_; }
  // Bytes of one unit (one slot, one disk record).
  int64_t unit_bytes() const { return int64_t(hpu_) * g_.FpBlockBytes(); }
  // Values halve every decay_steps Reserve steps (default 16; the GPU offload backend uses
  // 4 x its layers, as its cache does).
  void set_decay_steps(int64_t steps) { policy_.EnableValueOrder(steps); }
  // Units used once per cycle of `steps` Reserve steps (SpillPolicy::set_cycle_steps).
  void set_cycle_steps(int64_t steps) { policy_.set_cycle_steps(steps); }

  // FP16 blocks by block id through slot_of_block; only blocks of host units may be read.
  FpKvView View() const { return FpKvView{base_, slot_of_block_.data()}; }
  // The heads_per_unit FP16 blocks of a host unit (null when it is not on the host).
  fp16_t* HostPage(int32_t page) const;
  // One FP16 block by block id (null when its unit is not on the host).
  fp16_t* HostBlock(int64_t block) const;
  PageLocation Location(int32_t page) const { return policy_.GetLocation(page); }
  // The slot arena: host address and (kPinnedMapped) device address of slot 0's block 0.
  void* host_base() const { return arena_->base(); }
  void* device_base() const { return arena_->device_base(); }
  // [num_units * heads_per_unit] arena block index of each block, -1 when its unit is not on
  // the host; map_version() changes whenever an entry does.
  absl::Span<const int32_t> slot_of_block() const { return slot_of_block_; }
  int64_t map_version() const { return map_version_; }
  // The block indices [*lo, *hi] that hold every entry changed since the last call (false:
  // none changed); the range starts empty again.
  bool TakeChangedBlocks(int64_t* lo, int64_t* hi);
  // The recency clock (one tick per Reserve with new_step).
  int64_t step() const { return step_; }

  // Puts every unit of `pages` (distinct ids) in a host slot: disk-only units are read back,
  // units that are nowhere get an empty slot (contents unspecified until written). Other
  // units are spilled as needed, lowest value first. `io` (nullable) accumulates the moves.
  // ResourceExhausted when pages.size() > num_slots ("... needs N pages in host memory at
  // once ...") or the disk tier is full; disk I/O errors as described above.
  // On failure the units already moved stay where they went (their data intact).
  // new_step false: part of the same step as the previous Reserve (pipeline groups): the
  // units that Reserve placed stay protected from eviction, and the pool must hold both.
  // rows (empty, or one per unit): the value each unit gains (the rows the step keeps of
  // it); empty: 1 each.
  absl::Status Reserve(absl::Span<const int32_t> pages, DiskIoCounts* io, bool new_step = true,
                       absl::Span<const int32_t> rows = {});

  // Slots Reserve(pages) would have to free by spilling other units (0: the units fit in
  // the free slots and the units on standby for appends; ReserveForAppend then moves no
  // unit that earlier work may use). pages: distinct ids.
  int64_t SlotsShort(absl::Span<const int32_t> pages) const;

  // Submits reads of the disk-only units of `pages` (at most max_pages of them, in order)
  // into free slots, spilling low-value units not used in the current step and not listed in
  // `pages` when none is free; returns without waiting. Best effort: a full pool, a full
  // disk or a failed spill reads fewer units (OK); an error only for a previous read-ahead
  // that cannot be reaped. Reaps a previous read-ahead first.
  absl::Status StartReadAhead(absl::Span<const int32_t> pages, int32_t max_pages,
                              DiskIoCounts* io);
  // Waits for the read-ahead in flight (if any) and puts its pages into their slots.
  void FinishReadAhead(DiskIoCounts* io);
  int32_t read_ahead_in_flight() const { return int32_t(ahead_pages_.size()); }

  // The host copies of `pages` (all on the host) are about to change: frees their clean
  // disk copies. Never waits for a read-ahead (it reads only disk-only units) nor for a
  // write behind (a copy in flight is dropped when reaped).
  absl::Status MarkDirty(absl::Span<const int32_t> pages);

  // Appends (see "Appends that never wait" above). Slots the refills keep for
  // ReserveForAppend, free or on standby (0 by default: no reserve).
  void set_append_reserve(int32_t slots) { free_target_ = std::max(slots, 0); }
  int32_t append_reserve() const { return free_target_; }
  // Reserve(pages) as a new step for an append, which takes the units on standby before it
  // evicts anything;
  // open (empty or one per unit): nonzero for units whose page stays partially written
  // (kept on the host in preference to any other unit until a later ReserveForAppend lists
  // them closed, or they are released). The caller then calls MarkDirty(pages).
  absl::Status ReserveForAppend(absl::Span<const int32_t> pages,
                                absl::Span<const uint8_t> open, DiskIoCounts* io);
  // Tops the reserve up (free slots + clean victims set on standby) and starts writing the
  // next dirty victims behind. Never waits; needs the same device quiet as an eviction
  // (no GPU work reads units outside the current step).
  void RefillFreeSlots(DiskIoCounts* io);
  // Waits for the writes behind in flight (tests; Release and the destructor do it).
  void FinishWriteBehind(DiskIoCounts* io);
  int32_t write_behind_in_flight() const { return int32_t(num_writing_); }

  // Copies the first `rows` rows of a logical page (all its num_kv_heads blocks, from their
  // units on the host or on disk) into k and v, each [rows][num_kv_heads][head_dim]. Changes
  // no location (disk-only units are read into a temporary buffer). FailedPrecondition for a
  // unit that is nowhere.
  absl::Status ReadRows(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const;

  // The unit was freed: its slot and disk record (if any) become free.
  void Release(int32_t page);

  // Host bytes of the slot arena and of the slots in use; disk bytes in use.
  int64_t host_bytes() const { return arena_->bytes(); }
  int64_t host_bytes_used() const;
  int64_t disk_bytes_used() const { return tier_->bytes_used(); }
  // Units with data (on the host or on disk).
  int32_t num_live_pages() const { return policy_.num_on_host() + policy_.num_disk_only(); }

  // Checks slot bookkeeping against the policy (tests).
  absl::Status CheckConsistency() const;

 private:
  DiskResidency(const PageGeometry& g, int32_t num_pages, int32_t num_slots,
                std::unique_ptr<DiskTier> tier, std::unique_ptr<HostArena> arena,
                int32_t heads_per_unit);
  // Marks the changed block range of a unit (see TakeChangedBlocks).
  void NoteChanged(int32_t page);
  // True when a unit of `pages` has a read-ahead in flight.
  bool AnyInFlight(absl::Span<const int32_t> pages) const;
  void* SlotAddress(int32_t slot) const;
  void Assign(int32_t page, int32_t slot);
  // Slots freed by the pager (from index `from` of free_slots_ on): their pages leave.
  void ForgetFreedSlots(size_t from);
  // Frees up to n clean disk copies of host pages, those of `in_use` first.
  void DropCleanCopies(int64_t n, absl::Span<const int32_t> in_use);
  // Reserve; for_append: may take the units on standby.
  absl::Status ReserveImpl(absl::Span<const int32_t> pages, DiskIoCounts* io, bool new_step,
                           absl::Span<const int32_t> rows, bool for_append);
  // Slots short for `pages` counting the free slots (and the units on standby: standby).
  int64_t SlotsShortWith(absl::Span<const int32_t> pages, bool standby) const;
  // Standby (see "Appends that never wait"): still clean and unused since set aside.
  bool StandbyValid(int32_t page) const;
  int64_t NumStandby() const;
  // Drops up to n valid units on standby (their slots become free).
  void TakeStandby(int64_t n, DiskIoCounts* io);
  // Frees `want` slots (victims not of this step), the soft pins last.
  absl::Status EvictSlots(int64_t want, absl::Span<const int32_t> in_use);
  void SetOpen(int32_t page, bool open);
  // Sorted open units and units being written behind (pins_).
  const std::vector<int32_t>& Pins();
  void StartWriteBehind(const std::vector<int32_t>& pages, DiskIoCounts* io);
  // Reaps the writes behind if they are done (or waits for them: wait).
  void ReapWriteBehind(bool wait, DiskIoCounts* io);

  const PageGeometry g_;
  const int32_t hpu_;  // blocks per unit
  const int32_t num_slots_;
  std::unique_ptr<DiskTier> tier_;
  std::unique_ptr<HostArena> arena_;
  fp16_t* base_ = nullptr;
  SpillPolicy policy_;
  DiskPager pager_;
  std::vector<int32_t> slot_of_block_;  // [num_units * hpu_], -1: not on the host
  std::vector<uint32_t> mark_;          // [num_units] == mark_gen_: listed in this Reserve
  uint32_t mark_gen_ = 0;
  std::vector<uint8_t> in_flight_;      // [num_units] 1: in ahead_pages_
  std::vector<uint8_t> writing_;        // [num_units] 1: in a batch of behind_
  std::vector<uint8_t> cancel_;         // [num_units] 1: changed while written behind
  std::vector<uint8_t> open_;           // [num_units] 0, 1 open (listed), 2 closed (listed)
  std::vector<int32_t> open_list_;      // units with open_ != 0
  std::vector<int32_t> closed_;         // units closed by appends since the last refill
  std::vector<int32_t> pins_;           // scratch of Pins()
  int32_t free_target_ = 0;             // the append reserve: free slots + units on standby
  std::vector<int32_t> standby_;        // clean units set aside for appends (some stale)
  int64_t standby_step_ = -1;           // step of the last refill (standby units are older)
  int64_t evicted_recent_ = 0;          // slots freed by evictions since the last refill
  // Writes behind in flight: per batch its ticket, units and their records.
  struct WriteBatch {
    DiskTier::Ticket ticket = 0;
    std::vector<int32_t> pages;
    std::vector<int64_t> records;
  };
  std::vector<WriteBatch> behind_;
  int64_t num_writing_ = 0;
  std::vector<int32_t> page_of_slot_;   // [num_slots], -1: free
  std::vector<int32_t> free_slots_;     // stack
  int64_t step_ = 0;                    // recency clock: one tick per Reserve
  int64_t map_version_ = 0;
  int64_t changed_lo_ = INT64_MAX, changed_hi_ = -1;  // see TakeChangedBlocks
  // Read-ahead in flight: its ticket, pages, their target slots (neither free nor
  // assigned) and records.
  DiskTier::Ticket ahead_ticket_ = 0;
  std::vector<int32_t> ahead_pages_, ahead_slots_;
  std::vector<int64_t> ahead_records_;
};

}  // namespace twl
