#include "support/disk_fixture.h"

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

}  // namespace twl::testing
