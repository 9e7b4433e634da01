// GPU offload store over a disk tier: the residency under the pinned pool, appends that may
// spill, and the fetch stages' callbacks that make a step's blocks resident.
#include "runtime/gpu_offload_backend_impl.cuh"

namespace twl {
namespace offload_store {

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

}  // namespace offload_store
}  // namespace twl
