// How much of the context an attention method actually reads: per decode call and KV head,
// the tokens attended (the union over the KV head's query group, which is what the kernel
// loads) against the context length. A head's own top-p set understates this, since every
// query head of a group reads the group's union.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace twl::bench {

struct ReadStats {
  int32_t long_from = 1024;  // contexts from here on count as "long"
  int64_t read = 0, context = 0;            // every call
  int64_t read_long = 0, context_long = 0;  // calls with context >= long_from

  // Long contexts per layer: where a model attends broadly (bench/ACCURACY.md, real text).
  std::vector<int64_t> layer_read_long, layer_context_long;

  void Add(int32_t context_tokens, int32_t read_tokens, int32_t layer = -1) {
    read += read_tokens;
    context += context_tokens;
    if (context_tokens >= long_from) {
      read_long += read_tokens;
      context_long += context_tokens;
      if (layer >= 0) {
        if (size_t(layer) >= layer_read_long.size()) {
          layer_read_long.resize(size_t(layer) + 1, 0);
          layer_context_long.resize(size_t(layer) + 1, 0);
        }
        layer_read_long[size_t(layer)] += read_tokens;
        layer_context_long[size_t(layer)] += context_tokens;
      }
    }
  }
  // Adds another instance's counts (the same long_from).
  void Merge(const ReadStats& o) {
    read += o.read;
    context += o.context;
    read_long += o.read_long;
    context_long += o.context_long;
    if (o.layer_read_long.size() > layer_read_long.size()) {
      layer_read_long.resize(o.layer_read_long.size(), 0);
      layer_context_long.resize(o.layer_read_long.size(), 0);
    }
    for (size_t l = 0; l < o.layer_read_long.size(); ++l) {
      layer_read_long[l] += o.layer_read_long[l];
      layer_context_long[l] += o.layer_context_long[l];
    }
  }
  double Share() const { return context > 0 ? double(read) / double(context) : 0.0; }
  double LongShare() const {
    return context_long > 0 ? double(read_long) / double(context_long) : 0.0;
  }
  double LayerLongShare(size_t layer) const {
    return layer < layer_context_long.size() && layer_context_long[layer] > 0
               ? double(layer_read_long[layer]) / double(layer_context_long[layer])
               : 0.0;
  }
};

}  // namespace twl::bench
