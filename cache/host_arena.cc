// Host arenas: plain aligned memory or CUDA pinned+mapped memory, with byte accounting.
#include "cache/host_arena.h"

#include <atomic>
#include <cstdlib>
#include <limits>

#if TWL_WITH_MIMALLOC
#include <mimalloc.h>
#endif

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

#if TWL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

// The libc allocator unless built with TWL_WITH_MIMALLOC (see CMakeLists.txt), and always
// under AddressSanitizer, which instruments it; mimalloc's memory would hide overflows.
#if !TWL_WITH_MIMALLOC
#define TWL_ARENA_USE_LIBC 1
#elif defined(__SANITIZE_ADDRESS__)
#define TWL_ARENA_USE_LIBC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TWL_ARENA_USE_LIBC 1
#endif
#endif
#ifndef TWL_ARENA_USE_LIBC
#define TWL_ARENA_USE_LIBC 0
#endif

namespace twl {
namespace {

std::atomic<int64_t> g_bytes_in_use[2];
std::atomic<int64_t> g_limit{-1};

// Reserves `bytes` in the counter of `kind`, honouring the test limit.
bool Reserve(HostMemKind kind, int64_t bytes) {
  std::atomic<int64_t>& counter = g_bytes_in_use[static_cast<int>(kind)];
  const int64_t limit = g_limit.load(std::memory_order_relaxed);
  int64_t cur = counter.load(std::memory_order_relaxed);
  do {
    if (limit >= 0 && cur + bytes > limit) return false;
  } while (!counter.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  return true;
}

void Unreserve(HostMemKind kind, int64_t bytes) {
  g_bytes_in_use[static_cast<int>(kind)].fetch_sub(bytes, std::memory_order_relaxed);
}

void* AlignedAlloc(int64_t bytes) {
#if TWL_ARENA_USE_LIBC
  // aligned_alloc wants a size that is a multiple of the alignment.
  const int64_t rounded = (bytes + HostArena::kAlignment - 1) / HostArena::kAlignment *
                          HostArena::kAlignment;
  return std::aligned_alloc(HostArena::kAlignment, static_cast<size_t>(rounded));
#else
  return mi_malloc_aligned(static_cast<size_t>(bytes), HostArena::kAlignment);
#endif
}

void AlignedFree(void* p) {
#if TWL_ARENA_USE_LIBC
  std::free(p);
#else
  mi_free(p);
#endif
}

}  // namespace

const char* HostMemKindName(HostMemKind kind) {
  switch (kind) {
    case HostMemKind::kAligned:
      return "aligned";
    case HostMemKind::kPinnedMapped:
      return "pinned-mapped";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<HostArena>> HostArena::Create(HostMemKind kind,
                                                             int64_t block_bytes,
                                                             int64_t num_blocks,
                                                             int64_t block_align) {
  if (kind != HostMemKind::kAligned && kind != HostMemKind::kPinnedMapped) {
    return absl::InvalidArgumentError("HostArena: unknown memory kind");
  }
  if (block_bytes < 0 || num_blocks < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "HostArena: negative size (block_bytes=%d, num_blocks=%d)", block_bytes, num_blocks));
  }
  if (block_align <= 0 || block_align > kAlignment || (block_align & (block_align - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("HostArena: block_align %d is not a power of two <= %d", block_align,
                        kAlignment));
  }
  const int64_t stride = (block_bytes + block_align - 1) / block_align * block_align;
  if (stride > 0 && num_blocks > std::numeric_limits<int64_t>::max() / stride) {
    return absl::ResourceExhaustedError("HostArena: size overflows int64");
  }
  std::unique_ptr<HostArena> arena(new HostArena());
  arena->kind_ = kind;
  arena->block_bytes_ = stride;
  arena->num_blocks_ = num_blocks;
  const int64_t bytes = stride * num_blocks;
  if (bytes == 0) return arena;

  if (kind == HostMemKind::kPinnedMapped) {
#if TWL_HAVE_CUDA
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      cudaGetLastError();  // clear the sticky "no device" error
      return absl::UnavailableError("HostArena: pinned memory needs a CUDA device");
    }
#else
    return absl::UnavailableError("HostArena: pinned memory needs CUDA (built without it)");
#endif
  }

  if (!Reserve(kind, bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("HostArena: %s allocation of %d bytes over the test limit",
                        HostMemKindName(kind), bytes));
  }

  if (kind == HostMemKind::kAligned) {
    void* p = AlignedAlloc(bytes);
    if (p == nullptr) {
      Unreserve(kind, bytes);
      return absl::ResourceExhaustedError(
          absl::StrFormat("HostArena: cannot allocate %d bytes of host memory", bytes));
    }
    arena->base_ = p;
  } else {
#if TWL_HAVE_CUDA
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, static_cast<size_t>(bytes),
                                    cudaHostAllocMapped | cudaHostAllocPortable);
    if (err != cudaSuccess) {
      cudaGetLastError();
      Unreserve(kind, bytes);
      return absl::ResourceExhaustedError(
          absl::StrFormat("HostArena: cudaHostAlloc of %d bytes failed: %s", bytes,
                          cudaGetErrorString(err)));
    }
    void* dev = nullptr;
    err = cudaHostGetDevicePointer(&dev, p, 0);
    if (err != cudaSuccess) {
      cudaGetLastError();
      cudaFreeHost(p);
      Unreserve(kind, bytes);
      return absl::UnavailableError(absl::StrFormat(
          "HostArena: pinned memory is not mapped for the device: %s", cudaGetErrorString(err)));
    }
    arena->base_ = p;
    arena->device_base_ = dev;
#endif
  }
  arena->bytes_ = bytes;
  return arena;
}

HostArena::~HostArena() {
  if (base_ == nullptr) return;
  if (kind_ == HostMemKind::kAligned) {
    AlignedFree(base_);
  } else {
#if TWL_HAVE_CUDA
    cudaFreeHost(base_);
#endif
  }
  Unreserve(kind_, bytes_);
}

int64_t HostBytesInUse(HostMemKind kind) {
  return g_bytes_in_use[static_cast<int>(kind)].load(std::memory_order_relaxed);
}

void SetHostAllocLimitForTesting(int64_t limit) {
  g_limit.store(limit, std::memory_order_relaxed);
}

}  // namespace twl
