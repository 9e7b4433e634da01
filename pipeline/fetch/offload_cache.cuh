// The offload store's fetch stage, whatever its GPU cache holds: CacheFetch (whole blocks,
// residency by value: pipeline/fetch/cache/) or RowCacheFetch (single rows:
// pipeline/fetch/row_cache/). Beyond CudaFetch, what the offload store needs of it: the
// cache's coherence on appends and frees (on the fetch stream, where every other cache
// mutation runs), its per-group counters for the step telemetry, and its sizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/gpu_page_cache.h"
#include "gpu/kernels.h"
#include "offload/fetch_transport.h"
#include "pipeline/fetch/fetch.cuh"
#include "runtime/runtime.h"  // FetchPath

namespace twl {
struct DeviceRowCache;  // pipeline/fetch/row_cache/cuda/row_plan.h
}  // namespace twl

namespace twl::pipeline_cuda {

class OffloadCacheFetch : public CudaFetch {
 public:
  virtual std::string transport_name() const = 0;
  virtual void SetPath(FetchPath path) = 0;
  // `layers` layers take turns on the cache (tunes the block values' decay or the rows'
  // recency window).
  virtual void SetSharingLayers(int32_t layers) = 0;
  // The fetch stream, created by the store.
  virtual void AttachStream(cudaStream_t fetch_stream) = 0;
  // Per-unit arrays and the direct output for a step of `units` units, `out_bytes` output.
  virtual absl::Status GrowStep(int64_t units, size_t out_bytes) = 0;

  virtual int32_t num_slots() const = 0;
  virtual int64_t device_bytes() const = 0;      // slots, maps, stamps, lists
  virtual int64_t fetch_unit_bytes() const = 0;  // bytes one fetched entry moves
  virtual const char* granularity() const = 0;   // "blocks" or "rows"

  // Coherence (on `stream`): pages freed or rewritten (every KV head's rows of each page);
  // tokens appended (row d_row[i] of page d_page_id[i], every KV head), from the mapped pool;
  // segments appended (rows [row_begin, row_end) of each segment's page).
  virtual absl::Status InvalidatePages(const int32_t* d_pages, int32_t num_pages,
                                       cudaStream_t stream) = 0;
  virtual absl::Status MirrorTokens(const fp16_t* mapped_pool, const int32_t* d_page_id,
                                    const int32_t* d_row, int32_t num_tokens,
                                    cudaStream_t stream) = 0;
  virtual absl::Status MirrorSegments(const fp16_t* mapped_pool, const AppendSegment* d_segments,
                                      int32_t num_segments, cudaStream_t stream) = 0;
  // False where an append cannot leave a stale entry (the row cache: rows are cached only
  // once appended and never rewritten; a reused page was dropped at its release or copy), so
  // the store skips the mirror and its hop through the fetch stream.
  virtual bool appends_need_mirror() const { return true; }
  // The row cache whose free slots a decode step's append may also fill with its new rows
  // (row_cache/cuda/row_slots.cuh, TakeFreeSlot; sound between steps only), or null.
  virtual const DeviceRowCache* append_insert() const { return nullptr; }

  // Telemetry: one record of record_bytes() per group (device memory, counters()), read as
  // CacheCounters (hits / misses / direct in the stage's own unit: blocks or rows); *error
  // gets the plan's error code (0: none).
  virtual const void* counters() const = 0;
  virtual size_t record_bytes() const = 0;
  virtual CacheCounters ReadRecord(const void* host_record, int32_t* error) const = 0;
  virtual int32_t* unit_hits() const = 0;    // [units] resident blocks / rows of each unit
  virtual int32_t* unit_blocks() const = 0;  // [units] its blocks / kept rows

  // Bound batches (runtime/bound_batch.h): a fetch stage for steps of a fixed batch of `units`
  // units whose every launch is the same at each call (capturable in a CUDA graph): the same
  // cache, with the per-step buffers owned by the returned object. Its Fetch must be called
  // in step order with the stage's own steps (the store orders them by events).
  // Unimplemented where the plan has host decisions (the block cache's copy engine path).
  virtual absl::StatusOr<std::unique_ptr<CudaFetch>> MakeBoundFetch(int64_t /*units*/) {
    return absl::UnimplementedError(std::string("the GPU cache of ") + granularity() +
                                    " plans on the host; bound batches need the row cache "
                                    "(cache_rows 0 or 2)");
  }
};

}  // namespace twl::pipeline_cuda
