// How much of the context an attention method actually reads: per decode call and KV head,
// the tokens attended (the union over the KV head's query group, which is what the kernel
// loads) against the context length. A head's own top-p set understates this, since every
// query head of a group reads the group's union.
#pragma once

#include <cstdint>

namespace twl::bench {

struct ReadStats {
  int32_t long_from = 1024;  // contexts from here on count as "long"
  int64_t read = 0, context = 0;            // every call
  int64_t read_long = 0, context_long = 0;  // calls with context >= long_from

  void Add(int32_t context_tokens, int32_t read_tokens) {
    read += read_tokens;
    context += context_tokens;
    if (context_tokens >= long_from) {
      read_long += read_tokens;
      context_long += context_tokens;
    }
  }
  double Share() const { return context > 0 ? double(read) / double(context) : 0.0; }
  double LongShare() const {
    return context_long > 0 ? double(read_long) / double(context_long) : 0.0;
  }
};

}  // namespace twl::bench
