// Disk pager: a simulated decode loop whose KV (64 pages) is four times the host pool (16
// slots). Every step uses a few pages (with locality, plus appends that dirty pages); the
// pages it needs are brought back from disk, cold pages are spilled, and every used page is
// checked byte for byte against its expected contents. Run on both engines, without and with
// injected write/read failures (which must cost retries, never data).
#include "offload/disk_pager.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "core/half.h"

namespace twl {
namespace {

constexpr int32_t kPages = 64;
constexpr int32_t kSlots = 16;
constexpr int64_t kRecordBytes = 4 * 2 * 16 * 64 * 2;  // 4 KV heads, page 16, head_dim 64

// Expected contents of version v of a page: random FP16, never zero.
void Fill(char* dst, int32_t page, int32_t version) {
  std::mt19937 rng(uint32_t(page * 7919 + version * 104729 + 1));
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t i = 0; i < kRecordBytes; i += 2) {
    fp16_t h = FloatToHalf(u(rng));
    if ((h & 0x7fff) == 0) h = 0x3c00;
    std::memcpy(dst + i, &h, 2);
  }
}

struct Sim {
  explicit Sim(DiskTier* tier)
      : policy(kPages),
        host(static_cast<char*>(std::aligned_alloc(4096, kSlots * kRecordBytes))),
        pager(tier, &policy, [this](int32_t slot) { return host + slot * kRecordBytes; }),
        version(kPages, -1) {
    for (int32_t s = kSlots - 1; s >= 0; --s) free_slots.push_back(s);
  }
  ~Sim() { std::free(host); }

  SpillPolicy policy;
  char* host;
  DiskPager pager;
  std::vector<int32_t> free_slots;
  std::vector<int32_t> version;  // -1: page not created yet
};

// One step: `pages` are used; `append` (one of them) is written to. Retries failed
// evictions and loads, as a runtime would, and returns false on a data mismatch.
::testing::AssertionResult Step(Sim* sim, int64_t step, std::vector<int32_t> pages,
                                int32_t append, int* retries) {
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::vector<int32_t> missing = sim->policy.NeedsLoad(pages);
    int32_t fresh = 0;
    for (int32_t p : pages) fresh += sim->version[p] < 0;
    const int32_t need = int32_t(missing.size()) + fresh;
    if (need == 0) break;
    if (int32_t(sim->free_slots.size()) < need) {
      absl::Status s = sim->pager.Evict(need - int32_t(sim->free_slots.size()), step, pages,
                                        &sim->free_slots);
      if (!s.ok()) {
        ++*retries;
        if (s.code() != absl::StatusCode::kResourceExhausted &&
            s.code() != absl::StatusCode::kInternal) {
          return ::testing::AssertionFailure() << "evict: " << s;
        }
        continue;
      }
    }
    for (int32_t p : pages) {  // new pages: created on the host
      if (sim->version[p] >= 0) continue;
      const int32_t slot = sim->free_slots.back();
      sim->free_slots.pop_back();
      sim->version[p] = 0;
      Fill(sim->host + slot * kRecordBytes, p, 0);
      if (!sim->policy.SetLocation(p, {slot, -1}).ok()) return ::testing::AssertionFailure();
    }
    std::vector<int32_t> slots(sim->free_slots.end() - int64_t(missing.size()),
                               sim->free_slots.end());
    sim->free_slots.resize(sim->free_slots.size() - missing.size());
    absl::Status s = sim->pager.Load(missing, slots, &sim->free_slots);
    if (!s.ok()) {
      ++*retries;
      if (s.code() != absl::StatusCode::kDataLoss) {
        return ::testing::AssertionFailure() << "load: " << s;
      }
    }
  }
  if (!sim->policy.NeedsLoad(pages).empty()) {
    return ::testing::AssertionFailure() << "step " << step << ": pages still on disk";
  }
  if (!sim->policy.Touch(pages, step).ok()) return ::testing::AssertionFailure() << "touch";
  std::vector<char> expect(kRecordBytes);
  for (int32_t p : pages) {
    const PageLocation loc = sim->policy.GetLocation(p);
    if (!loc.on_host()) return ::testing::AssertionFailure() << "page " << p << " not on host";
    Fill(expect.data(), p, sim->version[p]);
    if (std::memcmp(expect.data(), sim->host + loc.host_slot * kRecordBytes, kRecordBytes)) {
      return ::testing::AssertionFailure()
             << "step " << step << ": page " << p << " v" << sim->version[p] << " corrupt";
    }
  }
  if (append >= 0) {
    if (!sim->pager.MarkDirty(append).ok()) return ::testing::AssertionFailure() << "dirty";
    const PageLocation loc = sim->policy.GetLocation(append);
    if (loc.on_disk()) return ::testing::AssertionFailure() << "still has a disk copy";
    Fill(sim->host + loc.host_slot * kRecordBytes, append, ++sim->version[append]);
  }
  return ::testing::AssertionSuccess();
}

class DiskPagerTest : public ::testing::TestWithParam<bool> {};

void RunSimulation(bool thread_pool, FaultInjector* injector, int* retries,
                   DiskPagerStats* stats) {
  DiskTierOptions o;
  o.record_bytes = kRecordBytes;
  o.capacity_bytes = int64_t(kPages) * kRecordBytes;
  o.queue_depth = 8;
  o.force_thread_pool = thread_pool;
  o.injector = injector;
  auto tier = DiskTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  Sim sim(tier->get());
  std::mt19937 rng(2024);
  for (int64_t step = 0; step < 300; ++step) {
    // A sliding window of recent pages plus a few random old ones (what top-p keeps).
    const int32_t head = std::min<int32_t>(kPages - 1, int32_t(step / 4));
    std::vector<int32_t> pages = {head};
    for (int k = 0; k < 3; ++k) pages.push_back(std::max(0, head - int32_t(rng() % 4)));
    for (int k = 0; k < 3; ++k) pages.push_back(int32_t(rng() % (head + 1)));
    const int32_t append = step % 3 == 0 ? pages[1 + rng() % 6] : -1;
    ASSERT_TRUE(Step(&sim, step, pages, append, retries));
    ASSERT_TRUE(sim.policy.CheckConsistency().ok());
  }
  // Every page ever created is intact, wherever it is: load them all in turns and check.
  int64_t step = 1000;
  for (int32_t base = 0; base < kPages; base += 6) {
    std::vector<int32_t> pages;
    for (int32_t p = base; p < std::min(kPages, base + 6); ++p) {
      if (sim.version[p] >= 0) pages.push_back(p);
    }
    ASSERT_TRUE(Step(&sim, step++, pages, -1, retries));
  }
  EXPECT_EQ(sim.policy.num_on_host() + int32_t(sim.free_slots.size()), kSlots);
  // Releasing every page frees every record.
  for (int32_t p = 0; p < kPages; ++p) {
    auto slot = sim.pager.Release(p);
    ASSERT_TRUE(slot.ok()) << slot.status();
  }
  EXPECT_EQ((*tier)->num_used(), 0);
  *stats = sim.pager.stats();
}

TEST_P(DiskPagerTest, KvFourTimesTheHostPoolStaysCorrect) {
  int retries = 0;
  DiskPagerStats stats;
  FaultInjector injector;
  RunSimulation(GetParam(), &injector, &retries, &stats);
  EXPECT_EQ(retries, 0);
  EXPECT_GT(stats.pages_written, 40);
  EXPECT_GT(stats.pages_loaded, 40);
  EXPECT_GT(stats.pages_clean, 0);  // clean copies saved writes
  EXPECT_EQ(stats.write_failures + stats.read_failures, 0);
}

TEST_P(DiskPagerTest, InjectedFailuresCostRetriesNotData) {
  int retries = 0;
  DiskPagerStats stats;
  FaultInjector injector;
  injector.FailRange(FaultSite::kDiskWrite, 5, 2, EIO);
  injector.FailNth(FaultSite::kDiskWrite, 30, ENOSPC);
  injector.FailRange(FaultSite::kDiskRead, 8, 3, EIO);
  injector.FailNth(FaultSite::kDiskRead, 25, FaultInjector::kShortTransfer);
  RunSimulation(GetParam(), &injector, &retries, &stats);
  EXPECT_GT(retries, 0);
  EXPECT_EQ(stats.write_failures, 3);
  EXPECT_EQ(stats.read_failures, 4);
}

INSTANTIATE_TEST_SUITE_P(Engines, DiskPagerTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "Threads" : "IoUring");
                         });

TEST(DiskPager, RejectsBadLoadsAndReportsAFullHostPool) {
  DiskTierOptions o;
  o.record_bytes = 4096;
  o.capacity_bytes = 2 * 4096;
  auto tier = DiskTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  SpillPolicy policy(4);
  std::vector<char> host(4 * 4096 + 4096);
  char* base = host.data();
  DiskPager pager(tier->get(), &policy, [base](int32_t s) { return base + s * 4096; });
  for (int32_t p = 0; p < 3; ++p) {
    std::memset(base + p * 4096, 'a' + p, 4096);
    ASSERT_TRUE(policy.SetLocation(p, {p, -1}).ok());
  }
  ASSERT_TRUE(policy.Touch({0, 1, 2}, 1).ok());
  std::vector<int32_t> freed;
  // Step 1 uses every page: nothing may be spilled.
  absl::Status s = pager.Evict(1, 1, {}, &freed);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("host pool full"), std::string::npos) << s.message();
  EXPECT_TRUE(freed.empty());
  // At step 2 all three are eligible but the disk holds two: the coldest two go.
  s = pager.Evict(3, 2, {}, &freed);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("disk tier full"), std::string::npos) << s.message();
  EXPECT_EQ(freed, (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(policy.GetLocation(2).on_host());
  // Loads: length mismatch, page listed twice, page not on disk.
  EXPECT_EQ(pager.Load({0, 1}, {3}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pager.Load({0, 0}, {3, 4}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pager.Load({2}, {3}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pager.MarkDirty(0).code(), absl::StatusCode::kFailedPrecondition);
  std::memset(base + 3 * 4096, 0, 4096);
  ASSERT_TRUE(pager.Load({1}, {3}, nullptr).ok());
  EXPECT_EQ(base[3 * 4096], 'b');
  EXPECT_EQ(base[4 * 4096 - 1], 'b');
  EXPECT_EQ(policy.GetLocation(1).host_slot, 3);
  EXPECT_TRUE(policy.GetLocation(1).on_disk());  // clean copy kept
  auto slot = pager.Release(1);
  ASSERT_TRUE(slot.ok());
  EXPECT_EQ(*slot, 3);
  EXPECT_EQ((*tier)->num_used(), 1);
  EXPECT_EQ(pager.Release(9).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace twl
