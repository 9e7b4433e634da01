// Asking the cache for host bytes a loop will read soon, without waiting for them. The host
// stages read the pool at strides the hardware prefetcher does not follow (a KV head's blocks
// lie num_kv_heads blocks apart, a new 4 KB page each), so they ask a block or a few rows ahead.
#pragma once

#include <cstddef>

namespace twl {

// Every 64-byte line of [p, p + bytes).
inline void PrefetchBytes(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
}

}  // namespace twl
