// The GPU offload backend's serving loop over the NVMe tier, on the CPU
// (bench/lib/disk_serving_sim.h: the backend's residency calls, runtime/offload_disk_steps.h,
// over a real file): in the steady state an append (one token per sequence and layer) waits
// neither for the device nor for the disk, including the steps where every sequence starts a
// new page, and the decode of a stable kept set reads nothing. The calls as they were before
// (OffloadDiskSteps never_wait = false) do wait: what the H200 run measured (110 of 165 ms
// per layer-step in the appends). Then the parts one by one on DiskResidency: the append
// reserve, open units, writes behind (with a change during the write, a failed write, and
// random interleavings that keep every unit's data intact).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "lib/disk_serving_sim.h"
#include "offload/fault_injection.h"
#include "runtime/disk_residency.h"
#include "runtime/geometry.h"
#include "runtime/offload_disk_steps.h"
#include "runtime/runtime.h"
#include "support/disk_fixture.h"
#include "support/temp_dir.h"

namespace twl {
namespace {

using bench::DiskServingSimOptions;
using bench::DiskServingSimResult;
using bench::DiskServingStep;
using testing::ClearFaultsOnExit;
using testing::TempDir;

// The serving bench's shape at a small context: 4 layers x 8 sequences x 8 KV heads of 8 KiB
// blocks, 2048 tokens each (256 MiB of KV), pool a quarter of it; 40 steps cross two page
// boundaries (every sequence starts a new page: 64 fresh blocks per layer).
DiskServingSimOptions Shape(const std::string& dir) {
  DiskServingSimOptions o;
  o.dir = dir;
  o.context = 2048;
  o.prefill_chunk = 1024;
  o.warmup = 4;
  o.steps = 40;
  o.kept_fraction = 0.05;
  o.drift = 0.01;
  return o;
}

void PrintMean(const char* label, const DiskServingSimResult& r) {
  const DiskServingStep m = r.Mean();
  int64_t quiesces = 0, written = 0, loaded = 0;
  for (const DiskServingStep& s : r.steps) {
    quiesces += s.append_quiesces;
    written += s.append_written;
    loaded += s.append_loaded;
  }
  std::printf(
      "%s: per step append %.3f ms (over %zu steps: %lld device waits, %lld blocks written, "
      "%lld read), decode %.3f ms (%lld blocks loaded, %lld read ahead, %lld written, "
      "%lld written behind)\n",
      label, m.append_ms, r.steps.size(), static_cast<long long>(quiesces),
      static_cast<long long>(written), static_cast<long long>(loaded), m.decode_ms,
      static_cast<long long>(m.decode_loaded), static_cast<long long>(m.decode_read_ahead),
      static_cast<long long>(m.decode_written), static_cast<long long>(m.written_behind));
}

TEST(DiskServing, SteadyStateAppendsNeverWaitForTheDiskOrTheDevice) {
  TempDir dir("twl-serving");
  const DiskServingSimOptions o = Shape(dir.path());
  absl::StatusOr<DiskServingSimResult> r = bench::RunDiskServingSim(o);
  ASSERT_TRUE(r.ok()) << r.status();
  PrintMean("now", *r);
  for (size_t i = 0; i < r->steps.size(); ++i) {
    const DiskServingStep& s = r->steps[i];
    EXPECT_EQ(s.append_quiesces, 0) << "step " << i;
    EXPECT_EQ(s.append_loaded, 0) << "step " << i;
    EXPECT_EQ(s.append_written, 0) << "step " << i;
    EXPECT_EQ(s.append_read_waits, 0) << "step " << i;
    // The decode's evictions drop blocks written behind: no write on its critical path.
    EXPECT_EQ(s.decode_written, 0) << "step " << i;
  }
}

TEST(DiskServing, BeforeTheAppendsWaitedAtEveryNewPage) {
  // The same loop with the calls as they were: at each page boundary the 256 fresh blocks
  // (4 layers x 64) evict dirty victims synchronously after waiting for the device.
  TempDir dir("twl-serving");
  DiskServingSimOptions o = Shape(dir.path());
  o.never_wait = false;
  absl::StatusOr<DiskServingSimResult> r = bench::RunDiskServingSim(o);
  ASSERT_TRUE(r.ok()) << r.status();
  PrintMean("before", *r);
  int64_t quiesces = 0, written = 0;
  for (const DiskServingStep& s : r->steps) {
    quiesces += s.append_quiesces;
    written += s.append_written;
  }
  EXPECT_GT(quiesces, 0);
  EXPECT_GT(written, 0);
}

TEST(DiskServing, KeptSetsAsLargeAsThePoolStillLeaveAppendsAlone) {
  // Kept sets of a quarter of the blocks: the four layers' kept blocks fill the pool (the
  // H200 serving run's shape). Before, an open block not kept by its decode was the newest
  // low-value newcomer: evicted by the next decode or read-ahead, read back by the next
  // append after waiting for the device and the whole read-ahead in flight.
  TempDir dir("twl-serving");
  DiskServingSimOptions o = Shape(dir.path());
  o.kept_fraction = 0.25;
  o.drift = 0.02;
  o.steps = 12;
  o.never_wait = false;
  absl::StatusOr<DiskServingSimResult> before = bench::RunDiskServingSim(o);
  ASSERT_TRUE(before.ok()) << before.status();
  PrintMean("before, kept 25%", *before);
  int64_t loaded_before = 0;
  for (const DiskServingStep& s : before->steps) loaded_before += s.append_loaded;
  EXPECT_GT(loaded_before, 0);
  o.never_wait = true;
  absl::StatusOr<DiskServingSimResult> now = bench::RunDiskServingSim(o);
  ASSERT_TRUE(now.ok()) << now.status();
  PrintMean("now, kept 25%", *now);
  for (size_t i = 0; i < now->steps.size(); ++i) {
    const DiskServingStep& s = now->steps[i];
    EXPECT_EQ(s.append_quiesces + s.append_loaded + s.append_written + s.append_read_waits, 0)
        << "step " << i;
  }
}

TEST(DiskServing, AStableKeptSetIsReadOnceThenNeverAgain) {
  TempDir dir("twl-serving");
  DiskServingSimOptions o = Shape(dir.path());
  o.drift = 0;
  o.steps = 20;
  absl::StatusOr<DiskServingSimResult> r = bench::RunDiskServingSim(o);
  ASSERT_TRUE(r.ok()) << r.status();
  for (size_t i = 0; i < r->steps.size(); ++i) {
    const DiskServingStep& s = r->steps[i];
    EXPECT_EQ(s.decode_bytes_read, 0) << "step " << i;
    EXPECT_EQ(s.decode_loaded + s.decode_read_ahead, 0) << "step " << i;
  }
}

// The decode's sequence under the GPU row cache (pipeline/fetch/disk/miss_first_fetch.cuh):
// the cache's plan runs first and only the blocks of the rows it misses reach the residency.
// A step whose kept rows the GPU holds makes no residency call at all: no Group, no Reserve,
// no kept lists read back (the H200 run's 16.7 ms per layer-step were those calls for ~70k
// blocks the GPU already held). The sequence before (every kept block, from the kept lists
// read back) makes them every step.
TEST(DiskServing, AStepTheGpuCacheHoldsMakesNoResidencyCall) {
  TempDir dir("twl-serving");
  DiskServingSimOptions o = Shape(dir.path());
  o.drift = 0;
  o.steps = 12;
  absl::StatusOr<DiskServingSimResult> now = bench::RunDiskServingSim(o);
  ASSERT_TRUE(now.ok()) << now.status();
  for (size_t i = 0; i < now->steps.size(); ++i) {
    const DiskServingStep& s = now->steps[i];
    EXPECT_EQ(s.decode_groups, 0) << "step " << i;
    EXPECT_EQ(s.decode_blocks, 0) << "step " << i;
    EXPECT_EQ(s.decode_reserves, 0) << "step " << i;
    EXPECT_EQ(s.decode_kept_readbacks, 0) << "step " << i;
    EXPECT_EQ(s.decode_missed_rows, 0) << "step " << i;
    EXPECT_EQ(s.decode_bytes_read + s.decode_loaded + s.decode_written, 0) << "step " << i;
  }
  o.gpu_row_cache = false;
  absl::StatusOr<DiskServingSimResult> before = bench::RunDiskServingSim(o);
  ASSERT_TRUE(before.ok()) << before.status();
  for (size_t i = 0; i < before->steps.size(); ++i) {
    const DiskServingStep& s = before->steps[i];
    // Two groups per layer, four layers: each group reads its kept lists back and reserves.
    EXPECT_EQ(s.decode_kept_readbacks, 2 * o.layers) << "step " << i;
    EXPECT_GE(s.decode_reserves, o.layers) << "step " << i;
  }
}

TEST(DiskServing, OnlyTheMissedBlocksReachTheResidencyAndAppendsStillNeverWait) {
  // The serving shape with the decoded block kept (its new row misses every step) and
  // drifting kept sets, then a GPU cache too small for the kept rows (evictions: blocks the
  // cache dropped come back through the pool, some from disk).
  TempDir dir("twl-serving");
  DiskServingSimOptions o = Shape(dir.path());
  o.keep_last_block = true;
  o.steps = 20;
  absl::StatusOr<DiskServingSimResult> all = bench::RunDiskServingSim(o);
  ASSERT_TRUE(all.ok()) << all.status();
  o.gpu_row_cache = false;
  absl::StatusOr<DiskServingSimResult> before = bench::RunDiskServingSim(o);
  ASSERT_TRUE(before.ok()) << before.status();
  o.gpu_row_cache = true;
  o.gpu_cache_rows = 4000;  // about a quarter of the four layers' kept rows
  absl::StatusOr<DiskServingSimResult> small = bench::RunDiskServingSim(o);
  ASSERT_TRUE(small.ok()) << small.status();
  PrintMean("row cache", *all);
  PrintMean("kept blocks", *before);
  PrintMean("small row cache", *small);
  const int64_t kept_per_layer = all->kept_blocks / o.layers;
  for (size_t i = 0; i < all->steps.size(); ++i) {
    const DiskServingStep& s = all->steps[i];
    // Every layer's groups miss the rows appended since: a handful of blocks, no disk.
    EXPECT_EQ(s.decode_kept_readbacks, 0) << "step " << i;
    EXPECT_LE(s.decode_groups, 2 * o.layers) << "step " << i;
    EXPECT_GT(s.decode_missed_rows, 0) << "step " << i;
    EXPECT_LT(s.decode_missed_rows, kept_per_layer) << "step " << i;
  }
  int64_t small_missed = 0;
  for (size_t i = 0; i < small->steps.size(); ++i) {
    const DiskServingStep& s = small->steps[i];
    small_missed += s.decode_missed_rows;
    EXPECT_EQ(s.append_quiesces + s.append_loaded + s.append_written + s.append_read_waits, 0)
        << "step " << i;
  }
  EXPECT_GT(small_missed, 0);
  const DiskServingStep a = all->Mean(), b = before->Mean();
  EXPECT_LE(a.decode_bytes_read, b.decode_bytes_read);
  // The residency sees the missed blocks (the appended block of each unit, the drift), not
  // every kept block.
  std::printf("blocks handed to the residency per step: %lld (row cache) vs %lld (kept)\n",
              static_cast<long long>(a.decode_blocks), static_cast<long long>(b.decode_blocks));
  EXPECT_LT(4 * a.decode_blocks, b.decode_blocks);
}

// --- The parts, on a small DiskResidency of block units -----------------------------------

// 2 KV heads, d = 8, page 4: 128-byte blocks (512-byte records), one block per unit.
using Fixture = testing::DiskFixture;

Fixture Make(const std::string& dir, int32_t units, int32_t slots) {
  return testing::MakeDiskFixture(
      testing::SmallDiskConfig(dir, 2, BackendKind::kGpuOffload, int64_t(units) * 512), units,
      slots, /*heads_per_unit=*/1);
}

using testing::DiskTestValue;

void Fill(Fixture& f, int32_t unit, int32_t version) {
  fp16_t* b = f.d->HostBlock(unit);
  ASSERT_NE(b, nullptr) << unit;
  for (int64_t i = 0; i < f.g.FpBlockElems(); ++i) b[i] = DiskTestValue(unit, version, i);
}

// An append of `units` (ReserveForAppend + MarkDirty) writing `version` into each.
void Append(Fixture& f, const std::vector<int32_t>& units, int32_t version, bool open = false) {
  const std::vector<uint8_t> flags(units.size(), open ? 1 : 0);
  ASSERT_TRUE(f.d->ReserveForAppend(units, flags, nullptr).ok());
  ASSERT_TRUE(f.d->MarkDirty(units).ok());
  for (const int32_t u : units) Fill(f, u, version);
}

// The unit's data wherever it is (ReadRows: host slot or disk record).
void ExpectUnit(const Fixture& f, int32_t unit, int32_t version) {
  const PageGeometry& g = f.g;
  const int32_t page = unit / g.num_kv_heads, h = unit % g.num_kv_heads;
  const int64_t row = int64_t(g.num_kv_heads) * g.head_dim;
  std::vector<fp16_t> k(size_t(g.page_size * row)), v(k.size());
  ASSERT_TRUE(f.d->ReadRows(page, g.page_size, k.data(), v.data()).ok()) << unit;
  std::vector<fp16_t> want(size_t(g.FpBlockElems()));
  for (int64_t i = 0; i < g.FpBlockElems(); ++i) {
    want[size_t(i)] = DiskTestValue(unit, version, i);
  }
  const FpKvView local{want.data(), nullptr};
  for (int32_t r = 0; r < g.page_size; ++r) {
    ASSERT_EQ(std::memcmp(k.data() + r * row + h * g.head_dim, local.K(g, 0, r),
                          sizeof(fp16_t) * g.head_dim), 0) << "unit " << unit;
    ASSERT_EQ(std::memcmp(v.data() + r * row + h * g.head_dim, local.V(g, 0, r),
                          sizeof(fp16_t) * g.head_dim), 0) << "unit " << unit;
  }
}

TEST(DiskAppendReserve, RefillSetsCleanVictimsAsideAndWritesDirtyOnesBehind) {
  TempDir dir("twl-reserve");
  Fixture f = Make(dir.path(), 64, 16);
  ASSERT_TRUE(f.d);
  for (int32_t u = 0; u < 16; ++u) Append(f, {u}, 1);  // the pool is full of dirty units
  ASSERT_EQ(f.d->num_free_slots(), 0);
  f.d->set_append_reserve(4);
  DiskIoCounts io;
  // Nothing clean to drop: the first victims are written behind, nothing waits.
  f.d->RefillFreeSlots(&io);
  EXPECT_EQ(io.pages_written, 0);
  EXPECT_GE(io.pages_written_behind, 4);
  EXPECT_GT(f.d->write_behind_in_flight(), 0);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  f.d->FinishWriteBehind(&io);
  EXPECT_EQ(io.pages_cleaned_behind, io.pages_written_behind);
  // Now they are clean: the next refill sets four aside (still resident) for the appends.
  DiskIoCounts next;
  f.d->RefillFreeSlots(&next);
  EXPECT_EQ(next.pages_written + next.pages_dropped, 0);
  EXPECT_EQ(f.d->num_free_slots(), 0);
  for (int32_t u = 0; u < 16; ++u) EXPECT_NE(f.d->HostBlock(u), nullptr) << u;
  const std::vector<int32_t> fresh = {41, 42, 43};
  EXPECT_EQ(f.d->SlotsShort(fresh), 0);  // an append of three fresh units fits
  f.d->FinishWriteBehind(nullptr);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  for (int32_t u = 0; u < 16; ++u) ExpectUnit(f, u, 1);
  // The append drops three of them: no write, no read, no eviction of anything else.
  DiskIoCounts a;
  ASSERT_TRUE(f.d->ReserveForAppend(fresh, {}, &a).ok());
  EXPECT_EQ(a.pages_dropped, 3);
  EXPECT_EQ(a.pages_written + a.pages_loaded, 0);
  for (const int32_t u : fresh) EXPECT_NE(f.d->HostBlock(u), nullptr) << u;
  // A unit on standby that a step uses again is no longer set aside.
  f.d->RefillFreeSlots(nullptr);
  f.d->FinishWriteBehind(nullptr);
  f.d->RefillFreeSlots(nullptr);
  std::vector<int32_t> resident;
  for (int32_t u = 0; u < 16; ++u) {
    if (f.d->HostBlock(u) != nullptr) resident.push_back(u);
  }
  ASSERT_TRUE(f.d->Reserve(resident, nullptr).ok());  // every old unit used again
  DiskIoCounts b;
  ASSERT_TRUE(f.d->ReserveForAppend({44}, {}, &b).ok());
  EXPECT_EQ(b.pages_dropped + b.pages_written, 1);  // an eviction, not a standby drop
  for (const int32_t u : resident) EXPECT_NE(f.d->HostBlock(u), nullptr) << u;
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
}

TEST(DiskAppendReserve, OpenUnitsStayResidentWhileOthersCanGo) {
  TempDir dir("twl-reserve");
  Fixture f = Make(dir.path(), 64, 8);
  ASSERT_TRUE(f.d);
  Append(f, {0, 1}, 1, /*open=*/true);
  // Many steps of other units, each with more value than the open ones.
  for (int32_t step = 0; step < 12; ++step) {
    std::vector<int32_t> set;
    for (int32_t i = 0; i < 5; ++i) set.push_back(2 + (step * 5 + i) % 60);
    const std::vector<int32_t> rows(set.size(), 8);
    ASSERT_TRUE(f.d->Reserve(set, nullptr, true, rows).ok());
    EXPECT_NE(f.d->HostBlock(0), nullptr) << step;
    EXPECT_NE(f.d->HostBlock(1), nullptr) << step;
  }
  // Closed (the page filled): an ordinary unit again.
  Append(f, {0, 1}, 2, /*open=*/false);
  for (int32_t step = 0; step < 4; ++step) {
    std::vector<int32_t> set;
    for (int32_t i = 0; i < 7; ++i) set.push_back(10 + step * 7 + i);
    ASSERT_TRUE(f.d->Reserve(set, nullptr).ok());
  }
  EXPECT_TRUE(f.d->HostBlock(0) == nullptr || f.d->HostBlock(1) == nullptr);
  // Soft: a step that needs every slot takes the open units too rather than fail.
  Append(f, {2, 3}, 3, /*open=*/true);
  std::vector<int32_t> all;
  for (int32_t u = 20; u < 28; ++u) all.push_back(u);
  ASSERT_TRUE(f.d->Reserve(all, nullptr).ok());
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  ExpectUnit(f, 0, 2);
  ExpectUnit(f, 2, 3);
}

TEST(DiskAppendReserve, AChangeDuringTheWriteBehindKeepsTheNewData) {
  TempDir dir("twl-reserve");
  Fixture f = Make(dir.path(), 32, 8);
  ASSERT_TRUE(f.d);
  for (int32_t u = 0; u < 8; ++u) Append(f, {u}, 1);
  f.d->set_append_reserve(8);
  DiskIoCounts io;
  f.d->RefillFreeSlots(&io);
  ASSERT_GT(f.d->write_behind_in_flight(), 0);
  // Every unit being written is changed before the write is reaped (as an append would).
  std::vector<int32_t> changed;
  for (int32_t u = 0; u < 8; ++u) {
    const PageLocation loc = f.d->Location(u);
    if (loc.on_host() && !loc.on_disk()) changed.push_back(u);
  }
  ASSERT_FALSE(changed.empty());
  ASSERT_TRUE(f.d->MarkDirty(changed).ok());
  for (const int32_t u : changed) Fill(f, u, 2);
  f.d->FinishWriteBehind(&io);
  EXPECT_EQ(io.pages_cleaned_behind, 0);  // stale copies are dropped, not kept
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  // Evicting them now writes the new data.
  f.d->set_append_reserve(0);
  std::vector<int32_t> others;
  for (int32_t u = 8; u < 16; ++u) others.push_back(u);
  DiskIoCounts e;
  ASSERT_TRUE(f.d->Reserve(others, &e).ok());
  EXPECT_GT(e.pages_written, 0);
  for (const int32_t u : changed) ExpectUnit(f, u, 2);
}

TEST(DiskAppendReserve, AFailedWriteBehindLosesNothingAndTheNextEvictionReportsIt) {
  ClearFaultsOnExit clear;
  TempDir dir("twl-reserve");
  Fixture f = Make(dir.path(), 32, 8);
  ASSERT_TRUE(f.d);
  for (int32_t u = 0; u < 8; ++u) Append(f, {u}, 1);
  f.d->set_append_reserve(4);
  ProcessFaultInjector().FailRange(FaultSite::kDiskWrite, 1, -1, EIO);
  DiskIoCounts io;
  f.d->RefillFreeSlots(&io);
  f.d->FinishWriteBehind(&io);
  EXPECT_GT(io.pages_written_behind, 0);
  EXPECT_EQ(io.pages_cleaned_behind, 0);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  for (int32_t u = 0; u < 8; ++u) {
    EXPECT_NE(f.d->HostBlock(u), nullptr) << u;  // still dirty on the host
    ExpectUnit(f, u, 1);
  }
  // An eviction that must write reports the disk's error; nothing moved.
  f.d->set_append_reserve(0);
  const absl::Status s = f.d->Reserve({20, 21}, nullptr);
  EXPECT_FALSE(s.ok());
  ProcessFaultInjector().Clear();
  ASSERT_TRUE(f.d->Reserve({20, 21}, nullptr).ok());
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  for (int32_t u = 0; u < 8; ++u) ExpectUnit(f, u, 1);
}

TEST(DiskAppendReserve, RandomServingInterleavingsKeepEveryUnitIntact) {
  TempDir dir("twl-reserve");
  for (int32_t slots : {6, 12, 24}) {
    const int32_t units = 3 * slots;
    Fixture f = Make(dir.path(), units, slots);
    ASSERT_TRUE(f.d);
    std::mt19937_64 rng(uint64_t(slots) * 104729);
    std::vector<int32_t> version(size_t(units), -1);
    // Units go by pages (both KV heads' blocks: ReadRows reads a whole page back).
    const int32_t pages = units / 2;
    for (int32_t op = 0; op < 600; ++op) {
      const uint64_t what = rng() % 10;
      if (what == 0) {
        const int32_t p = int32_t(rng() % uint64_t(pages));
        for (const int32_t u : {2 * p, 2 * p + 1}) {
          f.d->Release(u);
          version[size_t(u)] = -1;
        }
      } else if (what <= 3) {
        // An append: one or two pages, some left open, written at once.
        std::vector<int32_t> set;
        std::vector<uint8_t> open;
        const int32_t n = 1 + int32_t(rng() % 2);
        while (int32_t(set.size()) < 2 * n) {
          const int32_t p = int32_t(rng() % uint64_t(pages));
          if (std::find(set.begin(), set.end(), 2 * p) != set.end()) continue;
          const uint8_t o = rng() % 2;
          set.insert(set.end(), {2 * p, 2 * p + 1});
          open.insert(open.end(), {o, o});
        }
        f.d->set_append_reserve(int32_t(rng() % 4));
        ASSERT_TRUE(f.d->ReserveForAppend(set, open, nullptr).ok()) << "op " << op;
        ASSERT_TRUE(f.d->MarkDirty(set).ok());
        for (const int32_t u : set) {
          Fill(f, u, op);
          version[size_t(u)] = op;
        }
      } else {
        // A decode step of written units, then the refill and a read-ahead.
        std::vector<int32_t> set;
        const int32_t n = 1 + int32_t(rng() % uint64_t(slots / 2));
        for (int32_t tries = 0; tries < 4 * n && int32_t(set.size()) < n; ++tries) {
          const int32_t u = int32_t(rng() % uint64_t(units));
          if (version[size_t(u)] < 0 || std::find(set.begin(), set.end(), u) != set.end()) {
            continue;
          }
          set.push_back(u);
        }
        if (set.empty()) continue;
        const absl::Status s = f.d->Reserve(set, nullptr);
        ASSERT_TRUE(s.ok()) << s << " op " << op;
        for (const int32_t u : set) ASSERT_NE(f.d->HostBlock(u), nullptr) << "op " << op;
        f.d->RefillFreeSlots(nullptr);
        std::vector<int32_t> ahead;
        for (int32_t i = 0; i < 3; ++i) ahead.push_back(int32_t(rng() % uint64_t(units)));
        std::sort(ahead.begin(), ahead.end());
        ahead.erase(std::unique(ahead.begin(), ahead.end()), ahead.end());
        ASSERT_TRUE(f.d->StartReadAhead(ahead, 3, nullptr).ok());
      }
      ASSERT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency() << " op " << op;
    }
    f.d->FinishReadAhead(nullptr);
    f.d->FinishWriteBehind(nullptr);
    for (int32_t u = 0; u < units; ++u) {
      if (version[size_t(u)] >= 0) ExpectUnit(f, u, version[size_t(u)]);
    }
    ASSERT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  }
}

}  // namespace
}  // namespace twl
