// Stage 3 of the decode step, FETCH, for the offload store: a bounded GPU hot cache of FP16
// blocks over the pinned, device-mapped host pool. Per pipeline group of sequences, on the
// fetch stream and after the group's prune: the cache plan kernels (cuda/cache_plan.h)
// read the kept lists, pin the hits, give the misses LRU victims and write the fetch list on
// the device; the transport then moves the missing blocks into their slots (the SM-driven
// gather consumes the device list; the copy engine needs it on the host: one round trip per
// group). Blocks the plan does not admit (residency by value, cache/gpu_page_cache.h) keep
// slot -1 and attention reads their kept rows in place from the mapped pool (FpKvView.miss_kv).
// Owns: the slots, slot_of_block / block_of_slot / LRU stamps, per-group counters, the fetch
// list and the per-unit counts. The store keeps the cache coherent on appends and frees
// through state() (cuda/cache_plan.h mirror and invalidate kernels), on the fetch stream.
// The HBM store has no fetch stage: its blocks are device resident.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/stage_views.h"
#include "gpu/device.h"
#include "pipeline/fetch/cache/cuda/cache_plan.h"
#include "offload/fetch_transport.h"
#include "pipeline/fetch/offload_cache.cuh"
#include "runtime/runtime.h"

namespace twl::pipeline_cuda {

class CacheFetch final : public OffloadCacheFetch {
 public:
  CacheFetch() = default;
  CacheFetch(const CacheFetch&) = delete;
  CacheFetch& operator=(const CacheFetch&) = delete;
  ~CacheFetch() override;  // the owner has synchronized the device before

  // `num_slots` >= 1 cache slots for `num_blocks` blocks of `source` (the host pool);
  // `max_groups`: pipeline groups per step (one counter record each); `path`: kCopyEngine
  // uses the copy engine, anything else the gather.
  absl::Status Init(const PageGeometry& g, int64_t num_blocks, int32_t num_slots,
                    const FetchSource& source, FetchPath path, int32_t max_groups);

  const DeviceCacheState& state() const { return cache_; }
  int32_t num_slots() const override { return num_slots_; }
  std::string transport_name() const override;
  void SetPath(FetchPath path) override { use_copy_engine_ = path == FetchPath::kCopyEngine; }
  // Steps per halving of the block values (>= 1; cache/gpu_page_cache.h kDefaultDecaySteps).
  void SetDecaySteps(int32_t steps) { decay_steps_ = steps < 1 ? 1 : steps; }
  // Values halve every 4 passes over the layers: a block is seen ~4 times per half-life.
  void SetSharingLayers(int32_t layers) override { SetDecaySteps(layers < 2 ? 8 : 4 * layers); }

  // The fetch stream, created by the store (its appends mirror rows into the cache there).
  void AttachStream(cudaStream_t fetch_stream) override { stream_ = fetch_stream; }
  // Per-unit counts and the direct units' output for a step of `units` (sequence, KV head)
  // units and `out_bytes` of output.
  absl::Status GrowStep(int64_t units, size_t out_bytes) override;
  int64_t device_bytes() const override;
  int64_t fetch_unit_bytes() const override { return g_.FpBlockBytes(); }
  const char* granularity() const override { return "blocks"; }
  absl::Status InvalidatePages(const int32_t* d_pages, int32_t num_pages,
                               cudaStream_t stream) override;
  absl::Status MirrorTokens(const fp16_t* mapped_pool, const int32_t* d_page_id,
                            const int32_t* d_row, int32_t num_tokens,
                            cudaStream_t stream) override;
  absl::Status MirrorSegments(const fp16_t* mapped_pool, const AppendSegment* d_segments,
                              int32_t num_segments, cudaStream_t stream) override;
  size_t record_bytes() const override { return sizeof(DeviceGroupCounters); }
  CacheCounters ReadRecord(const void* host_record, int32_t* error) const override;

  // CudaFetch: group `index`'s plan + transfer on the fetch stream, after its prune on
  // `compute`. Group 0 starts a step: earlier steps' slots may be evicted; later groups leave
  // the previous group's pinned slots alone (its attention may still run).
  absl::Status Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                     const BatchView& batch, const KeptView& kept, cudaStream_t compute,
                     const cudaEvent_t* marks) override;
  absl::Status WaitFetched(int32_t index, cudaStream_t compute) override;
  // Admitted units: the slots, through slot_of_block; the others: the mapped host pool.
  AttendSource Source() const override;
  absl::Status MergeDirect(const PageGeometry& g, const SeqGroup& group, int32_t num_q_heads,
                           const fp16_t* direct_out, fp16_t* out,
                           cudaStream_t compute) override;

  int32_t* count_cache() const { return count_cache_.as<int32_t>(); }    // [units]
  int32_t* count_direct() const { return count_direct_.as<int32_t>(); }  // [units]
  int32_t* unit_blocks() const override { return unit_blocks_.as<int32_t>(); }  // [units]
  int32_t* unit_hits() const override { return unit_hits_.as<int32_t>(); }  // [units] resident
  const void* counters() const override { return counters_.get(); }  // DeviceGroupCounters[]

 private:
  // Enqueues on `stream` the cache plan of group `group` (first unit `first_unit`) and the
  // transfer of its misses.
  absl::Status FetchGroup(int32_t group, const PageGeometry& g, const BatchView& batch,
                          const KeptView& kept, int64_t first_unit, cudaStream_t stream);

  cudaStream_t stream_ = nullptr;
  PageGeometry g_;
  FetchSource source_;
  std::vector<cudaEvent_t> pruned_, fetched_;  // per group: prune done, fetch done
  gpu::DeviceBuffer direct_out_;
  DeviceCacheState cache_;
  int32_t num_slots_ = 0;
  gpu::DeviceBuffer slots_, slot_of_block_, need_stamp_, block_of_slot_, last_use_, value_;
  gpu::DeviceBuffer counters_, missing_, fetch_;
  gpu::DeviceBuffer count_cache_, count_direct_, unit_blocks_, unit_hits_;
  gpu::PinnedHostBuffer h_fetch_list_;
  std::unique_ptr<FetchTransport> gather_, copy_engine_;
  bool use_copy_engine_ = false;
  uint32_t stamp_ = 1;
  uint32_t steps_ = 0;  // steps planned (group 0 plans), for the value decay epochs
  int32_t decay_steps_ = kDefaultDecaySteps;
};

}  // namespace twl::pipeline_cuda
