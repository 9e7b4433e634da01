#include "support/disk_fixture.h"

#include <cstring>
#include <utility>

#include "gtest/gtest.h"
#include "runtime/geometry.h"

namespace twl::testing {

RuntimeConfig SmallDiskConfig(const std::string& dir, int32_t kv_heads, BackendKind backend,
                              int64_t disk_bytes) {
  RuntimeConfig c;
  c.num_layers = 1;
  c.num_q_heads = kv_heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = 8;
  c.page_size = 4;
  c.backend = backend;
  c.disk_path = dir;
  c.disk_bytes = disk_bytes;
  return c;
}

DiskFixture MakeDiskFixture(const RuntimeConfig& config, int32_t units, int32_t slots,
                            int32_t heads_per_unit) {
  DiskFixture f;
  f.g = GeometryOf(config);
  auto tier = CreatePageDiskTier(config);
  EXPECT_TRUE(tier.ok()) << tier.status();
  if (!tier.ok()) return f;
  auto res = DiskResidency::Create(f.g, units, slots, std::move(*tier), HostMemKind::kAligned,
                                   heads_per_unit);
  EXPECT_TRUE(res.ok()) << res.status();
  if (res.ok()) f.d = std::move(*res);
  return f;
}

void ExpectPageHolds(const DiskResidency& d, const PageGeometry& g, int32_t page,
                     const std::vector<fp16_t>& want) {
  const int64_t row = int64_t(g.num_kv_heads) * g.head_dim;
  std::vector<fp16_t> k(size_t(g.page_size * row)), v(k.size());
  ASSERT_TRUE(d.ReadRows(page, g.page_size, k.data(), v.data()).ok()) << "page " << page;
  const FpKvView local{const_cast<fp16_t*>(want.data()), nullptr};  // only read
  for (int32_t r = 0; r < g.page_size; ++r) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      ASSERT_EQ(std::memcmp(k.data() + r * row + h * g.head_dim, local.K(g, h, r),
                            sizeof(fp16_t) * g.head_dim), 0) << "page " << page;
      ASSERT_EQ(std::memcmp(v.data() + r * row + h * g.head_dim, local.V(g, h, r),
                            sizeof(fp16_t) * g.head_dim), 0) << "page " << page;
    }
  }
}

}  // namespace twl::testing
