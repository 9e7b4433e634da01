#include "pipeline/fetch/row_cache/row_cache_fetch.cuh"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "gpu/cuda/cuda_status.cuh"
#include "gpu/cuda/stream_flags.cuh"
#include "pipeline/cuda/scratch.cuh"
#include "pipeline/cuda/step_events.cuh"

namespace twl::pipeline_cuda {
namespace {

// At least 256 bytes, as every offload buffer (a zero-sized step still gets a pointer).
absl::Status Grow(gpu::DeviceBuffer& b, size_t bytes) { return GrowScratch(b, bytes, 256); }

}  // namespace

absl::Status RowPlanBuffers::Reserve(int64_t units, int32_t max_groups) {
  if (units < 0 || max_groups < 1) {
    return absl::InvalidArgumentError("RowPlanBuffers: negative units or no group");
  }
  if (buf_.get() && units <= units_ && max_groups <= groups_) return absl::OkStatus();
  units = std::max(units, units_);
  max_groups = std::max(max_groups, groups_);
  const size_t bytes = sizeof(DeviceRowCounters) * size_t(max_groups) + sizeof(DeviceRowWork) +
                       size_t(max_groups) * 4 + size_t(units) * 3 * 4;
  if (buf_.get()) TWL_CUDA(cudaDeviceSynchronize());  // queued plans may use the old memory
  TWL_RETURN_IF_ERROR(buf_.Reserve(std::max<size_t>(bytes, 256)));
  TWL_CUDA(cudaMemset(buf_.get(), 0, bytes));  // running sums start (and stay) at 0
  TWL_CUDA(cudaDeviceSynchronize());
  units_ = units;
  groups_ = max_groups;
  flagged_.resize(size_t(max_groups), 0);
  return absl::OkStatus();
}

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
  TWL_RETURN_IF_ERROR(Grow(words_, 12));  // hand, free stack top, step stamp
  TWL_RETURN_IF_ERROR(Grow(list_, size_t(num_slots) * sizeof(RowFetch)));
  TWL_RETURN_IF_ERROR(own_.Reserve(0, max_groups));
  cache_.d_slot_of_row = slot_of_row_.as<int32_t>();
  cache_.d_row_of_slot = row_of_slot_.as<int64_t>();
  cache_.d_last_use = last_use_.as<uint32_t>();
  cache_.d_slots = slots_.as<fp16_t>();
  cache_.d_free = free_.as<int32_t>();
  cache_.d_hand = words_.as<int32_t>();
  cache_.d_free_top = words_.as<int32_t>() + 1;
  cache_.d_step = reinterpret_cast<uint32_t*>(words_.as<int32_t>() + 2);
  cache_.d_list = list_.as<RowFetch>();
  cache_.num_rows = num_rows;
  cache_.num_slots = num_slots;
  cache_.list_capacity = num_slots;
  TWL_RETURN_IF_ERROR(LaunchRowCacheReset(cache_, nullptr));
  TWL_CUDA(cudaDeviceSynchronize());  // ready before any stream uses it
  // Events by default: on the H200 (2026-12-02, bench/RESULTS.md fifth session) the flag
  // wait made a captured B = 1 step slower (0.206 vs 0.185 ms per layer-step), the
  // stream-memory poll costing more than the plan kernels it lets the attention skip.
  const char* wait = std::getenv("TWL_ROW_PLAN_WAIT");
  SetFlagWait(wait != nullptr && std::strcmp(wait, "flag") == 0);
  return absl::OkStatus();
}

void RowCacheFetch::SetFlagWait(bool on) { flag_wait_ = on && stream_flags::Available(); }

absl::StatusOr<std::unique_ptr<CudaFetch>> RowCacheFetch::MakeBoundFetch(int64_t units) {
  auto f = std::make_unique<BoundRowFetch>(this);
  TWL_RETURN_IF_ERROR(f->buffers().Reserve(units, max_groups_));
  return std::unique_ptr<CudaFetch>(std::move(f));
}

int64_t RowCacheFetch::device_bytes() const {
  return MapBytes(g_, cache_.num_rows / std::max(1, g_.page_size)) +
         int64_t(cache_.num_slots) * SlotBytes(g_);
}

absl::Status RowCacheFetch::GrowStep(int64_t units, size_t /*out_bytes*/) {
  return own_.Reserve(units, max_groups_);
}

absl::Status RowCacheFetch::InvalidatePages(const int32_t* d_pages, int32_t num_pages,
                                            cudaStream_t stream) {
  return LaunchRowInvalidatePages(cache_, g_, d_pages, num_pages, stream);
}

// Appended rows were never cached under their new contents (rows are written once); a stale
// entry could only come from an earlier life of the page, which its release dropped. So the
// store does not call these (appends_need_mirror() is false); they drop the rows for a
// caller that wants it explicit.
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
  return FetchWith(own_, index, group, g, batch, kept, compute, marks);
}

absl::Status RowCacheFetch::WaitFetched(int32_t index, cudaStream_t compute) {
  return WaitWith(own_, index, compute);
}

absl::Status RowCacheFetch::FetchWith(RowPlanBuffers& b, int32_t index, const SeqGroup& group,
                                      const PageGeometry& g, const BatchView& batch,
                                      const KeptView& kept, cudaStream_t compute,
                                      const cudaEvent_t* marks) {
  if (index < 0 || index >= max_groups_ || index >= b.max_groups()) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  // The group's flag is cleared on the compute stream before the plan can set it (the plan
  // waits for `pruned`, recorded after), so a flag left set by an abandoned step never lets
  // an attention through early.
  if (flag_wait_) TWL_RETURN_IF_ERROR(stream_flags::Write(compute, b.ready(index), 0));
  TWL_CUDA(cudaEventRecord(pruned_[size_t(index)], compute));
  RowPlanArgs a;
  TWL_RETURN_IF_ERROR(MarkWith(b, index, group, g, batch, kept, pruned_[size_t(index)], marks,
                               RowMissReport{}, flag_wait_, &a));
  return CompleteWith(index, a, marks);
}

absl::Status RowCacheFetch::FetchMark(int32_t index, const SeqGroup& group,
                                      const PageGeometry& g, const BatchView& batch,
                                      const KeptView& kept, cudaEvent_t pruned,
                                      const cudaEvent_t* marks, const RowMissReport& report) {
  if (index < 0 || index >= max_groups_ || index >= own_.max_groups()) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  // No ready flag: nothing cleared it on the compute stream before `pruned`.
  return MarkWith(own_, index, group, g, batch, kept, pruned, marks, report, false,
                  &marked_[size_t(index)]);
}

absl::Status RowCacheFetch::FetchComplete(int32_t index, const cudaEvent_t* marks) {
  if (index < 0 || index >= max_groups_) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  return CompleteWith(index, marked_[size_t(index)], marks);
}

absl::Status RowCacheFetch::FetchAbandon(int32_t index) {
  if (index < 0 || index >= max_groups_) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  return LaunchRowAbandon(cache_, marked_[size_t(index)], stream_);
}

absl::Status RowCacheFetch::MarkWith(RowPlanBuffers& b, int32_t index, const SeqGroup& group,
                                     const PageGeometry& g, const BatchView& batch,
                                     const KeptView& kept, cudaEvent_t pruned,
                                     const cudaEvent_t* marks, const RowMissReport& report,
                                     bool flag, RowPlanArgs* args) {
  TWL_CUDA(cudaStreamWaitEvent(stream_, pruned, 0));
  if (marks) TWL_CUDA(cudaEventRecord(marks[kFetch0], stream_));
  const int64_t u0 = int64_t(group.first_seq) * g.num_kv_heads;
  RowPlanArgs& a = *args;
  a = RowPlanArgs{};
  a.g = g;
  a.batch = batch;
  a.kept = kept;
  a.starts_step = index == 0;  // the device stamp: stamps start at 1, last_use 0 is "never"
  a.window = window_;
  a.d_counters = b.counters() + index;
  a.d_work = b.work();
  a.d_unit_hits = b.unit_hits() + u0;
  a.d_unit_rows = b.unit_rows() + u0;
  a.d_unit_work = b.unit_work() + u0;
  a.d_ready = flag ? b.ready(index) : nullptr;
  a.source = source_;
  a.report = report;
  b.set_flagged(index, flag);
  return LaunchRowMark(cache_, a, stream_);
}

absl::Status RowCacheFetch::CompleteWith(int32_t index, const RowPlanArgs& a,
                                         const cudaEvent_t* marks) {
  TWL_RETURN_IF_ERROR(LaunchRowComplete(cache_, a, stream_));
  // An empty group launches no plan: nothing sets its flag but this.
  if (a.d_ready != nullptr && a.batch.num_seqs <= 0) {
    TWL_RETURN_IF_ERROR(stream_flags::Write(stream_, a.d_ready, 1));
  }
  if (marks) TWL_CUDA(cudaEventRecord(marks[kFetch1], stream_));
  TWL_CUDA(cudaEventRecord(fetched_[size_t(index)], stream_));
  return absl::OkStatus();
}

absl::Status RowCacheFetch::WaitWith(const RowPlanBuffers& b, int32_t index,
                                     cudaStream_t compute) {
  if (index < 0 || index >= max_groups_ || index >= b.max_groups()) {
    return absl::InvalidArgumentError("RowCacheFetch: group index out of range");
  }
  if (early_attend_) {
    // The previous group's plan may evict rows this group's plan has not stamped yet.
    if (index > 0) TWL_CUDA(cudaStreamWaitEvent(compute, fetched_[size_t(index - 1)], 0));
    return absl::OkStatus();
  }
  // Flag: set by the mark kernel when every kept row was resident (its hits are stamped, so
  // no later plan of the step evicts them; the previous groups' plans ran before it on the
  // fetch stream), else by the copy's last block once every fetched row is published.
  // (A plan in halves sets no flag: see FetchMark.)
  if (b.flagged(index)) return stream_flags::WaitEqual(compute, b.ready(index), 1);
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
