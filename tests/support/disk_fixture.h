// Test support for the disk-residency tests (CPU): the small geometry they share (one layer,
// head dim 8, pages of 4 tokens) and a DiskResidency over a fresh page disk tier, plus the
// deterministic block contents they write and check.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/half.h"
#include "runtime/disk_residency.h"
#include "runtime/runtime.h"

namespace twl::testing {

// One layer, `kv_heads` query and KV heads, d = 8, page 4: 64 * kv_heads bytes per page.
RuntimeConfig SmallDiskConfig(const std::string& dir, int32_t kv_heads, BackendKind backend,
                              int64_t disk_bytes);

struct DiskFixture {
  PageGeometry g;
  std::unique_ptr<DiskResidency> d;  // null when creation failed (a test failure is recorded)
};

// A residency of `units` units in `slots` host slots over the tier `config` describes.
DiskFixture MakeDiskFixture(const RuntimeConfig& config, int32_t units, int32_t slots,
                            int32_t heads_per_unit = 0);

// Expects page `page` of `d`, read back through ReadRows (from its host slot or its disk
// record), to hold `want`: the page's blocks of every KV head, as written into HostPage.
void ExpectPageHolds(const DiskResidency& d, const PageGeometry& g, int32_t page,
                     const std::vector<fp16_t>& want);

// Element i of a unit's data at a version: distinct per unit, version and element.
inline fp16_t DiskTestValue(int64_t unit, int32_t version, int64_t i) {
  return FloatToHalf(float((unit * 131 + version * 17 + i) % 1000) * 0.01f);
}

}  // namespace twl::testing
