#include "pipeline/fetch/row_cache/row_cache_fetch.cuh"

#include <algorithm>
#include <cstring>

#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/cuda/scratch.cuh"
#include "pipeline/cuda/step_events.cuh"

namespace twl::pipeline_cuda {
namespace {

// At least 256 bytes, as every offload buffer (a zero-sized step still gets a pointer).
absl::Status Grow(gpu::DeviceBuffer& b, size_t bytes) { return GrowScratch(b, bytes, 256); }

}  // namespace

int32_t RowCacheFetch::SlotsFor(const PageGeometry& g, int64_t num_blocks, int64_t budget_bytes) {
  const int64_t left = budget_bytes - MapBytes(g, num_blocks);
  const int64_t slots = left > 0 ? left / SlotBytes(g) : 0;
  return int32_t(std::clamp<int64_t>(slots, 64, INT32_MAX));
}

RowCacheFetch::~RowCacheFetch() {
  for (cudaEvent_t e : pruned_) {
    if (e) cudaEventDestroy(e);
  }
  for (cudaEvent_t e : fetched_) {
    if (e) cudaEventDestroy(e);
  }
}

absl::Status RowCacheFetch::Init(const PageGeometry& g, int64_t num_blocks, int32_t num_slots,
                                 const FetchSource& source, int32_t max_groups) {
  if (num_slots < 1 || num_blocks < 0 || g.head_dim % 8 != 0 ||
      source.block_bytes != g.FpBlockBytes() || !source.mapped_base) {
    return absl::InvalidArgumentError(
        "RowCacheFetch: needs >= 1 slot, head_dim % 8 == 0 and the mapped pool of FP16 blocks");
  }
  g_ = g;
  source_ = source;
  max_groups_ = max_groups;
  pruned_.assign(size_t(max_groups), nullptr);
  marked_.assign(size_t(max_groups), RowPlanArgs{});
  fetched_.assign(size_t(max_groups), nullptr);
  for (int32_t i = 0; i < max_groups; ++i) {
    TWL_CUDA(cudaEventCreateWithFlags(&pruned_[size_t(i)], cudaEventDisableTiming));
    TWL_CUDA(cudaEventCreateWithFlags(&fetched_[size_t(i)], cudaEventDisableTiming));
  }
  const int64_t num_rows = num_blocks * g.page_size;
  TWL_RETURN_IF_ERROR(Grow(slots_, size_t(num_slots) * size_t(g.head_dim) * 2 * 2));
  TWL_RETURN_IF_ERROR(Grow(slot_of_row_, size_t(num_rows) * 4));
  TWL_RETURN_IF_ERROR(Grow(row_of_slot_, size_t(num_slots) * 8));
  TWL_RETURN_IF_ERROR(Grow(last_use_, size_t(num_slots) * 4));
  TWL_RETURN_IF_ERROR(Grow(free_, size_t(num_slots) * 4));
  TWL_RETURN_IF_ERROR(Grow(words_, 8));  // hand, free stack top
  TWL_RETURN_IF_ERROR(Grow(list_, size_t(num_slots) * sizeof(RowFetch)));
  TWL_RETURN_IF_ERROR(Grow(counters_, sizeof(DeviceRowCounters) * size_t(max_groups)));
  TWL_CUDA(cudaMemset(counters_.get(), 0, sizeof(DeviceRowCounters) * size_t(max_groups)));
  cache_.d_slot_of_row = slot_of_row_.as<int32_t>();
  cache_.d_row_of_slot = row_of_slot_.as<int64_t>();
  cache_.d_last_use = last_use_.as<uint32_t>();
  cache_.d_slots = slots_.as<fp16_t>();
  cache_.d_free = free_.as<int32_t>();
  cache_.d_hand = words_.as<int32_t>();
  cache_.d_free_top = words_.as<int32_t>() + 1;
  cache_.d_list = list_.as<RowFetch>();
  cache_.num_rows = num_rows;
  cache_.num_slots = num_slots;
  cache_.list_capacity = num_slots;
  TWL_RETURN_IF_ERROR(LaunchRowCacheReset(cache_, nullptr));
  TWL_CUDA(cudaDeviceSynchronize());  // ready before any stream uses it
  return absl::OkStatus();
}

int64_t RowCacheFetch::device_bytes() const {
  return MapBytes(g_, cache_.num_rows / std::max(1, g_.page_size)) +
         int64_t(cache_.num_slots) * SlotBytes(g_);
}

absl::Status RowCacheFetch::GrowStep(int64_t units, size_t /*out_bytes*/) {
  TWL_RETURN_IF_ERROR(Grow(unit_hits_, size_t(units) * 4));
  return Grow(unit_rows_, size_t(units) * 4);
}

absl::Status RowCacheFetch::InvalidatePages(const int32_t* d_pages, int32_t num_pages,
                                            cudaStream_t stream) {
  return LaunchRowInvalidatePages(cache_, g_, d_pages, num_pages, stream);
}

// Appended rows were never cached under their new contents (rows are written once); a stale
// entry could only come from an earlier life of the page, which its release dropped. Dropping
// them again keeps that true whatever the order of releases and appends.
absl::Status RowCacheFetch::MirrorTokens(const fp16_t* /*mapped_pool*/, const int32_t* d_page_id,
                                         const int32_t* d_row, int32_t num_tokens,
                                         cudaStream_t stream) {
  return LaunchRowInvalidateTokens(cache_, g_, d_page_id, d_row, num_tokens, stream);
}

absl::Status RowCacheFetch::MirrorSegments(const fp16_t* /*mapped_pool*/,
                                           const AppendSegment* d_segments, int32_t num_segments,
                                           cudaStream_t stream) {
  return LaunchRowInvalidateSegments(cache_, g_, d_segments, num_segments, stream);
}

CacheCounters RowCacheFetch::ReadRecord(const void* host_record, int32_t* error) const {
  DeviceRowCounters c;
  std::memcpy(&c, host_record, sizeof(c));
  // In rows: needed = hits + fetched + read in place.
  CacheCounters r;
  r.blocks_needed = c.hits + c.victims;
  r.hits = c.hits;
  r.misses = c.victims;
  r.evictions = c.evictions;
  r.direct_blocks = c.direct;
  r.direct_rows = c.direct;
  r.hit_rows = c.hits;
  r.fetched_rows = c.victims;
  if (error) *error = c.error;
  return r;
}

absl::Status RowCacheFetch::Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                                  const BatchView& batch, const KeptView& kept,
                                  cudaStream_t compute, const cudaEvent_t* marks) {
  if (index < 0 || index >= max_groups_) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  TWL_CUDA(cudaEventRecord(pruned_[size_t(index)], compute));
  TWL_RETURN_IF_ERROR(FetchMark(index, group, g, batch, kept, pruned_[size_t(index)], marks,
                                RowMissReport{}));
  return FetchComplete(index, marks);
}

absl::Status RowCacheFetch::FetchMark(int32_t index, const SeqGroup& group,
                                      const PageGeometry& g, const BatchView& batch,
                                      const KeptView& kept, cudaEvent_t pruned,
                                      const cudaEvent_t* marks, const RowMissReport& report) {
  if (index < 0 || index >= max_groups_) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  TWL_CUDA(cudaStreamWaitEvent(stream_, pruned, 0));
  if (marks) TWL_CUDA(cudaEventRecord(marks[kFetch0], stream_));
  if (index == 0 || step_ == 0) ++step_;  // stamps start at 1: last_use 0 is "never"
  if (step_ == 0) step_ = 1;              // (wrapped after 2^32 steps)
  const int64_t u0 = int64_t(group.first_seq) * g.num_kv_heads;
  RowPlanArgs a;
  a.g = g;
  a.batch = batch;
  a.kept = kept;
  a.step = step_;
  a.window = window_;
  a.d_counters = counters_.as<DeviceRowCounters>() + index;
  a.d_unit_hits = unit_hits_.as<int32_t>() + u0;
  a.d_unit_rows = unit_rows_.as<int32_t>() + u0;
  a.source = source_;
  a.report = report;
  marked_[size_t(index)] = a;
  return LaunchRowMark(cache_, a, stream_);
}

absl::Status RowCacheFetch::FetchComplete(int32_t index, const cudaEvent_t* marks) {
  if (index < 0 || index >= max_groups_) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  TWL_RETURN_IF_ERROR(LaunchRowComplete(cache_, marked_[size_t(index)], stream_));
  if (marks) TWL_CUDA(cudaEventRecord(marks[kFetch1], stream_));
  TWL_CUDA(cudaEventRecord(fetched_[size_t(index)], stream_));
  return absl::OkStatus();
}

absl::Status RowCacheFetch::FetchAbandon(int32_t index) {
  if (index < 0 || index >= max_groups_) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  return LaunchRowAbandon(cache_, marked_[size_t(index)], stream_);
}

absl::Status RowCacheFetch::WaitFetched(int32_t index, cudaStream_t compute) {
  if (early_attend_) {
    // The previous group's plan may evict rows this group's plan has not stamped yet.
    if (index > 0) TWL_CUDA(cudaStreamWaitEvent(compute, fetched_[size_t(index - 1)], 0));
    return absl::OkStatus();
  }
  TWL_CUDA(cudaStreamWaitEvent(compute, fetched_[size_t(index)], 0));
  return absl::OkStatus();
}

AttendSource RowCacheFetch::Source() const {
  AttendSource s;
  // Row mode: resident rows from the slots, the others in place from the mapped pool.
  s.kv.kv = slots_.as<fp16_t>();
  s.kv.miss_kv = static_cast<const fp16_t*>(source_.mapped_base);
  s.kv.miss_slot_of_block = source_.slot_of_block;
  s.kv.slot_of_row = slot_of_row_.as<int32_t>();
  s.counts = nullptr;  // the pruner's kept counts
  s.direct_counts = nullptr;
  return s;
}

}  // namespace twl::pipeline_cuda
