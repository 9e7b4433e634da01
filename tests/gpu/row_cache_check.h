// What a GPU row cache's device maps (DeviceRowCache, pipeline/fetch/row_cache/cuda/
// row_plan.h) hold, read back, and the invariants every user of them must keep: the two maps
// inverse, no row left claimed, the free stack exactly the free slots, and each resident
// row's slot holding that row's K and V bytes from the block store. Shared by the row cache's
// own tests and the append's (which fills free slots).
#pragma once

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "gpu/device.h"
#include "gtest/gtest.h"
#include "pipeline/fetch/row_cache/cuda/row_plan.h"

namespace twl::testing {

struct RowCacheSnapshot {
  std::vector<int32_t> slot_of_row;
  std::vector<int64_t> row_of_slot;
  std::vector<uint32_t> last_use;
  std::vector<fp16_t> slots;
  std::vector<int32_t> free_stack;  // [free_top]
};

// After a device-wide sync.
inline RowCacheSnapshot ReadRowCache(const DeviceRowCache& c, int32_t head_dim) {
  RowCacheSnapshot s;
  EXPECT_TRUE(gpu::DeviceSync().ok());
  s.slot_of_row.resize(size_t(c.num_rows));
  s.row_of_slot.resize(size_t(c.num_slots));
  s.last_use.resize(size_t(c.num_slots));
  s.slots.resize(size_t(c.num_slots) * 2 * head_dim);
  EXPECT_TRUE(
      gpu::CopyToHost(s.slot_of_row.data(), c.d_slot_of_row, s.slot_of_row.size() * 4).ok());
  EXPECT_TRUE(
      gpu::CopyToHost(s.row_of_slot.data(), c.d_row_of_slot, s.row_of_slot.size() * 8).ok());
  EXPECT_TRUE(gpu::CopyToHost(s.last_use.data(), c.d_last_use, s.last_use.size() * 4).ok());
  EXPECT_TRUE(gpu::CopyToHost(s.slots.data(), c.d_slots, s.slots.size() * 2).ok());
  int32_t top = 0;
  EXPECT_TRUE(gpu::CopyToHost(&top, c.d_free_top, 4).ok());
  EXPECT_GE(top, 0);
  EXPECT_LE(top, c.num_slots);
  s.free_stack.resize(size_t(std::clamp(top, 0, c.num_slots)));
  if (!s.free_stack.empty()) {
    EXPECT_TRUE(gpu::CopyToHost(s.free_stack.data(), c.d_free, s.free_stack.size() * 4).ok());
  }
  return s;
}

// The invariants above; `store` is the host copy of the block store ([block][K rows, V rows]).
inline void ExpectRowCacheConsistent(const RowCacheSnapshot& s, const PageGeometry& g,
                                     const fp16_t* store) {
  const int32_t D = g.head_dim, P = g.page_size;
  for (size_t r = 0; r < s.slot_of_row.size(); ++r) {
    const int32_t sl = s.slot_of_row[r];
    ASSERT_NE(sl, kRowClaimed) << "row " << r << " left claimed";
    if (sl < 0) continue;
    ASSERT_LT(size_t(sl), s.row_of_slot.size());
    ASSERT_EQ(s.row_of_slot[size_t(sl)], int64_t(r)) << "slot " << sl;
    const int64_t block = int64_t(r) / P, row = int64_t(r) % P;
    const fp16_t* k = store + block * g.FpBlockElems() + row * D;
    const fp16_t* v = k + int64_t(P) * D;
    ASSERT_EQ(0, std::memcmp(s.slots.data() + size_t(sl) * 2 * D, k, size_t(D) * 2))
        << "K row " << r;
    ASSERT_EQ(0, std::memcmp(s.slots.data() + size_t(sl) * 2 * D + D, v, size_t(D) * 2))
        << "V row " << r;
  }
  for (size_t sl = 0; sl < s.row_of_slot.size(); ++sl) {
    const int64_t r = s.row_of_slot[sl];
    if (r >= 0) ASSERT_EQ(s.slot_of_row[size_t(r)], int32_t(sl)) << "slot " << sl;
  }
  std::set<int32_t> on_stack(s.free_stack.begin(), s.free_stack.end());
  ASSERT_EQ(on_stack.size(), s.free_stack.size()) << "a slot pushed twice";
  for (size_t sl = 0; sl < s.row_of_slot.size(); ++sl) {
    ASSERT_EQ(on_stack.count(int32_t(sl)) == 1, s.row_of_slot[sl] < 0) << "slot " << sl;
  }
}

}  // namespace twl::testing
