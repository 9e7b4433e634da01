// Host -> GPU movement of FP16 blocks into the hot-page cache, as one transport interface
// with two implementations and stated capabilities (no CUDA types: streams are void*).
//
//   Zero-copy gather  a kernel whose warps read blocks from mapped pinned host memory with
//                     16-byte loads, many blocks in flight, and write them into cache slots.
//                     Consumes a fetch list that lives on the device (written by the cache
//                     planning kernels), so a decode step never waits for the host. Uses SMs.
//   Copy engine       cudaMemcpyBatchAsync (CUDA >= 12.8; else one cudaMemcpyAsync per run)
//                     over runs of consecutive blocks that land in consecutive slots. Needs
//                     the fetch list on the host, so on the decode path it costs one host
//                     synchronisation to read the list back; it wins only for long runs.
// Which to use is decided by measurement (offload/fetch_calibration.h).
//
// Submission is asynchronous: Submit* only enqueues work on `stream` and returns; completion
// is observed through events the caller records on that stream (sync points are the
// caller's). The source blocks must not be rewritten until the copy completes; the
// destination slots must not be read until then.
// Thread-safety: a transport may be used from one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/gpu_page_cache.h"

namespace twl {

enum class TransportKind : int32_t { kZeroCopyGather = 0, kCopyEngine = 1 };

struct TransportCaps {
  TransportKind kind = TransportKind::kZeroCopyGather;
  std::string name;
  bool device_list = false;  // SubmitDevice: the fetch list may stay on the device
  bool host_list = false;    // SubmitHost: a host fetch list is accepted
  bool uses_sms = false;     // competes with kernels for SMs (vs a DMA engine)
  bool batched_api = false;  // cudaMemcpyBatchAsync available and used
};

// Where blocks come from: block b is at host_base + b * block_bytes on the host and at
// mapped_base + b * block_bytes in the device address space (pinned, mapped memory). With a
// disk tier under the pool (fewer pool blocks than blocks), block b is at pool index
// slot_of_block[b] instead (the device array for the gather, the host array for the copy
// engine; both describe the same map). A block whose entry is -1 is not in the pool: the
// store must have put every block a step reads into the pool before the fetch (such an
// entry is skipped rather than read out of bounds).
struct FetchSource {
  const void* host_base = nullptr;
  const void* mapped_base = nullptr;  // required by the gather
  int64_t block_bytes = 0;            // multiple of 16
  int64_t num_blocks = 0;
  const int32_t* slot_of_block = nullptr;       // device [num_blocks], or null: identity
  const int32_t* host_slot_of_block = nullptr;  // host [num_blocks], or null: identity
};

// Where blocks go: slot s is at slots_base + s * block_bytes (device memory).
struct FetchDest {
  void* slots_base = nullptr;
  int32_t num_slots = 0;
};

// A fetch list in device memory: entries [0, *d_count) of d_entries, d_count <= max_entries.
struct DeviceFetchList {
  const FetchEntry* d_entries = nullptr;  // [max_entries]
  const int32_t* d_count = nullptr;       // [1]
  int32_t max_entries = 0;
};

class FetchTransport {
 public:
  virtual ~FetchTransport() = default;
  virtual const TransportCaps& caps() const = 0;
  // Enqueues the copies of a device-resident list. Unimplemented if !caps().device_list.
  virtual absl::Status SubmitDevice(const DeviceFetchList& list, void* stream) = 0;
  // Enqueues the copies of a host list (entries are read before the call returns).
  // Unimplemented if !caps().host_list.
  virtual absl::Status SubmitHost(const FetchEntry* entries, int32_t count, void* stream) = 0;
};

// Both return Unavailable when built without CUDA; InvalidArgument for bad source/dest.
absl::StatusOr<std::unique_ptr<FetchTransport>> CreateGatherTransport(const FetchSource& src,
                                                                      const FetchDest& dst);
absl::StatusOr<std::unique_ptr<FetchTransport>> CreateCopyEngineTransport(
    const FetchSource& src, const FetchDest& dst);

// Runs of a host fetch list: maximal stretches where both block and slot increase by one,
// as (first entry, length). Used by the copy engine to issue one copy per run.
struct FetchRun {
  int32_t first = 0;
  int32_t length = 0;
};
void CoalesceFetchRuns(const FetchEntry* entries, int32_t count, std::vector<FetchRun>* runs);

}  // namespace twl
