// Host slots for the FP16 pages of the CPU backend when the KV cache is larger than the host
// pool: which page sits in which slot, and the moves between the slots and the disk tier
// (offload/disk_tier.h, io_uring) that put the pages a call needs into host memory.
//
// Pages are the runtime's page ids [0, num_pages) ("logical" pages: the quantized K store and
// the page tables are indexed by them). Slots [0, num_slots) are one host arena of
// num_slots * num_kv_heads FP16 blocks: the page in slot s has its KV head h block at block
// index s * num_kv_heads + h, so one page is one contiguous disk record, and View() (an
// FpKvView with slot_of_block) lets the attention and pruner references read resident pages
// by block id unchanged. A page is nowhere (free, or allocated and not written yet), on the
// host (possibly with a clean copy on disk), or on disk only.
//
// Capacity: num_pages <= num_slots - 1 + disk records. The one record of slack is what makes
// every swap possible: when all slots are full, at most records - 1 pages are disk-only, so
// after dropping the clean disk copies of pages that stay on the host a dirty victim always
// finds a free record. (With num_slots + records pages, a step needing the disk-only pages
// while every slot holds a dirty page could neither write a victim nor read a page.)
//
// Victims are the least recently used host pages (offload/spill_policy.h): never a page of
// the current Reserve. Every Reserve is a new step of the recency clock.
//
// Failures move no data out of existence: a failed write keeps its page on the host, a
// failed read keeps its page on disk (its slot is given back), so the call can be retried.
// Disk I/O errors come back as the tier's codes (DataLoss for a read, Internal for a write)
// marked with runtime/disk_io_status.h, prefixed with what was being done; "disk tier full"
// and "host pool too small" are ResourceExhausted.
//
// Read-ahead (the GPU offload backend): StartReadAhead submits reads of disk-only pages a
// later step will likely keep into free slots (or slots of cold pages, spilled as usual) and
// returns without waiting; the pages become host pages when FinishReadAhead reaps the reads,
// which every mutating call does first. A failed read-ahead keeps its page on disk (a later
// Reserve reads it again and reports the error there); its slot goes back to the free list.
//
// Host memory: the slot arena is aligned host memory, or pinned and mapped into the GPU's
// address space (HostMemKind::kPinnedMapped) so that the GPU reads resident pages through
// slot_of_block() (a copy of it on the device, refreshed when map_version() changes).
//
// Thread-safety: Reserve, MarkDirty, Release, StartReadAhead, FinishReadAhead mutate and
// need the caller's exclusive lock;
// ReadRows, View, the accessors and Usage are const and may run concurrently with each other
// (the tier is thread-safe; nothing else changes under a shared lock).
#pragma once

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
};

// Disk tier for the pages of `config`: a new file in the directory config.disk_path (which
// must exist), records of one page's FP16 blocks (num_kv_heads * FpBlockBytes), capacity
// config.disk_bytes (reserved at creation). InvalidArgument for a path that is not a
// directory or a size below one record; ResourceExhausted when the disk lacks the space.
absl::StatusOr<std::unique_ptr<DiskTier>> CreatePageDiskTier(const RuntimeConfig& config);

class DiskResidency {
 public:
  // num_pages <= num_slots - 1 + tier->capacity() (InvalidArgument otherwise).
  // host_kind: where the slot arena lives (kPinnedMapped needs a GPU).
  static absl::StatusOr<std::unique_ptr<DiskResidency>> Create(
      const PageGeometry& g, int32_t num_pages, int32_t num_slots,
      std::unique_ptr<DiskTier> tier, HostMemKind host_kind = HostMemKind::kAligned);
  ~DiskResidency();  // waits for a read-ahead in flight (its reads target the arena)
  DiskResidency(const DiskResidency&) = delete;
  DiskResidency& operator=(const DiskResidency&) = delete;

  int32_t num_pages() const { return policy_.num_pages(); }
  int32_t num_slots() const { return num_slots_; }
  int32_t num_free_slots() const { return static_cast<int32_t>(free_slots_.size()); }
  const DiskTier& tier() const { return *tier_; }

  // FP16 blocks by block id through slot_of_block; only blocks of host pages may be read.
  FpKvView View() const { return FpKvView{base_, slot_of_block_.data()}; }
  // The num_kv_heads FP16 blocks of a host page (null when it is not on the host).
  fp16_t* HostPage(int32_t page) const;
  PageLocation Location(int32_t page) const { return policy_.GetLocation(page); }
  // The slot arena: host address and (kPinnedMapped) device address of slot 0's block 0.
  void* host_base() const { return arena_->base(); }
  void* device_base() const { return arena_->device_base(); }
  // [num_pages * num_kv_heads] arena block index of each block, -1 when its page is not on
  // the host; map_version() changes whenever an entry does.
  absl::Span<const int32_t> slot_of_block() const { return slot_of_block_; }
  int64_t map_version() const { return map_version_; }
  // The block indices [*lo, *hi] that hold every entry changed since the last call (false:
  // none changed); the range starts empty again.
  bool TakeChangedBlocks(int64_t* lo, int64_t* hi);
  // The recency clock (one tick per Reserve with new_step).
  int64_t step() const { return step_; }

  // Puts every page of `pages` (distinct ids) in a host slot: disk-only pages are read back,
  // pages that are nowhere get an empty slot (contents unspecified until written). Other
  // pages are spilled as needed, least recently used first. `io` (nullable) accumulates
  // the moves. ResourceExhausted when pages.size() > num_slots ("... needs N pages in host
  // memory at once ...") or the disk tier is full; disk I/O errors as described above.
  // On failure the pages already moved stay where they went (their data intact).
  // new_step false: part of the same step as the previous Reserve (pipeline groups): the
  // pages that Reserve placed stay protected from eviction, and the pool must hold both.
  absl::Status Reserve(absl::Span<const int32_t> pages, DiskIoCounts* io, bool new_step = true);

  // Submits reads of the disk-only pages of `pages` (at most max_pages of them, in order)
  // into free slots, spilling least recently used pages not used in the current step when
  // none is free; returns without waiting. Best effort: a full pool, a full disk or a failed
  // spill reads fewer pages (OK); an error only for a previous read-ahead that cannot be
  // reaped. Reaps a previous read-ahead first.
  absl::Status StartReadAhead(absl::Span<const int32_t> pages, int32_t max_pages,
                              DiskIoCounts* io);
  // Waits for the read-ahead in flight (if any) and puts its pages into their slots.
  void FinishReadAhead(DiskIoCounts* io);
  int32_t read_ahead_in_flight() const { return int32_t(ahead_pages_.size()); }

  // The host copies of `pages` (all on the host) are about to change: frees their clean
  // disk copies.
  absl::Status MarkDirty(absl::Span<const int32_t> pages);

  // Copies the first `rows` rows of a page (host or disk) into k and v, each
  // [rows][num_kv_heads][head_dim]. Changes no location (a disk-only page is read into a
  // temporary buffer). FailedPrecondition for a page that is nowhere.
  absl::Status ReadRows(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const;

  // The page was freed: its slot and disk record (if any) become free.
  void Release(int32_t page);

  // Host bytes of the slot arena and of the slots in use; disk bytes in use.
  int64_t host_bytes() const { return arena_->bytes(); }
  int64_t host_bytes_used() const;
  int64_t disk_bytes_used() const { return tier_->bytes_used(); }
  // Pages with data (on the host or on disk).
  int32_t num_live_pages() const { return policy_.num_on_host() + policy_.num_disk_only(); }

  // Checks slot bookkeeping against the policy (tests).
  absl::Status CheckConsistency() const;

 private:
  DiskResidency(const PageGeometry& g, int32_t num_pages, int32_t num_slots,
                std::unique_ptr<DiskTier> tier, std::unique_ptr<HostArena> arena);
  void* SlotAddress(int32_t slot) const;
  void Assign(int32_t page, int32_t slot);
  // Slots freed by the pager (from index `from` of free_slots_ on): their pages leave.
  void ForgetFreedSlots(size_t from);
  // Frees up to n clean disk copies of host pages, those of `in_use` first.
  void DropCleanCopies(int64_t n, absl::Span<const int32_t> in_use);

  const PageGeometry g_;
  const int32_t num_slots_;
  std::unique_ptr<DiskTier> tier_;
  std::unique_ptr<HostArena> arena_;
  fp16_t* base_ = nullptr;
  SpillPolicy policy_;
  DiskPager pager_;
  std::vector<int32_t> slot_of_block_;  // [num_pages * num_kv_heads], -1: not on the host
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
