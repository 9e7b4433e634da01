// The GPU offload store's class, shared by the files that define its members (internal to
// runtime/; the public face and the design: runtime/gpu_offload_backend.h):
//   gpu_offload_backend.cu          page releases, memory figures, the factories
//   gpu_offload_backend_append.cu   appends, copy-on-write page copies, page reads
//   gpu_offload_backend_disk.cu     the disk tier under the pinned pool
//   gpu_offload_backend_decode.cu   one decode step and its telemetry
//   gpu_offload_backend_bound.cu    bound batches (steps a caller may capture in a graph)
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/host_arena.h"
#include "core/env_knob.h"
#include "core/validate.h"
#include "gpu/device.h"
#include "pipeline/fetch/cache/cuda/cache_plan.h"
#include "offload/cuda_check.cuh"
#include "offload/disk_tier.h"
#include "pipeline/fetch/cache/cuda/gather.h"
#include "runtime/cuda/append_launch.h"
#include "runtime/disk_io_status.h"
#include "runtime/disk_residency.h"
#include "runtime/gpu_bound_tables.cuh"
#include "runtime/offload_disk_steps.h"
#include "runtime/dtype_convert.h"
#include "runtime/geometry.h"
#include "runtime/kept_capture.h"
#include "runtime/gpu_offload_backend.h"
#include "runtime/gpu_shape.h"
#include "pipeline/attend/sparse/sparse_attention.h"
#include "pipeline/cuda/scratch.cuh"
#include "pipeline/cuda/cuda_executor.cuh"
#include "pipeline/cuda/step_events.cuh"
#include "pipeline/cuda/step_scratch.cuh"
#include "pipeline/fetch/cache/cache_fetch.cuh"
#include "pipeline/fetch/row_cache/row_cache_fetch.cuh"
#include "pipeline/fetch/disk/kept_blocks.h"
#include "pipeline/fetch/disk/miss_first_fetch.cuh"
#include "pipeline/fetch/disk/resident_fetch.cuh"
#include "pipeline/prune/twilight/twilight_pruner.h"
#include "pipeline/select/selector.h"
#include "pipeline/cuda/telemetry_ring.cuh"
#include "pipeline/cuda/upload_ring.cuh"

namespace twl {
namespace offload_store {

using offload_cuda::AsStream;
using pipeline_cuda::PendingStep;
using pipeline_cuda::TelemetryRing;
using pipeline_cuda::UploadRing;

// Tokens [t0, t0 + n) of an append, whose K and V rows are row_bytes apart.
inline AppendView TokenSlice(const AppendView& tokens, int32_t t0, int32_t n, int64_t row_bytes) {
  AppendView part;
  part.num_tokens = n;
  part.k = reinterpret_cast<const fp16_t*>(reinterpret_cast<const char*>(tokens.k) +
                                           t0 * row_bytes);
  part.v = reinterpret_cast<const fp16_t*>(reinterpret_cast<const char*>(tokens.v) +
                                           t0 * row_bytes);
  part.page_id = tokens.page_id + t0;
  part.slot = tokens.slot + t0;
  return part;
}

// Pipeline groups per step: the prune of one group overlaps the fetch of the other, and
// consecutive groups may evict each other's blocks (forced eviction mid-step). Measured on
// the H100 (bench/RESULTS.md):
//  * with Twilight the host's selection bound overestimates a step's blocks 10-50x, and
//    splitting by it (5 groups at B = 8, N = 128k) made each pruner launch too small
//    (prune stage 2.8 ms vs 1.25 ms with 2 groups); splitting by the previous step's real
//    count instead made every step cycle the whole cache when its blocks exceed it (hit
//    rate 0.82 -> 0.04, flat workload, B = 8, N = 32k: 2.75 -> 3.96 ms), while with two
//    groups the units that fit stay resident step after step and the rest are attended
//    from host memory. So Twilight steps over the block cache use two groups (the row
//    cache, which holds single kept rows, one: kRowCacheGroups);
//  * when the pruner keeps every selected token (Quest alone, dense layers) the bound is
//    exact, and groups that fit halve the step against attention from host memory, which
//    reads at about 15 GB/s (Quest, B = 8, N = 32k: 11.9 -> 6.2 ms).
constexpr int32_t kMaxGroups = 8;
constexpr int32_t kPipelineGroups = 2;
// With the row cache a warm step moves almost nothing over PCIe, so a second group only adds
// a pruner launch and a plan: one group measured faster on the H200 at B = 1, 8 and 16, and
// on the mixed workload whose flat heads miss (bench/RESULTS.md, sixth session).
constexpr int32_t kRowCacheGroups = 1;
constexpr int32_t kAppendChunkTokens = 4096;  // host-input appends are staged in chunks
// Bulk append: device staging for whole pages before the copy engine moves them (two
// halves, rounds beyond them), pinned descriptor buffers in flight, and the least staged
// bytes per chunk worth copy-engine calls (below it the kernel writes the rows into the
// mapped pool).
constexpr int64_t kStageBytes = int64_t(32) << 20;
constexpr int32_t kDescRing = 8;
constexpr int64_t kMinCopyEngineBytes = int64_t(256) << 10;
// Host input up to this size (both K and V) rides in the descriptor ring (a decode step's
// tokens), so it waits no more than device input does.
constexpr int64_t kSmallHostBytes = int64_t(4) << 20;

using PinnedBuffer = gpu::PinnedHostBuffer;

// Device buffers only grow (at least 256 bytes, so an empty step still gets a pointer).
inline absl::Status Grow(gpu::DeviceBuffer& b, size_t bytes) {
  return pipeline_cuda::GrowScratch(b, bytes, 256);
}

// Timing events of one group (recorded only when telemetry is asked for).
using namespace pipeline_cuda::group_events;  // NOLINT: kSel0 ... kNumGroupEvents

class GpuOffloadBackend final : public OffloadBackend {
 public:
  // tier: null without a disk tier; else num_pages logical pages over host_slots pinned page
  // slots and the tier's records (runtime/disk_residency.h).
  GpuOffloadBackend(const RuntimeConfig& c, int64_t num_pages, int64_t host_slots = 0,
                    std::unique_ptr<DiskTier> tier = nullptr)
      : cfg_(c), g_(GeometryOf(c)), num_pages_(num_pages),
        num_blocks_(num_pages * c.num_kv_heads), host_slots_(host_slots),
        tier_(std::move(tier)) {}

  ~GpuOffloadBackend() override {
    cudaDeviceSynchronize();
    disk_.reset();  // waits for a read-ahead into the pinned slots
    for (cudaEvent_t e : all_events_) cudaEventDestroy(e);
    for (cudaStream_t s : {own_stream_, fetch_stream_, append_stream_, copy_stream_}) {
      if (s) cudaStreamDestroy(s);
    }
  }

  absl::Status Init() {
    TWL_CUDA(cudaSetDevice(cfg_.device_id));
    if (g_.FpBlockBytes() % 16 != 0) {
      return absl::InvalidArgumentError("offload: FP16 block bytes must be a multiple of 16");
    }
    if (num_blocks_ > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("offload: more than 2^31 blocks");
    }
    if (tier_) {
      TWL_RETURN_IF_ERROR(InitDisk());
    } else {
      absl::StatusOr<std::unique_ptr<HostArena>> pool =
          HostArena::Create(HostMemKind::kPinnedMapped, g_.FpBlockBytes(), num_blocks_, 16);
      if (!pool.ok()) return pool.status();
      pool_ = std::move(*pool);
      if (pool_->block_bytes() != g_.FpBlockBytes() || !pool_->device_base()) {
        return absl::InternalError("offload: host pool is not identity-addressed and mapped");
      }
    }
    // Quantized K + bounds, one allocation carved like QuantKView expects.
    const int64_t nb = num_blocks_;
    const int64_t codes = nb * g_.CodeBlockBytes();
    const int64_t sz = g_.HasTokenScale() ? nb * g_.page_size * 2 : 0;  // none under k_scheme 1
    // The Quest bounds in GPU memory only where a step reads them: under the Full selector
    // with channel ranges the step reads the ranges, and only the appends read and write the
    // bounds (the running min/max the ranges are coded from), so they live in mapped pinned
    // host memory: 512 B a block at d = 128, 6% of the FP16 KV, off the GPU budget.
    bounds_on_host_ = g_.HasChannelRange() && SelectorOf(cfg_) == SelectorKind::kFull;
    const int64_t mm = bounds_on_host_ ? 0 : nb * g_.head_dim * 2;
    const int64_t rg = nb * g_.RangeBlockBytes();  // channel ranges (k_scheme 1)
    auto al = [](int64_t x) { return (x + 255) / 256 * 256; };
    quant_bytes_ = al(codes) + 2 * al(sz) + 2 * al(mm) + al(rg);
    TWL_RETURN_IF_ERROR(Grow(quant_, size_t(quant_bytes_)));
    char* q = quant_.as<char>();
    qk_.codes = codes ? reinterpret_cast<uint8_t*>(q) : nullptr;
    q += al(codes);
    qk_.scale = sz ? reinterpret_cast<fp16_t*>(q) : nullptr;
    q += al(sz);
    qk_.zero = sz ? reinterpret_cast<fp16_t*>(q) : nullptr;
    q += al(sz);
    qk_.kmin = reinterpret_cast<fp16_t*>(q);
    q += al(mm);
    qk_.kmax = reinterpret_cast<fp16_t*>(q);
    q += al(mm);
    qk_.range = rg ? reinterpret_cast<uint8_t*>(q) : nullptr;
    TWL_CUDA(cudaMemset(quant_.get(), 0, size_t(quant_bytes_)));
    if (bounds_on_host_) {
      for (auto* arena : {&host_kmin_, &host_kmax_}) {
        absl::StatusOr<std::unique_ptr<HostArena>> a =
            HostArena::Create(HostMemKind::kPinnedMapped, 2ll * g_.head_dim, nb, 2);
        if (!a.ok()) return a.status();
        if ((*a)->block_bytes() != 2ll * g_.head_dim || !(*a)->device_base()) {
          return absl::InternalError("offload: host bounds are not contiguous and mapped");
        }
        std::memset((*a)->base(), 0, size_t((*a)->bytes()));
        *arena = std::move(*a);
      }
      qk_.kmin = static_cast<fp16_t*>(host_kmin_->device_base());
      qk_.kmax = static_cast<fp16_t*>(host_kmax_->device_base());
    }
    // The runtime's selector's own per-block metadata (none for Quest and Full).
    absl::StatusOr<const Selector*> sel = FindSelector(SelectorOf(cfg_));
    if (!sel.ok()) return sel.status();
    meta_sel_ = *sel;
    const int64_t meta_bytes = meta_sel_->OwnMetadataBytesPerBlock(g_);
    if (meta_bytes > 0) {
      TWL_RETURN_IF_ERROR(Grow(meta_, size_t(nb * meta_bytes)));
      TWL_CUDA(cudaMemset(meta_.get(), 0, size_t(nb * meta_bytes)));
      qk_.meta = meta_.as<uint8_t>();
      qk_.meta_bytes = meta_bytes;
      quant_bytes_ += nb * meta_bytes;
    }

    // Cache.
    // Slots are int32: a gpu_cache_bytes (or block count) past 2^31 slots is clamped, not
    // wrapped (issue 15: no tunable may overflow).
    // With a disk tier the default size follows the host pool, not the logical pages.
    const int64_t block_slots = OffloadCacheSlots(cfg_, disk_ ? host_slots_ : num_pages_);
    num_slots_ = int32_t(std::min<int64_t>(
        {block_slots, num_blocks_, int64_t(std::numeric_limits<int32_t>::max())}));
    num_slots_ = std::max(num_slots_, 1);
    // The fetch stage owns the slots, maps, counters and transports. Rows or blocks in the
    // same bytes (runtime/runtime.h cache_rows).
    if (UseRowCache(block_slots * g_.FpBlockBytes())) {
      auto rows = std::make_unique<pipeline_cuda::RowCacheFetch>();
      num_slots_ = pipeline_cuda::RowCacheFetch::SlotsFor(g_, num_blocks_,
                                                          block_slots * g_.FpBlockBytes());
      TWL_RETURN_IF_ERROR(rows->Init(g_, num_blocks_, num_slots_, HostPool(), kMaxGroups));
      // Early attention (row_cache_fetch.cuh) by default: the plan's kernels then overlap
      // the attention instead of preceding it (H200, 128k, 8 layers, captured steps: B = 1
      // 0.192 -> 0.174 ms, B = 8 mixed 0.883 -> 0.793 with one group; bench/RESULTS.md,
      // sixth session). TWL_ROW_EARLY_ATTEND=0 turns it off, for comparison. Not under a
      // disk tier, whose host waits take the step's end as the end of its pool reads.
      rows->SetEarlyAttend(!disk_ && EnvSwitchOn("TWL_ROW_EARLY_ATTEND"));
      // A decode step's append also copies its new rows into free row slots (TakeFreeSlot,
      // row_cache/cuda/row_slots.cuh): the next step finds the newest tokens, which top-p always keeps (last
      // page), resident instead of reading them over PCIe and copying them. Not under a disk
      // tier (its appends take their own path). TWL_ROW_APPEND_INSERT=0 turns it off, for
      // comparison.
      append_insert_ = !disk_ && EnvSwitchOn("TWL_ROW_APPEND_INSERT");
      // (The disk tier keeps two groups: its NVMe figures were measured with them.)
      if (!disk_) twilight_groups_ = kRowCacheGroups;
      // Under a disk tier the step's end is the end of its pool reads (the host moves blocks
      // after it): the attention waits for each group's whole plan, copy included. (Its
      // plans run in halves around the miss report, which set no flag anyway.)
      if (disk_) rows->SetFlagWait(false);
      row_fetch_ = rows.get();
      fetch_stage_ = std::move(rows);
    } else {
      auto blocks = std::make_unique<pipeline_cuda::CacheFetch>();
      TWL_RETURN_IF_ERROR(blocks->Init(g_, num_blocks_, num_slots_, HostPool(),
                                       cfg_.fetch_path, kMaxGroups));
      fetch_stage_ = std::move(blocks);
    }
    fetch_stage_->SetSharingLayers(cfg_.num_layers);
    if (disk_ && row_fetch_) {
      // Reports of up to a pool's worth of missed blocks per group (more could not be
      // resident at once: the kept lists' path then reports the error).
      TWL_RETURN_IF_ERROR(miss_reports_.Init(num_blocks_, disk_->num_slots(), kMaxGroups));
    }

    // Streams and events.
    TWL_CUDA(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
    TWL_CUDA(cudaStreamCreateWithFlags(&fetch_stream_, cudaStreamNonBlocking));
    fetch_stage_->AttachStream(fetch_stream_);
    TWL_CUDA(cudaStreamCreateWithFlags(&append_stream_, cudaStreamNonBlocking));
    for (cudaEvent_t* e : {&ev_append_done_, &ev_step_done_, &ev_append_staged_,
                           &ev_appended_}) {
      TWL_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
      all_events_.push_back(*e);
    }
    TWL_RETURN_IF_ERROR(uploads_.Init());
    TWL_RETURN_IF_ERROR(telemetry_.Init(kMaxGroups * kNumGroupEvents));
    for (cudaEvent_t* e : {&ev_release_staged_, &ev_in_[0], &ev_in_[1], &ev_fetch_tail_}) {
      TWL_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
      all_events_.push_back(*e);
    }
    for (int32_t i = 0; i < kDescRing; ++i) {
      TWL_CUDA(cudaEventCreateWithFlags(&ev_desc_[i], cudaEventDisableTiming));
      all_events_.push_back(ev_desc_[i]);
    }
    // Bulk-append staging, sized here so that appends never allocate on the way.
    page_bytes_ = int64_t(g_.num_kv_heads) * g_.FpBlockBytes();
    // Two halves: the kernel fills one while the copy engine drains the other.
    half_pages_ = std::max<int64_t>(1, std::min<int64_t>(kStageBytes / page_bytes_, num_pages_) / 2);
    TWL_RETURN_IF_ERROR(Grow(stage_, size_t(2 * half_pages_ * page_bytes_)));
    TWL_CUDA(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    for (cudaEvent_t* e : {&ev_filled_, &ev_half_[0], &ev_half_[1]}) {
      TWL_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
      all_events_.push_back(*e);
    }
    TWL_RETURN_IF_ERROR(Grow(d_segs_, size_t(4096) * sizeof(AppendSegment)));
    if (const char* p = std::getenv("TWL_APPEND_PATH"); p && std::strcmp(p, "kernel") == 0) {
      append_path_ = AppendPath::kKernel;
    }
    // Measurement knob (issue 11): pipeline groups of a Twilight step, 1..kMaxGroups
    // (defaults: kPipelineGroups with the block cache, kRowCacheGroups with the row cache).
    twilight_groups_ =
        int32_t(EnvInt("TWL_OFFLOAD_GROUPS", 1, kMaxGroups).value_or(twilight_groups_));

    return absl::OkStatus();
  }

  BackendKind Kind() const override { return BackendKind::kGpuOffload; }
  std::string Name() const override {
    if (!disk_) {
      return absl::StrFormat("gpu-offload (%d cache slots of %s, %s)", num_slots_,
                             fetch_stage_->granularity(), fetch_path_name());
    }
    const DiskTier& tier = disk_->tier();
    return absl::StrFormat(
        "gpu-offload + disk tier (%d cache slots of %s, %s; %s%s, %d block slots in host "
        "memory)",
        num_slots_, fetch_stage_->granularity(), fetch_path_name(), tier.engine_name(),
        tier.direct_io() ? ", O_DIRECT" : "", disk_->num_slots());
  }
  int32_t num_cache_slots() const override { return num_slots_; }
  std::string fetch_path_name() const override {
    return fetch_stage_->transport_name();
  }
  void SetFetchPath(FetchPath path) override {
    fetch_stage_->SetPath(path);
  }
  void SetAppendPath(AppendPath path) override { append_path_ = path; }
  AppendPath append_path() const override { return append_path_; }
  FetchSource HostPool() const override {
    FetchSource src{PoolHost(), PoolDevice(), g_.FpBlockBytes(), num_blocks_};
    if (disk_) {
      src.slot_of_block = d_pool_map_.as<int32_t>();
      src.host_slot_of_block = h_pool_map_.as<int32_t>();
    }
    return src;
  }
  QuantKView DeviceQuant() const override { return qk_; }
  OffloadStepStats LastStepStats() const override { return last_stats_; }
  CacheCounters CacheTotals() const override { return totals_; }

  absl::Status Append(const AppendView& tokens, DType dtype, MemSpace space,
                      void* stream) override;
  absl::Status WaitAppends() override {
    TWL_CUDA(cudaEventSynchronize(ev_append_done_));  // a device fault shows here
    return absl::OkStatus();
  }
  absl::Status CopyPage(int32_t src_page, int32_t dst_page, int32_t rows) override;
  absl::Status ReadPage(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const override;
  void ReleasePage(int32_t page) override {
    pending_release_.push_back(page);
    if (disk_) disk_release_.push_back(page);  // its num_kv_heads blocks (units) are freed
  }
  absl::Status Decode(const DecodeRequest& request, StepTelemetry* telemetry) override;
  // Bound batches (runtime/bound_batch.h; definitions in gpu_offload_backend_bound.cu): the row
  // cache's plan has no host decisions (its step stamp lives on the device), so a bound step
  // is the executor over the batch's device tables, scratch and fetch buffers.
  absl::StatusOr<std::unique_ptr<BoundTables>> CreateBoundTables(
      const BoundShape& shape, absl::Span<const int32_t> words) override;
  absl::Status WriteBoundTables(BoundTables* tables, int32_t layer,
                                absl::Span<const TableWrite> writes, void* stream) override;
  absl::Status ReadBoundTables(BoundTables* tables, int32_t layer,
                               absl::Span<int32_t> words) override;
  absl::Status DecodeBound(const BoundDecodeRequest& request) override;
  absl::Status AppendBound(const BoundAppendRequest& request) override;
  // How a bound call on stream c orders itself: whether c is capturing (and which capture),
  // then after the appends and steps issued so far (external event nodes in a capture).
  struct BoundOrder {
    bool capturing = false;
    unsigned long long capture_id = 0;
  };
  absl::StatusOr<BoundOrder> OrderBoundCall(cudaStream_t c);
  MemoryUsage Memory() const override;
  absl::Status TakeAsyncError() override {
    absl::Status s = std::exchange(async_error_, absl::OkStatus());
    if (s.ok()) {
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) s.Update(offload_cuda::CudaStatus(e, "offload backend"));
    }
    return s;
  }

 private:
  // The pinned pool: identity addressed (block b at b * block bytes), or with a disk tier
  // the residency's slot arena, addressed through its slot_of_block map.
  void* PoolHost() const { return disk_ ? disk_->host_base() : pool_->base(); }
  void* PoolDevice() const { return disk_ ? disk_->device_base() : pool_->device_base(); }
  // The pool as the kernels see it (device addresses, the device map with a disk tier).
  FpKvView PoolView() const {
    return FpKvView{static_cast<fp16_t*>(PoolDevice()),
                    disk_ ? d_pool_map_.as<int32_t>() : nullptr};
  }
  // Host address of a block (with a disk tier it must be on the host).
  fp16_t* HostBlock(int64_t block) const {
    if (!disk_) return static_cast<fp16_t*>(pool_->Block(block));
    return disk_->HostBlock(block);
  }
  // The num_kv_heads blocks (disk residency units) of each page, appended to *blocks.
  void BlocksOfPages(absl::Span<const int32_t> pages, std::vector<int32_t>* blocks) const {
    for (const int32_t page : pages) {
      for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
        blocks->push_back(int32_t(g_.BlockId(page, h)));
      }
    }
  }
  // Disk tier (runtime/disk_residency.h under the pinned pool; see the header).
  absl::Status InitDisk();
  // Copies the changed part of the residency's map to the device on `s` (the host waits
  // only for the previous map upload, whose staging it rewrites).
  absl::Status UploadPoolMap(cudaStream_t s);
  // Host wait for every append and the last step: nothing on the GPU reads or writes the
  // pool after it, so pages may move.
  absl::Status QuiesceDevice() {
    TWL_CUDA(cudaEventSynchronize(ev_append_done_));
    TWL_CUDA(cudaEventSynchronize(ev_step_done_));
    return absl::OkStatus();
  }
  absl::Status AppendWithDisk(const AppendView& tokens, DType dtype, MemSpace space,
                              cudaStream_t a);
  // ResidentFetch's callback (block cache): reads the group's kept lists back, puts their
  // blocks in the pool (same step for every group of a Decode) and refreshes the map on `c`.
  absl::Status MakeGroupResident(int32_t index, const SeqGroup& group, const KeptView& kept,
                                 cudaStream_t c);
  // MissFirstFetch's callback (row cache): the same for the blocks of the rows the GPU cache
  // missed only (all of the kept lists' blocks when the report overflowed), map on `f`.
  absl::Status MakeMissesResident(int32_t index, const SeqGroup& group, const KeptView& kept,
                                  const pipeline_cuda::MissFirstFetch::Misses& misses,
                                  cudaStream_t f);
  // Appends the distinct blocks of the group's kept lists (read back on `s`, host waits) to
  // group_blocks_ / group_rows_.
  absl::Status ReadKeptBlocks(const SeqGroup& group, const KeptView& kept, cudaStream_t s);
  // disk_steps_->Group over group_blocks_ (time from t0 counted as disk time), then the
  // changed part of the pool map up on `s`.
  absl::Status ReserveGroup(int32_t index, cudaStream_t s,
                            std::chrono::steady_clock::time_point t0);

  absl::Status CheckPages(const int32_t* pages, int64_t n, const char* what) const {
    for (int64_t i = 0; i < n; ++i) {
      if (pages[i] < 0 || pages[i] >= num_pages_) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: page id %d out of range [0, %d)", what, pages[i], num_pages_));
      }
    }
    return absl::OkStatus();
  }
  // Invalidates freed pages' blocks, on the fetch stream, after the last step (whose
  // attention may still read their slots) has completed.
  absl::Status ApplyPendingReleases();
  absl::Status AppendChunk(const AppendView& in, DType dtype, MemSpace space, cudaStream_t a);
  // The bulk path (see the header): segments, staging rounds, one kernel per chunk.
  absl::Status AppendSegments(const AppendView& tokens, DType dtype, MemSpace space,
                              cudaStream_t s);
  // Telemetry without a host wait on the step: the step's figures are copied to a pinned
  // slot on its stream (EnqueueTelemetry) and read by the next Decode (HarvestTelemetry),
  // which waits only for the previous step, not the one it just queued.
  absl::Status EnqueueTelemetry(const DecodeRequest& req, int32_t num_groups, cudaStream_t c);
  // Pipeline groups of a step from each sequence's bound on its blocks (a row cache's
  // capacity counted in blocks of rows): two for Twilight (TWL_OFFLOAD_GROUPS), as many as
  // fit for dense steps.
  std::vector<SeqGroup> GroupsFor(absl::Span<const int64_t> worst, bool dense) const;
  // A step over `batch` (device plan) on compute stream `c`: the store's views and the stage
  // parameters; workspaces and timing are the caller's to set.
  pipeline_cuda::CudaStep StepOf(const Selector& selector, const SelectorParams& sel,
                                 const PrunerParams& pruner, const BatchView& batch,
                                 const fp16_t* q, fp16_t* out, cudaStream_t c) const;
  absl::Status HarvestTelemetry(int32_t slot, StepTelemetry* t);

  const RuntimeConfig cfg_;
  const PageGeometry g_;
  const int64_t num_pages_;
  const int64_t num_blocks_;
  int32_t num_slots_ = 0;
  int64_t quant_bytes_ = 0;
  std::unique_ptr<HostArena> pool_;  // without a disk tier
  // Disk tier: host_slots_ pages' worth of pinned block slots (disk_, one block per unit,
  // slot and record) over the tier's records.
  const int64_t host_slots_;
  std::unique_ptr<DiskTier> tier_;  // handed to disk_ by InitDisk
  std::unique_ptr<DiskResidency> disk_;
  gpu::DeviceBuffer d_pool_map_;  // [num_blocks] the residency's slot_of_block on the device
  PinnedBuffer h_pool_map_;       // what was last uploaded (staging of the uploads)
  cudaEvent_t ev_map_ = nullptr;  // the last map upload has read h_pool_map_
  int64_t map_version_ = -1;      // residency map version on the device
  std::vector<int32_t> disk_release_;  // freed pages whose blocks' slots and records to free
  PinnedBuffer h_kept_;           // kept counts + lists read back per group
  cudaEvent_t ev_kept_ = nullptr;
  // Blocks (residency units) of this step / of one group, and the kept rows of each.
  std::vector<int32_t> group_blocks_, group_rows_;
  std::vector<uint8_t> group_open_;  // append chunk: its blocks whose page stays partial
  absl::flat_hash_set<int32_t> full_pages_;  // append chunk: pages whose last row it writes
  BlockMarks block_marks_;  // blocks listed in this step's groups (or in one append chunk)
  bool mark_step_open_ = false;  // block_marks_ started for the decode step (miss reports)
  bool append_insert_ = false;   // decode-step appends fill free row-cache slots
  // The residency calls of appends and decode steps (runtime/offload_disk_steps.h).
  std::unique_ptr<OffloadDiskSteps> disk_steps_;
  // Under a disk tier with the row cache: the plan's miss reports (MissFirstFetch).
  pipeline_cuda::RowCacheFetch* row_fetch_ = nullptr;  // fetch_stage_ when it caches rows
  pipeline_cuda::MissReportState miss_reports_;
  const BatchView* step_batch_ = nullptr;  // host plan of the Decode in progress
  gpu::DeviceBuffer quant_;
  QuantKView qk_;
  // The Quest bounds in mapped pinned host memory (qk_.kmin / kmax point at their mappings)
  // when no step reads them: see Init.
  bool bounds_on_host_ = false;
  std::unique_ptr<HostArena> host_kmin_, host_kmax_;
  gpu::DeviceBuffer meta_;              // qk_.meta
  const Selector* meta_sel_ = nullptr;  // its owner, the runtime's selector (set by Init)
  // GPU hot cache (blocks or rows) + transports.
  std::unique_ptr<pipeline_cuda::OffloadCacheFetch> fetch_stage_;
  // cache_rows (runtime/runtime.h): 2 rows, 1 blocks, 0 rows unless the row map would take
  // more than a quarter of the cache's `budget` bytes (a huge logical pool over a disk tier).
  bool UseRowCache(int64_t budget) const {
    if (cfg_.cache_rows == 1) return false;
    if (cfg_.cache_rows == 2) return true;
    return pipeline_cuda::RowCacheFetch::MapBytes(g_, num_blocks_) * 4 <= budget;
  }

  cudaStream_t own_stream_ = nullptr, fetch_stream_ = nullptr, append_stream_ = nullptr;
  cudaEvent_t ev_append_done_ = nullptr;  // fetch stream: appends + cache mirror done
  cudaEvent_t ev_step_done_ = nullptr;    // compute stream: last step's attention done
  UploadRing uploads_;  // step plans (lengths, page tables, p)
  TelemetryRing telemetry_;  // timing events: [kMaxGroups][kNumGroupEvents] per slot
  cudaEvent_t TimeEvent(int32_t slot, int32_t group, int32_t e) const {
    return telemetry_.timing(slot, group * kNumGroupEvents + e);
  }
  cudaEvent_t ev_append_staged_ = nullptr;  // append staging consumed
  cudaEvent_t ev_appended_ = nullptr;     // append stream: rows written
  std::vector<cudaEvent_t> all_events_;

  // Step scratch.
  pipeline_cuda::StepScratch scratch_{256};  // select / prune / attend buffers
  const TwilightPruner pruner_{};      // workspace sizes
  const SparseAttention attention_{};  // workspace sizes
  const pipeline_cuda::CudaExecutor executor_{};
  gpu::DeviceBuffer d_q_, d_out_;
  // Append scratch.
  PinnedBuffer h_append_;
  gpu::DeviceBuffer d_append_;
  std::vector<int32_t> plan_pages_, plan_rows_;
  std::vector<int32_t> pending_release_;
  PinnedBuffer h_release_;
  gpu::DeviceBuffer d_release_;
  cudaEvent_t ev_release_staged_ = nullptr;  // h_release_ consumed
  cudaEvent_t ev_fetch_tail_ = nullptr;      // fetch stream: the step's last fetch done
  // Bulk append (AppendSegments).
  AppendPath append_path_ = AppendPath::kCopyEngine;
  int64_t page_bytes_ = 0;   // one page: num_kv_heads blocks, contiguous in the pool
  int64_t half_pages_ = 0;   // pages of each half of stage_
  cudaStream_t copy_stream_ = nullptr;  // D2H of staged pages
  cudaEvent_t ev_filled_ = nullptr;     // a half of the staging written by the kernel
  cudaEvent_t ev_half_[2] = {};         // a half of the staging drained by the copy engine
  gpu::DeviceBuffer stage_, d_segs_, d_in_;
  PinnedBuffer h_desc_[kDescRing];
  cudaEvent_t ev_desc_[kDescRing] = {};
  int32_t desc_next_ = 0;
  int32_t half_next_ = 0;  // staging half of the next round
  PinnedBuffer h_in_[2];  // host input, double-buffered
  cudaEvent_t ev_in_[2] = {};
  int32_t in_next_ = 0;
  std::vector<AppendSegment> segs_;

  int32_t twilight_groups_ = kPipelineGroups;  // TWL_OFFLOAD_GROUPS overrides
  // Id of the stream capture whose bound step recorded ev_step_done_ last (0: an eager one).
  unsigned long long step_recorded_in_capture_ = 0;
  // The same for ev_append_done_ and a bound append (AppendBound).
  unsigned long long append_recorded_in_capture_ = 0;
  absl::Status async_error_;
  OffloadStepStats last_stats_;
  CacheCounters totals_;
};

}  // namespace offload_store
}  // namespace twl
