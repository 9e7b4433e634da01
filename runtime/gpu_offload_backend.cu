// The GPU offload backend (see runtime/gpu_offload_backend.h for the design): the offload
// store (pinned host pool, estimation store, appends) over three streams: compute (the
// caller's or our own), fetch, append. The step itself runs in pipeline/cuda/CudaExecutor
// with the GPU hot cache as its fetch stage (pipeline/fetch/cache/CacheFetch).
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
namespace {

using offload_cuda::AsStream;
using pipeline_cuda::PendingStep;
using pipeline_cuda::TelemetryRing;
using pipeline_cuda::UploadRing;

// Tokens [t0, t0 + n) of an append, whose K and V rows are row_bytes apart.
AppendView TokenSlice(const AppendView& tokens, int32_t t0, int32_t n, int64_t row_bytes) {
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
absl::Status Grow(gpu::DeviceBuffer& b, size_t bytes) {
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
    const int64_t mm = nb * g_.head_dim * 2;
    auto al = [](int64_t x) { return (x + 255) / 256 * 256; };
    quant_bytes_ = al(codes) + 2 * al(sz) + 2 * al(mm);
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
    TWL_CUDA(cudaMemset(quant_.get(), 0, size_t(quant_bytes_)));
    // The runtime's selector's own per-block metadata (none for Quest and Full).
    absl::StatusOr<const Selector*> sel = FindSelector(cfg_.selector);
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
      const char* early = std::getenv("TWL_ROW_EARLY_ATTEND");
      rows->SetEarlyAttend(!disk_ && !(early != nullptr && std::strcmp(early, "0") == 0));
      // A decode step's append also copies its new rows into free row slots (TakeFreeSlot,
      // row_cache/cuda/row_slots.cuh): the next step finds the newest tokens, which top-p always keeps (last
      // page), resident instead of reading them over PCIe and copying them. Not under a disk
      // tier (its appends take their own path). TWL_ROW_APPEND_INSERT=0 turns it off, for
      // comparison.
      const char* insert = std::getenv("TWL_ROW_APPEND_INSERT");
      append_insert_ = !disk_ && !(insert != nullptr && std::strcmp(insert, "0") == 0);
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
    if (const char* p = std::getenv("TWL_OFFLOAD_GROUPS"); p != nullptr) {
      const int v = std::atoi(p);
      if (v >= 1 && v <= kMaxGroups) twilight_groups_ = v;
    }

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
  // Bound batches (runtime/bound_batch.h; definitions at the end of this file): the row
  // cache's plan has no host decisions (its step stamp lives on the device), so a bound step
  // is the executor over the batch's device tables, scratch and fetch buffers.
  absl::StatusOr<std::unique_ptr<BoundTables>> CreateBoundTables(
      const BoundShape& shape, absl::Span<const int32_t> words) override;
  absl::Status WriteBoundTables(BoundTables* tables, int32_t layer,
                                absl::Span<const TableWrite> writes, void* stream) override;
  absl::Status ReadBoundTables(BoundTables* tables, int32_t layer,
                               absl::Span<int32_t> words) override;
  absl::Status DecodeBound(const BoundDecodeRequest& request) override;
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
  absl::Status async_error_;
  OffloadStepStats last_stats_;
  CacheCounters totals_;
};

absl::Status GpuOffloadBackend::ApplyPendingReleases() {
  if (pending_release_.empty()) return absl::OkStatus();
  if (!disk_release_.empty()) {
    // The slots of freed pages are reused at once: nothing may read them any more.
    TWL_RETURN_IF_ERROR(QuiesceDevice());
    std::vector<int32_t> blocks;
    BlocksOfPages(disk_release_, &blocks);
    for (const int32_t block : blocks) disk_->Release(block);
    disk_release_.clear();
  }
  const int32_t n = int32_t(pending_release_.size());
  // The staging may still be read by the previous release's upload (only that is waited
  // for, not the whole fetch stream).
  TWL_CUDA(cudaEventSynchronize(ev_release_staged_));
  TWL_RETURN_IF_ERROR(h_release_.Reserve(size_t(n) * 4));
  TWL_RETURN_IF_ERROR(Grow(d_release_, size_t(n) * 4));
  std::memcpy(h_release_.as<int32_t>(), pending_release_.data(), size_t(n) * 4);
  pending_release_.clear();
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_step_done_, 0));
  // ev_append_done_ is recorded again below: it must still cover the appends (and bound
  // table writes) it stood for, which may have run on the callers' streams.
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_append_done_, 0));
  TWL_CUDA(cudaMemcpyAsync(d_release_.get(), h_release_.as<int32_t>(), size_t(n) * 4,
                               cudaMemcpyHostToDevice, fetch_stream_));
  TWL_CUDA(cudaEventRecord(ev_release_staged_, fetch_stream_));
  TWL_RETURN_IF_ERROR(fetch_stage_->InvalidatePages(d_release_.as<int32_t>(), n, fetch_stream_));
  TWL_CUDA(cudaEventRecord(ev_append_done_, fetch_stream_));
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::Append(const AppendView& tokens, DType dtype, MemSpace space,
                                       void* stream) {
  if (tokens.num_tokens < 0) return absl::InvalidArgumentError("append: num_tokens < 0");
  if (tokens.num_tokens == 0) return absl::OkStatus();
  if (!tokens.k || !tokens.v || !tokens.page_id || !tokens.slot) {
    return absl::InvalidArgumentError("append: null k, v, page_id or slot");
  }
  if (!IsValidDType(dtype)) return absl::InvalidArgumentError("append: unknown dtype");
  if (space != MemSpace::kHost && space != MemSpace::kDevice) {
    return absl::InvalidArgumentError("append: unknown memory space");
  }
  TWL_RETURN_IF_ERROR(CheckPages(tokens.page_id, tokens.num_tokens, "append"));
  for (int32_t i = 0; i < tokens.num_tokens; ++i) {
    if (tokens.slot[i] < 0 || tokens.slot[i] >= g_.page_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "append: row %d of token %d outside [0, %d)", tokens.slot[i], i, g_.page_size));
    }
  }
  TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  cudaStream_t a = stream ? AsStream(stream) : append_stream_;
  // Chained after the previous append (and its cache mirror): they share the staging and the
  // descriptor buffer, and CopyPage/ReadPage/Decode wait for the last one only. A page freed
  // and reused since the last step may still be read by it: wait for that step too. Both
  // waits are on the device; the host goes on.
  TWL_CUDA(cudaStreamWaitEvent(a, ev_append_done_, 0));
  TWL_CUDA(cudaStreamWaitEvent(a, ev_step_done_, 0));
  if (disk_) return AppendWithDisk(tokens, dtype, space, a);
  // The bulk path needs every page written in one run of consecutive rows (how the Runtime
  // appends, batches included); anything else takes the per-token path.
  if (PlanAppendSegments(tokens.page_id, tokens.slot, tokens.num_tokens, &segs_) &&
      g_.head_dim % 8 == 0) {
    return AppendSegments(tokens, dtype, space, a);
  }
  // Host input is staged through pinned memory in chunks; device input goes in one launch.
  const int32_t chunk = space == MemSpace::kHost ? kAppendChunkTokens : tokens.num_tokens;
  const int64_t row_bytes = int64_t(g_.num_kv_heads) * g_.head_dim * int64_t(DTypeBytes(dtype));
  for (int32_t t0 = 0; t0 < tokens.num_tokens; t0 += chunk) {
    const AppendView part =
        TokenSlice(tokens, t0, std::min(chunk, tokens.num_tokens - t0), row_bytes);
    TWL_RETURN_IF_ERROR(AppendChunk(part, dtype, space, a));
  }
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::AppendSegments(const AppendView& tokens, DType dtype,
                                               MemSpace space, cudaStream_t s) {
  const int32_t n = tokens.num_tokens;
  const int64_t row_bytes = int64_t(g_.num_kv_heads) * g_.head_dim * int64_t(DTypeBytes(dtype));
  // Host input goes up in chunks of tokens (each chunk re-planned: a page split across two
  // chunks becomes two segments, the second merging its bounds with the first's, which the
  // stream has written by then).
  const bool host = space == MemSpace::kHost;
  const int32_t chunk_tokens = host ? kAppendChunkTokens : n;
  struct Run {  // one copy-engine transfer: pages [page, page + count) from stage [stage, ...)
    int32_t stage, page, count;
  };
  struct Round {
    int32_t seg_begin, seg_count;  // into the call's descriptor array
    std::vector<Run> runs;
  };
  struct Chunk {
    int32_t t0, tokens;
    std::vector<Round> rounds;
  };
  std::vector<Chunk> chunks;
  std::vector<AppendSegment> all;  // every chunk's segments, in launch order
  all.reserve(segs_.size() + size_t(n / std::max(chunk_tokens, 1)) + 1);
  std::vector<AppendSegment> plan, direct, staged;
  int64_t direct_segments = 0;
  for (int32_t t0 = 0; t0 < n; t0 += chunk_tokens) {
    Chunk ch;
    ch.t0 = t0;
    ch.tokens = std::min(chunk_tokens, n - t0);
    if (host) {
      PlanAppendSegments(tokens.page_id + t0, tokens.slot + t0, ch.tokens, &plan);
    } else {
      plan.swap(segs_);
    }
    // Whole pages go through the staging when enough of them make the copy engine pay.
    direct.clear();
    staged.clear();
    for (const AppendSegment& sg : plan) {
      const bool whole = sg.row_begin == 0 && sg.row_end == g_.page_size;
      (whole && append_path_ == AppendPath::kCopyEngine ? staged : direct).push_back(sg);
    }
    if (int64_t(staged.size()) * page_bytes_ < kMinCopyEngineBytes) {
      direct.insert(direct.end(), staged.begin(), staged.end());
      staged.clear();
    }
    // Sorted by page id, consecutive ids become one transfer (a fresh pool hands out
    // consecutive pages; after frees, LIFO reuse hands them out in reverse).
    std::sort(staged.begin(), staged.end(),
              [](const AppendSegment& x, const AppendSegment& y) { return x.page < y.page; });
    direct_segments += int64_t(direct.size());
    size_t next_staged = 0;
    do {
      Round r;
      r.seg_begin = int32_t(all.size());
      if (ch.rounds.empty()) all.insert(all.end(), direct.begin(), direct.end());
      const size_t take = std::min<size_t>(size_t(half_pages_), staged.size() - next_staged);
      for (size_t j = 0; j < take; ++j) {
        AppendSegment sg = staged[next_staged + j];
        sg.stage = int32_t(j);
        if (!r.runs.empty() && r.runs.back().page + r.runs.back().count == sg.page) {
          ++r.runs.back().count;
        } else {
          r.runs.push_back(Run{sg.stage, sg.page, 1});
        }
        all.push_back(sg);
      }
      next_staged += take;
      r.seg_count = int32_t(all.size()) - r.seg_begin;
      ch.rounds.push_back(std::move(r));
    } while (next_staged < staged.size());
    chunks.push_back(std::move(ch));
  }
  if (all.size() > size_t(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("append: too many segments");
  }

  // A decode step's append (device rows, a few partial pages, nothing staged, no reader of
  // the descriptors but the kernel): the segments travel as the kernel's parameter, so the
  // stream runs no upload before it.
  const bool mirror = direct_segments > 0 && fetch_stage_->appends_need_mirror();
  if (!host && chunks.size() == 1 && chunks[0].rounds.size() == 1 &&
      chunks[0].rounds[0].runs.empty() && all.size() <= size_t(kInlineAppendSegments) &&
      !qk_.meta && !mirror) {
    const FpKvView pool_view{static_cast<fp16_t*>(pool_->device_base()), nullptr};
    const DeviceRowCache* insert = append_insert_ ? fetch_stage_->append_insert() : nullptr;
    TWL_RETURN_IF_ERROR(LaunchAppendSegmentsInline(g_, all.data(), int32_t(all.size()),
                                                   tokens.k, tokens.v, InputType(dtype),
                                                   pool_view, nullptr, qk_, insert, s));
    TWL_CUDA(cudaEventRecord(ev_appended_, s));
    TWL_CUDA(cudaEventRecord(ev_append_done_, s));
    return absl::OkStatus();
  }
  // Descriptors up in one copy, through the next pinned ring buffer. Waiting for its event
  // blocks the host only when kDescRing appends are still queued ahead of this one.
  const size_t desc_bytes = all.size() * sizeof(AppendSegment);
  const bool small_host =
      host && chunks.size() == 1 && 2 * int64_t(n) * row_bytes <= kSmallHostBytes;
  const size_t in_bytes = size_t(n * row_bytes);  // K (or V) of a small host input
  const size_t in_off = (desc_bytes + 255) / 256 * 256;
  const int32_t ring = desc_next_;
  desc_next_ = (desc_next_ + 1) % kDescRing;
  TWL_CUDA(cudaEventSynchronize(ev_desc_[ring]));  // returns at once when done
  TWL_RETURN_IF_ERROR(h_desc_[ring].Reserve(small_host ? in_off + 2 * in_bytes : desc_bytes));
  TWL_RETURN_IF_ERROR(Grow(d_segs_, desc_bytes));  // grows only for a larger call than any before
  if (host) TWL_RETURN_IF_ERROR(Grow(d_in_, size_t(2 * int64_t(kAppendChunkTokens) * row_bytes)));
  char* ring_buf = h_desc_[ring].data();
  std::memcpy(ring_buf, all.data(), desc_bytes);
  TWL_CUDA(cudaMemcpyAsync(d_segs_.get(), ring_buf, desc_bytes, cudaMemcpyHostToDevice, s));
  if (small_host) {
    std::memcpy(ring_buf + in_off, tokens.k, in_bytes);
    std::memcpy(ring_buf + in_off + in_bytes, tokens.v, in_bytes);
    TWL_CUDA(cudaMemcpyAsync(d_in_.get(), ring_buf + in_off, 2 * in_bytes,
                                 cudaMemcpyHostToDevice, s));
  }
  TWL_CUDA(cudaEventRecord(ev_desc_[ring], s));

  const auto* d_all = d_segs_.as<AppendSegment>();
  bool copied = false;
  const FpKvView pool_view{static_cast<fp16_t*>(pool_->device_base()), nullptr};
  auto* pool_host = static_cast<char*>(pool_->base());
  for (const Chunk& ch : chunks) {
    const void* k = reinterpret_cast<const char*>(tokens.k) + ch.t0 * row_bytes;
    const void* v = reinterpret_cast<const char*>(tokens.v) + ch.t0 * row_bytes;
    if (small_host) {
      k = d_in_.get();
      v = d_in_.as<char>() + in_bytes;
    } else if (host) {
      // Host rows -> pinned (double-buffered, each guarded by the event of its upload) ->
      // d_in_, which the stream frees for the next chunk once this chunk's kernel has run.
      const size_t bytes = size_t(ch.tokens * row_bytes);
      const int32_t b = in_next_;
      in_next_ ^= 1;
      TWL_CUDA(cudaEventSynchronize(ev_in_[b]));
      TWL_RETURN_IF_ERROR(h_in_[b].Reserve(2 * bytes));
      std::memcpy(h_in_[b].data(), k, bytes);
      std::memcpy(h_in_[b].data() + bytes, v, bytes);
      TWL_CUDA(cudaMemcpyAsync(d_in_.get(), h_in_[b].data(), 2 * bytes,
                                   cudaMemcpyHostToDevice, s));
      TWL_CUDA(cudaEventRecord(ev_in_[b], s));
      k = d_in_.get();
      v = d_in_.as<char>() + bytes;
    }
    for (const Round& r : ch.rounds) {
      // Rounds alternate between the staging halves: the kernel of round i + 1 runs while
      // the copy engine still drains round i's half (on copy_stream_); round i + 2 waits for
      // that drain before it overwrites the half.
      const int32_t half = half_next_;
      char* stage = stage_.as<char>() + int64_t(half) * half_pages_ * page_bytes_;
      if (!r.runs.empty()) TWL_CUDA(cudaStreamWaitEvent(s, ev_half_[half], 0));
      TWL_RETURN_IF_ERROR(LaunchAppendSegments(g_, d_all + r.seg_begin, r.seg_count, k, v,
                                          InputType(dtype), pool_view,
                                          reinterpret_cast<fp16_t*>(stage), qk_, s));
      if (qk_.meta) {
        TWL_RETURN_IF_ERROR(meta_sel_->AppendSegmentsMetadataOnDevice(
            g_, d_all + r.seg_begin, r.seg_count, pool_view,
            reinterpret_cast<const fp16_t*>(stage), qk_, s));
      }
      if (r.runs.empty()) continue;
      TWL_CUDA(cudaEventRecord(ev_filled_, s));
      TWL_CUDA(cudaStreamWaitEvent(copy_stream_, ev_filled_, 0));
      for (const Run& run : r.runs) {
        TWL_CUDA(cudaMemcpyAsync(pool_host + int64_t(run.page) * page_bytes_,
                                     stage + int64_t(run.stage) * page_bytes_,
                                     size_t(int64_t(run.count) * page_bytes_),
                                     cudaMemcpyDeviceToHost, copy_stream_));
      }
      TWL_CUDA(cudaEventRecord(ev_half_[half], copy_stream_));
      half_next_ ^= 1;
      copied = true;
    }
  }
  // The caller's stream reaches "appended" only once every staged page is in the pool
  // (copy_stream_ runs its copies in order, so its last event covers them all).
  if (copied) TWL_CUDA(cudaStreamWaitEvent(s, ev_half_[half_next_ ^ 1], 0));
  TWL_CUDA(cudaEventRecord(ev_appended_, s));
  if (mirror) {
    // Cache coherence on the fetch stream, where every other cache mutation runs. Whole new
    // pages cannot be resident (freed pages were invalidated before), so only calls with
    // partial pages need it, and only under a cache that may hold a stale copy (the block
    // cache's partial blocks; not the row cache).
    TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_appended_, 0));
    TWL_RETURN_IF_ERROR(fetch_stage_->MirrorSegments(
        static_cast<const fp16_t*>(pool_->device_base()), d_all, int32_t(all.size()),
        fetch_stream_));
    TWL_CUDA(cudaEventRecord(ev_append_done_, fetch_stream_));
  } else {
    TWL_CUDA(cudaEventRecord(ev_append_done_, s));
  }
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::AppendChunk(const AppendView& in, DType dtype, MemSpace space,
                                            cudaStream_t a) {
  const int32_t n = in.num_tokens;
  PlanAppendPages(in.page_id, in.slot, n, &plan_pages_, &plan_rows_);
  const int32_t np = int32_t(plan_pages_.size());
  const size_t kv_bytes =
      space == MemSpace::kHost ? size_t(n) * g_.num_kv_heads * g_.head_dim * DTypeBytes(dtype)
                               : 0;
  // Layout of the staging: page_id[n], slot[n], pages[np], rows[np], then k, v (host input).
  const size_t idx_bytes = (size_t(2) * n + 2 * size_t(np)) * 4;
  const size_t kv_off = (idx_bytes + 255) / 256 * 256;
  const size_t total = kv_off + 2 * kv_bytes;
  TWL_CUDA(cudaEventSynchronize(ev_append_staged_));  // previous chunk's upload is done
  TWL_RETURN_IF_ERROR(h_append_.Reserve(total));
  TWL_RETURN_IF_ERROR(Grow(d_append_, total));
  char* h = h_append_.as<char>();
  std::memcpy(h, in.page_id, size_t(n) * 4);
  std::memcpy(h + size_t(n) * 4, in.slot, size_t(n) * 4);
  std::memcpy(h + size_t(2 * n) * 4, plan_pages_.data(), size_t(np) * 4);
  std::memcpy(h + size_t(2 * n + np) * 4, plan_rows_.data(), size_t(np) * 4);
  if (kv_bytes) {
    std::memcpy(h + kv_off, in.k, kv_bytes);
    std::memcpy(h + kv_off + kv_bytes, in.v, kv_bytes);
  }
  TWL_CUDA(cudaStreamWaitEvent(a, ev_append_done_, 0));
  TWL_CUDA(cudaMemcpyAsync(d_append_.get(), h, total, cudaMemcpyHostToDevice, a));
  TWL_CUDA(cudaEventRecord(ev_append_staged_, a));
  char* d = d_append_.as<char>();
  AppendView dev;
  dev.num_tokens = n;
  dev.page_id = reinterpret_cast<const int32_t*>(d);
  dev.slot = reinterpret_cast<const int32_t*>(d + size_t(n) * 4);
  dev.k = kv_bytes ? reinterpret_cast<const fp16_t*>(d + kv_off) : in.k;
  dev.v = kv_bytes ? reinterpret_cast<const fp16_t*>(d + kv_off + kv_bytes) : in.v;
  AppendPagePlan plan;
  plan.d_page = reinterpret_cast<const int32_t*>(d + size_t(2 * n) * 4);
  plan.d_rows = reinterpret_cast<const int32_t*>(d + size_t(2 * n + np) * 4);
  plan.num_pages = np;
  // FP16 rows land in the mapped host pool (identity addressed, or through the pool map with
  // a disk tier), INT4 K + bounds on the GPU; then the selector's own metadata.
  const FpKvView pool_view = PoolView();
  TWL_RETURN_IF_ERROR(LaunchAppend(g_, dev, InputType(dtype), plan, pool_view, qk_, a));
  if (qk_.meta) {
    TWL_RETURN_IF_ERROR(meta_sel_->UpdateMetadataOnDevice(g_, plan, pool_view, qk_, a));
  }
  TWL_CUDA(cudaEventRecord(ev_appended_, a));
  if (!disk_ && !fetch_stage_->appends_need_mirror()) {  // nothing stale to mirror (see there)
    TWL_CUDA(cudaEventRecord(ev_append_done_, a));
    TWL_CUDA(cudaEventRecord(ev_append_staged_, a));
    return absl::OkStatus();
  }
  // Cache coherence on the fetch stream, where every other cache mutation runs.
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_appended_, 0));
  if (disk_) {
    // The mirror kernels read the pool identity addressed: drop the pages' cached blocks
    // instead (the next step fetches them again from the pool).
    TWL_RETURN_IF_ERROR(fetch_stage_->InvalidatePages(plan.d_page, np, fetch_stream_));
  } else {
    TWL_RETURN_IF_ERROR(fetch_stage_->MirrorTokens(
        static_cast<const fp16_t*>(pool_->device_base()), dev.page_id, dev.slot, n,
        fetch_stream_));
  }
  TWL_CUDA(cudaEventRecord(ev_append_done_, fetch_stream_));
  // The staging (indices read by the mirror) is reused only after the mirror has run.
  TWL_CUDA(cudaEventRecord(ev_append_staged_, fetch_stream_));
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::CopyPage(int32_t src_page, int32_t dst_page, int32_t rows) {
  const int32_t pages[2] = {src_page, dst_page};
  TWL_RETURN_IF_ERROR(CheckPages(pages, 2, "copy page"));
  if (rows < 0 || rows > g_.page_size) {
    return absl::InvalidArgumentError(absl::StrFormat("copy page: rows %d", rows));
  }
  TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  // Rows of src may still be in flight from an append (on whatever stream; appends are
  // chained, so the last one's event covers all), and a step issued before dst_page was
  // last freed may still read it.
  TWL_CUDA(cudaEventSynchronize(ev_append_done_));
  TWL_CUDA(cudaEventSynchronize(ev_step_done_));
  if (disk_) {
    // Both pages' blocks in host slots (src read back if it is on disk), dst's disk copies
    // dropped.
    const int32_t both[2] = {src_page, dst_page};
    const int32_t n = src_page == dst_page ? 1 : 2;
    std::vector<int32_t> blocks, dst_blocks;
    BlocksOfPages(absl::MakeConstSpan(both, size_t(n)), &blocks);
    BlocksOfPages({dst_page}, &dst_blocks);
    TWL_RETURN_IF_ERROR(PrefixStatus(disk_->Reserve(blocks, nullptr), "copy-on-write: "));
    TWL_RETURN_IF_ERROR(disk_->MarkDirty(dst_blocks));
    TWL_RETURN_IF_ERROR(UploadPoolMap(append_stream_));
  }
  const int32_t H = g_.num_kv_heads;
  const int64_t row_elems = g_.head_dim;
  for (int32_t h = 0; h < H; ++h) {
    const int64_t sb = int64_t(src_page) * H + h, db = int64_t(dst_page) * H + h;
    fp16_t* s = HostBlock(sb);
    fp16_t* dd = HostBlock(db);
    std::memcpy(dd, s, size_t(rows * row_elems) * 2);  // K rows
    std::memcpy(dd + g_.page_size * row_elems, s + g_.page_size * row_elems,
                size_t(rows * row_elems) * 2);  // V rows
  }
  if (rows == 0) return absl::OkStatus();
  cudaStream_t a = append_stream_;
  // Codes, scale and zero of the page's blocks are contiguous per page (block-major).
  const int64_t sb0 = int64_t(src_page) * H, db0 = int64_t(dst_page) * H;
  if (qk_.codes) {
    TWL_CUDA(cudaMemcpyAsync(qk_.codes + db0 * g_.CodeBlockBytes(),
                                 qk_.codes + sb0 * g_.CodeBlockBytes(),
                                 size_t(H * g_.CodeBlockBytes()), cudaMemcpyDeviceToDevice, a));
  }
  for (fp16_t* arr : {qk_.scale, qk_.zero}) {
    if (!arr) continue;
    TWL_CUDA(cudaMemcpyAsync(arr + db0 * g_.page_size, arr + sb0 * g_.page_size,
                                 size_t(H) * g_.page_size * 2, cudaMemcpyDeviceToDevice, a));
  }
  // Page bounds over the copied rows, from the FP16 K now in the host pool.
  TWL_CUDA(cudaEventSynchronize(ev_append_staged_));
  TWL_RETURN_IF_ERROR(h_append_.Reserve(16));
  TWL_RETURN_IF_ERROR(Grow(d_append_, 16));
  int32_t* h = h_append_.as<int32_t>();
  h[0] = dst_page;
  h[1] = rows;
  TWL_CUDA(cudaMemcpyAsync(d_append_.get(), h, 8, cudaMemcpyHostToDevice, a));
  AppendPagePlan plan{d_append_.as<int32_t>(), d_append_.as<int32_t>() + 1, 1};
  const FpKvView pool_view = PoolView();
  TWL_RETURN_IF_ERROR(LaunchRecomputeMinMax(g_, plan, pool_view, qk_, a));
  if (qk_.meta) TWL_RETURN_IF_ERROR(meta_sel_->UpdateMetadataOnDevice(g_, plan, pool_view, qk_, a));
  TWL_CUDA(cudaEventRecord(ev_append_staged_, a));
  TWL_CUDA(cudaEventRecord(ev_appended_, a));
  // A reused page id must not hit stale cache slots.
  pending_release_.push_back(dst_page);
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_appended_, 0));
  return ApplyPendingReleases();
}

absl::Status GpuOffloadBackend::InitDisk() {
  // Units of the residency: blocks (page, KV head), the unit a step keeps and the cache,
  // fetch and attention use; host_slots_ pages of pool are host_slots_ * H block slots.
  const int64_t block_slots = host_slots_ * g_.num_kv_heads;
  if (host_slots_ < 1 || block_slots > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("offload: disk tier needs 1 <= host block slots < 2^31");
  }
  absl::StatusOr<std::unique_ptr<DiskResidency>> disk =
      DiskResidency::Create(g_, int32_t(num_blocks_), int32_t(block_slots), std::move(tier_),
                            HostMemKind::kPinnedMapped, /*heads_per_unit=*/1);
  if (!disk.ok()) return disk.status();
  disk_ = std::move(*disk);
  // Value decay and the layers' cycle (runtime/offload_disk_steps.h).
  disk_steps_ = std::make_unique<OffloadDiskSteps>(disk_.get(), cfg_.num_layers);
  if (g_.k_bits >= 16) {
    // The pruner would read the FP16 K of every selected page, resident or not.
    return absl::UnimplementedError(
        "offload: a disk tier under the GPU needs a quantized estimation K (k_bits < 16)");
  }
  if (!disk_->device_base()) {
    return absl::InternalError("offload: the disk tier's host slots are not mapped");
  }
  const size_t map_bytes = size_t(num_blocks_) * 4;
  TWL_RETURN_IF_ERROR(Grow(d_pool_map_, map_bytes));
  TWL_CUDA(cudaMemset(d_pool_map_.get(), 0xff, map_bytes));  // -1: on no slot
  TWL_RETURN_IF_ERROR(h_pool_map_.Reserve(map_bytes));
  std::memset(h_pool_map_.data(), 0xff, map_bytes);
  for (cudaEvent_t* e : {&ev_map_, &ev_kept_}) {
    TWL_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    all_events_.push_back(*e);
  }
  block_marks_.NewStep(size_t(num_blocks_));
  map_version_ = disk_->map_version();
  return UploadPoolMap(nullptr);
}

absl::Status GpuOffloadBackend::UploadPoolMap(cudaStream_t s) {
  // One copy of the range that holds every change (cheaper than a call per page; the
  // entries in between are rewritten with the values they already have).
  int64_t lo = 0, hi = -1;
  if (!disk_->TakeChangedBlocks(&lo, &hi)) return absl::OkStatus();
  map_version_ = disk_->map_version();
  const absl::Span<const int32_t> map = disk_->slot_of_block();
  int32_t* shadow = h_pool_map_.as<int32_t>();
  TWL_CUDA(cudaEventSynchronize(ev_map_));  // the previous upload has read the staging
  std::memcpy(shadow + lo, map.data() + lo, size_t(hi - lo + 1) * 4);
  TWL_CUDA(cudaMemcpyAsync(d_pool_map_.as<int32_t>() + lo, shadow + lo, size_t(hi - lo + 1) * 4,
                           cudaMemcpyHostToDevice, s));
  TWL_CUDA(cudaEventRecord(ev_map_, s));
  // Every other reader of the map (the gather on the fetch stream) comes after it.
  TWL_CUDA(cudaStreamWaitEvent(fetch_stream_, ev_map_, 0));
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::AppendWithDisk(const AppendView& tokens, DType dtype,
                                               MemSpace space, cudaStream_t a) {
  const int32_t n = tokens.num_tokens;
  const int32_t H = g_.num_kv_heads;
  const int64_t row_bytes = int64_t(H) * g_.head_dim * int64_t(DTypeBytes(dtype));
  // Chunks of tokens whose pages' blocks fit in the host slots at once (and whose host input
  // fits the staging); each chunk: blocks into slots, map up, rows written.
  const int32_t max_blocks = disk_->num_slots();
  const int32_t max_tokens = space == MemSpace::kHost ? kAppendChunkTokens : n;
  int32_t t0 = 0;
  while (t0 < n) {
    block_marks_.NewStep(size_t(num_blocks_));
    group_blocks_.clear();
    group_open_.clear();
    int32_t t1 = t0;
    while (t1 < n && t1 - t0 < max_tokens) {
      const int64_t b0 = g_.BlockId(tokens.page_id[t1], 0);
      if (block_marks_.mark[size_t(b0)] != block_marks_.gen) {
        if (int32_t(group_blocks_.size()) + H > max_blocks) break;
        block_marks_.mark[size_t(b0)] = block_marks_.gen;
        for (int32_t h = 0; h < H; ++h) group_blocks_.push_back(int32_t(b0 + h));
      }
      ++t1;
    }
    // A page stays open (the next append writes it again) unless its last row is written.
    full_pages_.clear();
    for (int32_t t = t0; t < t1; ++t) {
      if (tokens.slot[t] == g_.page_size - 1) full_pages_.insert(tokens.page_id[t]);
    }
    group_open_.resize(group_blocks_.size());
    for (size_t i = 0; i < group_blocks_.size(); ++i) {
      group_open_[i] = !full_pages_.contains(int32_t(group_blocks_[i] / H));
    }
    // Blocks move between the pinned slots and the disk only while the GPU touches none: a
    // chunk that must spill waits for every earlier step and append first (their kernels
    // may read or write the victims' slots), the earlier chunks of this call included. A
    // decode-time append never must (open blocks stay resident, fresh ones take the append
    // reserve): it neither waits for the device nor for the disk.
    DiskIoCounts io;
    TWL_RETURN_IF_ERROR(disk_steps_->Append(group_blocks_, group_open_,
                                            [this] { return QuiesceDevice(); }, &io));
    TWL_RETURN_IF_ERROR(UploadPoolMap(a));
    const AppendView part = TokenSlice(tokens, t0, t1 - t0, row_bytes);
    TWL_RETURN_IF_ERROR(AppendChunk(part, dtype, space, a));
    t0 = t1;
  }
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::MakeGroupResident(int32_t index, const SeqGroup& grp,
                                                  const KeptView& kept, cudaStream_t c) {
  const auto t0 = std::chrono::steady_clock::now();
  if (index == 0) block_marks_.NewStep(size_t(num_blocks_));
  group_blocks_.clear();
  group_rows_.clear();
  TWL_RETURN_IF_ERROR(ReadKeptBlocks(grp, kept, c));
  return ReserveGroup(index, c, t0);
}

absl::Status GpuOffloadBackend::MakeMissesResident(
    int32_t index, const SeqGroup& grp, const KeptView& kept,
    const pipeline_cuda::MissFirstFetch::Misses& misses, cudaStream_t f) {
  const auto t0 = std::chrono::steady_clock::now();
  // Called only for groups that missed something; the marks start with the step's first
  // such group (index 0 need not be one).
  if (!mark_step_open_) {
    block_marks_.NewStep(size_t(num_blocks_));
    mark_step_open_ = true;
  }
  group_blocks_.clear();
  group_rows_.clear();
  if (misses.complete) {
    TWL_RETURN_IF_ERROR(AppendReportedBlocks(misses.blocks, misses.rows, misses.count,
                                             &block_marks_, &group_blocks_, &group_rows_));
  } else {
    TWL_RETURN_IF_ERROR(ReadKeptBlocks(grp, kept, f));
  }
  if (group_blocks_.empty()) return absl::OkStatus();
  return ReserveGroup(index, f, t0);
}

absl::Status GpuOffloadBackend::ReadKeptBlocks(const SeqGroup& grp, const KeptView& kept,
                                               cudaStream_t c) {
  const int32_t H = g_.num_kv_heads;
  const BatchView& hb = *step_batch_;
  const int64_t units = int64_t(grp.num_seqs) * H;
  // Kept counts, then each unit's kept tokens (ascending), read back once the prune is done.
  const size_t cnt_bytes = size_t(units) * 4;
  TWL_RETURN_IF_ERROR(h_kept_.Reserve(cnt_bytes));
  TWL_CUDA(cudaMemcpyAsync(h_kept_.data(), kept.count, cnt_bytes, cudaMemcpyDeviceToHost, c));
  TWL_CUDA(cudaEventRecord(ev_kept_, c));
  TWL_CUDA(cudaEventSynchronize(ev_kept_));
  std::vector<int32_t> counts(h_kept_.as<int32_t>(), h_kept_.as<int32_t>() + units);
  int64_t total = 0;
  for (int32_t& k : counts) {
    k = std::clamp(k, 0, kept.max_kept);
    total += k;
  }
  // The lists: one copy of the whole [units][max_kept] region when it is at most 4x the
  // kept tokens or 8 MiB (a copy call costs about what a few MB at PCIe rate do), else one
  // per unit.
  const int64_t whole = units * int64_t(kept.max_kept);
  const bool one_copy = whole <= 4 * std::max<int64_t>(total, 1) || whole <= (2 << 20);
  TWL_RETURN_IF_ERROR(
      h_kept_.Reserve(size_t(std::max<int64_t>(one_copy ? whole + total : total, 1)) * 4));
  int32_t* tok = h_kept_.as<int32_t>();
  if (one_copy && total > 0) {
    int32_t* region = tok + total;
    TWL_CUDA(cudaMemcpyAsync(region, kept.tokens, size_t(whole) * 4, cudaMemcpyDeviceToHost, c));
    TWL_CUDA(cudaEventRecord(ev_kept_, c));
    TWL_CUDA(cudaEventSynchronize(ev_kept_));
    int64_t at = 0;
    for (int64_t u = 0; u < units; ++u) {
      std::memcpy(tok + at, region + u * kept.max_kept, size_t(counts[size_t(u)]) * 4);
      at += counts[size_t(u)];
    }
  } else if (total > 0) {
    int64_t at = 0;
    for (int64_t u = 0; u < units; ++u) {
      if (counts[size_t(u)] == 0) continue;
      TWL_CUDA(cudaMemcpyAsync(tok + at, kept.tokens + u * kept.max_kept,
                               size_t(counts[size_t(u)]) * 4, cudaMemcpyDeviceToHost, c));
      at += counts[size_t(u)];
    }
    TWL_CUDA(cudaEventRecord(ev_kept_, c));
    TWL_CUDA(cudaEventSynchronize(ev_kept_));
  }
  // Distinct blocks of the group and their kept rows (the value the residency adds).
  return AppendKeptBlocks(g_, hb, grp.first_seq, grp.num_seqs, counts.data(), tok,
                          &block_marks_, &group_blocks_, &group_rows_);
}

absl::Status GpuOffloadBackend::ReserveGroup(int32_t index, cudaStream_t s,
                                             std::chrono::steady_clock::time_point t0) {
  // A group whose blocks are all resident moves nothing (its bookkeeping is deferred); else
  // the first Reserve starts the step (earlier steps are done: this prune came after them
  // on the device) and later ones keep the earlier groups' blocks in place (their copies
  // and attention may be running).
  bool moved = false;
  const absl::Status st = disk_steps_->Group(index, group_blocks_, group_rows_, &moved);
  disk_steps_->step_io().ms +=
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  TWL_RETURN_IF_ERROR(st);
  // Also without a move of its own: a read-ahead reaped since the last upload may have
  // changed the map (a no-op when nothing did). Entries of blocks a running group reads
  // keep their values.
  return UploadPoolMap(s);
}

absl::Status GpuOffloadBackend::ReadPage(int32_t page, int32_t rows, fp16_t* k,
                                         fp16_t* v) const {
  TWL_RETURN_IF_ERROR(CheckPages(&page, 1, "read page"));
  if (rows < 0 || rows > g_.page_size || !k || !v) {
    return absl::InvalidArgumentError("read page: bad rows or null output");
  }
  TWL_CUDA(cudaEventSynchronize(ev_append_done_));  // appended rows have landed
  if (disk_) return disk_->ReadRows(page, rows, k, v);  // from its slot or its disk record
  const int32_t H = g_.num_kv_heads, d = g_.head_dim;
  for (int32_t h = 0; h < H; ++h) {
    const auto* b = static_cast<const fp16_t*>(pool_->Block(int64_t(page) * H + h));
    for (int32_t r = 0; r < rows; ++r) {
      std::memcpy(k + (int64_t(r) * H + h) * d, b + int64_t(r) * d, size_t(d) * 2);
      std::memcpy(v + (int64_t(r) * H + h) * d, b + int64_t(g_.page_size + r) * d,
                  size_t(d) * 2);
    }
  }
  return absl::OkStatus();
}

MemoryUsage GpuOffloadBackend::Memory() const {
  MemoryUsage m;
  m.host_pool_bytes_total = pool_ ? pool_->bytes() : 0;
  if (disk_) {
    // The pinned slots in use hold pages; the rest of the KV cache is on disk.
    m.host_pool_bytes_total = disk_->host_bytes();
    m.host_pool_bytes_used = disk_->host_bytes_used();
    m.disk_bytes = disk_->disk_bytes_used();
  }
  m.gpu_quant_bytes = quant_bytes_;
  m.gpu_cache_bytes = fetch_stage_->device_bytes();  // slots + maps and stamps
  return m;
}

absl::Status GpuOffloadBackend::Decode(const DecodeRequest& req, StepTelemetry* t) {
  const BatchView& hb = req.batch;
  TWL_RETURN_IF_ERROR(ValidateBatchPages(g_, hb, num_pages_));
  if (!req.q || !req.out) return absl::InvalidArgumentError("decode: null q or out");
  if (req.space != MemSpace::kHost && req.space != MemSpace::kDevice) {
    return absl::InvalidArgumentError("decode: unknown memory space");
  }
  TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  const int32_t B = hb.num_seqs, Hq = hb.num_q_heads, H = g_.num_kv_heads, D = g_.head_dim;
  absl::StatusOr<const Selector*> selector = FindSelector(req.selector.kind);
  if (!selector.ok()) return selector.status();
  const int32_t max_select = (*selector)->Stride(req.selector, hb.max_pages);
  const int64_t max_kept64 = int64_t(max_select) * g_.page_size;
  if (max_kept64 > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("decode: kept-token stride overflows int32");
  }
  const int32_t max_kept = int32_t(max_kept64);
  const int64_t units = int64_t(B) * H;
  const size_t qo_bytes = size_t(B) * Hq * D * 2;

  // Scratch (grows to the largest batch seen).
  const bool grow = req.selector.grow && req.selector.kind == SelectorKind::kQuest;
  scratch_.SetShape(pipeline_cuda::StepShape{B, Hq, H, max_select, max_kept, grow});
  const size_t ws_sel = (*selector)->DeviceWorkspaceBytes(g_, req.selector, B, hb.max_pages);
  const size_t ws_pru = pruner_.DeviceWorkspaceBytes(g_, B, Hq, max_select);
  const size_t ws_att = attention_.DeviceWorkspaceBytes(g_, B, Hq);
  TWL_RETURN_IF_ERROR(scratch_.GrowSelectPrune(ws_sel, ws_pru));
  TWL_RETURN_IF_ERROR(scratch_.GrowAttend(ws_att));
  TWL_RETURN_IF_ERROR(fetch_stage_->GrowStep(units, qo_bytes));
  if (req.space == MemSpace::kHost) {
    TWL_RETURN_IF_ERROR(Grow(d_q_, qo_bytes));
    TWL_RETURN_IF_ERROR(Grow(d_out_, qo_bytes));
  }

  // Host plan: sequence lengths, page table and p go up in one copy.
  const size_t pt_elems = size_t(B) * hb.max_pages;
  const size_t up_bytes = (size_t(B) + pt_elems + size_t(B)) * 4;
  absl::StatusOr<UploadRing::Slot> up = uploads_.Acquire(up_bytes, 256);
  if (!up.ok()) return up.status();
  const UploadRing::Slot us = *up;
  int32_t* hu = reinterpret_cast<int32_t*>(us.host);
  std::memcpy(hu, hb.seq_len, size_t(B) * 4);
  std::memcpy(hu + B, hb.page_table, pt_elems * 4);
  float* hp = reinterpret_cast<float*>(hu + B + pt_elems);
  for (int32_t s = 0; s < B; ++s) hp[s] = req.pruner.seq_p ? req.pruner.seq_p[s] : req.pruner.p;

  cudaStream_t c = req.stream ? AsStream(req.stream) : own_stream_;  // fetch: fetch_stream_
  const bool timing = t != nullptr;
  const int32_t ts = telemetry_.current();  // this step's telemetry slot (events, pinned copy)
  TWL_CUDA(cudaStreamWaitEvent(c, ev_append_done_, 0));
  TWL_CUDA(cudaStreamWaitEvent(c, ev_step_done_, 0));
  TWL_RETURN_IF_ERROR(uploads_.Upload(us, up_bytes, c));
  TWL_RETURN_IF_ERROR(uploads_.Release(us, c));
  const fp16_t* q = req.q;
  fp16_t* out = req.out;
  if (req.space == MemSpace::kHost) {
    TWL_CUDA(cudaMemcpyAsync(d_q_.get(), req.q, qo_bytes, cudaMemcpyHostToDevice, c));
    q = d_q_.as<fp16_t>();
    out = d_out_.as<fp16_t>();
  }
  const int32_t* d_seq_len = reinterpret_cast<const int32_t*>(us.device);
  const int32_t* d_page_table = d_seq_len + B;
  const float* d_seq_p = reinterpret_cast<const float*>(d_page_table + pt_elems);

  // Groups of sequences from the host's bound on blocks per sequence.
  std::vector<int64_t> worst(static_cast<size_t>(B));
  for (int32_t s = 0; s < B; ++s) {
    const int64_t pages = hb.NumPages(g_, s);
    worst[s] = int64_t(H) * std::min<int64_t>(pages, max_select);
  }
  const std::vector<SeqGroup> groups = GroupsFor(worst, req.pruner.dense);
  const int32_t G = int32_t(groups.size());

  // The stages: select -> prune on c, the cache fetch on f, attention on c (overlapped by
  // groups; pipeline/cuda/cuda_executor.cuh).
  pipeline_cuda::CudaStep step =
      StepOf(**selector, req.selector, req.pruner, BatchView{B, Hq, d_seq_len, d_page_table,
                                                             hb.max_pages},
             q, out, c);
  step.pruner.seq_p = d_seq_p;
  step.ws_select = ws_sel;
  step.ws_prune = ws_pru;
  step.ws_attend = ws_att;
  step.timing = timing ? &telemetry_ : nullptr;
  step.timing_slot = ts;
  if (!disk_) {
    TWL_RETURN_IF_ERROR(executor_.Run(step, groups, scratch_, *fetch_stage_));
    // The step ends after its last fetch too (attention may not have waited for it: early
    // attention of the row cache): the next step rewrites the kept lists the plans read.
    TWL_CUDA(cudaEventRecord(ev_fetch_tail_, fetch_stream_));
    TWL_CUDA(cudaStreamWaitEvent(c, ev_fetch_tail_, 0));
  } else {
    // The fetch stage first makes each group's kept pages resident in the pinned slots.
    disk_steps_->BeginStep(req.layer);
    step_batch_ = &hb;
    auto run = [&]() -> absl::Status {
      if (row_fetch_) {
        // The row cache's plan first; only the blocks of the rows it misses become resident.
        TWL_RETURN_IF_ERROR(miss_reports_.NewStep());
        mark_step_open_ = false;
        pipeline_cuda::MissFirstFetch fetch(
            row_fetch_, fetch_stream_, &miss_reports_,
            [this](int32_t index, const SeqGroup& grp, const KeptView& kept,
                   const pipeline_cuda::MissFirstFetch::Misses& m, cudaStream_t fs) {
              return MakeMissesResident(index, grp, kept, m, fs);
            });
        return executor_.Run(step, groups, scratch_, fetch);
      }
      pipeline_cuda::ResidentFetch fetch(
          fetch_stage_.get(),
          [this](int32_t index, const SeqGroup& grp, const KeptView& kept, cudaStream_t cs) {
            return MakeGroupResident(index, grp, kept, cs);
          });
      return executor_.Run(step, groups, scratch_, fetch);
    };
    const absl::Status ran = run();
    step_batch_ = nullptr;
    if (!ran.ok()) {
      // Groups already enqueued still read their slots: the step counts as done only after
      // them (fetch stream included), so that no later call moves their pages earlier.
      TWL_CUDA(cudaEventRecord(ev_map_, fetch_stream_));
      TWL_CUDA(cudaStreamWaitEvent(c, ev_map_, 0));
      TWL_CUDA(cudaEventRecord(ev_step_done_, c));
      return ran;
    }
    // The step's blocks are protected, then the append reserve is refilled and the next
    // layer's blocks are read ahead (no wait for the disk).
    TWL_RETURN_IF_ERROR(disk_steps_->EndStep());
  }
  // The figures are copied before the step counts as done: the next step (on any stream)
  // overwrites the scratch they come from only after ev_step_done_.
  if (t) TWL_RETURN_IF_ERROR(EnqueueTelemetry(req, G, c));
  TWL_CUDA(cudaEventRecord(ev_step_done_, c));
  if (req.space == MemSpace::kHost) {
    TWL_CUDA(cudaMemcpyAsync(req.out, out, qo_bytes, cudaMemcpyDeviceToHost, c));
  }
  if (t) {
    // Device memory: publish the newest earlier step whose figures have landed (no wait),
    // so the host never waits for a step. Host memory (synchronous anyway) or kept lists
    // wanted: this step's own figures.
    absl::StatusOr<bool> published =
        telemetry_.Publish(req.space == MemSpace::kHost || req.capture_kept,
                           [&](int32_t slot) { return HarvestTelemetry(slot, t); });
    if (!published.ok()) return published.status();
    t->no_new_figures = !*published;
    if (disk_) {
      // Host-side figures of this very step (the GPU figures above may be an earlier one's).
      const DiskIoCounts& io = disk_steps_->step_io();
      t->disk_pages_loaded = io.pages_loaded;
      t->disk_pages_spilled = io.pages_written;
      t->ms_disk = io.ms;
      t->disk_bytes_read = io.bytes_read;
      t->disk_pages_read_ahead = io.pages_read_ahead;
      t->disk_pages_read_ahead_used = io.pages_read_ahead_done;
      t->disk_waits = io.waits;
      t->ms_disk_wait = io.ms_wait;
    }
  }
  if (t && req.capture_kept) {
    TWL_RETURN_IF_ERROR(CaptureDeviceKeptLists(scratch_.kept_tokens(), scratch_.kept_count(),
                                               units, max_kept, c, t));
  }
  if (req.space == MemSpace::kHost) TWL_CUDA(cudaStreamSynchronize(c));
  return offload_cuda::LaunchStatus("offload decode");
}

// Pinned slot layout: group counters, then per q head (selected, kept, mass), then per unit
// (kept union, resident blocks, blocks).
absl::Status GpuOffloadBackend::EnqueueTelemetry(const DecodeRequest& req, int32_t num_groups,
                                                 cudaStream_t c) {
  const int32_t slot = telemetry_.current();
  const int32_t B = req.batch.num_seqs, Hq = req.batch.num_q_heads, H = g_.num_kv_heads;
  const size_t units = size_t(B) * H, heads = size_t(B) * Hq;
  const size_t cnt_bytes = fetch_stage_->record_bytes() * size_t(num_groups);
  const size_t bytes = cnt_bytes + heads * 20 + units * 4 * 3;
  // The slot was harvested: not in flight.
  TWL_RETURN_IF_ERROR(telemetry_.host(slot).Reserve(bytes));
  char* h = telemetry_.host(slot).as<char>();
  TWL_CUDA(cudaMemcpyAsync(h, fetch_stage_->counters(), cnt_bytes, cudaMemcpyDeviceToHost, c));
  TWL_CUDA(cudaMemcpyAsync(h + cnt_bytes, scratch_.stats(), heads * 20, cudaMemcpyDeviceToHost,
                           c));
  char* hk = h + cnt_bytes + heads * 20;
  TWL_CUDA(cudaMemcpyAsync(hk, scratch_.kept_count(), units * 4, cudaMemcpyDeviceToHost, c));
  // Per unit: resident blocks when planned (where each head lives; no direct units now).
  TWL_CUDA(cudaMemcpyAsync(hk + units * 4, fetch_stage_->unit_hits(), units * 4,
                               cudaMemcpyDeviceToHost, c));
  TWL_CUDA(cudaMemcpyAsync(hk + units * 8, fetch_stage_->unit_blocks(), units * 4,
                               cudaMemcpyDeviceToHost, c));
  TWL_RETURN_IF_ERROR(telemetry_.MarkLanded(slot, c));
  PendingStep& p = telemetry_.pending(slot);
  p = PendingStep{};
  p.valid = true;
  p.layer = req.layer;
  p.step_id = req.step_id;
  p.num_seqs = B;
  p.num_q_heads = Hq;
  p.num_groups = num_groups;
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::HarvestTelemetry(int32_t slot, StepTelemetry* t) {
  absl::StatusOr<const PendingStep*> claimed = telemetry_.Claim(slot, "offload telemetry");
  if (!claimed.ok()) return claimed.status();
  const PendingStep& p = **claimed;
  const int32_t num_groups = p.num_groups, B = p.num_seqs, Hq = p.num_q_heads;
  const int32_t H = g_.num_kv_heads;
  const size_t units = size_t(B) * H, heads = size_t(B) * Hq;
  const size_t cnt_bytes = fetch_stage_->record_bytes() * size_t(num_groups);
  const char* h = telemetry_.host(slot).as<char>();
  const char* hk = h + cnt_bytes + heads * 20;
  t->layer = p.layer;
  t->step_id = p.step_id;
  t->num_seqs = B;
  const auto* sel = reinterpret_cast<const int32_t*>(h + cnt_bytes);
  const auto* kept = sel + heads;
  const auto* mass = reinterpret_cast<const float*>(kept + heads);
  const auto* kept_kv = reinterpret_cast<const int32_t*>(hk);
  const auto* unit_hits = kept_kv + units;
  const auto* unit_blocks = unit_hits + units;
  t->selected_tokens.assign(sel, sel + heads);
  t->kept_tokens.assign(kept, kept + heads);
  t->est_mass.assign(mass, mass + heads);
  t->full_mass.assign(mass + heads, mass + 2 * heads);
  t->cap_hit.assign(reinterpret_cast<const int32_t*>(mass + 2 * heads),
                    reinterpret_cast<const int32_t*>(mass + 3 * heads));
  t->kept_tokens_kv.assign(kept_kv, kept_kv + units);
  OffloadStepStats st;
  st.groups = num_groups;
  st.cache.units = int64_t(units);
  for (int32_t gi = 0; gi < num_groups; ++gi) {
    // needed = hits + fetched + read in place (direct_blocks), in the stage's unit: blocks
    // (whole blocks fetched, their kept rows read in place) or rows.
    int32_t error = 0;
    const CacheCounters gc =
        fetch_stage_->ReadRecord(h + size_t(gi) * fetch_stage_->record_bytes(), &error);
    st.cache += gc;
    st.direct_blocks += gc.direct_blocks;
    st.direct_tokens += gc.direct_rows;
    if (error) {
      ++st.errors;
      if (async_error_.ok()) {
        async_error_.Update(absl::InternalError(absl::StrFormat(
            "offload: cache plan of group %d reported error %d", gi, error)));
      }
    }
  }
  t->blocks_kv.assign(unit_blocks, unit_blocks + units);
  t->resident_blocks_kv.assign(unit_hits, unit_hits + units);
  const int64_t row_bytes = int64_t(g_.head_dim) * 2 * 2;  // one K row + one V row
  t->blocks_needed = st.cache.blocks_needed + st.direct_blocks;
  // Blocks read in place cross the bus too (their kept rows): not hits.
  t->blocks_fetched = st.cache.misses + st.direct_blocks;
  t->bytes_h2d =
      st.cache.misses * fetch_stage_->fetch_unit_bytes() + st.direct_tokens * row_bytes;
  t->blocks_in_place = st.direct_blocks;
  t->bytes_in_place = st.direct_tokens * row_bytes;
  auto ms = [&](int32_t gi, int a, int b) {
    float v = 0;
    if (cudaEventElapsedTime(&v, TimeEvent(slot, gi, a), TimeEvent(slot, gi, b)) != cudaSuccess) {
      cudaGetLastError();
      return 0.0;
    }
    return double(v);
  };
  t->ms_select = t->ms_prune = t->ms_fetch = t->ms_attend = 0;
  for (int32_t gi = 0; gi < num_groups; ++gi) {
    t->ms_select += ms(gi, kSel0, kSel1);
    t->ms_prune += ms(gi, kSel1, kPrune1);
    t->ms_fetch += ms(gi, kFetch0, kFetch1);
    t->ms_attend += ms(gi, kAttn0, kAttn1);
  }
  // Wall time of the step on the GPU, first select to last attention (stages overlap).
  float total = 0;
  if (cudaEventElapsedTime(&total, TimeEvent(slot, 0, kSel0),
                          TimeEvent(slot, num_groups - 1, kAttn1)) !=
      cudaSuccess) {
    cudaGetLastError();
  }
  t->ms_total = total;
  last_stats_ = st;
  totals_ += st.cache;
  return absl::OkStatus();
}

pipeline_cuda::CudaStep GpuOffloadBackend::StepOf(const Selector& selector,
                                                  const SelectorParams& sel,
                                                  const PrunerParams& pruner,
                                                  const BatchView& batch, const fp16_t* q,
                                                  fp16_t* out, cudaStream_t c) const {
  // k_bits 16 estimates with the FP16 K itself: read from the mapped pool (slow; rare).
  return pipeline_cuda::MakeCudaStep(g_, selector, sel, pruner, batch, q, out, qk_,
                                     PoolView(), c);
}

std::vector<SeqGroup> GpuOffloadBackend::GroupsFor(absl::Span<const int64_t> worst,
                                                  bool dense) const {
  const int32_t B = int32_t(worst.size());
  const int32_t cache_blocks = int32_t(
      std::max<int64_t>(1, int64_t(num_slots_) * fetch_stage_->fetch_unit_bytes() /
                               g_.FpBlockBytes()));
  return dense ? PlanSeqGroups(worst, cache_blocks, std::min(B, kPipelineGroups), kMaxGroups)
               : PlanSeqGroups(worst, cache_blocks, twilight_groups_, twilight_groups_);
}

// ---- Bound batches (issue 11.3) ----------------------------------------------------------
// A bound step is Decode without the host: the plan is the batch's device tables, the scratch
// and the fetch stage's per-step buffers the batch's own (sized at bind), the groups fixed by
// the batch's shape (every sequence counted at max_tokens), no telemetry. The row cache's
// plan kernels read the step stamp on the device, so each launch is the same at every call.
// Ordering: like an eager step, after the last append (rows, cache coherence, table writes)
// and the last step (they share the cache). Inside a capture those waits and the closing
// record are external event nodes (cudaEventWaitExternal / cudaEventRecordExternal): each
// replay orders itself against the eager calls issued before its launch, and later eager
// calls wait for it, whatever streams they use. The fetch stream joins the capture through
// the stage's events and is joined back before the step ends.

absl::StatusOr<std::unique_ptr<BoundTables>> GpuOffloadBackend::CreateBoundTables(
    const BoundShape& shape, absl::Span<const int32_t> words) {
  if (disk_) {
    return absl::UnimplementedError(
        "bound batches are not supported by the GPU offload backend over a disk tier (each "
        "step makes its kept blocks resident from the host); use twl_decode");
  }
  absl::StatusOr<std::unique_ptr<pipeline_cuda::CudaFetch>> fetch =
      fetch_stage_->MakeBoundFetch(int64_t(shape.num_seqs) * g_.num_kv_heads);
  if (!fetch.ok()) {
    return absl::Status(fetch.status().code(),
                        absl::StrCat("bound batches on the GPU offload backend: ",
                                     fetch.status().message()));
  }
  absl::StatusOr<std::unique_ptr<GpuBoundTables>> t = CreateGpuBoundTables(
      executor_, g_, cfg_.num_layers, cfg_.num_q_heads, shape, words);
  if (!t.ok()) return t.status();
  if (cfg_.dense_layers > 0) {
    // Dense layers run the same executor with the full selector (a stride of max_pages):
    // the scratch is grown for them now, never during a step.
    SelectorParams dense = shape.selector;
    dense.kind = SelectorKind::kFull;
    absl::StatusOr<const Selector*> full = FindSelector(SelectorKind::kFull);
    if (!full.ok()) return full.status();
    absl::StatusOr<pipeline_cuda::StepStrides> st =
        executor_.PrepareScratch((*t)->scratch(), g_, **full, dense, shape.num_seqs,
                                 cfg_.num_q_heads, shape.max_pages, true, "bound batch");
    if (!st.ok()) return st.status();
  }
  (*t)->set_fetch(std::move(*fetch));
  return std::unique_ptr<BoundTables>(std::move(*t));
}

absl::Status GpuOffloadBackend::WriteBoundTables(BoundTables* tables, int32_t layer,
                                                 absl::Span<const TableWrite> writes,
                                                 void* stream) {
  absl::StatusOr<GpuBoundTables*> t = CheckBoundWrites(tables, layer, cfg_.num_layers, writes);
  if (!t.ok()) return t.status();
  if (writes.empty()) return absl::OkStatus();
  cudaStream_t a = stream ? AsStream(stream) : append_stream_;
  // After the append's rows and its cache coherence (on the fetch stream), and after the last
  // step, which may still read the words being replaced: the caller's stream then carries
  // everything a replay it launches must come after.
  TWL_CUDA(cudaStreamWaitEvent(a, ev_append_done_, 0));
  TWL_CUDA(cudaStreamWaitEvent(a, ev_step_done_, 0));
  TWL_RETURN_IF_ERROR(LaunchTableWrites((*t)->Layer(layer), writes, a));
  TWL_CUDA(cudaEventRecord(ev_append_done_, a));  // steps (any stream) wait for the tables too
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::ReadBoundTables(BoundTables* tables, int32_t layer,
                                                absl::Span<int32_t> words) {
  TWL_CUDA(cudaStreamWaitEvent(own_stream_, ev_append_done_, 0));
  return ReadBoundWords(tables, layer, cfg_.num_layers, words, own_stream_);
}

absl::Status GpuOffloadBackend::DecodeBound(const BoundDecodeRequest& req) {
  absl::StatusOr<GpuBoundTables*> checked = CheckBoundStep(req, cfg_.num_layers);
  if (!checked.ok()) return checked.status();
  GpuBoundTables& t = **checked;
  if (t.fetch() == nullptr) return absl::InternalError("decode batch: no bound fetch stage");
  cudaStream_t c = req.stream ? AsStream(req.stream) : own_stream_;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  unsigned long long capture_id = 0;
  TWL_CUDA(cudaStreamGetCaptureInfo(c, &capture, &capture_id));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  absl::StatusOr<const Selector*> selector = FindSelector(req.selector.kind);
  if (!selector.ok()) return selector.status();
  const int32_t n = req.num_seqs, Hq = req.num_q_heads;
  // The layer's strides (the scratch was grown for every layer's selector at bind).
  absl::StatusOr<pipeline_cuda::StepStrides> strides =
      executor_.PrepareScratch(t.scratch(), g_, **selector, req.selector, n, Hq, req.max_pages,
                               /*select_prune=*/true, "decode batch");
  if (!strides.ok()) return strides.status();
  // Freed pages' rows leave the cache before eager steps; a capture leaves them to the next
  // eager call (a bound sequence holds no freed page: it cannot be freed, and a reused page
  // reaches it only through an append, which applies them first).
  if (!capturing) TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  const unsigned wait_flags = capturing ? cudaEventWaitExternal : cudaEventWaitDefault;
  TWL_CUDA(cudaStreamWaitEvent(c, ev_append_done_, wait_flags));
  // A bound step captured earlier in this same capture recorded the last step: the capture
  // stream's order already puts this one after it.
  if (!(capturing && step_recorded_in_capture_ == capture_id)) {
    TWL_CUDA(cudaStreamWaitEvent(c, ev_step_done_, wait_flags));
  }
  absl::StatusOr<BoundIo> io = BoundInput(req, t, g_, cfg_.device_id, c);
  if (!io.ok()) return io.status();

  const std::vector<int64_t> worst(
      static_cast<size_t>(n),
      int64_t(g_.num_kv_heads) * std::min<int64_t>(req.max_pages, strides->max_select));
  const std::vector<SeqGroup> groups = GroupsFor(worst, req.pruner.dense);
  const pipeline_cuda::StepScratch& sc = t.scratch();
  PrunerParams pruner = req.pruner;
  pruner.seq_p = nullptr;
  pipeline_cuda::CudaStep step =
      StepOf(**selector, req.selector, pruner, t.Batch(req.layer, Hq), io->q, io->out, c);
  step.ws_select = sc.select_workspace_bytes();
  step.ws_prune = sc.prune_workspace_bytes();
  step.ws_attend = sc.attend_workspace_bytes();
  TWL_RETURN_IF_ERROR(executor_.Run(step, groups, sc, *t.fetch()));
  // The step ends after its last plan kernel too (the attention may have waited for the
  // plan's first kernel only): the next step rewrites the kept lists the plans read.
  TWL_CUDA(cudaEventRecord(ev_fetch_tail_, fetch_stream_));
  TWL_CUDA(cudaStreamWaitEvent(c, ev_fetch_tail_, 0));
  TWL_RETURN_IF_ERROR(BoundOutput(req, *io, cfg_.device_id, c));
  if (capturing) {
    TWL_CUDA(cudaEventRecordWithFlags(ev_step_done_, c, cudaEventRecordExternal));
    step_recorded_in_capture_ = capture_id;
  } else {
    TWL_CUDA(cudaEventRecord(ev_step_done_, c));
    step_recorded_in_capture_ = 0;
  }
  return offload_cuda::LaunchStatus("offload decode batch");
}

}  // namespace

absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendEx(
    const RuntimeConfig& config, int64_t num_pages) {
  if (!gpu::GpuAvailable()) return absl::UnavailableError("GPU offload backend: no GPU found");
  if (num_pages < 1) return absl::InvalidArgumentError("GPU offload backend: no pages");
  // Refused here rather than at the first decode, after the caller has appended a prompt.
  if (absl::Status s = CheckGpuKernelShape(config, "GPU offload backend"); !s.ok()) return s;
  auto b = std::make_unique<GpuOffloadBackend>(config, num_pages);
  if (absl::Status s = b->Init(); !s.ok()) return s;
  return std::unique_ptr<OffloadBackend>(std::move(b));
}

absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendWithDiskEx(
    const RuntimeConfig& config, int64_t num_pages, int64_t host_slots,
    std::unique_ptr<DiskTier> tier) {
  if (!gpu::GpuAvailable()) return absl::UnavailableError("GPU offload backend: no GPU found");
  if (num_pages < 1) return absl::InvalidArgumentError("GPU offload backend: no pages");
  if (tier == nullptr) return absl::InvalidArgumentError("GPU offload backend: no disk tier");
  auto b = std::make_unique<GpuOffloadBackend>(config, num_pages, host_slots, std::move(tier));
  if (absl::Status s = b->Init(); !s.ok()) return s;
  return std::unique_ptr<OffloadBackend>(std::move(b));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackendWithDisk(
    const RuntimeConfig& config, int64_t num_pages, int64_t host_slots,
    std::unique_ptr<DiskTier> tier) {
  absl::StatusOr<std::unique_ptr<OffloadBackend>> b =
      CreateGpuOffloadBackendWithDiskEx(config, num_pages, host_slots, std::move(tier));
  if (!b.ok()) return b.status();
  return std::unique_ptr<Backend>(std::move(*b));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateGpuOffloadBackend(const RuntimeConfig& config,
                                                                 int64_t num_pages) {
  absl::StatusOr<std::unique_ptr<OffloadBackend>> b = CreateGpuOffloadBackendEx(config, num_pages);
  if (!b.ok()) return b.status();
  return std::unique_ptr<Backend>(std::move(*b));
}

}  // namespace twl
