#include "pipeline/fetch/cache/cache_fetch.cuh"

#include <cstring>
#include <utility>

#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/cuda/scratch.cuh"
#include "pipeline/cuda/step_events.cuh"

namespace twl::pipeline_cuda {
namespace {

// At least 256 bytes, as every offload buffer (a zero-sized step still gets a pointer).
absl::Status Grow(gpu::DeviceBuffer& b, size_t bytes) { return GrowScratch(b, bytes, 256); }

}  // namespace

CacheFetch::~CacheFetch() {
  for (cudaEvent_t e : pruned_) {
    if (e) cudaEventDestroy(e);
  }
  for (cudaEvent_t e : fetched_) {
    if (e) cudaEventDestroy(e);
  }
}

absl::Status CacheFetch::Init(const PageGeometry& g, int64_t num_blocks, int32_t num_slots,
                              const FetchSource& source, FetchPath path, int32_t max_groups) {
  num_slots_ = num_slots;
  g_ = g;
  source_ = source;
  pruned_.assign(size_t(max_groups), nullptr);
  fetched_.assign(size_t(max_groups), nullptr);
  for (int32_t i = 0; i < max_groups; ++i) {
    TWL_CUDA(cudaEventCreateWithFlags(&pruned_[size_t(i)], cudaEventDisableTiming));
    TWL_CUDA(cudaEventCreateWithFlags(&fetched_[size_t(i)], cudaEventDisableTiming));
  }
  TWL_RETURN_IF_ERROR(Grow(slots_, size_t(num_slots_) * size_t(g.FpBlockBytes())));
  TWL_RETURN_IF_ERROR(Grow(slot_of_block_, size_t(num_blocks) * 4));
  TWL_RETURN_IF_ERROR(Grow(need_stamp_, size_t(num_blocks) * 4));
  TWL_RETURN_IF_ERROR(Grow(block_of_slot_, size_t(num_slots_) * 4));
  TWL_RETURN_IF_ERROR(Grow(last_use_, size_t(num_slots_) * 4));
  TWL_RETURN_IF_ERROR(Grow(value_, size_t(num_blocks) * 4));
  TWL_CUDA(cudaMemset(value_.get(), 0, size_t(num_blocks) * 4));
  TWL_CUDA(cudaMemset(slot_of_block_.get(), 0xff, size_t(num_blocks) * 4));
  TWL_CUDA(cudaMemset(need_stamp_.get(), 0, size_t(num_blocks) * 4));
  TWL_CUDA(cudaMemset(block_of_slot_.get(), 0xff, size_t(num_slots_) * 4));
  TWL_CUDA(cudaMemset(last_use_.get(), 0, size_t(num_slots_) * 4));
  cache_.d_slot_of_block = slot_of_block_.as<int32_t>();
  cache_.d_block_of_slot = block_of_slot_.as<int32_t>();
  cache_.d_last_use = last_use_.as<uint32_t>();
  cache_.d_need_stamp = need_stamp_.as<uint32_t>();
  cache_.d_slots = slots_.as<fp16_t>();
  cache_.num_blocks = num_blocks;
  cache_.num_slots = num_slots_;
  cache_.d_value = value_.as<uint32_t>();
  TWL_RETURN_IF_ERROR(Grow(counters_, sizeof(DeviceGroupCounters) * size_t(max_groups)));
  TWL_CUDA(cudaMemset(counters_.get(), 0, sizeof(DeviceGroupCounters) * size_t(max_groups)));
  TWL_RETURN_IF_ERROR(Grow(missing_, size_t(num_slots_) * sizeof(FetchEntry)));
  TWL_RETURN_IF_ERROR(Grow(fetch_, size_t(num_slots_) * sizeof(FetchEntry)));

  // Transports: the gather consumes the device-resident fetch list (no host round trip).
  const FetchDest dst{slots_.get(), num_slots_};
  absl::StatusOr<std::unique_ptr<FetchTransport>> gt = CreateGatherTransport(source, dst);
  if (!gt.ok()) return gt.status();
  gather_ = std::move(*gt);
  absl::StatusOr<std::unique_ptr<FetchTransport>> ce = CreateCopyEngineTransport(source, dst);
  if (!ce.ok()) return ce.status();
  copy_engine_ = std::move(*ce);
  // kAuto: the decode path's fetch list lives on the device, where only the gather can
  // consume it without a host round trip; the copy engine is used only when asked for
  // (measured against the gather in bench/offload_main.cc and recorded in RESULTS.md).
  SetPath(path);
  return absl::OkStatus();
}

std::string CacheFetch::transport_name() const {
  return use_copy_engine_ ? copy_engine_->caps().name : gather_->caps().name;
}

absl::Status CacheFetch::GrowStep(int64_t units, size_t out_bytes) {
  TWL_RETURN_IF_ERROR(Grow(count_cache_, size_t(units) * 4));
  TWL_RETURN_IF_ERROR(Grow(count_direct_, size_t(units) * 4));
  TWL_RETURN_IF_ERROR(Grow(unit_blocks_, size_t(units) * 4));
  TWL_RETURN_IF_ERROR(Grow(unit_hits_, size_t(units) * 4));
  return Grow(direct_out_, out_bytes);
}

int64_t CacheFetch::device_bytes() const {
  // Slots, then slot_of_block, need_stamp and values per block, block_of_slot and last_use
  // per slot.
  return int64_t(num_slots_) * g_.FpBlockBytes() +
         (cache_.num_blocks * 3 + int64_t(num_slots_) * 2) * 4;
}

absl::Status CacheFetch::InvalidatePages(const int32_t* d_pages, int32_t num_pages,
                                         cudaStream_t stream) {
  return LaunchCacheInvalidatePages(cache_, d_pages, num_pages, g_.num_kv_heads, stream);
}

absl::Status CacheFetch::MirrorTokens(const fp16_t* mapped_pool, const int32_t* d_page_id,
                                      const int32_t* d_row, int32_t num_tokens,
                                      cudaStream_t stream) {
  return LaunchCacheMirrorRows(cache_, g_, mapped_pool, d_page_id, d_row, num_tokens, stream);
}

absl::Status CacheFetch::MirrorSegments(const fp16_t* mapped_pool,
                                        const AppendSegment* d_segments, int32_t num_segments,
                                        cudaStream_t stream) {
  return LaunchCacheMirrorSegments(cache_, g_, mapped_pool, d_segments, num_segments, stream);
}

CacheCounters CacheFetch::ReadRecord(const void* host_record, int32_t* error) const {
  DeviceGroupCounters c;
  std::memcpy(&c, host_record, sizeof(c));
  // Residency by value: needed = hits + fetched + read in place (direct_blocks).
  CacheCounters r;
  r.units_direct = c.units_direct;
  r.blocks_needed = c.hits + c.fetched;
  r.hits = c.hits;
  r.misses = c.fetched;
  r.evictions = c.evictions;
  r.direct_blocks = c.direct_blocks;
  r.direct_rows = c.direct_rows;
  r.hit_rows = c.hit_rows;
  r.fetched_rows = c.fetched_rows;
  if (error) *error = c.error;
  return r;
}

absl::Status CacheFetch::Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                               const BatchView& batch, const KeptView& kept,
                               cudaStream_t compute, const cudaEvent_t* marks) {
  TWL_CUDA(cudaEventRecord(pruned_[size_t(index)], compute));
  // Fetch stream: plan on the device, then gather the misses.
  TWL_CUDA(cudaStreamWaitEvent(stream_, pruned_[size_t(index)], 0));
  if (marks) TWL_CUDA(cudaEventRecord(marks[kFetch0], stream_));
  TWL_RETURN_IF_ERROR(
      FetchGroup(index, g, batch, kept, int64_t(group.first_seq) * g.num_kv_heads, stream_));
  if (marks) TWL_CUDA(cudaEventRecord(marks[kFetch1], stream_));
  TWL_CUDA(cudaEventRecord(fetched_[size_t(index)], stream_));
  return absl::OkStatus();
}

absl::Status CacheFetch::WaitFetched(int32_t index, cudaStream_t compute) {
  TWL_CUDA(cudaStreamWaitEvent(compute, fetched_[size_t(index)], 0));
  return absl::OkStatus();
}

AttendSource CacheFetch::Source() const {
  AttendSource s;
  // Blocks the plan did not admit (slot -1): attention reads their kept rows in place from
  // the mapped host pool. Every unit is attended this way (no direct units any more: the
  // plan decides per block), so the executor's direct pass is off.
  s.kv = FpKvView{slots_.as<fp16_t>(), slot_of_block_.as<int32_t>(),
                  static_cast<const fp16_t*>(source_.mapped_base), source_.slot_of_block};
  s.counts = count_cache_.as<int32_t>();
  s.direct_kv = FpKvView{static_cast<fp16_t*>(const_cast<void*>(source_.mapped_base)),
                         source_.slot_of_block};
  s.direct_counts = nullptr;
  s.direct_out = direct_out_.as<fp16_t>();
  return s;
}

absl::Status CacheFetch::MergeDirect(const PageGeometry& g, const SeqGroup& group,
                                     int32_t num_q_heads, const fp16_t* direct_out,
                                     fp16_t* out, cudaStream_t compute) {
  const int64_t u0 = int64_t(group.first_seq) * g.num_kv_heads;
  return LaunchScatterDirect(g, group.num_seqs, num_q_heads, count_direct_.as<int32_t>() + u0,
                             direct_out, out, compute);
}

absl::Status CacheFetch::FetchGroup(int32_t group, const PageGeometry& g,
                                    const BatchView& batch, const KeptView& kept,
                                    int64_t first_unit, cudaStream_t stream) {
  auto* counters = counters_.as<DeviceGroupCounters>();
  CachePlanArgs pa;
  pa.g = g;
  pa.batch = batch;
  pa.kept = kept;
  pa.stamps.protect_from = group == 0 ? stamp_ + 1 : stamp_;
  pa.stamps.current = ++stamp_;
  if (group == 0) ++steps_;  // a step starts: values decay by steps
  pa.stamps.epoch = steps_ / uint32_t(decay_steps_);
  pa.d_prev = group == 0 ? nullptr : counters + (group - 1);
  pa.d_counters = counters + group;
  pa.d_count_cache = count_cache_.as<int32_t>() + first_unit;
  pa.d_count_direct = count_direct_.as<int32_t>() + first_unit;
  pa.d_unit_blocks = unit_blocks_.as<int32_t>() + first_unit;
  pa.d_missing = missing_.as<FetchEntry>();
  pa.d_fetch = fetch_.as<FetchEntry>();
  pa.d_unit_hits = unit_hits_.as<int32_t>() + first_unit;
  TWL_RETURN_IF_ERROR(LaunchCachePlan(cache_, pa, stream));
  const DeviceFetchList list{fetch_.as<FetchEntry>(), &counters[group].fetched, num_slots_};
  if (use_copy_engine_) {
    // The copy engine needs the list on the host: one round trip per group.
    TWL_RETURN_IF_ERROR(h_fetch_list_.Reserve(size_t(num_slots_) * sizeof(FetchEntry) + 64));
    int32_t* h_count = h_fetch_list_.as<int32_t>();
    auto* h_list = reinterpret_cast<FetchEntry*>(h_fetch_list_.as<char>() + 64);
    TWL_CUDA(cudaMemcpyAsync(h_count, &counters[group].fetched, 4, cudaMemcpyDeviceToHost,
                             stream));
    TWL_CUDA(cudaStreamSynchronize(stream));
    TWL_CUDA(cudaMemcpyAsync(h_list, fetch_.get(), size_t(*h_count) * sizeof(FetchEntry),
                             cudaMemcpyDeviceToHost, stream));
    TWL_CUDA(cudaStreamSynchronize(stream));
    return copy_engine_->SubmitHost(h_list, *h_count, stream);
  }
  return gather_->SubmitDevice(list, stream);
}

}  // namespace twl::pipeline_cuda
