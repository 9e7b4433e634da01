// Host memory for page pools: one large contiguous arena carved into fixed-size blocks.
//
// Every pool (FP16 K/V blocks, the quantized K store of the CPU backend) addresses its
// blocks as base + id * block_bytes (that is what FpKvView and QuantKView assume), so an
// arena is a single allocation, never a list of pieces.
//
// Two kinds of memory:
//   kAligned       plain host memory, 4 KiB aligned (std::aligned_alloc; mimalloc when built
//                  with TWL_WITH_MIMALLOC, except under AddressSanitizer so that overflows
//                  are caught). The OS commits it lazily:
//                  a 1 GiB pool costs nothing until pages are written.
//   kPinnedMapped  page-locked memory mapped into the device address space
//                  (cudaHostAlloc Mapped|Portable), so kernels can gather from it directly.
//                  Only with TWL_HAVE_CUDA and a device present; else Unavailable.
//
// Allocation failure returns ResourceExhausted, never aborts. Live bytes of each kind are
// counted process-wide (HostBytesInUse) for the memory telemetry and the leak tests.
// Thread-safety: an arena is immutable after Create (Block() may be called concurrently);
// the counters are atomic.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace twl {

enum class HostMemKind : int32_t { kAligned = 0, kPinnedMapped = 1 };

const char* HostMemKindName(HostMemKind kind);

class HostArena {
 public:
  static constexpr int64_t kAlignment = 4096;

  // An arena of `num_blocks` blocks of `block_bytes` each; the base is kAlignment aligned.
  // The stride between blocks is block_bytes rounded up to a multiple of `block_align` (a
  // power of two, <= kAlignment); the default 1 keeps the exact stride that block-id
  // addressing (page_layout.h) needs. num_blocks == 0 or block_bytes == 0 gives an empty
  // arena (null base).
  static absl::StatusOr<std::unique_ptr<HostArena>> Create(HostMemKind kind,
                                                           int64_t block_bytes,
                                                           int64_t num_blocks,
                                                           int64_t block_align = 1);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  HostMemKind kind() const { return kind_; }
  int64_t block_bytes() const { return block_bytes_; }  // stride between blocks
  int64_t num_blocks() const { return num_blocks_; }
  int64_t bytes() const { return bytes_; }

  void* base() const { return base_; }
  // Device address of base() (kPinnedMapped only; null otherwise).
  void* device_base() const { return device_base_; }

  void* Block(int64_t i) const { return static_cast<char*>(base_) + i * block_bytes_; }
  void* DeviceBlock(int64_t i) const {
    return device_base_ ? static_cast<char*>(device_base_) + i * block_bytes_ : nullptr;
  }

 private:
  HostArena() = default;
  HostMemKind kind_ = HostMemKind::kAligned;
  int64_t block_bytes_ = 0;
  int64_t num_blocks_ = 0;
  int64_t bytes_ = 0;
  void* base_ = nullptr;
  void* device_base_ = nullptr;
};

// Bytes currently held by live arenas of `kind`, process-wide.
int64_t HostBytesInUse(HostMemKind kind);

// Fault injection for tests: arenas whose creation would push the bytes in use of their
// kind above `limit` fail with ResourceExhausted. A negative limit (the default) disables it.
void SetHostAllocLimitForTesting(int64_t limit);

}  // namespace twl
