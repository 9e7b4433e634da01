// The host-side calls the GPU offload backend makes on its DiskResidency in a serving loop
// (runtime/gpu_offload_backend_disk.cu): per append chunk, the blocks it writes; per decode step,
// each pipeline group's kept blocks, then the read-ahead of the next layer. Kept out of the
// CUDA file so that the exact sequence of residency calls a serving loop makes runs, and is
// measured, without a GPU (bench/lib/disk_serving_sim.h, tests/cpu/disk_serving_test.cc).
//
// Device safety: a block may change slots (be evicted, loaded, or placed) only while no GPU
// work reads or writes its slot. The caller passes `quiesce` (waits for every step and append
// issued so far) to the calls that may have to move blocks of earlier work; the decode calls
// run after the step's prune, which the device ran after every earlier step and append, so
// only the blocks of the step in progress are in use then (protected: same Reserve step).
//
// Thread-safety: none; the backend's caller serializes (the Runtime's lock).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "runtime/disk_residency.h"

namespace twl {

class OffloadDiskSteps {
 public:
  using Quiesce = std::function<absl::Status()>;

  // Sets the residency's value decay (every ~4 passes over the layers, as the GPU cache:
  // a layer-step is two Reserve steps, its append and its decode) and its cycle (a pass,
  // SpillPolicy::set_cycle_steps). never_wait false: the calls as they were before the
  // append reserve, open units, writes behind and the cycle (no reserve, no open flags, no
  // refill): kept only to measure the two side by side (twl_disk_serving,
  // tests/cpu/disk_serving_test.cc).
  OffloadDiskSteps(DiskResidency* disk, int32_t num_layers, bool never_wait = true);

  // One append chunk: `blocks` (distinct) are written by the chunk's kernel right after
  // this returns OK; open (empty or one per block): nonzero for blocks whose page stays
  // partial (the next append writes them again). Puts them in host slots with their disk
  // copies dropped. Calls quiesce first only when blocks of earlier work must move: in the
  // steady state of a serving loop never (the open blocks stay resident and fresh blocks
  // take the append reserve, DiskResidency "Appends that never wait"). io (nullable)
  // accumulates the moves.
  absl::Status Append(absl::Span<const int32_t> blocks, absl::Span<const uint8_t> open,
                      const Quiesce& quiesce, DiskIoCounts* io);

  // A decode step of `layer` starts (its I/O counters reset).
  void BeginStep(int32_t layer);
  // Pipeline group `index` of the step reads `blocks` (distinct within the step) from the
  // pool, `rows` rows each: its kept blocks, or under the GPU row cache only the blocks of
  // the rows the cache missed (the only pool reads; a group that misses nothing does not
  // call). They are resident when this returns OK, and the next layer's step reads ahead
  // what this layer's step needed. *moved: the residency map may
  // have changed (the device copy must be refreshed before the group's fetch).
  absl::Status Group(int32_t index, absl::Span<const int32_t> blocks,
                     absl::Span<const int32_t> rows, bool* moved);
  // After the step's groups are enqueued: the deferred bookkeeping, the append reserve
  // topped up (dirty victims written behind), then the read-ahead of the blocks the next
  // layer kept last time (best effort). Never waits for the disk.
  absl::Status EndStep();
  // I/O of the decode step in progress (or the last one).
  DiskIoCounts& step_io() { return step_io_; }
  // Residency calls of the decode step in progress (or the last one): Group calls and their
  // blocks, and the
  // DiskResidency::Reserve calls they and EndStep made. Under the GPU row cache a group
  // calls Group only for the blocks of the rows the cache missed
  // (pipeline/fetch/disk/miss_first_fetch.cuh): a step that misses nothing makes none.
  struct StepCalls {
    int64_t groups = 0;
    int64_t blocks = 0;  // handed to Group
    int64_t reserves = 0;
  };
  const StepCalls& step_calls() const { return step_calls_; }

 private:
  // The deferred Reserve of the groups whose blocks were all resident.
  absl::Status FlushDeferred();

  DiskResidency* disk_;
  const bool never_wait_;
  int32_t layer_ = 0;
  std::vector<int32_t> step_blocks_;
  // Groups of this step whose blocks were all resident: their Reserve is deferred;
  // step_reserved_: a Reserve of this step has run (the next one is not a new step).
  std::vector<int32_t> deferred_blocks_, deferred_rows_;
  bool step_reserved_ = false;
  DiskIoCounts step_io_;
  StepCalls step_calls_;
  // Read-ahead: each layer's kept blocks of its last step, and the layer that followed it.
  absl::flat_hash_map<int32_t, std::vector<int32_t>> kept_by_layer_;
  absl::flat_hash_map<int32_t, int32_t> next_layer_;
  bool have_last_layer_ = false;
  int32_t last_layer_ = 0;
};

}  // namespace twl
