// The GPU offload backend (runtime/gpu_offload_backend.cu): FP16 K/V blocks in a pinned,
// device-mapped host pool; the INT4 K estimation copy, the Quest page bounds and a bounded
// hot cache of FP16 blocks on the GPU. CreateGpuOffloadBackend (runtime/backend.h) returns
// this class; tests and benchmarks that need its counters create it with
// CreateGpuOffloadBackendEx. No CUDA types here.
//
// Decode step of one layer, per group of sequences (groups pipeline, see below):
//   compute stream: Quest select -> Twilight prune                         [gpuk's kernels]
//   fetch stream:   cache plan on the GPU from the kept lists (hits pinned, misses admitted
//                   by value, fetch list written on the device) -> zero-copy gather of the
//                   missing blocks from host memory into their slots        [offload/]
//                   (RuntimeConfig::cache_rows: the GPU cache holds single K+V rows instead,
//                   pipeline/fetch/row_cache/: only the rows the attention reads)
//   compute stream: sparse attention through slot_of_block                 [gpuk's kernel]
//                   (+ units that did not fit in the cache: attention straight from the
//                   mapped host pool, merged into the output)
// Without a disk tier nothing waits for the host inside a step: the only host
// synchronisation is the optional telemetry read at the end (and the copy back of `out` when
// it is a host pointer). With one (CreateGpuOffloadBackendWithDiskEx below) the host waits
// once per group for the kept lists.
//
// Overlap: the batch is split into groups of sequences (two with Twilight; with Quest alone
// as many as its exact block bound needs to fit; cache/gpu_page_cache.h PlanSeqGroups).
// The prune of group g+1 runs on the compute stream while group g's blocks
// are gathered on the fetch stream, and group g's attention runs while group g+1's blocks
// are gathered. Not overlapped: attention of a group with the fetch of its own missing
// blocks (a split of each kept set into resident and missing tokens would need partial
// softmax states from the attention kernel), and work of different Decode calls.
//
// Append (one call for a whole batch of sequences, enqueued on the caller's stream, never
// waiting for the device on the way): the tokens are cut into segments (rows of one page);
// ONE kernel per call writes every segment, computing the INT4 K, its scales and the Quest
// page bounds in device memory from the same registers (bounds of a partially filled page
// are merged with the ones already there, so the host pool is never read back). The FP16
// rows of whole pages go to a device staging buffer laid out like the pool and then to the
// pinned pool by the copy engine, one cudaMemcpyAsync per run of consecutive page ids
// (AppendPath::kCopyEngine, the default); rows of partial pages (a sequence's first and
// last page, decode-time appends) are written by the kernel straight into the mapped pool
// with 16-byte stores (AppendPath::kKernel writes everything that way). The staging (32 MiB)
// has two halves: the kernel fills one while the copy engine (on a stream of its own that
// the caller's stream then waits for) drains the other. Descriptors go up through a ring of
// pinned buffers guarded by events (the host waits only when it is kDescRing calls ahead).
// Rows of blocks resident in the cache are mirrored into their slots on the fetch stream
// (the cache never holds stale rows). Appends are chained (each waits, on the device, for
// the previous one and for the last decode step), and every decode waits for the last
// append, whatever streams they use.
// Thread-safety: one caller at a time (the Runtime serializes calls).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cache/gpu_page_cache.h"
#include "offload/fetch_transport.h"
#include "runtime/backend.h"

namespace twl {

// Offload counters of the last Decode that asked for telemetry (summed over its groups).
struct OffloadStepStats {
  CacheCounters cache;          // units, direct units, needed (distinct), hits, misses...
  int64_t direct_blocks = 0;    // blocks read in place from host memory (not admitted)
  int64_t direct_tokens = 0;    // their kept rows (the bytes they cost: rows x K+V row)
  int32_t groups = 0;           // pipeline groups of the step
  int32_t errors = 0;           // plan kernels that reported an inconsistency (must be 0)
};

// How Append moves the FP16 rows of whole pages to the host pool (see above).
enum class AppendPath : int32_t {
  kCopyEngine = 0,  // device staging + cudaMemcpyAsync D2H per run of consecutive pages
  kKernel = 1,      // the append kernel stores into the mapped pool
};

class OffloadBackend : public Backend {
 public:
  // Default: kCopyEngine, or TWL_APPEND_PATH=kernel|copy in the environment at creation.
  virtual void SetAppendPath(AppendPath path) = 0;
  virtual AppendPath append_path() const = 0;
  virtual OffloadStepStats LastStepStats() const = 0;
  virtual CacheCounters CacheTotals() const = 0;  // summed over telemetry steps
  virtual int32_t num_cache_slots() const = 0;  // blocks, or rows under the row cache
  virtual std::string fetch_path_name() const = 0;
  // Switches between the gather and the copy engine (kAuto: the gather) between steps.
  virtual void SetFetchPath(FetchPath path) = 0;
  // The host pool (for baselines that move whole layers): block b at base + b * block_bytes.
  virtual FetchSource HostPool() const = 0;
  // Quantized K + page bounds in device memory (for baselines that share them).
  virtual QuantKView DeviceQuant() const = 0;
};

// CreateGpuOffloadBackend (runtime/backend.h) returns the same object.
absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendEx(
    const RuntimeConfig& config, int64_t num_pages);

// With a disk tier (runtime/disk_residency.h, offload/disk_tier.h) under the pinned pool:
// `num_pages` logical pages (their num_pages * num_kv_heads blocks at most host_slots *
// num_kv_heads - 1 + tier->capacity()), FP16 data in host_slots * num_kv_heads pinned block
// slots or in `tier`, whose records are single blocks (the residency unit is one (page, KV
// head) block, what a step keeps); INT4 K and page bounds of every page stay on the GPU, so
// selection never reads the disk. Differences from the pool without a tier:
//   Decode  after each group's prune the host reads the kept lists back and makes their
//           blocks resident (reads from disk, low-value blocks spilled: victims by value,
//           offload/spill_policy.h), then the group's fetch and attention run through the
//           pool map (one host wait per group); after the step the blocks the next layer's
//           step kept last time are read ahead asynchronously (the next layer: the one that
//           followed this layer last time).
//   Append  per chunk of tokens whose pages' blocks fit in the slots: blocks into slots, rows
//           written by the per-token kernel through the pool map; a chunk that needs no
//           spill does not wait (for the device or the disk), one that spills waits for the
//           earlier steps and appends first; cached blocks of the pages are invalidated
//           instead of mirrored.
//   Errors  the CPU tier's: ResourceExhausted for a full disk or a step that needs more
//           blocks than the slots hold, disk I/O errors marked (runtime/disk_io_status.h);
//           nothing already appended is lost (a failed write keeps its block in its slot, a
//           failed read keeps it on disk). Needs k_bits < 16 (Unimplemented otherwise).
// CreateGpuOffloadBackendWithDisk (runtime/backend.h) returns the same object.
absl::StatusOr<std::unique_ptr<OffloadBackend>> CreateGpuOffloadBackendWithDiskEx(
    const RuntimeConfig& config, int64_t num_pages, int64_t host_slots,
    std::unique_ptr<DiskTier> tier);

// Cache slots the backend uses for a configuration: gpu_cache_bytes / block bytes (at least
// 1), or by default 10% of the host pool's FP16 bytes (at least 64 slots).
int64_t OffloadCacheSlots(const RuntimeConfig& config, int64_t num_pages);

}  // namespace twl
