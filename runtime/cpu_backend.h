// The CPU backend: the whole decode pipeline on the host with the reference stages
// (gpu/reference/), parallel with oneTBB. Always available; the Runtime falls back to it on
// a machine without a GPU, and the GPU backends are tested against it.
//
// Storage (all host memory, sized for `num_pages` pages at creation):
//   FP16 blocks    one HostArena of num_pages * num_kv_heads blocks, block id addressing
//   quantized K    codes, scale, zero, kmin, kmax in a second HostArena (QuantKView layout)
// Decode: SelectPagesRef -> PruneRef (dense kept sets when pruner.dense) ->
// SparseAttentionRef, each stage timed into the telemetry.
// Thread-safety: Append/CopyPage/ReadPage/Decode may run concurrently only on disjoint pages
// (the Runtime serializes mutations); Decode keeps all scratch per call.
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

// Fault injection for tests (process-wide): after `n` more successful Append/CopyPage
// calls, the next one fails with Internal (once); n < 0 disables it. Used to check that the
// Runtime rolls a failed append back.
void SetCpuBackendWriteFailureForTesting(int32_t n);

}  // namespace twl
