// Host slots and disk moves of the CPU backend's FP16 pages (see disk_residency.h).
#include "runtime/disk_residency.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/disk_io_status.h"
#include "runtime/geometry.h"

namespace twl {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DiskTier>> CreatePageDiskTier(const RuntimeConfig& config) {
  struct stat st;
  if (config.disk_path.empty() || ::stat(config.disk_path.c_str(), &st) != 0 ||
      !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "config: disk_path '%s' is not an existing directory%s", config.disk_path,
        config.disk_path.empty() ? "" : absl::StrCat(" (", std::strerror(errno), ")")));
  }
  const PageGeometry g = GeometryOf(config);
  DiskTierOptions options;
  options.path = config.disk_path;
  options.record_bytes = int64_t(DiskUnitHeads(config)) * g.FpBlockBytes();
  options.capacity_bytes = config.disk_bytes;
  // Units are often smaller than 4 KiB (a 1 KiB page would take 4x its size): pack them at
  // the file's I/O alignment (512 bytes under O_DIRECT where the device accepts it).
  options.pack_records = true;
  // Block units (GPU offload) move as many small random reads: 128 in flight, the depth at
  // which the bench's probe measures the device's 8 KiB random-read rate (NVMe needs a deep
  // queue to reach it); page units keep the default.
  if (DiskUnitHeads(config) < config.num_kv_heads) options.queue_depth = 128;
  absl::StatusOr<std::unique_ptr<DiskTier>> tier = DiskTier::Create(options);
  if (!tier.ok()) {
    // A file that cannot be created or opened is the disk's fault (an I/O error for the C
    // API); sizes out of range and a full disk keep their codes.
    if (absl::IsInvalidArgument(tier.status()) || absl::IsResourceExhausted(tier.status())) {
      return PrefixStatus(tier.status(), "config: ");
    }
    return DiskIoError(tier.status(), "config: disk tier");
  }
  return tier;
}

int32_t DiskUnitHeads(const RuntimeConfig& config) {
  // The GPU offload backend's cache, fetch and attention work per (page, KV head) block, and
  // top-p keeps different tokens per KV head: a block is what a step needs. The CPU
  // backend's fetch works per page.
  return config.backend == BackendKind::kGpuOffload ? 1 : std::max(config.num_kv_heads, 1);
}

int64_t DiskTierPages(const RuntimeConfig& config, int64_t host_slots, const DiskTier& tier) {
  const int64_t per_page = std::max<int64_t>(config.num_kv_heads, 1) / DiskUnitHeads(config);
  const int64_t units = host_slots * per_page - 1 + tier.capacity();
  return std::max<int64_t>(units / per_page, 0);
}

DiskResidency::DiskResidency(const PageGeometry& g, int32_t num_pages, int32_t num_slots,
                             std::unique_ptr<DiskTier> tier, std::unique_ptr<HostArena> arena,
                             int32_t heads_per_unit)
    : g_(g),
      hpu_(heads_per_unit),
      num_slots_(num_slots),
      tier_(std::move(tier)),
      arena_(std::move(arena)),
      base_(static_cast<fp16_t*>(arena_->base())),
      policy_(num_pages),
      pager_(tier_.get(), &policy_, [this](int32_t slot) { return SlotAddress(slot); }),
      slot_of_block_(size_t(num_pages) * size_t(heads_per_unit), -1),
      mark_(size_t(num_pages), 0),
      in_flight_(size_t(num_pages), 0),
      writing_(size_t(num_pages), 0),
      cancel_(size_t(num_pages), 0),
      open_(size_t(num_pages), 0),
      page_of_slot_(size_t(num_slots), -1) {
  policy_.EnableValueOrder(16);
  free_slots_.reserve(size_t(num_slots));
  // Stack: slot 0 is handed out first.
  for (int32_t s = num_slots - 1; s >= 0; --s) free_slots_.push_back(s);
}

absl::StatusOr<std::unique_ptr<DiskResidency>> DiskResidency::Create(
    const PageGeometry& g, int32_t num_pages, int32_t num_slots, std::unique_ptr<DiskTier> tier,
    HostMemKind host_kind, int32_t heads_per_unit) {
  if (tier == nullptr) return absl::InvalidArgumentError("disk residency: no disk tier");
  if (heads_per_unit == 0) heads_per_unit = g.num_kv_heads;
  if (heads_per_unit < 1 || g.num_kv_heads % heads_per_unit != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "disk residency: %d blocks per unit do not divide %d KV heads", heads_per_unit,
        g.num_kv_heads));
  }
  const int64_t unit_bytes = int64_t(heads_per_unit) * g.FpBlockBytes();
  if (tier->record_bytes() != unit_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "disk residency: tier records are %d bytes, a unit is %d", tier->record_bytes(),
        unit_bytes));
  }
  if (num_slots < 1 || num_pages < 1 || int64_t(num_pages) > num_slots - 1 + tier->capacity()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "disk residency: %d pages need 1 <= pages <= slots - 1 + records (%d slots, %d records)",
        num_pages, num_slots, tier->capacity()));
  }
  auto arena = HostArena::Create(host_kind, g.FpBlockBytes(),
                                 int64_t(num_slots) * heads_per_unit, 2);
  if (!arena.ok()) return arena.status();
  return std::unique_ptr<DiskResidency>(new DiskResidency(
      g, num_pages, num_slots, std::move(tier), std::move(*arena), heads_per_unit));
}

DiskResidency::~DiskResidency() {
  // Reads ahead and writes behind use the arena.
  FinishReadAhead(nullptr);
  ReapWriteBehind(/*wait=*/true, nullptr);
}

void* DiskResidency::SlotAddress(int32_t slot) const {
  return base_ + int64_t(slot) * hpu_ * g_.FpBlockElems();
}

fp16_t* DiskResidency::HostPage(int32_t page) const {
  const PageLocation loc = policy_.GetLocation(page);
  return loc.on_host() ? static_cast<fp16_t*>(SlotAddress(loc.host_slot)) : nullptr;
}

fp16_t* DiskResidency::HostBlock(int64_t block) const {
  if (block < 0 || block >= int64_t(slot_of_block_.size())) return nullptr;
  const int32_t at = slot_of_block_[size_t(block)];
  return at < 0 ? nullptr : base_ + int64_t(at) * g_.FpBlockElems();
}

void DiskResidency::NoteChanged(int32_t page) {
  ++map_version_;
  changed_lo_ = std::min<int64_t>(changed_lo_, int64_t(page) * hpu_);
  changed_hi_ = std::max<int64_t>(changed_hi_, int64_t(page) * hpu_ + hpu_ - 1);
}

bool DiskResidency::AnyInFlight(absl::Span<const int32_t> pages) const {
  if (ahead_pages_.empty()) return false;
  for (const int32_t page : pages) {
    if (page >= 0 && page < num_pages() && in_flight_[size_t(page)]) return true;
  }
  return false;
}

bool DiskResidency::TakeChangedBlocks(int64_t* lo, int64_t* hi) {
  if (changed_hi_ < 0) return false;
  *lo = changed_lo_;
  *hi = changed_hi_;
  changed_lo_ = INT64_MAX;
  changed_hi_ = -1;
  return true;
}

void DiskResidency::Assign(int32_t page, int32_t slot) {
  NoteChanged(page);
  page_of_slot_[size_t(slot)] = page;
  for (int32_t j = 0; j < hpu_; ++j) {
    slot_of_block_[size_t(int64_t(page) * hpu_ + j)] = slot * hpu_ + j;
  }
}

void DiskResidency::ForgetFreedSlots(size_t from) {
  for (size_t i = from; i < free_slots_.size(); ++i) {
    const int32_t slot = free_slots_[i];
    const int32_t page = page_of_slot_[size_t(slot)];
    page_of_slot_[size_t(slot)] = -1;
    if (page < 0) continue;
    NoteChanged(page);
    for (int32_t j = 0; j < hpu_; ++j) slot_of_block_[size_t(int64_t(page) * hpu_ + j)] = -1;
  }
}

void DiskResidency::DropCleanCopies(int64_t n, absl::Span<const int32_t> in_use) {
  auto drop = [&](int32_t page) {
    const PageLocation loc = policy_.GetLocation(page);
    if (n > 0 && loc.on_host() && loc.on_disk() && pager_.MarkDirty(page).ok()) --n;
  };
  // Pages of this step stay on the host anyway: their copies are the cheapest to lose.
  for (const int32_t page : in_use) drop(page);
  for (int32_t slot = 0; slot < num_slots_ && n > 0; ++slot) {
    if (page_of_slot_[size_t(slot)] >= 0) drop(page_of_slot_[size_t(slot)]);
  }
}

absl::Status DiskResidency::Reserve(absl::Span<const int32_t> pages, DiskIoCounts* io,
                                    bool new_step, absl::Span<const int32_t> rows) {
  return ReserveImpl(pages, io, new_step, rows, /*for_append=*/false);
}

absl::Status DiskResidency::ReserveForAppend(absl::Span<const int32_t> pages,
                                             absl::Span<const uint8_t> open, DiskIoCounts* io) {
  if (!open.empty() && open.size() != pages.size()) {
    return absl::InvalidArgumentError("disk residency: open must be empty or one per page");
  }
  const absl::Status s = ReserveImpl(pages, io, /*new_step=*/true, {}, /*for_append=*/true);
  // Flags only steer victim choice: set even when the call failed part-way.
  for (size_t i = 0; i < pages.size(); ++i) {
    if (pages[i] >= 0 && pages[i] < num_pages()) SetOpen(pages[i], !open.empty() && open[i]);
  }
  return s;
}

void DiskResidency::SetOpen(int32_t page, bool open) {
  uint8_t& st = open_[size_t(page)];
  if (open) {
    if (st == 0) open_list_.push_back(page);
    st = 1;
  } else if (st == 1) {
    st = 2;  // still listed; Pins() drops it
    // Complete and immutable from now on: the next refill writes it behind.
    closed_.push_back(page);
  }
}

const std::vector<int32_t>& DiskResidency::Pins() {
  size_t w = 0;
  for (const int32_t page : open_list_) {
    uint8_t& st = open_[size_t(page)];
    if (st == 1) {
      open_list_[w++] = page;
    } else {
      st = 0;
    }
  }
  open_list_.resize(w);
  pins_.assign(open_list_.begin(), open_list_.end());
  for (const WriteBatch& batch : behind_) {
    pins_.insert(pins_.end(), batch.pages.begin(), batch.pages.end());
  }
  std::sort(pins_.begin(), pins_.end());
  return pins_;
}

absl::Status DiskResidency::EvictSlots(int64_t want, absl::Span<const int32_t> in_use) {
  // Dirty victims need free records; see the capacity note in the header. Records of writes
  // behind in flight come back (as clean copies that can be dropped) once reaped.
  if (tier_->num_free() < want) {
    ReapWriteBehind(/*wait=*/true, nullptr);
    if (tier_->num_free() < want) DropCleanCopies(want - tier_->num_free(), in_use);
  }
  const size_t from = free_slots_.size();
  absl::Status s = pager_.Evict(static_cast<int32_t>(want), step_, Pins(), &free_slots_);
  ForgetFreedSlots(from);
  const int64_t got = int64_t(free_slots_.size() - from);
  if (got < want && !pins_.empty() && (s.ok() || absl::IsResourceExhausted(s))) {
    // Soft pins: open units and units being written behind leave only when nothing else
    // can (a pool too small for the appends' open blocks still works, slowly).
    ReapWriteBehind(/*wait=*/true, nullptr);
    const size_t from2 = free_slots_.size();
    const absl::Status s2 = pager_.Evict(static_cast<int32_t>(want - got), step_, {}, &free_slots_);
    ForgetFreedSlots(from2);
    if (s2.ok()) s = s2;  // else the first failure says why (e.g. "disk tier full")
  }
  evicted_recent_ += int64_t(free_slots_.size() - from);
  return s;
}

bool DiskResidency::StandbyValid(int32_t page) const {
  // Still the clean, unused host unit it was when the refill set it aside: no GPU work
  // issued since reads it (every user Reserves it first, which touches it).
  const PageLocation loc = policy_.GetLocation(page);
  return loc.on_host() && loc.on_disk() && policy_.LastAccess(page) < standby_step_ &&
         open_[size_t(page)] != 1 && !writing_[size_t(page)];
}

int64_t DiskResidency::NumStandby() const {
  int64_t n = 0;
  for (const int32_t page : standby_) n += StandbyValid(page);
  return n;
}

void DiskResidency::TakeStandby(int64_t n, DiskIoCounts* io) {
  // In victim order (the refill lists them so): the least valuable first.
  const size_t from = free_slots_.size();
  int64_t dropped = 0;
  size_t i = 0;
  for (; i < standby_.size() && dropped < n; ++i) {
    const int32_t page = standby_[i];
    if (!StandbyValid(page)) continue;
    const PageLocation loc = policy_.GetLocation(page);
    free_slots_.push_back(loc.host_slot);
    (void)policy_.SetLocation(page, {-1, loc.disk_record});  // valid by construction
    ++dropped;
  }
  standby_.erase(standby_.begin(), standby_.begin() + std::ptrdiff_t(i));
  ForgetFreedSlots(from);
  if (io != nullptr) io->pages_dropped += dropped;
}

absl::Status DiskResidency::ReserveImpl(absl::Span<const int32_t> pages, DiskIoCounts* io,
                                        bool new_step, absl::Span<const int32_t> rows,
                                        bool for_append) {
  const auto t0 = std::chrono::steady_clock::now();
  if (int64_t(pages.size()) > num_slots_) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "needs %d pages in host memory at once but the host pool has %d page slots (raise "
        "host_pool_bytes, or lower top_p, the selector budget or the batch)",
        pages.size(), num_slots_));
  }
  if (!rows.empty() && rows.size() != pages.size()) {
    return absl::InvalidArgumentError("disk residency: rows must be empty or one per page");
  }
  // Distinct ids, in range (a mark per unit: a step lists tens of thousands).
  if (++mark_gen_ == 0) {
    std::fill(mark_.begin(), mark_.end(), 0);
    mark_gen_ = 1;
  }
  for (const int32_t page : pages) {
    if (page < 0 || page >= num_pages()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "disk residency: page %d out of range [0, %d)", page, num_pages()));
    }
    if (mark_[size_t(page)] == mark_gen_) {
      return absl::InvalidArgumentError("disk residency: a page is listed twice");
    }
    mark_[size_t(page)] = mark_gen_;
  }
  // Finished writes behind become clean copies (no wait, no slot moves).
  ReapWriteBehind(/*wait=*/false, io);
  // Reap a read-ahead only when this call needs it: one of its units is in flight, or slots
  // must be freed (the reaped units may then be victims like any other).
  if (!ahead_pages_.empty() &&
      (AnyInFlight(pages) || SlotsShortWith(pages, for_append) > 0)) {
    FinishReadAhead(io);
  }
  if (new_step) ++step_;
  if (absl::Status s = policy_.Touch(pages, step_); !s.ok()) return s;
  for (size_t i = 0; i < pages.size(); ++i) {
    policy_.AddValue(pages[i], rows.empty() ? 1 : std::max(rows[i], 0), step_);
  }

  const std::vector<int32_t> to_load = policy_.NeedsLoad(pages);
  std::vector<int32_t> fresh;
  for (const int32_t page : pages) {
    const PageLocation loc = policy_.GetLocation(page);
    if (!loc.on_host() && !loc.on_disk()) fresh.push_back(page);
  }
  const DiskPagerStats before = pager_.stats();
  absl::Status status;
  size_t loaded = 0, placed = 0;
  // Units placed after a spill displaced others: newcomers (value order, see the header).
  bool displaced = false;
  auto usable = [&] { return int64_t(free_slots_.size()); };
  // An append takes the units on standby before anything is evicted (no displacement: they
  // were set aside for it).
  if (for_append && !standby_.empty()) {
    const int64_t want = int64_t(to_load.size() + fresh.size()) - usable();
    if (want > 0) TakeStandby(want, io);
  }
  while (status.ok() && (loaded < to_load.size() || placed < fresh.size())) {
    if (usable() == 0) {
      displaced = true;
      const int64_t want = int64_t(to_load.size() - loaded + fresh.size() - placed);
      const size_t from = free_slots_.size();
      absl::Status s = EvictSlots(want, pages);
      // Partial progress on a short tier is fine: a later round frees the rest.
      if (!s.ok() && (free_slots_.size() == from || !absl::IsResourceExhausted(s))) {
        status = DiskIoError(s, "spilling pages to the disk tier");
      }
      continue;
    }
    const size_t n = std::min(size_t(usable()), to_load.size() - loaded);
    if (n > 0) {
      std::vector<int32_t> slots(free_slots_.end() - static_cast<std::ptrdiff_t>(n),
                                 free_slots_.end());
      free_slots_.resize(free_slots_.size() - n);
      const absl::Span<const int32_t> batch(to_load.data() + loaded, n);
      std::vector<int32_t> unused;
      const auto tl = std::chrono::steady_clock::now();
      const int64_t loaded_before = pager_.stats().pages_loaded;
      absl::Status s = pager_.Load(batch, slots, &unused);
      if (io != nullptr) {
        ++io->waits;
        io->ms_wait += MsSince(tl);
        io->bytes_read += (pager_.stats().pages_loaded - loaded_before) * tier_->record_bytes();
      }
      for (size_t i = 0; i < n; ++i) {
        const PageLocation loc = policy_.GetLocation(batch[i]);
        if (!loc.on_host()) continue;
        Assign(batch[i], loc.host_slot);
        policy_.SetTransient(batch[i], displaced);
      }
      free_slots_.insert(free_slots_.end(), unused.begin(), unused.end());
      loaded += n;
      if (!s.ok()) {
        status = DiskIoError(s, "loading pages from the disk tier (they stay on disk)");
        break;
      }
    }
    while (placed < fresh.size() && usable() > 0) {
      const int32_t slot = free_slots_.back();
      free_slots_.pop_back();
      const int32_t page = fresh[placed++];
      (void)policy_.SetLocation(page, {slot, -1});  // valid: page and slot in range
      Assign(page, slot);
      policy_.SetTransient(page, displaced);
    }
  }
  if (io != nullptr) {
    const DiskPagerStats& after = pager_.stats();
    io->pages_loaded += after.pages_loaded - before.pages_loaded;
    io->pages_written += after.pages_written - before.pages_written;
    io->pages_dropped += after.pages_clean - before.pages_clean;
    io->ms += MsSince(t0);
  }
  return status;
}

int64_t DiskResidency::SlotsShortWith(absl::Span<const int32_t> pages, bool standby) const {
  int64_t need = 0;
  for (const int32_t page : pages) need += !policy_.GetLocation(page).on_host();
  const int64_t have = int64_t(free_slots_.size()) + (standby ? NumStandby() : 0);
  return std::max<int64_t>(need - have, 0);
}

int64_t DiskResidency::SlotsShort(absl::Span<const int32_t> pages) const {
  return SlotsShortWith(pages, /*standby=*/true);
}

absl::Status DiskResidency::MarkDirty(absl::Span<const int32_t> pages) {
  // No reap: a read-ahead reads disk-only units, and this frees records of host units.
  for (const int32_t page : pages) {
    if (page >= 0 && page < num_pages() && writing_[size_t(page)]) {
      // Its write behind is in flight (the record cannot be freed under it): the record is
      // freed when reaped, and the unit stays dirty.
      cancel_[size_t(page)] = 1;
      continue;
    }
    if (absl::Status s = pager_.MarkDirty(page); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status DiskResidency::StartReadAhead(absl::Span<const int32_t> pages, int32_t max_pages,
                                           DiskIoCounts* io) {
  FinishReadAhead(io);
  std::vector<int32_t> want = policy_.NeedsLoad(pages);
  if (max_pages < 0) max_pages = 0;
  if (int64_t(want.size()) > max_pages) want.resize(size_t(max_pages));
  if (want.empty()) return absl::OkStatus();
  if (free_slots_.size() < want.size()) {
    // Low-value units make room as they would for a Reserve, but never those of the current
    // step (their slots may be read by the GPU right now), the resident units of `pages`
    // (the step being read ahead for uses them), open units, units being written behind or
    // units on standby for the appends. A failure here only shortens the read-ahead: every
    // unit stays where its data is.
    const int32_t n = int32_t(want.size() - free_slots_.size());
    if (tier_->num_free() < n) DropCleanCopies(n - tier_->num_free(), {});
    std::vector<int32_t> pinned(pages.begin(), pages.end());
    const std::vector<int32_t>& pins = Pins();
    pinned.insert(pinned.end(), pins.begin(), pins.end());
    pinned.insert(pinned.end(), standby_.begin(), standby_.end());
    const size_t from = free_slots_.size();
    const int64_t written = pager_.stats().pages_written;
    const int64_t clean = pager_.stats().pages_clean;
    (void)pager_.Evict(n, step_, pinned, &free_slots_);
    ForgetFreedSlots(from);
    evicted_recent_ += int64_t(free_slots_.size() - from);
    if (io != nullptr) {
      io->pages_written += pager_.stats().pages_written - written;
      io->pages_dropped += pager_.stats().pages_clean - clean;
    }
    if (free_slots_.size() < want.size()) want.resize(free_slots_.size());
  }
  if (want.empty()) return absl::OkStatus();
  std::vector<DiskReadOp> ops;
  ops.reserve(want.size());
  ahead_slots_.clear();
  ahead_records_.clear();
  for (const int32_t page : want) {
    const int32_t slot = free_slots_.back();
    free_slots_.pop_back();
    const int64_t record = policy_.GetLocation(page).disk_record;
    ahead_slots_.push_back(slot);
    ahead_records_.push_back(record);
    ops.push_back({record, SlotAddress(slot)});
  }
  absl::StatusOr<DiskTier::Ticket> ticket = tier_->ReadAsync(ops);
  if (!ticket.ok()) {
    // Refused as a whole (no I/O started): the slots go back, the units stay on disk.
    free_slots_.insert(free_slots_.end(), ahead_slots_.begin(), ahead_slots_.end());
    ahead_slots_.clear();
    ahead_records_.clear();
    return absl::OkStatus();
  }
  ahead_ticket_ = *ticket;
  ahead_pages_ = std::move(want);
  for (const int32_t page : ahead_pages_) in_flight_[size_t(page)] = 1;
  if (io != nullptr) io->pages_read_ahead += int64_t(ahead_pages_.size());
  return absl::OkStatus();
}

void DiskResidency::FinishReadAhead(DiskIoCounts* io) {
  if (ahead_pages_.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<bool> done = tier_->Poll(ahead_ticket_);
  std::vector<absl::Status> per_op;
  (void)tier_->Wait(ahead_ticket_, &per_op);  // per-op statuses below
  if (io != nullptr && done.ok() && !*done) {
    ++io->waits;
    io->ms_wait += MsSince(t0);
  }
  for (size_t i = 0; i < ahead_pages_.size(); ++i) {
    const int32_t page = ahead_pages_[i], slot = ahead_slots_[i];
    in_flight_[size_t(page)] = 0;
    const bool ok = i < per_op.size() && per_op[i].ok();
    // The unit cannot have moved: every call that could move it reaps first.
    if (!ok || policy_.GetLocation(page).disk_record != ahead_records_[i]) {
      free_slots_.push_back(slot);
      continue;
    }
    (void)policy_.SetLocation(page, {slot, ahead_records_[i]});  // valid: in range
    Assign(page, slot);
    if (io != nullptr) {
      ++io->pages_read_ahead_done;
      io->bytes_read += tier_->record_bytes();
    }
  }
  ahead_pages_.clear();
  ahead_slots_.clear();
  ahead_records_.clear();
  ahead_ticket_ = 0;
}

void DiskResidency::RefillFreeSlots(DiskIoCounts* io) {
  ReapWriteBehind(/*wait=*/false, io);
  if (free_target_ <= 0) {
    standby_.clear();
    return;
  }
  // Units on standby stay valid while unused; those the step used are no longer set aside.
  standby_step_ = step_;
  standby_.erase(std::remove_if(standby_.begin(), standby_.end(),
                                [&](int32_t page) { return !StandbyValid(page); }),
                 standby_.end());
  // A smaller reserve (a prefill chunk set a large one): the rest are ordinary units again.
  if (int64_t(standby_.size()) > free_target_) standby_.resize(size_t(free_target_));
  const int64_t need =
      std::max<int64_t>(free_target_ - int64_t(free_slots_.size() + standby_.size()), 0);
  // Victims to clean ahead besides: the reserve's worth plus twice what was evicted since
  // the last refill (the next evictions pick from the same end of the victim order).
  const int64_t ahead =
      std::min<int64_t>(free_target_ + 2 * evicted_recent_, std::max(num_slots_ / 8, 1));
  evicted_recent_ = 0;
  // In victim order: the first `need` go on standby if clean (they stay resident and
  // readable until an append takes their slots); dirty ones among the first need + ahead
  // are written behind (on standby at a later refill, or dropped by an eviction).
  std::vector<int32_t> pinned(Pins());
  pinned.insert(pinned.end(), standby_.begin(), standby_.end());
  const std::vector<int32_t> victims =
      policy_.PickVictims(int32_t(need + ahead), step_, pinned);
  std::vector<int32_t> dirty;
  for (size_t i = 0; i < victims.size(); ++i) {
    const int32_t page = victims[i];
    if (!policy_.GetLocation(page).on_disk()) {
      dirty.push_back(page);
    } else if (int64_t(i) < need) {
      standby_.push_back(page);
    }
  }
  // The next step's evictions see two more steps of the clock (its append, its decode):
  // more units have left the working set by then (SpillPolicy::set_cycle_steps), so the
  // dirty ones are written behind now too (reading a unit the GPU reads is harmless).
  for (const int32_t page : policy_.PickVictims(int32_t(ahead), step_ + 2, pinned)) {
    if (!policy_.GetLocation(page).on_disk()) dirty.push_back(page);
  }
  // Blocks the appends completed since the last refill: written once, they are dropped for
  // free whenever they become victims (a decode-time block is, once it leaves the kept sets).
  for (const int32_t page : closed_) {
    const PageLocation loc = policy_.GetLocation(page);
    if (loc.on_host() && !loc.on_disk() && open_[size_t(page)] != 1 && !writing_[size_t(page)]) {
      dirty.push_back(page);
    }
  }
  closed_.clear();
  std::sort(dirty.begin(), dirty.end());
  dirty.erase(std::unique(dirty.begin(), dirty.end()), dirty.end());
  // Records stay for the dirty victims of Reserve (see the capacity note): write behind only
  // while the tier has twice the batch free.
  if (!dirty.empty() && tier_->num_free() >= 2 * int64_t(dirty.size())) {
    StartWriteBehind(dirty, io);
  }
}

void DiskResidency::StartWriteBehind(const std::vector<int32_t>& pages, DiskIoCounts* io) {
  std::vector<const void*> src;
  src.reserve(pages.size());
  for (const int32_t page : pages) src.push_back(SlotAddress(policy_.GetLocation(page).host_slot));
  WriteBatch batch;
  absl::StatusOr<DiskTier::Ticket> ticket = tier_->WriteAsync(src, &batch.records);
  if (!ticket.ok() || batch.records.size() != pages.size()) return;  // best effort: stay dirty
  batch.ticket = *ticket;
  batch.pages = pages;
  for (const int32_t page : pages) writing_[size_t(page)] = 1;
  num_writing_ += int64_t(pages.size());
  behind_.push_back(std::move(batch));
  if (io != nullptr) io->pages_written_behind += int64_t(pages.size());
}

void DiskResidency::ReapWriteBehind(bool wait, DiskIoCounts* io) {
  size_t kept = 0;
  for (size_t b = 0; b < behind_.size(); ++b) {
    WriteBatch& batch = behind_[b];
    if (!wait) {
      absl::StatusOr<bool> done = tier_->Poll(batch.ticket);
      if (done.ok() && !*done) {
        if (kept != b) behind_[kept] = std::move(batch);
        ++kept;
        continue;
      }
    }
    std::vector<absl::Status> per_op;
    (void)tier_->Wait(batch.ticket, &per_op);  // per-op statuses below
    int64_t cleaned = 0;
    for (size_t i = 0; i < batch.pages.size(); ++i) {
      const int32_t page = batch.pages[i];
      const int64_t record = batch.records[i];
      writing_[size_t(page)] = 0;
      const bool cancelled = cancel_[size_t(page)] != 0;
      cancel_[size_t(page)] = 0;
      // A failed write gave its record back; the unit stays dirty on the host (nothing
      // lost: a later eviction writes it, and reports the error if the disk still fails).
      if (i >= per_op.size() || !per_op[i].ok()) continue;
      const PageLocation loc = policy_.GetLocation(page);
      if (cancelled || !loc.on_host() || loc.on_disk()) {
        (void)tier_->Free({record});  // changed since: the copy is stale
        continue;
      }
      // A clean copy: evicting the unit is now dropping it.
      (void)policy_.SetLocation(page, {loc.host_slot, record});  // valid: in range
      ++cleaned;
    }
    num_writing_ -= int64_t(batch.pages.size());
    if (io != nullptr) io->pages_cleaned_behind += cleaned;
  }
  behind_.resize(kept);
}

void DiskResidency::FinishWriteBehind(DiskIoCounts* io) { ReapWriteBehind(/*wait=*/true, io); }

absl::Status DiskResidency::ReadRows(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const {
  const int32_t per_page = g_.num_kv_heads / hpu_;  // units of one logical page
  std::vector<fp16_t> buffer;
  const size_t row_bytes = sizeof(fp16_t) * size_t(g_.head_dim);
  for (int32_t u = 0; u < per_page; ++u) {
    const int32_t unit = page * per_page + u;
    const PageLocation loc = policy_.GetLocation(unit);
    const fp16_t* blocks = nullptr;
    if (loc.on_host()) {
      blocks = static_cast<const fp16_t*>(SlotAddress(loc.host_slot));
    } else if (loc.on_disk()) {
      buffer.resize(size_t(hpu_) * size_t(g_.FpBlockElems()));
      const DiskReadOp op{loc.disk_record, buffer.data()};
      if (absl::Status s = tier_->Read({op}); !s.ok()) {
        return DiskIoError(s, absl::StrFormat("reading page %d from the disk tier", page));
      }
      blocks = buffer.data();
    } else {
      return absl::FailedPreconditionError(
          absl::StrFormat("page %d holds no data (not written yet)", page));
    }
    const FpKvView local{const_cast<fp16_t*>(blocks), nullptr};
    for (int32_t j = 0; j < hpu_; ++j) {
      const int32_t h = u * hpu_ + j;
      for (int32_t r = 0; r < rows; ++r) {
        const int64_t at = (int64_t(r) * g_.num_kv_heads + h) * g_.head_dim;
        std::memcpy(k + at, local.K(g_, j, r), row_bytes);
        std::memcpy(v + at, local.V(g_, j, r), row_bytes);
      }
    }
  }
  return absl::OkStatus();
}

void DiskResidency::Release(int32_t page) {
  if (page < 0 || page >= num_pages()) return;
  if (in_flight_[size_t(page)]) FinishReadAhead(nullptr);  // its record is being read
  if (writing_[size_t(page)]) ReapWriteBehind(/*wait=*/true, nullptr);  // its slot is
  SetOpen(page, false);
  const PageLocation loc = policy_.GetLocation(page);
  // Fails only for a record with I/O in flight, and all I/O is waited for inside the calls.
  absl::StatusOr<int32_t> slot = pager_.Release(page);
  if (!slot.ok()) return;
  if (loc.on_host()) {
    free_slots_.push_back(loc.host_slot);
    ForgetFreedSlots(free_slots_.size() - 1);
  }
}

int64_t DiskResidency::host_bytes_used() const {
  return int64_t(policy_.num_on_host()) * unit_bytes();
}

absl::Status DiskResidency::CheckConsistency() const {
  if (absl::Status s = policy_.CheckConsistency(); !s.ok()) return s;
  std::vector<bool> is_free(size_t(num_slots_), false);
  // Slots with a read-ahead in flight are neither free nor assigned yet.
  for (const int32_t slot : ahead_slots_) is_free[size_t(slot)] = true;
  for (const int32_t slot : free_slots_) {
    if (slot < 0 || slot >= num_slots_ || is_free[size_t(slot)]) {
      return absl::InternalError(absl::StrFormat("free slot %d out of range or listed twice",
                                                 slot));
    }
    is_free[size_t(slot)] = true;
  }
  for (const int32_t slot : ahead_slots_) is_free[size_t(slot)] = page_of_slot_[size_t(slot)] < 0;
  int32_t on_host = 0;
  for (int32_t slot = 0; slot < num_slots_; ++slot) {
    const int32_t page = page_of_slot_[size_t(slot)];
    if (is_free[size_t(slot)] != (page < 0)) {
      return absl::InternalError(absl::StrFormat("slot %d: free %d but page %d", slot,
                                                 int(is_free[size_t(slot)]), page));
    }
    if (page < 0) continue;
    ++on_host;
    if (policy_.GetLocation(page).host_slot != slot) {
      return absl::InternalError(absl::StrFormat("slot %d holds page %d, whose slot is %d", slot,
                                                 page, policy_.GetLocation(page).host_slot));
    }
  }
  if (on_host != policy_.num_on_host()) {
    return absl::InternalError(absl::StrFormat("%d slots used, %d pages on the host", on_host,
                                               policy_.num_on_host()));
  }
  int64_t in_flight = 0;
  for (int32_t page = 0; page < num_pages(); ++page) {
    in_flight += in_flight_[size_t(page)];
    const PageLocation loc = policy_.GetLocation(page);
    for (int32_t j = 0; j < hpu_; ++j) {
      const int32_t want = loc.on_host() ? loc.host_slot * hpu_ + j : -1;
      const int32_t got = slot_of_block_[size_t(int64_t(page) * hpu_ + j)];
      if (got != want) {
        return absl::InternalError(absl::StrFormat(
            "page %d block %d: slot_of_block %d, want %d", page, j, got, want));
      }
    }
  }
  int64_t writing = 0;
  for (int32_t page = 0; page < num_pages(); ++page) {
    if (!writing_[size_t(page)]) continue;
    ++writing;
    const PageLocation loc = policy_.GetLocation(page);
    if (!loc.on_host() || loc.on_disk()) {
      return absl::InternalError(absl::StrFormat(
          "unit %d is written behind but is not a dirty host unit (slot %d, record %d)", page,
          loc.host_slot, loc.disk_record));
    }
  }
  if (writing != num_writing_) {
    return absl::InternalError(absl::StrFormat("%d units marked written behind, %d in flight",
                                               writing, num_writing_));
  }
  if (in_flight != int64_t(ahead_pages_.size())) {
    return absl::InternalError(absl::StrFormat("%d units marked in flight, %d read ahead",
                                               in_flight, ahead_pages_.size()));
  }
  return absl::OkStatus();
}

}  // namespace twl
