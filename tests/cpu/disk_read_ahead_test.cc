// runtime/disk_residency as the GPU offload backend drives it: several Reserves within one
// step (pipeline groups) keep the earlier groups' pages in place, and read-ahead brings
// disk-only pages into free slots without a Reserve, never displaces a page of the current
// step, survives injected read errors with the page still on disk, and keeps every page's
// data intact under random interleavings with reserves, writes and frees.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "offload/fault_injection.h"
#include "support/disk_fixture.h"
#include "support/temp_dir.h"
#include "runtime/disk_residency.h"
#include "runtime/geometry.h"
#include "runtime/runtime.h"

namespace twl {
namespace {

using testing::ClearFaultsOnExit;
using testing::TempDir;

// 2 KV heads, d = 8, page 4: 256-byte pages (packed 512-byte records).
RuntimeConfig SmallConfig(const std::string& dir, int32_t records) {
  return testing::SmallDiskConfig(dir, 2, BackendKind::kCpu, int64_t(records) * 512);
}

struct Fixture : testing::DiskFixture {
  int64_t page_elems = 0;
};

Fixture Make(const std::string& dir, int32_t pages, int32_t slots, int32_t records) {
  Fixture f;
  static_cast<testing::DiskFixture&>(f) =
      testing::MakeDiskFixture(SmallConfig(dir, records), pages, slots);
  f.page_elems = int64_t(f.g.num_kv_heads) * f.g.FpBlockElems();
  return f;
}

fp16_t Value(int32_t page, int32_t version, int64_t i) {
  return testing::DiskTestValue(page, version, i);
}

void Write(Fixture& f, int32_t page, int32_t version) {
  ASSERT_TRUE(f.d->Reserve({page}, nullptr).ok());
  ASSERT_TRUE(f.d->MarkDirty({page}).ok());
  fp16_t* p = f.d->HostPage(page);
  ASSERT_NE(p, nullptr);
  for (int64_t i = 0; i < f.page_elems; ++i) p[i] = Value(page, version, i);
}

// The page's blocks as they are now, wherever they are (through ReadRows).
void ExpectData(const Fixture& f, int32_t page, int32_t version) {
  std::vector<fp16_t> want(size_t(f.page_elems));
  for (int64_t i = 0; i < f.page_elems; ++i) want[size_t(i)] = Value(page, version, i);
  testing::ExpectPageHolds(*f.d, f.g, page, want);
}

TEST(DiskReadAhead, ReserveWithinOneStepKeepsEarlierGroupsResident) {
  TempDir dir("twl-read-ahead");
  Fixture f = Make(dir.path(), 12, 4, 12);
  ASSERT_TRUE(f.d);
  for (int32_t p = 0; p < 12; ++p) Write(f, p, 1);
  ASSERT_TRUE(f.d->Reserve({0, 1}, nullptr).ok());
  ASSERT_TRUE(f.d->Reserve({2, 3}, nullptr, /*new_step=*/false).ok());
  for (int32_t p : {0, 1, 2, 3}) EXPECT_NE(f.d->HostPage(p), nullptr) << p;
  // A third group of the same step finds no slot: every page is in use at this step.
  const absl::Status s = f.d->Reserve({4}, nullptr, /*new_step=*/false);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  for (int32_t p : {0, 1, 2, 3}) EXPECT_NE(f.d->HostPage(p), nullptr) << p;
  // A new step may spill them again.
  ASSERT_TRUE(f.d->Reserve({4, 5}, nullptr).ok());
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  for (int32_t p = 0; p < 12; ++p) ExpectData(f, p, 1);
}

TEST(DiskReadAhead, BringsDiskPagesIntoFreeSlotsWithoutAReserve) {
  TempDir dir("twl-read-ahead");
  Fixture f = Make(dir.path(), 12, 6, 12);
  ASSERT_TRUE(f.d);
  for (int32_t p = 0; p < 12; ++p) Write(f, p, 2);
  ASSERT_TRUE(f.d->Reserve({10, 11}, nullptr).ok());
  // Six of the twelve pages are on disk (which ones is the spill policy's choice).
  std::vector<int32_t> on_disk;
  for (int32_t p = 0; p < 12; ++p) {
    if (f.d->HostPage(p) == nullptr) on_disk.push_back(p);
  }
  ASSERT_EQ(on_disk.size(), 6u);
  const std::vector<int32_t> want(on_disk.begin(), on_disk.begin() + 3);
  const int64_t version = f.d->map_version();
  DiskIoCounts io;
  ASSERT_TRUE(f.d->StartReadAhead(want, 8, &io).ok());
  EXPECT_EQ(io.pages_read_ahead, 3);
  EXPECT_EQ(f.d->read_ahead_in_flight(), 3);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  f.d->FinishReadAhead(&io);
  EXPECT_EQ(io.pages_read_ahead_done, 3);
  EXPECT_EQ(io.bytes_read, 3 * f.page_elems * int64_t(sizeof(fp16_t)));
  EXPECT_NE(f.d->map_version(), version);
  for (int32_t p : want) EXPECT_NE(f.d->HostPage(p), nullptr) << p;
  for (int32_t p : {10, 11}) EXPECT_NE(f.d->HostPage(p), nullptr) << "current step " << p;
  // The next step finds them resident: no load.
  DiskIoCounts next;
  ASSERT_TRUE(f.d->Reserve(want, &next).ok());
  EXPECT_EQ(next.pages_loaded, 0);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  for (int32_t p = 0; p < 12; ++p) ExpectData(f, p, 2);
  // max_pages caps it; pages already on the host are not read.
  ASSERT_TRUE(f.d->StartReadAhead({want[0], want[1], on_disk[3], on_disk[4], on_disk[5]}, 1,
                                  &io).ok());
  EXPECT_EQ(f.d->read_ahead_in_flight(), 1);
}

TEST(DiskReadAhead, NeverDisplacesPagesOfTheCurrentStep) {
  TempDir dir("twl-read-ahead");
  Fixture f = Make(dir.path(), 12, 4, 12);
  ASSERT_TRUE(f.d);
  for (int32_t p = 0; p < 12; ++p) Write(f, p, 3);
  ASSERT_TRUE(f.d->Reserve({0, 1, 2}, nullptr).ok());
  DiskIoCounts io;
  // One slot can be freed (the page written last, not of this step): only one page comes.
  ASSERT_TRUE(f.d->StartReadAhead({5, 6, 7, 8}, 4, &io).ok());
  f.d->FinishReadAhead(&io);
  for (int32_t p : {0, 1, 2}) EXPECT_NE(f.d->HostPage(p), nullptr) << p;
  EXPECT_EQ(io.pages_read_ahead_done, 1);
  EXPECT_NE(f.d->HostPage(5), nullptr);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  for (int32_t p = 0; p < 12; ++p) ExpectData(f, p, 3);
}

TEST(DiskReadAhead, ReadErrorKeepsThePageOnDiskAndTheNextReserveReadsIt) {
  ClearFaultsOnExit clear;
  TempDir dir("twl-read-ahead");
  Fixture f = Make(dir.path(), 10, 4, 10);
  ASSERT_TRUE(f.d);
  for (int32_t p = 0; p < 10; ++p) Write(f, p, 4);
  ASSERT_TRUE(f.d->Reserve({8, 9}, nullptr).ok());
  const int32_t free_before = f.d->num_free_slots();
  ProcessFaultInjector().FailNth(FaultSite::kDiskRead, 1, EIO);
  DiskIoCounts io;
  ASSERT_TRUE(f.d->StartReadAhead({0, 1}, 2, &io).ok());
  f.d->FinishReadAhead(&io);
  // One read failed: that page stays on disk, its slot is free again; the other arrived.
  EXPECT_EQ(io.pages_read_ahead_done, 1);
  int32_t on_disk = 0;
  for (int32_t p : {0, 1}) {
    const PageLocation loc = f.d->Location(p);
    EXPECT_TRUE(loc.on_disk()) << p;
    if (!loc.on_host()) ++on_disk;
  }
  EXPECT_EQ(on_disk, 1);
  EXPECT_GE(f.d->num_free_slots(), free_before - 1);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  DiskIoCounts next;
  ASSERT_TRUE(f.d->Reserve({0, 1}, &next).ok());
  EXPECT_EQ(next.pages_loaded, 1);
  for (int32_t p = 0; p < 10; ++p) ExpectData(f, p, 4);
}

TEST(DiskReadAhead, RandomInterleavingsKeepEveryPageIntact) {
  TempDir dir("twl-read-ahead");
  for (int32_t slots : {2, 3, 6}) {
    const int32_t records = 10, pages = slots - 1 + records;
    Fixture f = Make(dir.path(), pages, slots, records);
    ASSERT_TRUE(f.d);
    std::mt19937_64 rng(uint64_t(slots) * 7919);
    std::vector<int32_t> version(size_t(pages), -1);
    // What a device copy of the map would hold when refreshed through TakeChangedBlocks.
    std::vector<int32_t> shadow(f.d->slot_of_block().begin(), f.d->slot_of_block().end());
    for (int32_t op = 0; op < 400; ++op) {
      const uint64_t what = rng() % 8;
      if (what == 0) {
        const int32_t p = int32_t(rng() % uint64_t(pages));
        f.d->Release(p);
        version[size_t(p)] = -1;
      } else if (what <= 2) {
        std::vector<int32_t> set;
        const int32_t n = 1 + int32_t(rng() % uint64_t(pages));
        for (int32_t i = 0; i < n; ++i) set.push_back(int32_t(rng() % uint64_t(pages)));
        DiskIoCounts io;
        ASSERT_TRUE(f.d->StartReadAhead(set, int32_t(rng() % uint64_t(slots + 1)), &io).ok());
      } else {
        // A step of one or two groups, then writes to some of its pages.
        std::vector<int32_t> all;
        const int32_t groups = 1 + int32_t(rng() % 2);
        for (int32_t gi = 0; gi < groups; ++gi) {
          std::vector<int32_t> set;
          const int32_t n = 1 + int32_t(rng() % uint64_t(std::max(1, slots / groups)));
          while (int32_t(set.size()) < n) {
            const int32_t p = int32_t(rng() % uint64_t(pages));
            if (std::find(all.begin(), all.end(), p) == all.end() &&
                std::find(set.begin(), set.end(), p) == set.end()) {
              set.push_back(p);
            }
          }
          const absl::Status s = f.d->Reserve(set, nullptr, /*new_step=*/gi == 0);
          ASSERT_TRUE(s.ok()) << s << " op " << op;
          all.insert(all.end(), set.begin(), set.end());
        }
        for (int32_t p : all) {
          ASSERT_NE(f.d->HostPage(p), nullptr) << "op " << op;
          if (version[size_t(p)] < 0 || rng() % 3 == 0) {
            ASSERT_TRUE(f.d->MarkDirty({p}).ok());
            fp16_t* dst = f.d->HostPage(p);
            for (int64_t i = 0; i < f.page_elems; ++i) dst[i] = Value(p, op, i);
            version[size_t(p)] = op;
          }
        }
      }
      ASSERT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency() << " op " << op;
      int64_t lo = 0, hi = -1;
      if (f.d->TakeChangedBlocks(&lo, &hi)) {
        ASSERT_LE(0, lo);
        ASSERT_LT(hi, int64_t(shadow.size()));
        std::copy(f.d->slot_of_block().begin() + lo, f.d->slot_of_block().begin() + hi + 1,
                  shadow.begin() + lo);
      }
      ASSERT_TRUE(std::equal(shadow.begin(), shadow.end(), f.d->slot_of_block().begin()))
          << "a map change outside the reported range, op " << op;
    }
    f.d->FinishReadAhead(nullptr);
    for (int32_t p = 0; p < pages; ++p) {
      if (version[size_t(p)] >= 0) ExpectData(f, p, version[size_t(p)]);
    }
  }
}

}  // namespace
}  // namespace twl
