// The zero-copy gather kernel and the two FetchTransport implementations (gather and copy
// engine). Why a kernel: the copy engines reach a few GB/s on scattered 8 KiB blocks (one
// descriptor each), while warps issuing 16-byte loads against mapped pinned memory keep
// enough requests in flight to fill PCIe with any scatter pattern (issue 8's numbers).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "gpu/device.h"
#include "offload/cuda_check.cuh"
#include "offload/fetch_transport.h"
#include "pipeline/fetch/cache/cuda/gather.h"

namespace twl {
namespace {

using offload_cuda::AsStream;
using offload_cuda::LaunchStatus;

constexpr int kGatherThreads = 256;   // 8 warps per block
constexpr int kGatherUnroll = 16;     // 16-byte loads in flight per lane (8 KiB per warp)

// One warp copies one block at a time: all loads of a 32 * kGatherUnroll-vector chunk are
// issued before the first store so that each lane keeps kGatherUnroll requests in flight
// (PCIe latency is microseconds; only many outstanding requests reach its bandwidth).
__global__ void __launch_bounds__(kGatherThreads)
    GatherKernel(const uint4* __restrict__ src, uint4* __restrict__ dst,
                 const FetchEntry* __restrict__ entries, const int32_t* __restrict__ d_count,
                 int32_t max_entries, int64_t block_vecs, int32_t num_slots,
                 int64_t num_blocks, const int32_t* __restrict__ slot_of_block) {
  const int32_t count = min(*d_count, max_entries);
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (kGatherThreads / 32);
  for (int64_t e = int64_t(blockIdx.x) * (kGatherThreads / 32) + (threadIdx.x >> 5); e < count;
       e += warps) {
    const FetchEntry fe = entries[e];
    // A corrupt entry is skipped rather than turned into a wild access.
    if (fe.slot < 0 || fe.slot >= num_slots || fe.block < 0 || fe.block >= num_blocks) continue;
    const int64_t at = slot_of_block ? int64_t(slot_of_block[fe.block]) : int64_t(fe.block);
    if (at < 0) continue;  // not in the pool (see FetchSource)
    const uint4* s = src + at * block_vecs;
    uint4* d = dst + int64_t(fe.slot) * block_vecs;
    for (int64_t base = 0; base < block_vecs; base += 32 * kGatherUnroll) {
      uint4 r[kGatherUnroll];
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u) {
        const int64_t i = base + u * 32 + lane;
        if (i < block_vecs) r[u] = __ldcs(s + i);  // streamed: read once, do not keep in L1
      }
#pragma unroll
      for (int u = 0; u < kGatherUnroll; ++u) {
        const int64_t i = base + u * 32 + lane;
        if (i < block_vecs) __stcg(d + i, r[u]);  // L2 only: the attention reads it next
      }
    }
  }
}


absl::Status CheckEnds(const FetchSource& src, const FetchDest& dst, bool need_mapped) {
  if (src.block_bytes <= 0 || src.block_bytes % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "fetch: block_bytes %d must be a positive multiple of 16", src.block_bytes));
  }
  if (need_mapped && src.mapped_base == nullptr) {
    return absl::InvalidArgumentError("fetch: the gather needs mapped pinned host memory");
  }
  if (!need_mapped && src.host_base == nullptr) {
    return absl::InvalidArgumentError("fetch: the copy engine needs the host address");
  }
  if (dst.slots_base == nullptr || dst.num_slots < 0 || src.num_blocks < 0) {
    return absl::InvalidArgumentError("fetch: null destination or negative sizes");
  }
  return absl::OkStatus();
}

// A small pinned + device staging area for host fetch lists, reused only after the copy
// that read it has completed (an event per use).
class ListStaging {
 public:
  ~ListStaging() {
    if (event_) cudaEventDestroy(event_);
    if (host_) cudaFreeHost(host_);
    if (dev_) cudaFree(dev_);
  }
  absl::StatusOr<FetchEntry*> Upload(const FetchEntry* entries, int32_t count,
                                     cudaStream_t stream) {
    if (!event_) TWL_CUDA(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    TWL_CUDA(cudaEventSynchronize(event_));  // the previous upload has been consumed
    if (count > capacity_) {
      if (host_) cudaFreeHost(host_);
      if (dev_) cudaFree(dev_);
      host_ = nullptr;
      dev_ = nullptr;
      capacity_ = 0;
      const int32_t cap = std::max(count, 1024);
      TWL_CUDA(cudaMallocHost(&host_, size_t(cap) * sizeof(FetchEntry) + 16));
      TWL_CUDA(cudaMalloc(&dev_, size_t(cap) * sizeof(FetchEntry) + 16));
      capacity_ = cap;
    }
    std::memcpy(host_, entries, size_t(count) * sizeof(FetchEntry));
    std::memcpy(static_cast<char*>(host_) + size_t(capacity_) * sizeof(FetchEntry), &count,
                sizeof(count));
    TWL_CUDA(cudaMemcpyAsync(dev_, host_, size_t(capacity_) * sizeof(FetchEntry) + 16,
                                 cudaMemcpyHostToDevice, stream));
    TWL_CUDA(cudaEventRecord(event_, stream));
    return static_cast<FetchEntry*>(dev_);
  }
  const int32_t* device_count() const {
    return reinterpret_cast<const int32_t*>(static_cast<char*>(dev_) +
                                            size_t(capacity_) * sizeof(FetchEntry));
  }

 private:
  void* host_ = nullptr;
  void* dev_ = nullptr;
  int32_t capacity_ = 0;
  cudaEvent_t event_ = nullptr;
};

class GatherTransport final : public FetchTransport {
 public:
  GatherTransport(const FetchSource& src, const FetchDest& dst) : src_(src), dst_(dst) {
    caps_.kind = TransportKind::kZeroCopyGather;
    caps_.name = "zero-copy gather";
    caps_.device_list = true;
    caps_.host_list = true;
    caps_.uses_sms = true;
  }
  const TransportCaps& caps() const override { return caps_; }
  absl::Status SubmitDevice(const DeviceFetchList& list, void* stream) override {
    return LaunchGather(src_, dst_, list, stream);
  }
  absl::Status SubmitHost(const FetchEntry* entries, int32_t count, void* stream) override {
    if (count <= 0) return absl::OkStatus();
    absl::StatusOr<FetchEntry*> d = staging_.Upload(entries, count, AsStream(stream));
    if (!d.ok()) return d.status();
    return LaunchGather(src_, dst_, DeviceFetchList{*d, staging_.device_count(), count}, stream);
  }

 private:
  FetchSource src_;
  FetchDest dst_;
  TransportCaps caps_;
  ListStaging staging_;
};

class CopyEngineTransport final : public FetchTransport {
 public:
  CopyEngineTransport(const FetchSource& src, const FetchDest& dst) : src_(src), dst_(dst) {
    caps_.kind = TransportKind::kCopyEngine;
    caps_.name = "copy engine";
    caps_.host_list = true;
#if CUDART_VERSION >= 12080
    caps_.batched_api = true;
#endif
    cudaGetDevice(&device_);
  }
  const TransportCaps& caps() const override { return caps_; }
  absl::Status SubmitDevice(const DeviceFetchList&, void*) override {
    return absl::UnimplementedError(
        "copy engine: a device-resident fetch list needs a host round trip; read it back "
        "and use SubmitHost");
  }
  absl::Status SubmitHost(const FetchEntry* entries, int32_t count, void* stream) override {
    if (count <= 0) return absl::OkStatus();
    for (int32_t i = 0; i < count; ++i) {
      if (entries[i].slot < 0 || entries[i].slot >= dst_.num_slots || entries[i].block < 0 ||
          entries[i].block >= src_.num_blocks) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "copy engine: entry %d (block %d, slot %d) out of range", i, entries[i].block,
            entries[i].slot));
      }
    }
    if (src_.host_slot_of_block) {
      // Runs are consecutive pool blocks, not consecutive block ids.
      mapped_.resize(size_t(count));
      for (int32_t i = 0; i < count; ++i) {
        const int32_t at = src_.host_slot_of_block[entries[i].block];
        if (at < 0) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "copy engine: block %d is not in the host pool", entries[i].block));
        }
        mapped_[size_t(i)] = FetchEntry{at, entries[i].slot};
      }
      entries = mapped_.data();
    }
    CoalesceFetchRuns(entries, count, &runs_);
    dsts_.resize(runs_.size());
    srcs_.resize(runs_.size());
    sizes_.resize(runs_.size());
    for (size_t r = 0; r < runs_.size(); ++r) {
      const FetchEntry& e = entries[runs_[r].first];
      dsts_[r] = static_cast<char*>(dst_.slots_base) + int64_t(e.slot) * src_.block_bytes;
      srcs_[r] = static_cast<const char*>(src_.host_base) + int64_t(e.block) * src_.block_bytes;
      sizes_[r] = size_t(runs_[r].length) * size_t(src_.block_bytes);
    }
    cudaStream_t s = AsStream(stream);
#if CUDART_VERSION >= 12080
    if (s != nullptr && runs_.size() > 1) {  // the batch API refuses the legacy stream
      cudaMemcpyAttributes attr;
      std::memset(&attr, 0, sizeof(attr));
      attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
      attr.srcLocHint.type = cudaMemLocationTypeHost;
      attr.dstLocHint.type = cudaMemLocationTypeDevice;
      attr.dstLocHint.id = device_;
      attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
      size_t attr_idx = 0;
      const cudaError_t e = cudaMemcpyBatchAsync(dsts_.data(), srcs_.data(), sizes_.data(),
                                                 runs_.size(), &attr, &attr_idx, 1, s);
      if (e == cudaSuccess) return absl::OkStatus();
      cudaGetLastError();  // fall back to one copy per run
    }
#endif
    for (size_t r = 0; r < runs_.size(); ++r) {
      TWL_CUDA(cudaMemcpyAsync(dsts_[r], srcs_[r], sizes_[r], cudaMemcpyHostToDevice, s));
    }
    return absl::OkStatus();
  }

 private:
  FetchSource src_;
  FetchDest dst_;
  TransportCaps caps_;
  int device_ = 0;
  std::vector<FetchRun> runs_;
  std::vector<FetchEntry> mapped_;  // entries with pool indices (host_slot_of_block)
  std::vector<void*> dsts_;
  std::vector<const void*> srcs_;
  std::vector<size_t> sizes_;
};

}  // namespace

absl::Status LaunchGather(const FetchSource& src, const FetchDest& dst,
                          const DeviceFetchList& list, void* stream) {
  TWL_RETURN_IF_ERROR(CheckEnds(src, dst, /*need_mapped=*/true));
  if (list.max_entries <= 0) return absl::OkStatus();
  if (list.d_entries == nullptr || list.d_count == nullptr) {
    return absl::InvalidArgumentError("LaunchGather: null fetch list");
  }
  const int32_t warps_per_block = kGatherThreads / 32;
  const int64_t want = (int64_t(list.max_entries) + warps_per_block - 1) / warps_per_block;
  // Enough resident warps to keep PCIe busy, not more: the kernel is latency-bound.
  const int32_t grid = int32_t(std::min<int64_t>(want, int64_t(gpu::SmCount()) * 4));
  GatherKernel<<<grid, kGatherThreads, 0, AsStream(stream)>>>(
      static_cast<const uint4*>(src.mapped_base), static_cast<uint4*>(dst.slots_base),
      list.d_entries, list.d_count, list.max_entries, src.block_bytes / 16, dst.num_slots,
      src.num_blocks, src.slot_of_block);
  return LaunchStatus("GatherKernel");
}

absl::StatusOr<std::unique_ptr<FetchTransport>> CreateGatherTransport(const FetchSource& src,
                                                                      const FetchDest& dst) {
  TWL_RETURN_IF_ERROR(CheckEnds(src, dst, /*need_mapped=*/true));
  return std::unique_ptr<FetchTransport>(new GatherTransport(src, dst));
}

absl::StatusOr<std::unique_ptr<FetchTransport>> CreateCopyEngineTransport(
    const FetchSource& src, const FetchDest& dst) {
  TWL_RETURN_IF_ERROR(CheckEnds(src, dst, /*need_mapped=*/false));
  return std::unique_ptr<FetchTransport>(new CopyEngineTransport(src, dst));
}

}  // namespace twl
