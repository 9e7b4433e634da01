// The GPU offload backend's serving loop over the NVMe tier, replayed on the CPU: the same
// residency calls (runtime/offload_disk_steps.h over runtime/disk_residency.h, aligned host
// memory, a real file) that twl_serve_bench makes through twl_append_batch / twl_decode, with
// synthetic kept sets instead of a pruner. Per step, each layer appends one token per
// sequence (a new block per (sequence, KV head) every page_size tokens), then decodes: two
// pipeline groups of sequences make their kept blocks resident, then the next layer's are
// read ahead (with the GPU row cache in front, the default, only the blocks of the rows it
// misses). Kept sets: per (layer, sequence, KV head) a fixed share of its blocks with
// 1-8 kept rows each, a few replaced per step (drift). Reports, per measured step, what the
// appends waited for (device quiesces, disk reads and writes, wall time) and the decode's
// disk traffic: the figures the H200 run shows as "ms append" and "disk MB/step".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace twl::bench {

struct DiskServingSimOptions {
  std::string dir = "/tmp";   // directory of the disk tier's file
  int32_t layers = 4;
  int32_t seqs = 8;
  int32_t kv_heads = 8;
  int32_t head_dim = 128;      // with page 16: 8 KiB blocks
  int32_t page_size = 16;
  int32_t context = 8192;      // prefilled tokens per sequence
  int32_t prefill_chunk = 8192;
  double pool_fraction = 0.25;  // host slots / blocks of the prefilled KV
  double kept_fraction = 0.05;  // kept blocks per (layer, sequence, KV head)
  double drift = 0.01;          // share of each kept set replaced per step
  bool keep_last_block = false;  // the block being appended is kept too
  int32_t warmup = 4;
  int32_t steps = 32;
  uint32_t seed = 1;
  // false: the residency calls as before the appends stopped waiting (OffloadDiskSteps).
  bool never_wait = true;
  // The GPU row cache in front (the offload default): its plan runs first and a group hands
  // the residency only the blocks of the rows it missed (pipeline/fetch/disk/
  // miss_first_fetch.cuh). false: every kept block, read back from the kept lists, as
  // before (and as under the block cache).
  bool gpu_row_cache = true;
  // Its capacity in rows (0: every kept row fits); rows unused for 2 x layers layer-steps
  // may be evicted, the rest of a miss is read in place.
  int64_t gpu_cache_rows = 0;
};

struct DiskServingStep {
  // Appends of the step (all layers).
  double append_ms = 0;        // wall time of the residency calls of the appends
  int64_t append_quiesces = 0;  // device waits the appends needed before moving blocks
  int64_t append_loaded = 0;   // blocks read synchronously
  int64_t append_written = 0;  // blocks written synchronously (dirty victims)
  int64_t append_read_waits = 0;  // disk reads waited for (loads, read-ahead reaped)
  int64_t append_bytes_read = 0;  // their bytes
  double append_wait_ms = 0;   // time blocked on them
  // Decodes of the step (all layers).
  double decode_ms = 0;
  int64_t decode_loaded = 0;     // blocks read on the critical path (Reserve)
  int64_t decode_read_ahead = 0;  // blocks read ahead
  int64_t decode_written = 0;    // blocks written on the critical path
  int64_t decode_bytes_read = 0;
  int64_t decode_read_waits = 0;
  double decode_wait_ms = 0;
  // Residency calls of the decodes: Group calls, DiskResidency::Reserve calls, kept lists
  // read back to the host (a host wait on the prune and a copy each), GPU cache misses.
  int64_t decode_groups = 0;
  int64_t decode_blocks = 0;  // blocks handed to Group
  int64_t decode_reserves = 0;
  int64_t decode_kept_readbacks = 0;
  int64_t decode_missed_rows = 0;
  // Background: blocks written behind (not waited for) by the step.
  int64_t written_behind = 0;
};

struct DiskServingSimResult {
  int64_t blocks = 0, slots = 0, kept_blocks = 0;  // kept: all layers, one step
  double prefill_ms = 0;
  std::vector<DiskServingStep> steps;  // measured steps only
  DiskServingStep Mean() const;
};

absl::StatusOr<DiskServingSimResult> RunDiskServingSim(const DiskServingSimOptions& options);

}  // namespace twl::bench
