// GPU test support: skip without a device, copy a host RefStore to the device, poisoned
// device outputs (0xFF bytes: NaN for floats/FP16, -1 for ints) and typed downloads.
#pragma once

#include <cmath>
#include <cstring>
#include <vector>

#include "gpu/device.h"
#include "core/stage_views.h"
#include "gtest/gtest.h"
#include "support/ref_store.h"

namespace twl::testing {

#define TWL_SKIP_WITHOUT_GPU()                                                     \
  do {                                                                             \
    if (!::twl::gpu::GpuAvailable()) {                                             \
      GTEST_SKIP() << "no CUDA device visible: GPU kernel test skipped (CPU only)"; \
    }                                                                              \
  } while (0)

#define TWL_ASSERT_OK(expr)                             \
  do {                                                  \
    const absl::Status _st = (expr);                    \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st;      \
  } while (0)

template <typename T>
gpu::DeviceBuffer Upload(const std::vector<T>& v) {
  gpu::DeviceBuffer b;
  EXPECT_TRUE(b.Reserve(v.size() * sizeof(T)).ok());
  if (!v.empty()) EXPECT_TRUE(gpu::CopyToDevice(b.get(), v.data(), v.size() * sizeof(T)).ok());
  return b;
}

// A device buffer of n elements filled with 0xFF bytes.
template <typename T>
gpu::DeviceBuffer Poisoned(size_t n) {
  gpu::DeviceBuffer b;
  EXPECT_TRUE(b.Reserve(n * sizeof(T)).ok());
  EXPECT_TRUE(gpu::Memset(b.get(), 0xFF, n * sizeof(T)).ok());
  return b;
}

template <typename T>
std::vector<T> Download(const gpu::DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  EXPECT_TRUE(gpu::DeviceSync().ok());
  if (n) EXPECT_TRUE(gpu::CopyToHost(v.data(), b.get(), n * sizeof(T)).ok());
  return v;
}

// The device copy of a RefStore (same block ids and page tables).
struct DeviceStore {
  gpu::DeviceBuffer kv, codes, scale, zero, kmin, kmax, range, seq_len, page_table, q;
  int32_t num_seqs = 0, num_q_heads = 0, max_pages = 0;

  explicit DeviceStore(const RefStore& st)
      : kv(Upload(st.kv)),
        codes(Upload(st.codes)),
        scale(Upload(st.scale)),
        zero(Upload(st.zero)),
        kmin(Upload(st.kmin)),
        kmax(Upload(st.kmax)),
        range(Upload(st.range)),
        seq_len(Upload(st.seq_len)),
        page_table(Upload(st.page_table)),
        q(Upload(st.q)),
        num_seqs(int32_t(st.seq_len.size())),
        num_q_heads(st.num_q_heads),
        max_pages(st.max_pages) {}

  BatchView Batch() const {
    BatchView b;
    b.num_seqs = num_seqs;
    b.num_q_heads = num_q_heads;
    b.seq_len = seq_len.as<int32_t>();
    b.page_table = page_table.as<int32_t>();
    b.max_pages = max_pages;
    return b;
  }
  FpKvView Kv() const { return FpKvView{kv.as<fp16_t>(), nullptr}; }
  QuantKView Quant() const {
    QuantKView v{codes.as<uint8_t>(), scale.as<fp16_t>(), zero.as<fp16_t>(), kmin.as<fp16_t>(),
                 kmax.as<fp16_t>()};
    v.range = range.bytes() ? range.as<uint8_t>() : nullptr;
    return v;
  }
  QueryView Query() const { return QueryView{q.as<fp16_t>()}; }
};

inline bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

}  // namespace twl::testing
