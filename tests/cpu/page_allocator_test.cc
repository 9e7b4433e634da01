// Page allocator and host arena: all-or-nothing allocation, reference counts, reuse,
// thread safety, and arena accounting / fault injection.
#include "cache/page_allocator.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "cache/host_arena.h"

namespace twl {
namespace {

TEST(PageAllocator, AllocatesDistinctIdsInRange) {
  PageAllocator a(10);
  auto p = a.Allocate(7);
  ASSERT_TRUE(p.ok()) << p.status();
  std::set<int32_t> ids(p->begin(), p->end());
  EXPECT_EQ(ids.size(), 7u);
  for (int32_t id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 10);
    EXPECT_EQ(a.RefCount(id), 1);
  }
  EXPECT_EQ(a.num_free(), 3);
  EXPECT_EQ(a.num_used(), 7);
}

TEST(PageAllocator, ExhaustionIsAllOrNothing) {
  PageAllocator a(8);
  auto first = a.Allocate(5);
  ASSERT_TRUE(first.ok());
  std::vector<int32_t> out = {42};  // pre-existing content must survive a failure
  absl::Status s = a.Allocate(4, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("need 4 pages, 3 free"), std::string::npos) << s.message();
  EXPECT_EQ(out, std::vector<int32_t>({42}));
  EXPECT_EQ(a.num_free(), 3);
  for (int32_t p = 0; p < 8; ++p) {
    const bool held = std::find(first->begin(), first->end(), p) != first->end();
    EXPECT_EQ(a.RefCount(p), held ? 1 : 0) << p;
  }
  // Exactly what is left still works.
  auto rest = a.Allocate(3);
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(a.num_free(), 0);
  EXPECT_EQ(a.Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(a.Allocate(0).ok());
  EXPECT_EQ(a.Allocate(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PageAllocator, RefCountsShareAndFree) {
  PageAllocator a(4);
  auto p = a.Allocate(2);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(a.AddRef(*p).ok());
  ASSERT_TRUE(a.AddRef({(*p)[0]}).ok());
  EXPECT_EQ(a.RefCount((*p)[0]), 3);
  EXPECT_EQ(a.RefCount((*p)[1]), 2);

  std::vector<int32_t> freed;
  ASSERT_TRUE(a.Release(*p, &freed).ok());
  EXPECT_TRUE(freed.empty());
  ASSERT_TRUE(a.Release({(*p)[1]}, &freed).ok());
  EXPECT_EQ(freed, std::vector<int32_t>({(*p)[1]}));
  EXPECT_EQ(a.RefCount((*p)[1]), 0);
  EXPECT_EQ(a.num_free(), 3);
  // Releasing a page more times than it is held fails and changes nothing.
  const int32_t p0 = (*p)[0];
  EXPECT_EQ(a.Release({p0, p0, p0}, &freed).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.RefCount(p0), 2);
  ASSERT_TRUE(a.Release({p0, p0}, &freed).ok());
  EXPECT_EQ(a.RefCount(p0), 0);
  EXPECT_EQ(a.num_free(), 4);
}

TEST(PageAllocator, BadIdsAreRejectedWithoutChange) {
  PageAllocator a(4);
  auto p = a.Allocate(1);
  ASSERT_TRUE(p.ok());
  const int32_t held = (*p)[0];
  const int32_t free_id = held == 0 ? 1 : 0;
  EXPECT_EQ(a.AddRef({held, 99}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.AddRef({held, free_id}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.Release({held, -1}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.Release({free_id}, nullptr).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.RefCount(held), 1);
  EXPECT_EQ(a.RefCount(free_id), 0);
  EXPECT_EQ(a.RefCount(4), -1);
  EXPECT_EQ(a.num_free(), 3);
}

TEST(PageAllocator, FreedPagesAreReused) {
  PageAllocator a(3);
  auto p = a.Allocate(3);
  ASSERT_TRUE(p.ok());
  std::vector<int32_t> freed;
  ASSERT_TRUE(a.Release({(*p)[1]}, &freed).ok());
  auto again = a.Allocate(1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0], (*p)[1]);
}

TEST(PageAllocator, ConcurrentAllocateReleaseKeepsCounts) {
  PageAllocator a(256);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&a, t] {
      std::mt19937 rng(1234 + t);
      std::vector<int32_t> held;
      for (int it = 0; it < 2000; ++it) {
        if (held.empty() || rng() % 2) {
          const int32_t n = 1 + int32_t(rng() % 8);
          a.Allocate(n, &held).IgnoreError();  // may be exhausted by the others
        } else {
          const size_t k = 1 + rng() % held.size();
          std::vector<int32_t> give(held.end() - k, held.end());
          held.resize(held.size() - k);
          ASSERT_TRUE(a.Release(give, nullptr).ok());
        }
      }
      ASSERT_TRUE(a.Release(held, nullptr).ok());
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(a.num_free(), 256);
  for (int32_t p = 0; p < 256; ++p) EXPECT_EQ(a.RefCount(p), 0);
}

TEST(HostArena, AlignedBlocksAreAddressableAndCounted) {
  const int64_t before = HostBytesInUse(HostMemKind::kAligned);
  {
    auto arena = HostArena::Create(HostMemKind::kAligned, 1000, 7, 64);
    ASSERT_TRUE(arena.ok()) << arena.status();
    HostArena& a = **arena;
    EXPECT_EQ(a.block_bytes(), 1024);  // rounded up to the block alignment
    EXPECT_EQ(a.bytes(), 7 * 1024);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.base()) % HostArena::kAlignment, 0u);
    EXPECT_EQ(a.device_base(), nullptr);
    EXPECT_EQ(HostBytesInUse(HostMemKind::kAligned), before + 7 * 1024);
    for (int64_t i = 0; i < 7; ++i) std::memset(a.Block(i), int(i + 1), 1000);
    for (int64_t i = 0; i < 7; ++i) {
      EXPECT_EQ(static_cast<uint8_t*>(a.Block(i))[999], uint8_t(i + 1));
    }
  }
  EXPECT_EQ(HostBytesInUse(HostMemKind::kAligned), before);
}

TEST(HostArena, ExactStrideByDefault) {
  auto arena = HostArena::Create(HostMemKind::kAligned, 6, 5);
  ASSERT_TRUE(arena.ok());
  EXPECT_EQ((*arena)->block_bytes(), 6);
  EXPECT_EQ(static_cast<char*>((*arena)->Block(3)) - static_cast<char*>((*arena)->base()), 18);
}

TEST(HostArena, FailuresAreStatusesNotAborts) {
  EXPECT_EQ(HostArena::Create(HostMemKind::kAligned, -1, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostArena::Create(HostMemKind::kAligned, 64, 4, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  // More than any address space: the size computation overflows int64.
  EXPECT_EQ(HostArena::Create(HostMemKind::kAligned, int64_t(1) << 40, int64_t(1) << 40)
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  // Injected limit.
  const int64_t before = HostBytesInUse(HostMemKind::kAligned);
  SetHostAllocLimitForTesting(before + 4096);
  EXPECT_TRUE(HostArena::Create(HostMemKind::kAligned, 1024, 4).ok());
  auto over = HostArena::Create(HostMemKind::kAligned, 1024, 5);
  SetHostAllocLimitForTesting(-1);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(HostBytesInUse(HostMemKind::kAligned), before);
  // Empty arenas are fine.
  auto empty = HostArena::Create(HostMemKind::kAligned, 0, 100);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ((*empty)->base(), nullptr);
}

TEST(HostArena, PinnedNeedsAGpu) {
  auto pinned = HostArena::Create(HostMemKind::kPinnedMapped, 4096, 2);
#if TWL_HAVE_CUDA
  if (pinned.ok()) {
    EXPECT_NE((*pinned)->device_base(), nullptr);
    EXPECT_EQ(HostBytesInUse(HostMemKind::kPinnedMapped), 8192);
    return;
  }
#endif
  EXPECT_EQ(pinned.status().code(), absl::StatusCode::kUnavailable) << pinned.status();
}

}  // namespace
}  // namespace twl
