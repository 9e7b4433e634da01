// Stage 3 of the decode step, FETCH, for the offload store with a GPU cache of single rows
// (one token's K row and V row of one KV head) instead of whole blocks: the policy of
// cache/row_cache_policy.h, run per pipeline group on the fetch stream after the group's
// prune (cuda/row_plan.h: hits stamped, misses claimed, victims from the clock hand, rows
// copied from the mapped pinned pool, then published). The attention reads every kept row
// through slot_of_row (FpKvView row mode); rows without a slot are read in place from the
// mapped pool, as with the block cache.
// Why: top-p keeps ~1-4.5 rows of a 16-row block at long context, so caching blocks holds
// 3.5-16x the bytes the attention reads and the kept blocks of all layers overflow the cache;
// their kept rows fit, and a serving loop's kept rows change little from step to step.
// Owns: the row slots, slot_of_row / row_of_slot / last_use / hand, the miss list, per-group
// counters and per-unit counts. Coherence through the OffloadCacheFetch calls (rows of freed
// pages and appended rows are invalidated, never mirrored: rows are immutable once written).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gpu/device.h"
#include "pipeline/fetch/offload_cache.cuh"
#include "pipeline/fetch/row_cache/cuda/row_plan.h"

namespace twl::pipeline_cuda {

// Device memory of one user of the plan: the store's eager steps, or one bound batch (whose
// captured steps need pointers that never change, so it owns its own). Per group: a counters
// record and a ready flag; the plan's running sums (zero between plans); per unit: resident
// and kept rows, and the running hits (zero between plans). One allocation, zero-filled.
class RowPlanBuffers {
 public:
  // Room for `units` units and `max_groups` groups; grows only (a growth waits for the device:
  // queued plans may use the old memory) and zero-fills.
  absl::Status Reserve(int64_t units, int32_t max_groups);
  DeviceRowCounters* counters() const { return buf_.as<DeviceRowCounters>(); }
  DeviceRowWork* work() const {
    return reinterpret_cast<DeviceRowWork*>(counters() + groups_);
  }
  uint32_t* ready(int32_t group) const {
    return reinterpret_cast<uint32_t*>(work() + 1) + group;
  }
  int32_t* unit_hits() const { return reinterpret_cast<int32_t*>(ready(groups_)); }
  int32_t* unit_rows() const { return unit_hits() + units_; }
  int32_t* unit_work() const { return unit_rows() + units_; }
  int32_t max_groups() const { return groups_; }
  // Host side, per group: whether its last plan sets its ready flag (a plan in halves with a
  // miss report does not: its attention waits for the complete's event).
  bool flagged(int32_t group) const { return flagged_[size_t(group)] != 0; }
  void set_flagged(int32_t group, bool on) { flagged_[size_t(group)] = on ? 1 : 0; }

 private:
  gpu::DeviceBuffer buf_;
  std::vector<uint8_t> flagged_;
  int64_t units_ = 0;
  int32_t groups_ = 0;
};

class RowCacheFetch final : public OffloadCacheFetch {
 public:
  RowCacheFetch() = default;
  RowCacheFetch(const RowCacheFetch&) = delete;
  RowCacheFetch& operator=(const RowCacheFetch&) = delete;
  ~RowCacheFetch() override;  // the owner has synchronized the device before

  // Device bytes per row slot: the K and V rows, row_of_slot, last_use, its place on the
  // free stack, a miss-list entry.
  static int64_t SlotBytes(const PageGeometry& g) {
    return int64_t(g.head_dim) * 2 * 2 + 8 + 4 + 4 + int64_t(sizeof(RowFetch));
  }
  // Bytes of the row map for `num_blocks` blocks.
  static int64_t MapBytes(const PageGeometry& g, int64_t num_blocks) {
    return num_blocks * g.page_size * 4;
  }
  // Row slots that `budget_bytes` of GPU memory hold next to the map (at least 64).
  static int32_t SlotsFor(const PageGeometry& g, int64_t num_blocks, int64_t budget_bytes);

  // `num_slots` row slots for the rows of `num_blocks` blocks of `source` (the mapped pool);
  // `max_groups` pipeline groups per step.
  absl::Status Init(const PageGeometry& g, int64_t num_blocks, int32_t num_slots,
                    const FetchSource& source, int32_t max_groups);
  const DeviceRowCache& state() const { return cache_; }
  uint32_t window() const { return window_; }
  void SetWindow(uint32_t steps) { window_ = steps; }
  // Early attention (the default without a disk tier; TWL_ROW_EARLY_ATTEND=0 at the
  // backend's creation turns it off): group g's
  // attention waits only for group g-1's fetch, not its own, and reads whatever its plan has
  // not made resident yet in place. Sound because a row it finds resident is stamped by its
  // own plan before that plan takes victims (so no later plan of the step evicts it), rows
  // are published only after their copy, and only the previous group's plan could evict an
  // unstamped row it reads. The store must then end the step after the last fetch (the
  // compute stream waits for the fetch stream), since the next step overwrites the kept
  // lists the plan reads. Gains: the last group's plan overlaps its attention; costs: a
  // group with many misses reads them over PCIe twice (in place and by the copy).
  void SetEarlyAttend(bool on) { early_attend_ = on; }
  bool early_attend() const { return early_attend_; }
  // Whether a group's attention waits for its plan through a stream flag (stream_flags.cuh:
  // set by the mark kernel when every kept row is resident, else by the copy's last block)
  // rather than for the plan's last kernel (an event). Off by default (measured slower on
  // the H200); TWL_ROW_PLAN_WAIT=flag at Init turns it on where the driver allows it.
  bool flag_wait() const { return flag_wait_; }
  void SetFlagWait(bool on);

  // OffloadCacheFetch.
  std::string transport_name() const override { return "row gather"; }
  void SetPath(FetchPath) override {}  // rows always move by the SM-driven copy
  // Rows stay while used within two passes over the layers.
  void SetSharingLayers(int32_t layers) override {
    window_ = uint32_t(2 * (layers < 1 ? 1 : layers));
  }
  void AttachStream(cudaStream_t fetch_stream) override { stream_ = fetch_stream; }
  absl::Status GrowStep(int64_t units, size_t out_bytes) override;
  int32_t num_slots() const override { return cache_.num_slots; }
  int64_t device_bytes() const override;
  int64_t fetch_unit_bytes() const override { return int64_t(g_.head_dim) * 2 * 2; }
  const char* granularity() const override { return "rows"; }
  absl::Status InvalidatePages(const int32_t* d_pages, int32_t num_pages,
                               cudaStream_t stream) override;
  absl::Status MirrorTokens(const fp16_t* mapped_pool, const int32_t* d_page_id,
                            const int32_t* d_row, int32_t num_tokens,
                            cudaStream_t stream) override;
  absl::Status MirrorSegments(const fp16_t* mapped_pool, const AppendSegment* d_segments,
                              int32_t num_segments, cudaStream_t stream) override;
  bool appends_need_mirror() const override { return false; }
  const DeviceRowCache* append_insert() const override { return &cache_; }
  const void* counters() const override { return own_.counters(); }
  size_t record_bytes() const override { return sizeof(DeviceRowCounters); }
  CacheCounters ReadRecord(const void* host_record, int32_t* error) const override;
  int32_t* unit_hits() const override { return own_.unit_hits(); }
  int32_t* unit_blocks() const override { return own_.unit_rows(); }
  // A fetch stage for a bound batch of `units` units: the same cache and plan over buffers of
  // its own (RowPlanBuffers), so that a captured step's pointers never change.
  absl::StatusOr<std::unique_ptr<CudaFetch>> MakeBoundFetch(int64_t units) override;

  // CudaFetch: group `index`'s plan + copy on the fetch stream, after its prune on `compute`.
  // Group 0 starts a step (the stamp that protects the step's rows).
  absl::Status Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                     const BatchView& batch, const KeptView& kept, cudaStream_t compute,
                     const cudaEvent_t* marks) override;
  absl::Status WaitFetched(int32_t index, cudaStream_t compute) override;
  // Fetch in two halves, for a store whose pool blocks may be absent (a disk tier:
  // pipeline/fetch/disk/miss_first_fetch.cuh): FetchMark, once `pruned` (recorded after the
  // group's prune) has happened, stamps the hits, claims the misses and reports their blocks
  // to `report`; FetchComplete takes victims and copies. Between the two the store makes the
  // reported blocks resident; no other group may be marked (one miss list). Fetch() is
  // FetchMark (no report) then FetchComplete. The halves use the stage's own buffers and no
  // ready flag (the host is in the loop: WaitFetched waits for FetchComplete's event), so
  // they work whatever flag_wait() says; the mark bumps the device step stamp for group 0
  // like Fetch().
  absl::Status FetchMark(int32_t index, const SeqGroup& group, const PageGeometry& g,
                         const BatchView& batch, const KeptView& kept, cudaEvent_t pruned,
                         const cudaEvent_t* marks, const RowMissReport& report);
  absl::Status FetchComplete(int32_t index, const cudaEvent_t* marks);
  // Instead of FetchComplete when the store cannot make the reported blocks resident: the
  // group's claims and reserved free slots are given back (LaunchRowAbandon).
  absl::Status FetchAbandon(int32_t index);
  AttendSource Source() const override;
  // Fetch / WaitFetched over the given buffers (a bound batch's; the calls above use the
  // stage's own).
  absl::Status FetchWith(RowPlanBuffers& buffers, int32_t index, const SeqGroup& group,
                         const PageGeometry& g, const BatchView& batch, const KeptView& kept,
                         cudaStream_t compute, const cudaEvent_t* marks);
  absl::Status WaitWith(const RowPlanBuffers& buffers, int32_t index, cudaStream_t compute);
  absl::Status MergeDirect(const PageGeometry&, const SeqGroup&, int32_t, const fp16_t*,
                           fp16_t*, cudaStream_t) override {
    return absl::OkStatus();  // never called: no direct units (rows read in place instead)
  }

 private:
  cudaStream_t stream_ = nullptr;
  PageGeometry g_;
  FetchSource source_;
  std::vector<cudaEvent_t> pruned_, fetched_;  // per group: prune done, fetch done
  DeviceRowCache cache_;
  gpu::DeviceBuffer slots_, slot_of_row_, row_of_slot_, last_use_, free_, words_, list_;
  RowPlanBuffers own_;  // eager steps (and the halves of FetchMark / FetchComplete)
  std::vector<RowPlanArgs> marked_;  // per group: the args of its FetchMark
  uint32_t window_ = kDefaultRowWindow;
  bool early_attend_ = false;
  bool flag_wait_ = false;
  int32_t max_groups_ = 0;

  // The plan's halves over buffers `b`: the mark (after `pruned`) with `report`, its args
  // kept in *args for the complete (or the abandon); `flag`: the group's ready flag is set by
  // the plan and its WaitWith waits on it (the caller cleared it on the compute stream before
  // recording `pruned`), else WaitWith waits for the complete's event.
  absl::Status MarkWith(RowPlanBuffers& b, int32_t index, const SeqGroup& group,
                        const PageGeometry& g, const BatchView& batch, const KeptView& kept,
                        cudaEvent_t pruned, const cudaEvent_t* marks,
                        const RowMissReport& report, bool flag, RowPlanArgs* args);
  absl::Status CompleteWith(int32_t index, const RowPlanArgs& args, const cudaEvent_t* marks);
};

// A bound batch's fetch stage (RowCacheFetch::MakeBoundFetch): the store's row cache over the
// batch's own plan buffers.
class BoundRowFetch final : public CudaFetch {
 public:
  explicit BoundRowFetch(RowCacheFetch* cache) : cache_(cache) {}
  RowPlanBuffers& buffers() { return buffers_; }
  absl::Status Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                     const BatchView& batch, const KeptView& kept, cudaStream_t compute,
                     const cudaEvent_t* marks) override {
    return cache_->FetchWith(buffers_, index, group, g, batch, kept, compute, marks);
  }
  absl::Status WaitFetched(int32_t index, cudaStream_t compute) override {
    return cache_->WaitWith(buffers_, index, compute);
  }
  AttendSource Source() const override { return cache_->Source(); }
  absl::Status MergeDirect(const PageGeometry&, const SeqGroup&, int32_t, const fp16_t*,
                           fp16_t*, cudaStream_t) override {
    return absl::OkStatus();  // no direct units
  }

 private:
  RowCacheFetch* cache_;
  RowPlanBuffers buffers_;
};

}  // namespace twl::pipeline_cuda
