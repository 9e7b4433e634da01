// Device tables of bound batches, shared by the GPU stores (see gpu_bound_tables.cuh).
#include "runtime/gpu_bound_tables.cuh"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/validate.h"
#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/select/selector.h"
#include "runtime/dtype_convert.h"
#include "runtime/dtype_convert_device.h"

namespace twl {
namespace {

// Kernel parameters are limited to 4 KiB: 480 writes of 8 bytes plus the header fit.
constexpr int32_t kWritesPerLaunch = 480;

struct WriteChunk {
  int32_t* base;
  int32_t count;
  int32_t index[kWritesPerLaunch];
  int32_t value[kWritesPerLaunch];
};

__global__ void TableWritesKernel(const WriteChunk chunk) {
  for (int32_t i = threadIdx.x; i < chunk.count; i += blockDim.x) {
    chunk.base[chunk.index[i]] = chunk.value[i];
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<GpuBoundTables>> CreateGpuBoundTables(
    const pipeline_cuda::CudaExecutor& executor, const PageGeometry& g, int32_t num_layers,
    int32_t num_q_heads, const BoundShape& shape, absl::Span<const int32_t> words) {
  auto t = std::make_unique<GpuBoundTables>(shape.num_seqs, shape.max_pages);
  if (int64_t(words.size()) != int64_t(num_layers) * t->WordsPerLayer()) {
    return absl::InternalError("bound batch: table words do not match the shape");
  }
  absl::StatusOr<const Selector*> selector = FindSelector(shape.selector.kind);
  if (!selector.ok()) return selector.status();
  const int32_t n = shape.num_seqs;
  absl::StatusOr<pipeline_cuda::StepStrides> strides =
      executor.PrepareScratch(t->scratch(), g, **selector, shape.selector, n, num_q_heads,
                              shape.max_pages, /*select_prune=*/true, "bound batch");
  if (!strides.ok()) return strides.status();
  TWL_RETURN_IF_ERROR(
      t->conv().Reserve(size_t(n) * num_q_heads * g.head_dim * 2 * sizeof(fp16_t)));
  TWL_RETURN_IF_ERROR(t->words().Reserve(words.size() * sizeof(int32_t)));
  // Not a hot path: a synchronous copy of the tables as the host knows them now (appends
  // queued but not yet run change rows, not these words).
  TWL_CUDA(cudaMemcpy(t->words().get(), words.data(), words.size() * sizeof(int32_t),
                      cudaMemcpyHostToDevice));
  return t;
}

absl::StatusOr<GpuBoundTables*> CheckBoundWrites(BoundTables* tables, int32_t layer,
                                                 int32_t num_layers,
                                                 absl::Span<const TableWrite> writes) {
  auto* t = static_cast<GpuBoundTables*>(tables);
  const bool all = layer == kAllBoundLayers;
  if (t == nullptr || (!all && (layer < 0 || layer >= num_layers))) {
    return absl::InternalError("bound batch: bad table write");
  }
  const int64_t words = all ? num_layers * t->WordsPerLayer() : t->WordsPerLayer();
  for (const TableWrite& w : writes) {
    if (w.index < 0 || w.index >= words) {
      return absl::InternalError(absl::StrFormat("bound batch: table word %d", w.index));
    }
  }
  return t;
}

absl::Status ReadBoundWords(BoundTables* tables, int32_t layer, int32_t num_layers,
                            absl::Span<int32_t> words, cudaStream_t stream) {
  auto* t = static_cast<GpuBoundTables*>(tables);
  if (t == nullptr || layer < 0 || layer >= num_layers ||
      int64_t(words.size()) != t->WordsPerLayer()) {
    return absl::InternalError("bound batch: bad table read");
  }
  TWL_CUDA(cudaMemcpyAsync(words.data(), t->Layer(layer), words.size() * sizeof(int32_t),
                           cudaMemcpyDeviceToHost, stream));
  TWL_CUDA(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

absl::StatusOr<GpuBoundTables*> CheckBoundAppend(const BoundAppendRequest& req,
                                                 int32_t num_layers) {
  auto* t = static_cast<GpuBoundTables*>(req.tables);
  if (t == nullptr || !req.k || !req.v) {
    return absl::InvalidArgumentError("batch append: null tables, k or v");
  }
  if (!IsValidDType(req.dtype)) return absl::InvalidArgumentError("batch append: unknown dtype");
  if (req.layer < 0 || req.layer >= num_layers || req.num_seqs != t->num_seqs() ||
      req.max_pages != t->max_pages()) {
    return absl::InternalError("batch append: request does not match the bound tables");
  }
  return t;
}

absl::StatusOr<GpuBoundTables*> CheckBoundStep(const BoundDecodeRequest& req,
                                               int32_t num_layers) {
  auto* t = static_cast<GpuBoundTables*>(req.tables);
  if (t == nullptr || !req.q || !req.out) {
    return absl::InvalidArgumentError("decode batch: null tables, q or out");
  }
  if (req.layer < 0 || req.layer >= num_layers || req.num_seqs != t->num_seqs() ||
      req.max_pages != t->max_pages()) {
    return absl::InternalError("decode batch: request does not match the bound tables");
  }
  TWL_RETURN_IF_ERROR(ValidateP(req.pruner.p));
  return t;
}

absl::StatusOr<BoundIo> BoundInput(const BoundDecodeRequest& req, GpuBoundTables& t,
                                   const PageGeometry& g, int32_t device_id,
                                   cudaStream_t stream) {
  BoundIo io;
  io.elems = int64_t(req.num_seqs) * req.num_q_heads * g.head_dim;
  io.q = static_cast<const fp16_t*>(req.q);
  io.out = static_cast<fp16_t*>(req.out);
  if (req.dtype != DType::kFp16) {
    fp16_t* q16 = t.conv().as<fp16_t>();
    io.q = q16;
    io.out = q16 + io.elems;
    TWL_RETURN_IF_ERROR(
        DeviceConvert(device_id, req.q, req.dtype, q16, DType::kFp16, io.elems, stream));
  }
  return io;
}

absl::Status BoundOutput(const BoundDecodeRequest& req, const BoundIo& io, int32_t device_id,
                         cudaStream_t stream) {
  if (req.dtype == DType::kFp16) return absl::OkStatus();
  return DeviceConvert(device_id, io.out, DType::kFp16, req.out, req.dtype, io.elems, stream);
}

absl::Status LaunchTableWrites(int32_t* base, absl::Span<const TableWrite> writes,
                               cudaStream_t stream) {
  for (size_t at = 0; at < writes.size(); at += kWritesPerLaunch) {
    WriteChunk chunk;
    chunk.base = base;
    chunk.count = int32_t(std::min<size_t>(kWritesPerLaunch, writes.size() - at));
    for (int32_t i = 0; i < chunk.count; ++i) {
      chunk.index[i] = writes[at + size_t(i)].index;
      chunk.value[i] = writes[at + size_t(i)].value;
    }
    TableWritesKernel<<<1, 256, 0, stream>>>(chunk);
    TWL_CUDA(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace twl
