// The GPU offload backend's residency calls (see offload_disk_steps.h).
#include "runtime/offload_disk_steps.h"

#include <algorithm>

#include "runtime/disk_io_status.h"

namespace twl {

OffloadDiskSteps::OffloadDiskSteps(DiskResidency* disk, int32_t num_layers, bool never_wait)
    : disk_(disk), never_wait_(never_wait) {
  const int64_t layers = std::max(num_layers, 1);
  disk_->set_decay_steps(8 * layers);
  // A pass over the layers is two Reserve steps per layer (append, decode): at a layer's
  // decode the blocks it kept only last time were used 2L steps ago, every other layer's
  // kept blocks at most 2L - 2 ago. (A loop of decodes alone: about two passes.)
  if (never_wait_) disk_->set_cycle_steps(2 * layers - 1);
}

absl::Status OffloadDiskSteps::Append(absl::Span<const int32_t> blocks,
                                      absl::Span<const uint8_t> open, const Quiesce& quiesce,
                                      DiskIoCounts* io) {
  // The reserve the refills keep for the appends: twice this chunk's blocks (a decode-time
  // append lists one page per sequence; at most that many are fresh), within a 16th of the
  // pool.
  if (never_wait_) {
    disk_->set_append_reserve(int32_t(std::min<int64_t>(2 * int64_t(blocks.size()),
                                                        disk_->num_slots() / 16)));
  }
  // Blocks move between the pinned slots and the disk only while the GPU touches none. A
  // chunk whose blocks are resident or fit in free slots moves none: it neither waits for
  // the device nor for a read-ahead. A chunk that must spill waits for every earlier step
  // and append first (their kernels may read or write the victims' slots).
  if (disk_->SlotsShort(blocks) > 0) {
    if (absl::Status s = quiesce(); !s.ok()) return s;
  }
  if (absl::Status s = disk_->ReserveForAppend(
          blocks, never_wait_ ? open : absl::Span<const uint8_t>(), io);
      !s.ok()) {
    return PrefixStatus(s, "append: ");
  }
  return disk_->MarkDirty(blocks);
}

void OffloadDiskSteps::BeginStep(int32_t layer) {
  step_io_ = DiskIoCounts{};
  step_calls_ = StepCalls{};
  if (have_last_layer_) next_layer_[last_layer_] = layer;
  last_layer_ = layer;
  have_last_layer_ = true;
  layer_ = layer;
  step_blocks_.clear();
  deferred_blocks_.clear();
  deferred_rows_.clear();
  step_reserved_ = false;
}

absl::Status OffloadDiskSteps::Group(int32_t /*index*/, absl::Span<const int32_t> blocks,
                                     absl::Span<const int32_t> rows, bool* moved) {
  *moved = false;
  ++step_calls_.groups;
  step_calls_.blocks += int64_t(blocks.size());
  step_blocks_.insert(step_blocks_.end(), blocks.begin(), blocks.end());
  // Every block resident (the steady state when the kept sets fit the pool): nothing moves
  // and the device map is current, so the fetch may run at once; the bookkeeping waits
  // until something could evict (FlushDeferred).
  const absl::Span<const int32_t> map = disk_->slot_of_block();
  bool all_resident = true;
  for (const int32_t b : blocks) {
    if (map[size_t(b)] < 0) {
      all_resident = false;
      break;
    }
  }
  if (all_resident) {
    deferred_blocks_.insert(deferred_blocks_.end(), blocks.begin(), blocks.end());
    deferred_rows_.insert(deferred_rows_.end(), rows.begin(), rows.end());
    return absl::OkStatus();
  }
  // The first Reserve starts the step (earlier steps are done: this prune came after them
  // on the device); later ones keep the earlier groups' blocks in place (their gathers and
  // attention may be running), the deferred groups' first.
  if (absl::Status s = FlushDeferred(); !s.ok()) return s;
  ++step_calls_.reserves;
  const absl::Status reserved = disk_->Reserve(blocks, &step_io_, !step_reserved_, rows);
  step_reserved_ = true;
  *moved = true;
  return DiskIoError(reserved, "decode: reading kept blocks from the disk tier");
}

absl::Status OffloadDiskSteps::FlushDeferred() {
  if (deferred_blocks_.empty()) return absl::OkStatus();
  // Resident blocks only (a Reserve of this step would have flushed before moving any):
  // touches and values, no I/O.
  ++step_calls_.reserves;
  const absl::Status s =
      disk_->Reserve(deferred_blocks_, &step_io_, !step_reserved_, deferred_rows_);
  step_reserved_ = true;
  deferred_blocks_.clear();
  deferred_rows_.clear();
  return DiskIoError(s, "decode: reading kept blocks from the disk tier");
}

absl::Status OffloadDiskSteps::EndStep() {
  // The step's blocks are protected before the read-ahead picks victims.
  if (absl::Status s = FlushDeferred(); !s.ok()) return s;
  // Victims now are units no GPU work reads (not of this step): the next appends' slots.
  if (never_wait_) disk_->RefillFreeSlots(&step_io_);
  kept_by_layer_[layer_] = step_blocks_;
  auto next = next_layer_.find(layer_);
  if (next == next_layer_.end()) return absl::OkStatus();
  auto blocks = kept_by_layer_.find(next->second);
  if (blocks == kept_by_layer_.end()) return absl::OkStatus();
  // Room: the slots this step does not use (its blocks stay where the GPU reads them).
  const int32_t room = disk_->num_slots() - int32_t(step_blocks_.size());
  // Best effort: a failure only means the next step reads the blocks itself.
  (void)disk_->StartReadAhead(blocks->second, room, &step_io_);
  return absl::OkStatus();
}

}  // namespace twl
