// The CPU backend: the whole decode pipeline on the host with the stages' CPU implementations
// (pipeline/<stage>/cpu/), parallel with oneTBB. Always available; the Runtime falls back to it
// on a machine without a GPU, and the GPU backends are tested against it.
//
// Storage (all host memory, sized for `num_pages` pages at creation):
//   FP16 blocks    one HostArena of num_pages * num_kv_heads blocks, block id addressing
//   quantized K    codes, scale, zero, kmin, kmax, the decoded channel ranges (k_scheme 1) in
//                  HostArenas (QuantKView layout)
// Decode: SelectPagesRef -> PruneRef (dense kept sets when pruner.dense) ->
// SparseAttentionRef, each stage timed into the telemetry.
//
// With a disk tier (CreateCpuBackendWithDisk) `num_pages` are logical pages: the quantized
// K store is still sized and indexed by them, but the FP16 blocks live in a smaller pool of
// host slots or on disk (runtime/disk_residency.h) and are read through slot_of_block:
//   Append   the pages written get slots first (a page written while on disk is read back),
//            coldest other pages are spilled; a call touching more pages than there are
//            slots is written in chunks of at most `slots` pages, the chunk with the page
//            written before (the sequence's partial last page) last, so a failure changes
//            no existing page.
//   Decode   select and prune on the quantized store (no FP16 needed; with k_bits = 16 the
//            candidates are loaded first), then the kept pages are loaded, then attention.
//            A step whose kept pages exceed the slots fails with ResourceExhausted.
// Thread-safety: Append/CopyPage/Decode/ReleasePage need the Runtime's exclusive lock (with
// a disk tier they move pages); ReadPage and Memory may run concurrently with each other;
// Decode keeps its scratch per call.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "runtime/backend.h"

namespace twl {

// Host bytes the CPU backend needs per page (FP16 blocks + quantized K store), so that
// callers can size a pool from a byte budget.
int64_t CpuBackendBytesPerPage(const RuntimeConfig& config);

// CreateCpuBackend(config, num_pages) is declared in runtime/backend.h.

class DiskTier;  // offload/disk_tier.h

// The CPU backend with a disk tier: `num_pages` logical pages (at most host_slots - 1 +
// tier->capacity()), FP16 data in `host_slots` host page slots or in `tier`.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackendWithDisk(const RuntimeConfig& config,
                                                                  int64_t num_pages,
                                                                  int64_t host_slots,
                                                                  std::unique_ptr<DiskTier> tier);

// Fault injection for tests (process-wide): after `n` more successful Append/CopyPage
// calls, the next one fails with Internal (once); n < 0 disables it. Used to check that the
// Runtime rolls a failed append back.
void SetCpuBackendWriteFailureForTesting(int32_t n);

}  // namespace twl
