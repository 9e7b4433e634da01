// GPU offload store: bound batches, steps over device tables that a caller may capture.
#include "runtime/gpu_offload_backend_impl.cuh"

namespace twl {
namespace offload_store {

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
  // A reservation (Runtime::ReserveBatchRows) may hand out pages freed since the last step:
  // their rows leave the cache first, as before an eager append.
  TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  cudaStream_t a = stream ? AsStream(stream) : append_stream_;
  // After the append's rows and its cache coherence (on the fetch stream), and after the last
  // step, which may still read the words being replaced: the caller's stream then carries
  // everything a replay it launches must come after.
  TWL_CUDA(cudaStreamWaitEvent(a, ev_append_done_, 0));
  TWL_CUDA(cudaStreamWaitEvent(a, ev_step_done_, 0));
  TWL_RETURN_IF_ERROR(LaunchTableWrites((*t)->WriteBase(layer), writes, a));
  TWL_CUDA(cudaEventRecord(ev_append_done_, a));  // steps (any stream) wait for the tables too
  return absl::OkStatus();
}

absl::Status GpuOffloadBackend::ReadBoundTables(BoundTables* tables, int32_t layer,
                                                absl::Span<int32_t> words) {
  TWL_CUDA(cudaStreamWaitEvent(own_stream_, ev_append_done_, 0));
  return ReadBoundWords(tables, layer, cfg_.num_layers, words, own_stream_);
}

absl::StatusOr<GpuOffloadBackend::BoundOrder> GpuOffloadBackend::OrderBoundCall(cudaStream_t c) {
  BoundOrder o;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TWL_CUDA(cudaStreamGetCaptureInfo(c, &capture, &o.capture_id));
  o.capturing = capture != cudaStreamCaptureStatusNone;
  // Freed pages' rows leave the cache before eager calls; a capture leaves them to the next
  // eager call (a bound sequence holds no freed page: it cannot be freed, and a reused page
  // reaches it only through an append or a reservation, which apply them first).
  if (!o.capturing) TWL_RETURN_IF_ERROR(ApplyPendingReleases());
  const unsigned wait_flags = o.capturing ? cudaEventWaitExternal : cudaEventWaitDefault;
  // A bound append or step captured earlier in this same capture recorded the event after
  // waiting for the eager work itself: the capture's order already covers it.
  if (!(o.capturing && append_recorded_in_capture_ == o.capture_id)) {
    TWL_CUDA(cudaStreamWaitEvent(c, ev_append_done_, wait_flags));
  }
  if (!(o.capturing && step_recorded_in_capture_ == o.capture_id)) {
    TWL_CUDA(cudaStreamWaitEvent(c, ev_step_done_, wait_flags));
  }
  return o;
}

// A bound append writes the rows the batch's last reservation took (the layer's segment
// words, AppendSegmentsKernel reading them from device memory): one launch, no host data, so
// a capture replays it with whatever the reservation before each replay wrote. Its rows go
// into the mapped host pool, its codes and bounds into the estimation store; nothing goes
// into the row cache (the next step fetches the new rows like any miss). Ordered like an
// eager append: after the appends, table writes and steps issued so far (external event
// nodes inside a capture), and recording ev_append_done_ for the steps after it.
absl::Status GpuOffloadBackend::AppendBound(const BoundAppendRequest& req) {
  absl::StatusOr<GpuBoundTables*> checked = CheckBoundAppend(req, cfg_.num_layers);
  if (!checked.ok()) return checked.status();
  const GpuBoundTables& t = **checked;
  cudaStream_t c = req.stream ? AsStream(req.stream) : append_stream_;
  absl::StatusOr<BoundOrder> order = OrderBoundCall(c);
  if (!order.ok()) return order.status();
  const bool capturing = order->capturing;
  const FpKvView pool_view{static_cast<fp16_t*>(pool_->device_base()), nullptr};
  const AppendSegment* segs = t.Segments(req.layer);
  TWL_RETURN_IF_ERROR(LaunchAppendSegments(g_, segs, req.num_seqs, req.k, req.v,
                                           InputType(req.dtype), pool_view, nullptr, qk_, c));
  if (qk_.meta) {
    TWL_RETURN_IF_ERROR(meta_sel_->AppendSegmentsMetadataOnDevice(
        g_, segs, req.num_seqs, pool_view, nullptr, qk_, c));
  }
  const unsigned record_flags = capturing ? cudaEventRecordExternal : cudaEventRecordDefault;
  TWL_CUDA(cudaEventRecordWithFlags(ev_appended_, c, record_flags));
  TWL_CUDA(cudaEventRecordWithFlags(ev_append_done_, c, record_flags));
  append_recorded_in_capture_ = capturing ? order->capture_id : 0;
  return offload_cuda::LaunchStatus("offload batch append");
}

absl::Status GpuOffloadBackend::DecodeBound(const BoundDecodeRequest& req) {
  absl::StatusOr<GpuBoundTables*> checked = CheckBoundStep(req, cfg_.num_layers);
  if (!checked.ok()) return checked.status();
  GpuBoundTables& t = **checked;
  if (t.fetch() == nullptr) return absl::InternalError("decode batch: no bound fetch stage");
  cudaStream_t c = req.stream ? AsStream(req.stream) : own_stream_;
  absl::StatusOr<const Selector*> selector = FindSelector(req.selector.kind);
  if (!selector.ok()) return selector.status();
  const int32_t n = req.num_seqs, Hq = req.num_q_heads;
  // The layer's strides (the scratch was grown for every layer's selector at bind).
  absl::StatusOr<pipeline_cuda::StepStrides> strides =
      executor_.PrepareScratch(t.scratch(), g_, **selector, req.selector, n, Hq, req.max_pages,
                               /*select_prune=*/true, "decode batch");
  if (!strides.ok()) return strides.status();
  absl::StatusOr<BoundOrder> order = OrderBoundCall(c);
  if (!order.ok()) return order.status();
  const bool capturing = order->capturing;
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
    step_recorded_in_capture_ = order->capture_id;
  } else {
    TWL_CUDA(cudaEventRecord(ev_step_done_, c));
    step_recorded_in_capture_ = 0;
  }
  return offload_cuda::LaunchStatus("offload decode batch");
}

}  // namespace offload_store
}  // namespace twl
