// Plan first, then residency of the missed blocks only (see miss_first_fetch.cuh).
#include "pipeline/fetch/disk/miss_first_fetch.cuh"

#include <algorithm>

#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/cuda/scratch.cuh"

namespace twl::pipeline_cuda {

MissReportState::~MissReportState() {
  for (cudaEvent_t e : pruned_) {
    if (e) cudaEventDestroy(e);
  }
  for (cudaEvent_t e : marked_) {
    if (e) cudaEventDestroy(e);
  }
}

absl::Status MissReportState::Init(int64_t num_blocks, int32_t capacity, int32_t max_groups) {
  if (num_blocks < 1 || capacity < 1 || max_groups < 1) {
    return absl::InvalidArgumentError("MissReportState: needs blocks, capacity and groups");
  }
  num_blocks_ = num_blocks;
  capacity_ = capacity;
  TWL_RETURN_IF_ERROR(GrowScratch(stamps_, size_t(num_blocks) * 4, 256));
  TWL_RETURN_IF_ERROR(GrowScratch(count_, 4, 256));
  TWL_CUDA(cudaMemset(stamps_.get(), 0, size_t(num_blocks) * 4));
  TWL_CUDA(cudaMemset(count_.get(), 0, 4));
  absl::StatusOr<std::unique_ptr<HostArena>> report =
      HostArena::Create(HostMemKind::kPinnedMapped, 4, 1 + 2 * int64_t(capacity), 16);
  if (!report.ok()) return report.status();
  report_ = std::move(*report);
  host_ = static_cast<int32_t*>(report_->base());
  device_ = static_cast<int32_t*>(report_->device_base());
  if (!host_ || !device_) return absl::InternalError("MissReportState: report not mapped");
  host_[0] = 0;
  pruned_.assign(size_t(max_groups), nullptr);
  marked_.assign(size_t(max_groups), nullptr);
  for (int32_t i = 0; i < max_groups; ++i) {
    TWL_CUDA(cudaEventCreateWithFlags(&pruned_[size_t(i)], cudaEventDisableTiming));
    TWL_CUDA(cudaEventCreateWithFlags(&marked_[size_t(i)], cudaEventDisableTiming));
  }
  TWL_CUDA(cudaDeviceSynchronize());  // the stamps are zero before any stream uses them
  return absl::OkStatus();
}

absl::Status MissReportState::NewStep() {
  if (++stamp_ == 0) {
    // Wrapped after 2^32 steps: every stamp 0 again (no mark runs: see the header).
    TWL_CUDA(cudaMemset(stamps_.get(), 0, size_t(num_blocks_) * 4));
    TWL_CUDA(cudaDeviceSynchronize());
    stamp_ = 1;
  }
  return absl::OkStatus();
}

RowMissReport MissReportState::Report() const {
  RowMissReport r;
  r.d_block_stamp = stamps_.as<uint32_t>();
  r.stamp = stamp_;
  r.d_count = count_.as<int32_t>();
  r.count_out = device_;
  r.blocks_out = device_ + 1;
  r.rows_out = device_ + 1 + capacity_;
  r.capacity = capacity_;
  return r;
}

MissFirstFetch::~MissFirstFetch() {
  if (completed_ < int32_t(pending_.size()) && pending_[size_t(completed_)].marked) {
    (void)rows_->FetchAbandon(completed_);  // best effort: the step's error is reported
  }
}

absl::Status MissFirstFetch::Fetch(int32_t index, const SeqGroup& group, const PageGeometry& g,
                                   const BatchView& batch, const KeptView& kept,
                                   cudaStream_t compute, const cudaEvent_t* marks) {
  if (index < 0 || index >= state_->max_groups() || index != int32_t(pending_.size())) {
    return absl::InvalidArgumentError("MissFirstFetch: groups out of order or too many");
  }
  Pending p;
  p.group = group;
  p.g = g;
  p.batch = batch;
  p.kept = kept;
  p.timed = marks != nullptr;
  if (marks) std::copy(marks, marks + kNumGroupEvents, p.marks);
  p.fetched = true;
  pending_.push_back(p);
  // The prune's end, for a mark enqueued later than now.
  TWL_CUDA(cudaEventRecord(state_->pruned(index), compute));
  // One miss list per cache: the mark waits until the previous group's plan is complete.
  if (completed_ == index) return Mark(index);
  return absl::OkStatus();
}

absl::Status MissFirstFetch::Mark(int32_t index) {
  Pending& p = pending_[size_t(index)];
  // The previous report has been read (WaitFetched of index - 1): the buffer is free.
  state_->ClearCount();
  TWL_RETURN_IF_ERROR(rows_->FetchMark(index, p.group, p.g, p.batch, p.kept,
                                       state_->pruned(index), p.timed ? p.marks : nullptr,
                                       state_->Report()));
  TWL_CUDA(cudaEventRecord(state_->marked(index), fetch_));
  p.marked = true;
  return absl::OkStatus();
}

absl::Status MissFirstFetch::WaitFetched(int32_t index, cudaStream_t compute) {
  if (index != completed_ || index >= int32_t(pending_.size()) ||
      !pending_[size_t(index)].marked) {
    return absl::InvalidArgumentError("MissFirstFetch: WaitFetched out of order");
  }
  Pending& p = pending_[size_t(index)];
  // The host learns what the group missed (the GPU meanwhile runs the next group's prune or
  // the previous group's attention, already enqueued).
  TWL_CUDA(cudaEventSynchronize(state_->marked(index)));
  Misses m;
  m.count = state_->count();
  m.complete = m.count <= state_->capacity();
  m.count = std::min(m.count, state_->capacity());
  m.blocks = state_->blocks();
  m.rows = state_->rows();
  if (m.count > 0 || !m.complete) {
    ++groups_with_misses_;
    if (absl::Status s = make_resident_(index, p.group, p.kept, m, fetch_); !s.ok()) {
      // Nothing of the group is read: its claims go back (the destructor would too).
      const absl::Status undo = rows_->FetchAbandon(index);
      p.marked = false;
      (void)undo;  // a launch failure shows again at the step's next CUDA call
      return s;
    }
  }
  TWL_RETURN_IF_ERROR(rows_->FetchComplete(index, p.timed ? p.marks : nullptr));
  ++completed_;
  // The next group's mark, deferred until this plan was complete.
  if (completed_ < int32_t(pending_.size()) && !pending_[size_t(completed_)].marked) {
    TWL_RETURN_IF_ERROR(Mark(completed_));
  }
  return rows_->WaitFetched(index, compute);
}

}  // namespace twl::pipeline_cuda
