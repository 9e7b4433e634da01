// GPU offload store: one decode step (groups, executor, fetch stage) and its telemetry,
// enqueued without a host wait and read by the next step.
#include "runtime/gpu_offload_backend_impl.cuh"

namespace twl {
namespace offload_store {

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
  // The slot was harvested: not in flight. One kernel writes every part into it.
  using Part = pipeline_cuda::TelemetryRing::Part;
  const Part parts[] = {
      {fetch_stage_->counters(), cnt_bytes},
      {scratch_.stats(), heads * 20},
      {scratch_.kept_count(), units * 4},
      // Per unit: resident blocks when planned (where each head lives; no direct units now).
      {fetch_stage_->unit_hits(), units * 4},
      {fetch_stage_->unit_blocks(), units * 4},
  };
  TWL_RETURN_IF_ERROR(telemetry_.CopyIn(slot, parts, c));
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

}  // namespace offload_store
}  // namespace twl
