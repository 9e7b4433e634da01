// The GPU HBM backend: every FP16 K/V block, the quantized K and the Quest page bounds live
// in device memory, and a decode step is select -> prune -> sparse attention, run by
// pipeline/cuda/CudaExecutor with one group and nothing to fetch (IdentityFetch), enqueued
// on the caller's stream (or the backend's own). Nothing waits for the host inside
// the step; the host synchronizes once at the end, and only when it must read something
// back (telemetry, or `out` in host memory). Stage times come from CUDA events.
//
// A dense step (pruner.dense with the full selector) runs the dense attention directly: the
// kept sets would be every token, so the outputs are the same.
//
// Append: one call writes a whole batch of sequences with one kernel (runtime/cuda/
// append_launch.h LaunchAppendSegments: FP16 rows, INT4 K and page bounds in one pass), enqueued on the
// caller's stream (or the backend's own) without waiting for the device; device input is
// read when the stream gets there.
// Ordering: appends are chained (each waits for the previous one) and wait for the last
// decode; a decode's stream waits for the last append (event), so a step never sees a
// half-written page, whatever streams the caller uses. Host staging buffers are pinned and
// reused once the event of their previous upload has completed.
// Thread-safety: one caller at a time (the Runtime serializes calls).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/validate.h"
#include "gpu/device.h"
#include "gpu/cuda/cuda_status.cuh"
#include "runtime/backend.h"
#include "runtime/cuda/append_launch.h"
#include "runtime/dtype_convert.h"
#include "runtime/gpu_bound_tables.cuh"
#include "runtime/gpu_shape.h"
#include "runtime/geometry.h"
#include "runtime/kept_capture.h"
#include "pipeline/attend/sparse/sparse_attention.h"
#include "pipeline/cuda/cuda_executor.cuh"
#include "pipeline/cuda/scratch.cuh"
#include "pipeline/cuda/step_events.cuh"
#include "pipeline/cuda/step_scratch.cuh"
#include "pipeline/select/selector.h"
#include "pipeline/cuda/telemetry_ring.cuh"
#include "pipeline/cuda/upload_ring.cuh"

namespace twl {
namespace {

using cuda_status::AsStream;
using pipeline_cuda::PendingStep;
using pipeline_cuda::TelemetryRing;
using pipeline_cuda::UploadRing;
using namespace pipeline_cuda::group_events;  // NOLINT: kSel0 ... kNumGroupEvents

// Distinct pages of each (sequence, KV head) kept set: tokens ascend, so a page change
// starts a new block. A grid of (set, chunk of kCountChunk tokens) so that a long kept set
// (a flat head keeps most of 128k tokens) is scanned by many blocks, not one warp; `blocks`
// is zeroed before the launch and each block adds its chunk's count.
constexpr int kCountThreads = 256;
constexpr int32_t kCountChunk = 4096;
__global__ void __launch_bounds__(kCountThreads)
    CountBlocksKernel(int32_t page_size, KeptView kept, int32_t* __restrict__ blocks) {
  const int32_t pair = blockIdx.x;
  const int32_t n = min(kept.count[pair], kept.max_kept);
  const int32_t begin = int32_t(blockIdx.y) * kCountChunk;
  if (begin >= n) return;
  const int32_t end = min(n, begin + kCountChunk);
  const int32_t* t = kept.tokens + int64_t(pair) * kept.max_kept;
  int c = 0;
  for (int32_t i = begin + int32_t(threadIdx.x); i < end; i += kCountThreads) {
    c += (i == 0 || t[i] / page_size != t[i - 1] / page_size) ? 1 : 0;
  }
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  __shared__ int warp_sums[kCountThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (int w = 0; w < kCountThreads / 32; ++w) sum += warp_sums[w];
    if (sum) atomicAdd(&blocks[pair], sum);
  }
}

using PinnedBuffer = gpu::PinnedHostBuffer;

// Packs host arrays back to back (256-byte aligned) for one upload.
class Packer {
 public:
  template <typename T>
  size_t Add(size_t count) {
    const size_t at = used_;
    used_ += (count * sizeof(T) + 255) / 256 * 256;
    return at;
  }
  size_t used() const { return used_; }

 private:
  size_t used_ = 0;
};

class GpuHbmBackend final : public Backend {
 public:
  GpuHbmBackend(const RuntimeConfig& config, int64_t num_pages)
      : config_(config), g_(GeometryOf(config)), num_pages_(num_pages) {}

  ~GpuHbmBackend() override {
    cudaDeviceSynchronize();  // appends and steps may be queued on callers' streams
    for (cudaEvent_t e : all_events_) {
      if (e) cudaEventDestroy(e);
    }
    for (cudaEvent_t e : ev_desc_) {
      if (e) cudaEventDestroy(e);
    }
    if (stream_) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    TWL_CUDA(cudaSetDevice(config_.device_id));
    TWL_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    TWL_RETURN_IF_ERROR(uploads_.Init());
    TWL_RETURN_IF_ERROR(telemetry_.Init(kNumGroupEvents));  // one group per step
    for (cudaEvent_t* e : {&ev_append_, &ev_decode_, &ev_append_upload_}) {
      TWL_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
      all_events_.push_back(*e);
    }
    for (cudaEvent_t& e : ev_desc_) {
      TWL_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    const int64_t blocks = num_pages_ * g_.num_kv_heads;
    TWL_RETURN_IF_ERROR(kv_buf_.Reserve(size_t(blocks * g_.FpBlockBytes())));
    if (g_.k_bits < 16) {
      TWL_RETURN_IF_ERROR(codes_buf_.Reserve(size_t(blocks * g_.CodeBlockBytes())));
    }
    if (g_.HasTokenScale()) {  // the per-page-channel scheme (k_scheme 1) has none
      TWL_RETURN_IF_ERROR(scale_buf_.Reserve(size_t(blocks * g_.page_size) * 2));
      TWL_RETURN_IF_ERROR(zero_buf_.Reserve(size_t(blocks * g_.page_size) * 2));
    }
    TWL_RETURN_IF_ERROR(kmin_buf_.Reserve(size_t(blocks * g_.head_dim) * 2));
    TWL_RETURN_IF_ERROR(kmax_buf_.Reserve(size_t(blocks * g_.head_dim) * 2));
    if (g_.HasChannelRange()) {  // the per-page-channel scheme's channel ranges
      TWL_RETURN_IF_ERROR(range_buf_.Reserve(size_t(blocks * g_.RangeBlockBytes())));
    }
    // The runtime's selector's own per-block metadata (none for Quest and Full).
    absl::StatusOr<const Selector*> sel = FindSelector(SelectorOf(config_));
    if (!sel.ok()) return sel.status();
    meta_sel_ = *sel;
    const int64_t meta_bytes = meta_sel_->OwnMetadataBytesPerBlock(g_);
    if (meta_bytes > 0) TWL_RETURN_IF_ERROR(meta_buf_.Reserve(size_t(blocks * meta_bytes)));
    kv_ = FpKvView{kv_buf_.as<fp16_t>(), nullptr};
    qk_ = QuantKView{codes_buf_.as<uint8_t>(), scale_buf_.as<fp16_t>(), zero_buf_.as<fp16_t>(),
                     kmin_buf_.as<fp16_t>(), kmax_buf_.as<fp16_t>()};
    if (g_.HasChannelRange()) qk_.range = range_buf_.as<uint8_t>();
    if (meta_bytes > 0) {
      qk_.meta = meta_buf_.as<uint8_t>();
      qk_.meta_bytes = meta_bytes;
    }
    absl::StatusOr<gpu::DeviceInfo> d = gpu::CurrentDevice();
    device_name_ = d.ok() ? d->name : "unknown GPU";
    return absl::OkStatus();
  }

  BackendKind Kind() const override { return BackendKind::kGpuHbm; }
  std::string Name() const override { return "gpu-hbm (" + device_name_ + ")"; }

  absl::Status Append(const AppendView& tokens, DType dtype, MemSpace space,
                      void* stream) override;
  absl::Status WaitAppends() override {
    if (appended_) TWL_CUDA(cudaEventSynchronize(ev_append_));  // a device fault shows here
    return absl::OkStatus();
  }
  absl::Status CopyPage(int32_t src_page, int32_t dst_page, int32_t rows) override;
  absl::Status ReadPage(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const override;
  absl::Status Decode(const DecodeRequest& request, StepTelemetry* telemetry) override;
  // Bound batches (runtime/bound_batch.h): definitions at the end of this file.
  absl::StatusOr<std::unique_ptr<BoundTables>> CreateBoundTables(
      const BoundShape& shape, absl::Span<const int32_t> words) override;
  absl::Status WriteBoundTables(BoundTables* tables, int32_t layer,
                                absl::Span<const TableWrite> writes, void* stream) override;
  absl::Status ReadBoundTables(BoundTables* tables, int32_t layer,
                               absl::Span<int32_t> words) override;
  absl::Status DecodeBound(const BoundDecodeRequest& request) override;
  absl::Status AppendBound(const BoundAppendRequest& request) override;

  MemoryUsage Memory() const override {
    MemoryUsage m;
    m.gpu_fp16_bytes = int64_t(kv_buf_.bytes());
    m.gpu_quant_bytes = int64_t(codes_buf_.bytes() + scale_buf_.bytes() + zero_buf_.bytes() +
                                kmin_buf_.bytes() + kmax_buf_.bytes() + range_buf_.bytes() +
                                meta_buf_.bytes());
    return m;
  }

  absl::Status TakeAsyncError() override {
    const cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return absl::OkStatus();
    return absl::InternalError(absl::StrFormat("GPU: %s", cudaGetErrorString(e)));
  }

 private:
  absl::Status CheckPage(int32_t page) const { return CheckPageId(page, num_pages_); }
  // Device buffers only grow (exact sizes: no minimum).
  static absl::Status Grow(gpu::DeviceBuffer& b, size_t bytes) {
    return pipeline_cuda::GrowScratch(b, bytes);
  }
  // Telemetry without a host wait on the step just queued (see the offload backend): copies
  // go to a pinned slot on the step's stream; the next Decode reads them.
  absl::Status HarvestTelemetry(int32_t slot, StepTelemetry* t);
  absl::Status WriteTelemetry(const DecodeRequest& req, bool ran_pruner, int32_t max_kept,
                              cudaStream_t s, StepTelemetry* t);
  // Select -> prune -> attend over the whole batch, back to back on `s`: one group and
  // nothing to fetch, every block is device resident (IdentityFetch over kv_). Null
  // `timing`: no stage events.
  absl::Status RunResidentStep(const Selector& selector, const SelectorParams& sel,
                               const PrunerParams& pruner, const BatchView& db,
                               const fp16_t* q, fp16_t* out,
                               const pipeline_cuda::StepScratch& sc, cudaStream_t s,
                               const TelemetryRing* timing, int32_t timing_slot) const;

  const RuntimeConfig config_;
  const PageGeometry g_;
  const int64_t num_pages_;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ev_append_ = nullptr, ev_decode_ = nullptr;
  cudaEvent_t ev_append_upload_ = nullptr;
  std::vector<cudaEvent_t> all_events_;
  UploadRing uploads_;  // step plan, and q / out when they are host arrays
  TelemetryRing telemetry_;
  bool appended_ = false, decoded_ = false;

  gpu::DeviceBuffer kv_buf_, codes_buf_, scale_buf_, zero_buf_, kmin_buf_, kmax_buf_, range_buf_,
      meta_buf_;
  const Selector* meta_sel_ = nullptr;  // owner of qk_.meta (set by Init)
  FpKvView kv_;
  QuantKView qk_;

  // Append staging.
  PinnedBuffer append_pin_;
  gpu::DeviceBuffer append_dev_;
  static constexpr int32_t kDescRing = 8;
  static constexpr size_t kSmallHostBytes = size_t(4) << 20;
  PinnedBuffer desc_pin_[kDescRing];
  cudaEvent_t ev_desc_[kDescRing] = {};
  int32_t desc_next_ = 0;
  std::vector<AppendSegment> segs_;
  // Decode staging and scratch.
  pipeline_cuda::StepScratch scratch_{0};  // select / prune / attend buffers, exact sizes
  gpu::DeviceBuffer blocks_;               // distinct blocks per kept set (telemetry)
  const SparseAttention attention_{};  // dense steps
  const pipeline_cuda::CudaExecutor executor_{};
};

absl::Status GpuHbmBackend::Append(const AppendView& tokens, DType dtype, MemSpace space,
                                   void* stream) {
  if (!IsValidDType(dtype)) return absl::InvalidArgumentError("append: unknown dtype");
  if (space != MemSpace::kHost && space != MemSpace::kDevice) {
    return absl::InvalidArgumentError("append: unknown memory space");
  }
  if (tokens.num_tokens < 0) return absl::InvalidArgumentError("append: num_tokens < 0");
  if (tokens.num_tokens == 0) return absl::OkStatus();
  if (!tokens.k || !tokens.v || !tokens.page_id || !tokens.slot) {
    return absl::InvalidArgumentError("append: k, v, page_id and slot must not be null");
  }
  for (int32_t i = 0; i < tokens.num_tokens; ++i) {
    TWL_RETURN_IF_ERROR(CheckPage(tokens.page_id[i]));
    if (tokens.slot[i] < 0 || tokens.slot[i] >= g_.page_size) {
      return absl::InvalidArgumentError(absl::StrFormat("append: slot %d", tokens.slot[i]));
    }
  }
  const int32_t n = tokens.num_tokens;
  const bool host = space == MemSpace::kHost;
  const size_t kv_bytes = size_t(n) * g_.num_kv_heads * g_.head_dim * size_t(DTypeBytes(dtype));
  cudaStream_t a = stream ? AsStream(stream) : stream_;
  // Bulk path: one kernel writes every segment (rows of one page) of the batch with its
  // codes and bounds. It needs each page written in one run of consecutive rows (how the
  // Runtime appends); anything else takes the per-token kernel + bounds recompute below.
  const bool bulk = PlanAppendSegments(tokens.page_id, tokens.slot, n, &segs_);
  std::vector<int32_t> plan_pages, plan_rows;
  if (!bulk) PlanAppendPages(tokens.page_id, tokens.slot, n, &plan_pages, &plan_rows);
  if (bulk && !host && segs_.size() <= size_t(kInlineAppendSegments) && !qk_.meta) {
    // A decode step's append (device rows, few segments): the segments travel as the
    // kernel's parameter, so the stream runs no upload before it. The same device-side order
    // as below.
    if (decoded_) TWL_CUDA(cudaStreamWaitEvent(a, ev_decode_, 0));
    if (appended_) TWL_CUDA(cudaStreamWaitEvent(a, ev_append_, 0));
    TWL_RETURN_IF_ERROR(LaunchAppendSegmentsInline(g_, segs_.data(), int32_t(segs_.size()),
                                                   tokens.k, tokens.v, InputType(dtype), kv_,
                                                   nullptr, qk_, nullptr, a));
    TWL_CUDA(cudaEventRecord(ev_append_, a));
    appended_ = true;
    return absl::OkStatus();
  }
  Packer pk;
  const size_t o_seg = pk.Add<AppendSegment>(bulk ? segs_.size() : 0);
  const size_t o_page = pk.Add<int32_t>(bulk ? 0 : size_t(n));
  const size_t o_slot = pk.Add<int32_t>(bulk ? 0 : size_t(n));
  const size_t o_pp = pk.Add<int32_t>(plan_pages.size());
  const size_t o_pr = pk.Add<int32_t>(plan_rows.size());
  const size_t o_k = pk.Add<char>(host ? kv_bytes : 0);
  const size_t o_v = pk.Add<char>(host ? kv_bytes : 0);

  // Staging: descriptors (and small host input, e.g. a decode step's tokens) go through a
  // ring of pinned buffers, so the host waits only when kDescRing appends are queued; large
  // host input (a prompt) goes through one pinned buffer, reused once its previous upload has
  // run (the host may wait).
  PinnedBuffer* pin_buf = &append_pin_;
  cudaEvent_t pin_event = ev_append_upload_;
  if (!host || 2 * kv_bytes <= kSmallHostBytes) {
    pin_buf = &desc_pin_[desc_next_];
    pin_event = ev_desc_[desc_next_];
    desc_next_ = (desc_next_ + 1) % kDescRing;
  }
  TWL_CUDA(cudaEventSynchronize(pin_event));  // returns at once when done
  TWL_RETURN_IF_ERROR(pin_buf->Reserve(pk.used()));
  TWL_RETURN_IF_ERROR(Grow(append_dev_, pk.used()));
  char* pin = pin_buf->data();
  if (bulk) {
    std::memcpy(pin + o_seg, segs_.data(), sizeof(AppendSegment) * segs_.size());
  } else {
    std::memcpy(pin + o_page, tokens.page_id, sizeof(int32_t) * size_t(n));
    std::memcpy(pin + o_slot, tokens.slot, sizeof(int32_t) * size_t(n));
    std::memcpy(pin + o_pp, plan_pages.data(), sizeof(int32_t) * plan_pages.size());
    std::memcpy(pin + o_pr, plan_rows.data(), sizeof(int32_t) * plan_rows.size());
  }
  if (host) {
    std::memcpy(pin + o_k, tokens.k, kv_bytes);
    std::memcpy(pin + o_v, tokens.v, kv_bytes);
  }
  // Device-side order: after the last decode (a reused page may still be read by it) and
  // the last append (append_dev_ is shared; ReadPage/CopyPage/Decode wait for the last).
  if (decoded_) TWL_CUDA(cudaStreamWaitEvent(a, ev_decode_, 0));
  if (appended_) TWL_CUDA(cudaStreamWaitEvent(a, ev_append_, 0));
  TWL_CUDA(cudaMemcpyAsync(append_dev_.get(), pin, pk.used(), cudaMemcpyHostToDevice, a));
  TWL_CUDA(cudaEventRecord(pin_event, a));
  char* dev = append_dev_.as<char>();
  const void* k = host ? static_cast<const void*>(dev + o_k) : tokens.k;
  const void* v = host ? static_cast<const void*>(dev + o_v) : tokens.v;
  if (bulk) {
    TWL_RETURN_IF_ERROR(LaunchAppendSegments(g_, reinterpret_cast<const AppendSegment*>(dev + o_seg),
                                        int32_t(segs_.size()), k, v, InputType(dtype), kv_,
                                        nullptr, qk_, a));
    if (qk_.meta) {
      TWL_RETURN_IF_ERROR(meta_sel_->AppendSegmentsMetadataOnDevice(
          g_, reinterpret_cast<const AppendSegment*>(dev + o_seg), int32_t(segs_.size()), kv_,
          nullptr, qk_, a));
    }
  } else {
    AppendView in;
    in.num_tokens = n;
    in.k = static_cast<const fp16_t*>(k);
    in.v = static_cast<const fp16_t*>(v);
    in.page_id = reinterpret_cast<const int32_t*>(dev + o_page);
    in.slot = reinterpret_cast<const int32_t*>(dev + o_slot);
    const AppendPagePlan plan{reinterpret_cast<const int32_t*>(dev + o_pp),
                              reinterpret_cast<const int32_t*>(dev + o_pr),
                              int32_t(plan_pages.size())};
    TWL_RETURN_IF_ERROR(LaunchAppend(g_, in, InputType(dtype), plan, kv_, qk_, a));
    if (qk_.meta) TWL_RETURN_IF_ERROR(meta_sel_->UpdateMetadataOnDevice(g_, plan, kv_, qk_, a));
  }
  TWL_CUDA(cudaEventRecord(ev_append_, a));
  appended_ = true;
  return absl::OkStatus();
}

absl::Status GpuHbmBackend::CopyPage(int32_t src_page, int32_t dst_page, int32_t rows) {
  TWL_RETURN_IF_ERROR(CheckPage(src_page));
  TWL_RETURN_IF_ERROR(CheckPage(dst_page));
  if (rows < 0 || rows > g_.page_size) {
    return absl::InvalidArgumentError(absl::StrFormat("copy: %d rows", rows));
  }
  if (rows == 0 || src_page == dst_page) return absl::OkStatus();
  if (decoded_) TWL_CUDA(cudaStreamWaitEvent(stream_, ev_decode_, 0));
  if (appended_) TWL_CUDA(cudaStreamWaitEvent(stream_, ev_append_, 0));
  const size_t row_bytes = size_t(g_.head_dim) * 2;
  for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
    const int64_t sb = g_.BlockId(src_page, h), db = g_.BlockId(dst_page, h);
    TWL_CUDA(cudaMemcpyAsync(kv_.K(g_, db, 0), kv_.K(g_, sb, 0), row_bytes * rows,
                                 cudaMemcpyDeviceToDevice, stream_));
    TWL_CUDA(cudaMemcpyAsync(kv_.V(g_, db, 0), kv_.V(g_, sb, 0), row_bytes * rows,
                                 cudaMemcpyDeviceToDevice, stream_));
    if (g_.k_bits < 16) {
      TWL_CUDA(cudaMemcpyAsync(qk_.Codes(g_, db, 0), qk_.Codes(g_, sb, 0),
                                   size_t(g_.CodeBytesPerToken()) * rows,
                                   cudaMemcpyDeviceToDevice, stream_));
    }
    if (g_.HasTokenScale()) {  // k_scheme 1: the bounds kernel below re-quantizes dst's rows
      TWL_CUDA(cudaMemcpyAsync(qk_.scale + db * g_.page_size, qk_.scale + sb * g_.page_size,
                                   2 * size_t(rows), cudaMemcpyDeviceToDevice, stream_));
      TWL_CUDA(cudaMemcpyAsync(qk_.zero + db * g_.page_size, qk_.zero + sb * g_.page_size,
                                   2 * size_t(rows), cudaMemcpyDeviceToDevice, stream_));
    }
  }
  // Bounds over exactly the copied rows (as if they had been appended to dst).
  const int32_t plan_host[2] = {dst_page, rows};
  gpu::DeviceBuffer plan_dev;
  TWL_RETURN_IF_ERROR(plan_dev.Reserve(sizeof(plan_host)));
  TWL_CUDA(cudaMemcpyAsync(plan_dev.get(), plan_host, sizeof(plan_host),
                               cudaMemcpyHostToDevice, stream_));
  const AppendPagePlan plan{plan_dev.as<int32_t>(), plan_dev.as<int32_t>() + 1, 1};
  TWL_RETURN_IF_ERROR(LaunchRecomputeMinMax(g_, plan, kv_, qk_, stream_));
  if (qk_.meta) {
    TWL_RETURN_IF_ERROR(meta_sel_->UpdateMetadataOnDevice(g_, plan, kv_, qk_, stream_));
  }
  TWL_CUDA(cudaEventRecord(ev_append_, stream_));
  appended_ = true;
  TWL_CUDA(cudaStreamSynchronize(stream_));  // plan_host / plan_dev die here
  return absl::OkStatus();
}

absl::Status GpuHbmBackend::ReadPage(int32_t page, int32_t rows, fp16_t* k, fp16_t* v) const {
  TWL_RETURN_IF_ERROR(CheckPage(page));
  if (rows < 0 || rows > g_.page_size) {
    return absl::InvalidArgumentError(absl::StrFormat("read: %d rows", rows));
  }
  if (rows == 0) return absl::OkStatus();
  if (!k || !v) return absl::InvalidArgumentError("read: null output");
  // Appends may run on callers' streams: the last one's event covers all (they are chained).
  if (appended_) TWL_CUDA(cudaStreamWaitEvent(stream_, ev_append_, 0));
  const size_t row_bytes = size_t(g_.head_dim) * 2;
  const size_t pitch = row_bytes * g_.num_kv_heads;
  for (int32_t h = 0; h < g_.num_kv_heads; ++h) {
    const int64_t b = g_.BlockId(page, h);
    TWL_CUDA(cudaMemcpy2DAsync(k + int64_t(h) * g_.head_dim, pitch, kv_.K(g_, b, 0),
                                   row_bytes, row_bytes, rows, cudaMemcpyDeviceToHost, stream_));
    TWL_CUDA(cudaMemcpy2DAsync(v + int64_t(h) * g_.head_dim, pitch, kv_.V(g_, b, 0),
                                   row_bytes, row_bytes, rows, cudaMemcpyDeviceToHost, stream_));
  }
  TWL_CUDA(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status GpuHbmBackend::RunResidentStep(const Selector& selector, const SelectorParams& sel,
                                            const PrunerParams& pruner, const BatchView& db,
                                            const fp16_t* q, fp16_t* out,
                                            const pipeline_cuda::StepScratch& sc,
                                            cudaStream_t s, const TelemetryRing* timing,
                                            int32_t timing_slot) const {
  pipeline_cuda::CudaStep step =
      pipeline_cuda::MakeCudaStep(g_, selector, sel, pruner, db, q, out, qk_, kv_, s);
  step.timing = timing;
  step.timing_slot = timing_slot;
  return executor_.RunResident(step, sc, kv_);
}

absl::Status GpuHbmBackend::Decode(const DecodeRequest& req, StepTelemetry* telemetry) {
  const auto t_start = std::chrono::steady_clock::now();
  if (!req.q || !req.out) return absl::InvalidArgumentError("decode: null q or out");
  const BatchView& hb = req.batch;
  TWL_RETURN_IF_ERROR(ValidateBatchPages(g_, hb, num_pages_));
  TWL_RETURN_IF_ERROR(ValidateP(req.pruner.p));
  if (req.pruner.seq_p) {
    for (int32_t s = 0; s < hb.num_seqs; ++s) TWL_RETURN_IF_ERROR(ValidateP(req.pruner.seq_p[s]));
  }
  const int32_t Hq = hb.num_q_heads;
  const int64_t pairs = int64_t(hb.num_seqs) * g_.num_kv_heads;
  const int64_t heads = int64_t(hb.num_seqs) * Hq;
  const size_t qo_bytes = size_t(heads) * g_.head_dim * sizeof(fp16_t);
  const bool host_io = req.space == MemSpace::kHost;
  cudaStream_t s = req.stream ? AsStream(req.stream) : stream_;

  // Upload the host plan (and q when it is a host array) in one copy.
  Packer pk;
  const size_t o_len = pk.Add<int32_t>(size_t(hb.num_seqs));
  const size_t o_table = pk.Add<int32_t>(size_t(hb.num_seqs) * hb.max_pages);
  const size_t o_p = pk.Add<float>(req.pruner.seq_p ? size_t(hb.num_seqs) : 0);
  const size_t o_q = pk.Add<char>(host_io ? qo_bytes : 0);
  const size_t o_out = pk.Add<char>(host_io ? qo_bytes : 0);
  absl::StatusOr<UploadRing::Slot> up = uploads_.Acquire(pk.used(), 0);
  if (!up.ok()) return up.status();
  const UploadRing::Slot us = *up;
  char* pin = us.host;
  std::memcpy(pin + o_len, hb.seq_len, sizeof(int32_t) * size_t(hb.num_seqs));
  std::memcpy(pin + o_table, hb.page_table, sizeof(int32_t) * size_t(hb.num_seqs) * hb.max_pages);
  if (req.pruner.seq_p) std::memcpy(pin + o_p, req.pruner.seq_p, sizeof(float) * hb.num_seqs);
  if (host_io) std::memcpy(pin + o_q, req.q, qo_bytes);

  // Scratch sized for this step.
  const bool dense_only = req.pruner.dense && req.selector.kind == SelectorKind::kFull;
  absl::StatusOr<const Selector*> selector = FindSelector(req.selector.kind);
  if (!selector.ok()) return selector.status();
  absl::StatusOr<pipeline_cuda::StepStrides> strides =
      executor_.PrepareScratch(scratch_, g_, **selector, req.selector, hb.num_seqs, Hq,
                               hb.max_pages, /*select_prune=*/!dense_only, "decode");
  if (!strides.ok()) return strides.status();
  const int32_t max_kept = strides->max_kept;
  if (!dense_only) TWL_RETURN_IF_ERROR(Grow(blocks_, size_t(pairs) * 4));

  if (appended_) TWL_CUDA(cudaStreamWaitEvent(s, ev_append_, 0));
  // Scratch is shared by consecutive steps, which may come on different streams.
  if (decoded_) TWL_CUDA(cudaStreamWaitEvent(s, ev_decode_, 0));
  TWL_RETURN_IF_ERROR(uploads_.Upload(us, pk.used(), s));
  char* dev = us.device;
  BatchView db = hb;
  db.seq_len = reinterpret_cast<const int32_t*>(dev + o_len);
  db.page_table = reinterpret_cast<const int32_t*>(dev + o_table);
  const QueryView q{host_io ? reinterpret_cast<const fp16_t*>(dev + o_q) : req.q};
  const OutputView out{host_io ? reinterpret_cast<fp16_t*>(dev + o_out) : req.out};
  PrunerParams pp = req.pruner;
  pp.seq_p = req.pruner.seq_p ? reinterpret_cast<const float*>(dev + o_p) : nullptr;

  const bool timing = telemetry != nullptr;
  const int32_t ts = telemetry_.current();
  if (dense_only) {
    // Every token is kept: dense attention straight away (stage marks back to back).
    auto mark = [&](int32_t e) -> absl::Status {
      if (timing) TWL_CUDA(cudaEventRecord(telemetry_.timing(ts, e), s));
      return absl::OkStatus();
    };
    for (int32_t e : {kSel0, kSel1, kPrune1, kAttn0}) TWL_RETURN_IF_ERROR(mark(e));
    TWL_RETURN_IF_ERROR(attention_.AttendDenseOnDevice(g_, db, q, kv_, out,
                                                       req.pruner.softmax_scale,
                                                       scratch_.attend_workspace(),
                                                       scratch_.attend_workspace_bytes(), s));
    TWL_RETURN_IF_ERROR(mark(kAttn1));
  } else {
    TWL_RETURN_IF_ERROR(RunResidentStep(**selector, req.selector, pp, db, q.q, out.out,
                                        scratch_, s, timing ? &telemetry_ : nullptr, ts));
  }
  // Telemetry copies are queued before the step counts as done (the next step overwrites
  // their sources only after ev_decode_).
  if (timing) TWL_RETURN_IF_ERROR(WriteTelemetry(req, !dense_only, max_kept, s, telemetry));
  TWL_CUDA(cudaEventRecord(ev_decode_, s));
  // The host may reuse this upload slot (pinned plan, q and out staging) once the step ran.
  TWL_RETURN_IF_ERROR(uploads_.Release(us, s));
  decoded_ = true;

  if (host_io) {
    TWL_CUDA(cudaMemcpyAsync(pin + o_out, out.out, qo_bytes, cudaMemcpyDeviceToHost, s));
    TWL_RETURN_IF_ERROR(uploads_.Release(us, s));
    TWL_CUDA(cudaStreamSynchronize(s));
    std::memcpy(req.out, pin + o_out, qo_bytes);
  }
  if (timing) {
    // Device memory: publish the newest earlier step whose figures have landed (no wait);
    // host memory (synchronous anyway) or captured kept lists: this step's.
    absl::StatusOr<bool> published =
        telemetry_.Publish(host_io || req.capture_kept,
                           [&](int32_t slot) { return HarvestTelemetry(slot, telemetry); });
    if (!published.ok()) return published.status();
    telemetry->no_new_figures = !*published;
    telemetry->ms_total = std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - t_start).count();
  }
  if (req.capture_kept && telemetry) {
    if (dense_only) {
      StoreDenseKeptLists(hb.seq_len, hb.num_seqs, g_.num_kv_heads, telemetry);
    } else {
      TWL_RETURN_IF_ERROR(CaptureDeviceKeptLists(scratch_.kept_tokens(), scratch_.kept_count(),
                                            pairs, max_kept, s, telemetry));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuHbmBackend::HarvestTelemetry(int32_t slot, StepTelemetry* t) {
  absl::StatusOr<const PendingStep*> claimed = telemetry_.Claim(slot, "hbm telemetry");
  if (!claimed.ok()) return claimed.status();
  const PendingStep& p = **claimed;
  const int64_t heads = int64_t(p.num_seqs) * p.num_q_heads;
  const int64_t pairs = int64_t(p.num_seqs) * g_.num_kv_heads;
  const int32_t Hq = p.num_q_heads;
  t->layer = p.layer;
  t->step_id = p.step_id;
  t->num_seqs = p.num_seqs;
  const int32_t* tp = reinterpret_cast<const int32_t*>(telemetry_.host(slot).data());
  if (p.ran_pruner) {
    t->selected_tokens.assign(tp, tp + heads);
    t->kept_tokens.assign(tp + heads, tp + 2 * heads);
    const float* m = reinterpret_cast<const float*>(tp + 2 * heads);
    t->est_mass.assign(m, m + heads);
    t->full_mass.assign(m + heads, m + 2 * heads);
    t->cap_hit.assign(tp + 4 * heads, tp + 5 * heads);
    t->kept_tokens_kv.assign(tp + 5 * heads, tp + 5 * heads + pairs);
    t->blocks_needed = 0;
    for (int64_t i = 0; i < pairs; ++i) t->blocks_needed += tp[5 * heads + pairs + i];
  } else {
    t->selected_tokens.assign(size_t(heads), 0);
    t->kept_tokens_kv.assign(size_t(pairs), 0);
    t->blocks_needed = 0;
    for (int64_t i = 0; i < heads; ++i) t->selected_tokens[size_t(i)] = p.seq_len[size_t(i / Hq)];
    for (int64_t i = 0; i < pairs; ++i) {
      const int32_t len = p.seq_len[size_t(i / g_.num_kv_heads)];
      t->kept_tokens_kv[size_t(i)] = len;
      t->blocks_needed += (len + g_.page_size - 1) / g_.page_size;
    }
    t->kept_tokens = t->selected_tokens;
    t->est_mass.assign(size_t(heads), 1.0f);
    t->full_mass.assign(size_t(heads), 1.0f);
    t->cap_hit.assign(size_t(heads), 0);
  }
  float ms = 0;
  TWL_CUDA(cudaEventElapsedTime(&ms, telemetry_.timing(slot, kSel0),
                                 telemetry_.timing(slot, kSel1)));
  t->ms_select = ms;
  TWL_CUDA(cudaEventElapsedTime(&ms, telemetry_.timing(slot, kSel1),
                                 telemetry_.timing(slot, kPrune1)));
  t->ms_prune = ms;
  TWL_CUDA(cudaEventElapsedTime(&ms, telemetry_.timing(slot, kAttn0),
                                 telemetry_.timing(slot, kAttn1)));
  t->ms_attend = ms;
  t->ms_fetch = 0.0;
  t->blocks_fetched = 0;
  t->bytes_h2d = 0;
  return absl::OkStatus();
}

absl::Status GpuHbmBackend::WriteTelemetry(const DecodeRequest& req, bool ran_pruner,
                                           int32_t max_kept, cudaStream_t s, StepTelemetry* t) {
  (void)t;
  const int32_t slot = telemetry_.current();
  PendingStep& p = telemetry_.pending(slot);
  p.valid = true;
  p.ran_pruner = ran_pruner;
  p.layer = req.layer;
  p.step_id = req.step_id;
  p.num_seqs = req.batch.num_seqs;
  p.num_q_heads = req.batch.num_q_heads;
  p.seq_len.assign(req.batch.seq_len, req.batch.seq_len + req.batch.num_seqs);
  if (!ran_pruner) {
    return telemetry_.MarkLanded(slot, s);
  }
  const int64_t pairs = int64_t(req.batch.num_seqs) * g_.num_kv_heads;
  const int64_t heads = int64_t(req.batch.num_seqs) * req.batch.num_q_heads;
  const KeptView kept{scratch_.kept_tokens(), scratch_.kept_count(), max_kept};
  TWL_CUDA(cudaMemsetAsync(blocks_.get(), 0, size_t(pairs) * 4, s));
  if (pairs > 0 && max_kept > 0) {
    const dim3 count_grid(unsigned(pairs), unsigned((max_kept + kCountChunk - 1) / kCountChunk));
    CountBlocksKernel<<<count_grid, kCountThreads, 0, s>>>(g_.page_size, kept,
                                                           blocks_.as<int32_t>());
    TWL_CUDA(cudaGetLastError());
  }
  // Pinned layout: stats [5 * heads] | kept counts [pairs] | blocks [pairs], by one kernel.
  using Part = pipeline_cuda::TelemetryRing::Part;
  const Part parts[] = {{scratch_.stats(), size_t(5 * heads) * 4},
                        {scratch_.kept_count(), size_t(pairs) * 4},
                        {blocks_.get(), size_t(pairs) * 4}};
  TWL_RETURN_IF_ERROR(telemetry_.CopyIn(slot, parts, s));
  return telemetry_.MarkLanded(slot, s);
}

// ---- Bound batches (issue 11.3) ----------------------------------------------------------
// A bound step is Decode without the host: the plan is the batch's device tables, the scratch
// the batch's own (sized at bind for max_tokens), no telemetry. On a capturing stream it also
// leaves out the cross-stream event waits and records (an event recorded during a capture
// cannot be waited on outside it); the caller orders appends and replays on its stream.

absl::StatusOr<std::unique_ptr<BoundTables>> GpuHbmBackend::CreateBoundTables(
    const BoundShape& shape, absl::Span<const int32_t> words) {
  absl::StatusOr<std::unique_ptr<GpuBoundTables>> t = CreateGpuBoundTables(
      executor_, g_, config_.num_layers, config_.num_q_heads, shape, words);
  if (!t.ok()) return t.status();
  return std::unique_ptr<BoundTables>(std::move(*t));
}

absl::Status GpuHbmBackend::WriteBoundTables(BoundTables* tables, int32_t layer,
                                             absl::Span<const TableWrite> writes, void* stream) {
  absl::StatusOr<GpuBoundTables*> t = CheckBoundWrites(tables, layer, config_.num_layers, writes);
  if (!t.ok()) return t.status();
  if (writes.empty()) return absl::OkStatus();
  cudaStream_t a = stream ? AsStream(stream) : stream_;
  // After the rows (the append just queued, maybe on another stream) and after the last eager
  // decode, which may still read the words being replaced.
  if (appended_) TWL_CUDA(cudaStreamWaitEvent(a, ev_append_, 0));
  if (decoded_) TWL_CUDA(cudaStreamWaitEvent(a, ev_decode_, 0));
  TWL_RETURN_IF_ERROR(LaunchTableWrites((*t)->WriteBase(layer), writes, a));
  TWL_CUDA(cudaEventRecord(ev_append_, a));  // decodes wait for the tables too
  appended_ = true;
  return absl::OkStatus();
}

absl::Status GpuHbmBackend::ReadBoundTables(BoundTables* tables, int32_t layer,
                                            absl::Span<int32_t> words) {
  if (appended_) TWL_CUDA(cudaStreamWaitEvent(stream_, ev_append_, 0));
  return ReadBoundWords(tables, layer, config_.num_layers, words, stream_);
}

absl::Status GpuHbmBackend::AppendBound(const BoundAppendRequest& req) {
  absl::StatusOr<GpuBoundTables*> checked = CheckBoundAppend(req, config_.num_layers);
  if (!checked.ok()) return checked.status();
  const GpuBoundTables& t = **checked;
  cudaStream_t s = req.stream ? AsStream(req.stream) : stream_;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TWL_CUDA(cudaStreamIsCapturing(s, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  if (!capturing) {
    // After the reservation's table writes and earlier appends, and after the last decode.
    if (appended_) TWL_CUDA(cudaStreamWaitEvent(s, ev_append_, 0));
    if (decoded_) TWL_CUDA(cudaStreamWaitEvent(s, ev_decode_, 0));
  }
  const AppendSegment* segs = t.Segments(req.layer);
  TWL_RETURN_IF_ERROR(LaunchAppendSegments(g_, segs, req.num_seqs, req.k, req.v,
                                           InputType(req.dtype), kv_, nullptr, qk_, s));
  if (qk_.meta) {
    TWL_RETURN_IF_ERROR(meta_sel_->AppendSegmentsMetadataOnDevice(g_, segs, req.num_seqs, kv_,
                                                                  nullptr, qk_, s));
  }
  if (!capturing) {
    TWL_CUDA(cudaEventRecord(ev_append_, s));
    appended_ = true;
  }
  return absl::OkStatus();
}

absl::Status GpuHbmBackend::DecodeBound(const BoundDecodeRequest& req) {
  absl::StatusOr<GpuBoundTables*> checked = CheckBoundStep(req, config_.num_layers);
  if (!checked.ok()) return checked.status();
  GpuBoundTables& t = **checked;
  cudaStream_t s = req.stream ? AsStream(req.stream) : stream_;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TWL_CUDA(cudaStreamIsCapturing(s, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  const bool dense_only = req.pruner.dense && req.selector.kind == SelectorKind::kFull;
  absl::StatusOr<const Selector*> selector = FindSelector(req.selector.kind);
  if (!selector.ok()) return selector.status();

  if (!capturing) {
    if (appended_) TWL_CUDA(cudaStreamWaitEvent(s, ev_append_, 0));
    // The batch's scratch is shared by its consecutive steps, which may come on other streams.
    if (decoded_) TWL_CUDA(cudaStreamWaitEvent(s, ev_decode_, 0));
  }
  absl::StatusOr<BoundIo> io = BoundInput(req, t, g_, config_.device_id, s);
  if (!io.ok()) return io.status();
  const BatchView db = t.Batch(req.layer, req.num_q_heads);
  const pipeline_cuda::StepScratch& sc = t.scratch();
  if (dense_only) {
    TWL_RETURN_IF_ERROR(attention_.AttendDenseOnDevice(g_, db, QueryView{io->q}, kv_,
                                                       OutputView{io->out},
                                                       req.pruner.softmax_scale,
                                                       sc.attend_workspace(),
                                                       sc.attend_workspace_bytes(), s));
  } else {
    PrunerParams pp = req.pruner;
    pp.seq_p = nullptr;
    // No telemetry: nothing for the host to read back.
    TWL_RETURN_IF_ERROR(
        RunResidentStep(**selector, req.selector, pp, db, io->q, io->out, sc, s, nullptr, 0));
  }
  TWL_RETURN_IF_ERROR(BoundOutput(req, *io, config_.device_id, s));
  if (!capturing) {
    TWL_CUDA(cudaEventRecord(ev_decode_, s));
    decoded_ = true;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateGpuHbmBackend(const RuntimeConfig& config,
                                                             int64_t num_pages) {
  TWL_RETURN_IF_ERROR(config.Validate());
  if (!gpu::GpuAvailable()) return absl::UnavailableError("GPU HBM backend: no GPU found");
  TWL_RETURN_IF_ERROR(CheckGpuKernelShape(config, "GPU HBM backend"));
  if (num_pages < 1 || num_pages > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GPU HBM backend: num_pages %d outside [1, 2^31)", num_pages));
  }
  auto backend = std::make_unique<GpuHbmBackend>(config, num_pages);
  TWL_RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace twl
