#include "pipeline/fetch/cache/cache_fetch.cuh"

#include <utility>

#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/cuda/scratch.cuh"

namespace twl::pipeline_cuda {
namespace {

// At least 256 bytes, as every offload buffer (a zero-sized step still gets a pointer).
absl::Status Grow(gpu::DeviceBuffer& b, size_t bytes) { return GrowScratch(b, bytes, 256); }

}  // namespace

absl::Status CacheFetch::Init(const PageGeometry& g, int64_t num_blocks, int32_t num_slots,
                              const FetchSource& source, FetchPath path, int32_t max_groups) {
  num_slots_ = num_slots;
  TWL_RETURN_IF_ERROR(Grow(slots_, size_t(num_slots_) * size_t(g.FpBlockBytes())));
  TWL_RETURN_IF_ERROR(Grow(slot_of_block_, size_t(num_blocks) * 4));
  TWL_RETURN_IF_ERROR(Grow(need_stamp_, size_t(num_blocks) * 4));
  TWL_RETURN_IF_ERROR(Grow(block_of_slot_, size_t(num_slots_) * 4));
  TWL_RETURN_IF_ERROR(Grow(last_use_, size_t(num_slots_) * 4));
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
  TWL_RETURN_IF_ERROR(Grow(counters_, sizeof(DeviceGroupCounters) * size_t(max_groups)));
  TWL_CUDA(cudaMemset(counters_.get(), 0, sizeof(DeviceGroupCounters) * size_t(max_groups)));
  TWL_RETURN_IF_ERROR(Grow(missing_, size_t(num_slots_) * 4));
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

absl::Status CacheFetch::GrowUnits(int64_t units) {
  TWL_RETURN_IF_ERROR(Grow(count_cache_, size_t(units) * 4));
  TWL_RETURN_IF_ERROR(Grow(count_direct_, size_t(units) * 4));
  return Grow(unit_blocks_, size_t(units) * 4);
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
  pa.d_prev = group == 0 ? nullptr : counters + (group - 1);
  pa.d_counters = counters + group;
  pa.d_count_cache = count_cache_.as<int32_t>() + first_unit;
  pa.d_count_direct = count_direct_.as<int32_t>() + first_unit;
  pa.d_unit_blocks = unit_blocks_.as<int32_t>() + first_unit;
  pa.d_missing = missing_.as<int32_t>();
  pa.d_fetch = fetch_.as<FetchEntry>();
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
