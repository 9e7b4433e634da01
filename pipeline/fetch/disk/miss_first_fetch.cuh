// Stage 3 of the decode step, FETCH, for the offload store over a disk tier with the GPU row
// cache (pipeline/fetch/row_cache/): the cache's plan runs first, and only the blocks of the
// rows it MISSES are made resident in the pinned pool, since those are the only rows the step
// reads from the pool (the copy into row slots, or the attention in place); rows the GPU
// cache holds never touch the pool. Why: at a serving loop's 0.999 hits, making every kept
// block resident (ResidentFetch: the kept lists read back, ~70k blocks reserved per
// layer-step) was all of the 16.7 ms of an H200 layer-step, although the GPU held the rows.
//
// Per group: the mark half of the plan (hits stamped, misses claimed) lists the distinct
// blocks of the missed rows in pinned mapped memory (RowMissReport: each block once per
// step); the host reads the report once the mark has run and, only when it lists blocks,
// hands them to the store (disk reads, victims, the pool map's upload on the fetch stream);
// then the plan's other half (victims, copy) and the attention run. A step whose groups miss
// nothing does no residency work at all: no Reserve, no map upload, no read-back of the
// kept lists (one small event wait per group on the mark, which the host does while the GPU
// runs the next group's prune or the previous group's attention; see WaitFetched).
// A report that overflows its capacity (a cold cache: more missed blocks than pool slots)
// falls back to the kept lists (Misses::complete false).
//
// Order: the executor calls Fetch(g) after group g's prune and WaitFetched(g) before its
// attention, Fetch(g + 1) in between. Fetch(g) records the prune and enqueues g's mark only
// when g - 1's plan is complete (one miss list per cache); WaitFetched(g) waits on the host
// for g's mark, has the store act on the report, completes g's plan, then enqueues the mark
// of g + 1 if it was deferred. So the host wait for g overlaps g + 1's prune on the GPU.
//
// Guarantees kept: blocks move only in the store's callback, after this step's prune (so
// after every earlier step and append on the device), and a block a running group reads
// (reported earlier in the step) is protected by the same residency step.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "cache/host_arena.h"
#include "gpu/device.h"
#include "pipeline/cuda/step_events.cuh"
#include "pipeline/fetch/fetch.cuh"
#include "pipeline/fetch/row_cache/row_cache_fetch.cuh"

namespace twl::pipeline_cuda {

// Buffers of the miss reports, owned by the store for its lifetime: per block the stamp of
// the step that last reported it (device), the report (pinned, mapped), per group events.
class MissReportState {
 public:
  MissReportState() = default;
  MissReportState(const MissReportState&) = delete;
  MissReportState& operator=(const MissReportState&) = delete;
  ~MissReportState();

  // `num_blocks` blocks, reports of up to `capacity` blocks per group, `max_groups` groups.
  absl::Status Init(int64_t num_blocks, int32_t capacity, int32_t max_groups);
  // A new decode step: a new stamp (all blocks reportable again). Nothing on the device may
  // still be marking (the previous step's marks were waited for by its WaitFetched calls).
  absl::Status NewStep();
  // The report of the group being marked (see RowMissReport).
  RowMissReport Report() const;
  // Host view of the last report.
  int32_t count() const { return *static_cast<volatile const int32_t*>(host_); }
  const int32_t* blocks() const { return host_ + 1; }
  const int32_t* rows() const { return host_ + 1 + capacity_; }
  int32_t capacity() const { return capacity_; }
  // Zeroes the host-visible count before a mark (an empty group launches no kernel).
  void ClearCount() { host_[0] = 0; }
  cudaEvent_t pruned(int32_t i) const { return pruned_[size_t(i)]; }
  cudaEvent_t marked(int32_t i) const { return marked_[size_t(i)]; }
  int32_t max_groups() const { return int32_t(pruned_.size()); }

 private:
  gpu::DeviceBuffer stamps_, count_;
  std::unique_ptr<HostArena> report_;  // [1 + 2 * capacity] int32: count, blocks, rows
  int32_t* host_ = nullptr;
  int32_t* device_ = nullptr;  // device address of host_
  int32_t capacity_ = 0;
  int64_t num_blocks_ = 0;
  uint32_t stamp_ = 0;
  std::vector<cudaEvent_t> pruned_, marked_;
};

class MissFirstFetch final : public ForwardingFetch {
 public:
  // What a group's plan missed: `count` distinct blocks (new in this step) with a lower
  // bound of their missed rows; complete false: the report overflowed, and the store must
  // treat every block of the group's kept lists as needed.
  struct Misses {
    const int32_t* blocks = nullptr;
    const int32_t* rows = nullptr;
    int32_t count = 0;
    bool complete = true;
  };
  // Called on the host after the group's mark (and prune) completed, only when it missed
  // something (count > 0 or an incomplete report): makes the blocks resident and enqueues
  // on `fetch` (the cache's stream) what the copy and the attention must see after it.
  using MakeResident = std::function<absl::Status(int32_t index, const SeqGroup& group,
                                                  const KeptView& kept, const Misses& misses,
                                                  cudaStream_t fetch)>;

  // One per decode step, after state->NewStep().
  MissFirstFetch(RowCacheFetch* rows, cudaStream_t fetch_stream, MissReportState* state,
                 MakeResident make_resident)
      : ForwardingFetch(rows), rows_(rows), fetch_(fetch_stream), state_(state),
        make_resident_(std::move(make_resident)) {}

  // A group marked but not completed (the step failed: the store's callback, or a later
  // stage) gives its claims back, so that no row stays claimed (read in place, unreported).
  ~MissFirstFetch() override;
  MissFirstFetch(const MissFirstFetch&) = delete;
  MissFirstFetch& operator=(const MissFirstFetch&) = delete;

  // Groups that reported misses in this step (telemetry / tests).
  int32_t groups_with_misses() const { return groups_with_misses_; }

  absl::Status Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                     const BatchView& batch, const KeptView& kept, cudaStream_t compute,
                     const cudaEvent_t* marks) override;
  absl::Status WaitFetched(int32_t index, cudaStream_t compute) override;

 private:
  struct Pending {
    SeqGroup group;
    PageGeometry g;
    BatchView batch;
    KeptView kept;
    bool timed = false;
    cudaEvent_t marks[kNumGroupEvents] = {};  // copies: the executor reuses its array
    bool fetched = false;  // Fetch called
    bool marked = false;   // its mark enqueued
  };
  absl::Status Mark(int32_t index);

  RowCacheFetch* rows_;
  cudaStream_t fetch_;
  MissReportState* state_;
  MakeResident make_resident_;
  std::vector<Pending> pending_;
  int32_t completed_ = 0;  // groups whose plan is complete (their WaitFetched ran)
  int32_t groups_with_misses_ = 0;
};

}  // namespace twl::pipeline_cuda
