// The transports over a pool smaller than the blocks (the disk tier under the GPU offload
// backend): block b is read from pool index slot_of_block[b] (device map for the gather, host
// map for the copy engine), bytes exact against that CPU expectation; a block that is not in
// the pool is skipped by the gather (its slot untouched) and refused by the copy engine.
// Skips visibly without a GPU.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cache/gpu_page_cache.h"
#include "cache/host_arena.h"
#include "gpu/device.h"
#include "gtest/gtest.h"
#include "offload/fetch_transport.h"

namespace twl {
namespace {

#define MAP_SKIP_WITHOUT_GPU()                                                        \
  do {                                                                                \
    if (!gpu::GpuAvailable()) {                                                       \
      GTEST_SKIP() << "no CUDA device visible: GPU pool-map test skipped (CPU only)"; \
    }                                                                                 \
  } while (0)

#define MAP_ASSERT_OK(expr)                        \
  do {                                             \
    const absl::Status _st = (expr);               \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st; \
  } while (0)

TEST(OffloadPoolMapTest, TransportsReadBlocksThroughTheMap) {
  MAP_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(20261202);
  const int64_t block_bytes = 4096, num_blocks = 900, pool_blocks = 256;
  const int32_t num_slots = 200;
  auto pool_or = HostArena::Create(HostMemKind::kPinnedMapped, block_bytes, pool_blocks, 16);
  ASSERT_TRUE(pool_or.ok()) << pool_or.status();
  HostArena& pool = **pool_or;
  auto* bytes = static_cast<uint8_t*>(pool.base());
  for (int64_t i = 0; i < block_bytes * pool_blocks; ++i) bytes[i] = uint8_t(rng());
  // A random injective map of some blocks into the pool; the rest are not in it.
  std::vector<int32_t> map(static_cast<size_t>(num_blocks), -1);
  std::vector<int32_t> blocks(static_cast<size_t>(num_blocks));
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  std::vector<int32_t> resident;
  for (int32_t i = 0; i < pool_blocks; ++i) {
    map[size_t(blocks[size_t(i)])] = i;
    resident.push_back(blocks[size_t(i)]);
  }
  gpu::DeviceBuffer d_map, slots;
  MAP_ASSERT_OK(d_map.Reserve(map.size() * 4));
  MAP_ASSERT_OK(gpu::CopyToDevice(d_map.get(), map.data(), map.size() * 4));
  MAP_ASSERT_OK(slots.Reserve(size_t(num_slots) * block_bytes));
  FetchSource src{pool.base(), pool.device_base(), block_bytes, num_blocks};
  src.slot_of_block = d_map.as<int32_t>();
  src.host_slot_of_block = map.data();
  const FetchDest dst{slots.get(), num_slots};
  auto gather = CreateGatherTransport(src, dst);
  auto ce = CreateCopyEngineTransport(src, dst);
  ASSERT_TRUE(gather.ok() && ce.ok());
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  for (FetchTransport* t : {gather->get(), ce->get()}) {
    // Resident blocks into random distinct slots, a run of consecutive pool indices included.
    std::shuffle(resident.begin(), resident.end(), rng);
    std::vector<FetchEntry> list;
    for (int32_t i = 0; i < 150; ++i) list.push_back(FetchEntry{resident[size_t(i)], i});
    for (int32_t k = 0; k < 8; ++k) list.push_back(FetchEntry{blocks[size_t(40 + k)], 150 + k});
    MAP_ASSERT_OK(gpu::Memset(slots.get(), 0xA5, size_t(num_slots) * block_bytes));
    MAP_ASSERT_OK(t->SubmitHost(list.data(), int32_t(list.size()), *stream));
    MAP_ASSERT_OK(gpu::StreamSync(*stream));
    std::vector<uint8_t> got(size_t(num_slots) * block_bytes);
    MAP_ASSERT_OK(gpu::CopyToHost(got.data(), slots.get(), got.size()));
    for (const FetchEntry& e : list) {
      ASSERT_EQ(0, std::memcmp(got.data() + int64_t(e.slot) * block_bytes,
                               bytes + int64_t(map[size_t(e.block)]) * block_bytes,
                               size_t(block_bytes)))
          << t->caps().name << ": block " << e.block << " (pool " << map[size_t(e.block)]
          << ") -> slot " << e.slot;
    }
    for (int32_t s = 158; s < num_slots; ++s) {
      ASSERT_EQ(got[size_t(s) * block_bytes + 5], 0xA5) << t->caps().name << " slot " << s;
    }
  }
  // A block outside the pool: the gather leaves its slot alone, the copy engine refuses.
  const FetchEntry missing{blocks[size_t(pool_blocks + 3)], 190};
  MAP_ASSERT_OK(gpu::Memset(slots.get(), 0xA5, size_t(num_slots) * block_bytes));
  MAP_ASSERT_OK((*gather)->SubmitHost(&missing, 1, *stream));
  MAP_ASSERT_OK(gpu::StreamSync(*stream));
  uint8_t b = 0;
  MAP_ASSERT_OK(gpu::CopyToHost(&b, slots.as<uint8_t>() + 190 * block_bytes + 9, 1));
  EXPECT_EQ(b, 0xA5);
  EXPECT_TRUE(absl::IsFailedPrecondition((*ce)->SubmitHost(&missing, 1, *stream)));
  gpu::StreamDestroy(*stream);
}

}  // namespace
}  // namespace twl
