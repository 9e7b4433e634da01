// Disk tier: round trips of random FP16 records through io_uring and the pread/pwrite
// fallback (O_DIRECT and buffered, aligned and bounced buffers), queueing past the queue
// depth, concurrent batches, the record allocator, and every error path (byte limit,
// injected ENOSPC / EIO / short transfers, a file truncated under the tier): each returns
// its status, names the record, and leaves the data written before readable and correct.
#include "offload/disk_tier.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "core/half.h"
#include "offload/fault_injection.h"
#include "support/temp_dir.h"

namespace twl {
namespace {

using testing::ClearFaultsOnExit;
using testing::TempDir;

// n records of `bytes` each in one 4 KiB-aligned allocation, record i at base + offset +
// i * stride (stride = bytes rounded up to 4 KiB, so offset 0 gives aligned records).
class HostRecords {
 public:
  HostRecords(int64_t n, int64_t bytes, int64_t offset) : n_(n), bytes_(bytes), offset_(offset) {
    stride_ = (bytes + 4095) / 4096 * 4096;
    mem_ = static_cast<char*>(std::aligned_alloc(4096, size_t(n * stride_ + 4096)));
  }
  ~HostRecords() { std::free(mem_); }
  HostRecords(const HostRecords&) = delete;
  HostRecords& operator=(const HostRecords&) = delete;
  char* Get(int64_t i) const { return mem_ + offset_ + i * stride_; }
  int64_t size() const { return n_; }
  int64_t bytes() const { return bytes_; }
  std::vector<const void*> Pointers() const {
    std::vector<const void*> p(n_);
    for (int64_t i = 0; i < n_; ++i) p[i] = Get(i);
    return p;
  }

 private:
  int64_t n_, bytes_, offset_, stride_;
  char* mem_;
};

// Random FP16 values in [-4, 4], never 0 (so that a zeroed record cannot pass); an odd
// trailing byte gets a random non-zero byte.
void FillRandom(char* dst, int64_t bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  for (int64_t i = 0; i + 1 < bytes; i += 2) {
    fp16_t h = FloatToHalf(u(rng));
    if ((h & 0x7fff) == 0) h = 0x3c00;
    std::memcpy(dst + i, &h, 2);
  }
  if (bytes % 2) dst[bytes - 1] = static_cast<char>(1 + rng() % 255);
}

void FillAll(const HostRecords& r, uint64_t seed) {
  for (int64_t i = 0; i < r.size(); ++i) FillRandom(r.Get(i), r.bytes(), seed * 1000003 + i);
}

// Index of the first record whose bytes differ, or -1.
int64_t FirstMismatch(const HostRecords& a, const HostRecords& b) {
  for (int64_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(a.Get(i), b.Get(i), size_t(a.bytes())) != 0) return i;
  }
  return -1;
}

struct Mode {
  bool thread_pool;
  bool direct;
};

std::string ModeName(const Mode& m) {
  return std::string(m.thread_pool ? "Threads" : "IoUring") + (m.direct ? "Direct" : "Buffered");
}

class DiskTierTest : public ::testing::TestWithParam<Mode> {
 protected:
  DiskTierOptions Options(int64_t record_bytes, int64_t capacity_records,
                          int32_t queue_depth = 8) {
    DiskTierOptions o;
    o.path = dir_.path();
    o.record_bytes = record_bytes;
    o.capacity_bytes = capacity_records * ((record_bytes + 4095) / 4096 * 4096);
    o.queue_depth = queue_depth;
    o.force_thread_pool = GetParam().thread_pool;
    o.try_direct_io = GetParam().direct;
    o.injector = &injector_;
    return o;
  }

  std::unique_ptr<DiskTier> Make(const DiskTierOptions& o) {
    auto tier = DiskTier::Create(o);
    EXPECT_TRUE(tier.ok()) << tier.status();
    if (!tier.ok()) return nullptr;
    if (GetParam().thread_pool) {
      EXPECT_EQ((*tier)->engine(), DiskEngine::kThreadPool);
      EXPECT_EQ((*tier)->fallback_reason(), "forced by option");
    }
    if (!GetParam().direct) {
      EXPECT_FALSE((*tier)->direct_io());
    }
    return std::move(*tier);
  }

  // Skips io_uring modes where the kernel or seccomp refuses io_uring (the fallback is
  // then what production gets, and the thread-pool modes test it).
  bool UringUnavailable(const DiskTier& tier) {
    return !GetParam().thread_pool && tier.engine() != DiskEngine::kIoUring;
  }

  TempDir dir_{"twl-disk-test"};
  FaultInjector injector_;
};

#define MAKE_TIER_OR_SKIP(var, options)                                               \
  auto var = Make(options);                                                           \
  ASSERT_NE(var, nullptr);                                                            \
  if (UringUnavailable(*var)) {                                                       \
    GTEST_SKIP() << "io_uring: " << var->fallback_reason();                           \
  }

TEST_P(DiskTierTest, RoundTripsManyRecordsOfSeveralSizesAndAlignments) {
  ASSERT_FALSE(dir_.path().empty());
  // 64 KiB: one page of 8 KV heads (head_dim 128, page 16); 3000: not a multiple of 4 KiB
  // (bounced under O_DIRECT); 12 KiB: aligned, odd number of 4 KiB blocks.
  for (const int64_t bytes : {int64_t(65536), int64_t(3000), int64_t(12288)}) {
    for (const int64_t offset : {int64_t(0), int64_t(16)}) {
      SCOPED_TRACE(::testing::Message() << "record_bytes " << bytes << " offset " << offset);
      const int64_t n = bytes >= 65536 ? 96 : 300;
      MAKE_TIER_OR_SKIP(tier, Options(bytes, n + 5));
      HostRecords src(n, bytes, offset), dst(n, bytes, offset);
      FillAll(src, uint64_t(bytes + offset));
      FillAll(dst, 7);  // different from src everywhere
      std::vector<int64_t> records;
      ASSERT_TRUE(tier->Write(src.Pointers(), &records).ok());
      ASSERT_EQ(int64_t(records.size()), n);
      std::vector<int64_t> sorted = records;
      std::sort(sorted.begin(), sorted.end());
      EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end());
      EXPECT_EQ(tier->num_used(), n);
      // Read back in a shuffled order.
      std::vector<DiskReadOp> reads(n);
      std::vector<int64_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937(int(bytes)));
      for (int64_t k = 0; k < n; ++k) reads[k] = {records[order[k]], dst.Get(order[k])};
      ASSERT_TRUE(tier->Read(reads).ok());
      EXPECT_EQ(FirstMismatch(src, dst), -1);
      const DiskTierStats st = tier->stats();
      EXPECT_EQ(st.writes, n);
      EXPECT_EQ(st.reads, n);
      EXPECT_EQ(st.bytes_written, n * bytes);
      const bool bounced = tier->direct_io() && (bytes % 4096 != 0 || offset != 0);
      EXPECT_EQ(st.bounced, bounced ? 2 * n : 0);
    }
  }
}

TEST_P(DiskTierTest, BatchesLargerThanTheQueueDepthAndPoll) {
  for (const int32_t depth : {1, 3}) {
    const int64_t n = 50, bytes = 8192;
    MAKE_TIER_OR_SKIP(tier, Options(bytes, n, depth));
    EXPECT_EQ(tier->queue_depth(), depth);
    HostRecords src(n, bytes, 0), dst(n, bytes, 0);
    FillAll(src, 11 + depth);
    std::vector<int64_t> records;
    auto t = tier->WriteAsync(src.Pointers(), &records);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(int64_t(records.size()), n);  // known before completion
    while (true) {
      auto done = tier->Poll(*t);
      ASSERT_TRUE(done.ok());
      if (*done) break;
      std::this_thread::yield();
    }
    EXPECT_TRUE(tier->Wait(*t).ok());
    EXPECT_EQ(tier->Wait(*t).code(), absl::StatusCode::kNotFound);  // a ticket is waited once
    EXPECT_EQ(tier->Poll(*t).status().code(), absl::StatusCode::kNotFound);
    std::vector<DiskReadOp> reads;
    for (int64_t i = 0; i < n; ++i) reads.push_back({records[i], dst.Get(i)});
    ASSERT_TRUE(tier->Read(reads).ok());
    EXPECT_EQ(FirstMismatch(src, dst), -1);
    // Capacity exactly n: the tier is full now.
    EXPECT_EQ(tier->num_free(), 0);
  }
}

TEST_P(DiskTierTest, EmptyBatchesAreValidTickets) {
  MAKE_TIER_OR_SKIP(tier, Options(4096, 4));
  std::vector<int64_t> records;
  auto w = tier->WriteAsync({}, &records);
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(*tier->Poll(*w));
  EXPECT_TRUE(tier->Wait(*w).ok());
  EXPECT_TRUE(tier->Read({}).ok());
  EXPECT_TRUE(records.empty());
}

TEST_P(DiskTierTest, ConcurrentBatchesFromManyThreads) {
  const int kThreads = 4, kRounds = 6, kPerBatch = 12;
  const int64_t bytes = 16384;
  MAKE_TIER_OR_SKIP(tier, Options(bytes, kThreads * kPerBatch * 2, 8));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        HostRecords src(kPerBatch, bytes, 0), dst(kPerBatch, bytes, 0);
        FillAll(src, uint64_t(t * 100 + round + 1));
        std::vector<int64_t> records;
        auto w = tier->WriteAsync(src.Pointers(), &records);
        if (!w.ok() || !tier->Wait(*w).ok()) {
          ++failures;
          continue;
        }
        std::vector<DiskReadOp> reads;
        for (int i = 0; i < kPerBatch; ++i) reads.push_back({records[i], dst.Get(i)});
        if (!tier->Read(reads).ok() || FirstMismatch(src, dst) != -1) ++failures;
        if (!tier->Free(records).ok()) ++failures;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(tier->num_used(), 0);
  EXPECT_EQ(tier->stats().writes, kThreads * kRounds * kPerBatch);
}

TEST_P(DiskTierTest, ByteLimitGivesDiskTierFullAndFreeingMakesRoom) {
  const int64_t bytes = 6000;  // stride 8 KiB
  DiskTierOptions o = Options(bytes, 1);
  o.capacity_bytes = 8192 * 2 + 5000;  // room for 2 records, not 3
  MAKE_TIER_OR_SKIP(tier, o);
  EXPECT_EQ(tier->record_stride(), 8192);
  EXPECT_EQ(tier->capacity(), 2);
  HostRecords src(4, bytes, 0), dst(4, bytes, 0);
  FillAll(src, 3);
  std::vector<const void*> p = src.Pointers();
  std::vector<int64_t> records = {99};  // kept as is on failure
  absl::Status s = tier->Write({p[0], p[1], p[2]}, &records);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("disk tier full"), std::string::npos) << s.message();
  EXPECT_EQ(records, std::vector<int64_t>{99});
  EXPECT_EQ(tier->num_used(), 0);
  records.clear();
  ASSERT_TRUE(tier->Write({p[0], p[1]}, &records).ok());
  EXPECT_EQ(tier->Write({p[2]}, &records).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(tier->Free({records[0]}).ok());
  std::vector<int64_t> more;
  ASSERT_TRUE(tier->Write({p[2]}, &more).ok());
  ASSERT_TRUE(tier->Read({{records[1], dst.Get(1)}, {more[0], dst.Get(2)}}).ok());
  EXPECT_EQ(std::memcmp(src.Get(1), dst.Get(1), bytes), 0);
  EXPECT_EQ(std::memcmp(src.Get(2), dst.Get(2), bytes), 0);
}

// Writes `n` records, the k-th (0-based) failing with `err` by injection; checks the batch
// status, that only that record went back to the free list, that the others read back
// correctly, and that the freed record is reused correctly afterwards.
void CheckFailedWrite(DiskTier* tier, FaultInjector* inj, int err, int64_t n, int64_t k,
                      absl::StatusCode expected, const std::string& text) {
  const int64_t bytes = tier->record_bytes();
  HostRecords before(3, bytes, 0), src(n, bytes, 0), dst(n, bytes, 0);
  FillAll(before, 501);
  FillAll(src, 502);
  std::vector<int64_t> early;
  ASSERT_TRUE(tier->Write(before.Pointers(), &early).ok());
  const int64_t used = tier->num_used();
  inj->FailNth(FaultSite::kDiskWrite, k + 1, err);
  std::vector<int64_t> records;
  std::vector<absl::Status> per_op;
  absl::Status s = tier->Write(src.Pointers(), &records, &per_op);
  EXPECT_EQ(s.code(), expected) << s;
  EXPECT_NE(s.message().find(text), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("record " + std::to_string(records[k])), std::string::npos)
      << s.message();
  ASSERT_EQ(int64_t(per_op.size()), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(per_op[i].ok(), i != k) << i;
  EXPECT_EQ(tier->num_used(), used + n - 1);
  EXPECT_EQ(tier->stats().write_errors, 1);
  // The failed record is free again: it cannot be read, and cannot be freed twice.
  EXPECT_EQ(tier->Read({{records[k], dst.Get(k)}}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tier->Free({records[k]}).code(), absl::StatusCode::kFailedPrecondition);
  // Everything else, written before or in the same batch, is intact.
  std::vector<DiskReadOp> reads;
  for (int64_t i = 0; i < n; ++i) {
    if (i != k) reads.push_back({records[i], dst.Get(i)});
  }
  ASSERT_TRUE(tier->Read(reads).ok());
  for (int64_t i = 0; i < n; ++i) {
    if (i != k) {
      EXPECT_EQ(std::memcmp(src.Get(i), dst.Get(i), bytes), 0) << i;
    }
  }
  HostRecords back(3, bytes, 0);
  ASSERT_TRUE(tier->Read({{early[0], back.Get(0)}, {early[1], back.Get(1)},
                          {early[2], back.Get(2)}})
                  .ok());
  EXPECT_EQ(FirstMismatch(before, back), -1);
  // The caller's host copy is authoritative: writing it again succeeds.
  std::vector<int64_t> again;
  ASSERT_TRUE(tier->Write({src.Get(k)}, &again).ok());
  ASSERT_TRUE(tier->Read({{again[0], dst.Get(k)}}).ok());
  EXPECT_EQ(std::memcmp(src.Get(k), dst.Get(k), bytes), 0);
}

TEST_P(DiskTierTest, InjectedEnospcOnWriteIsDiskTierFull) {
  MAKE_TIER_OR_SKIP(tier, Options(65536, 40));
  CheckFailedWrite(tier.get(), &injector_, ENOSPC, 9, 4, absl::StatusCode::kResourceExhausted,
                   "disk tier full");
}

TEST_P(DiskTierTest, InjectedEioOnWriteIsInternalAndKeepsEarlierData) {
  MAKE_TIER_OR_SKIP(tier, Options(3000, 40, 2));  // bounced under O_DIRECT, queue depth 2
  CheckFailedWrite(tier.get(), &injector_, EIO, 7, 0, absl::StatusCode::kInternal,
                   "Input/output error");
}

TEST_P(DiskTierTest, InjectedShortWriteIsInternal) {
  MAKE_TIER_OR_SKIP(tier, Options(8192, 40));
  CheckFailedWrite(tier.get(), &injector_, FaultInjector::kShortTransfer, 5, 4,
                   absl::StatusCode::kInternal, "short write");
}

TEST_P(DiskTierTest, InjectedEioAndShortReadAreDataLossAndOtherReadsAreCorrect) {
  const int64_t n = 10, bytes = 65536;
  MAKE_TIER_OR_SKIP(tier, Options(bytes, n));
  HostRecords src(n, bytes, 0), dst(n, bytes, 0);
  FillAll(src, 77);
  std::vector<int64_t> records;
  ASSERT_TRUE(tier->Write(src.Pointers(), &records).ok());
  for (const int err : {EIO, FaultInjector::kShortTransfer}) {
    SCOPED_TRACE(err);
    FillAll(dst, 78);
    injector_.FailNth(FaultSite::kDiskRead, 3, err);
    std::vector<DiskReadOp> reads;
    for (int64_t i = 0; i < n; ++i) reads.push_back({records[i], dst.Get(i)});
    std::vector<absl::Status> per_op;
    absl::Status s = tier->Read(reads, &per_op);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find(err == EIO ? "Input/output error" : "short read"),
              std::string::npos)
        << s.message();
    EXPECT_NE(s.message().find("record " + std::to_string(records[2])), std::string::npos);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(per_op[i].ok(), i != 2) << i;
      if (i != 2) {
        EXPECT_EQ(std::memcmp(src.Get(i), dst.Get(i), bytes), 0) << i;
      }
    }
    // The failure was transient: the record stays allocated and reads back correctly.
    ASSERT_TRUE(tier->Read({{records[2], dst.Get(2)}}).ok());
    EXPECT_EQ(std::memcmp(src.Get(2), dst.Get(2), bytes), 0);
  }
  EXPECT_EQ(tier->num_used(), n);
  EXPECT_EQ(tier->stats().read_errors, 2);
  EXPECT_EQ(injector_.faults_injected(FaultSite::kDiskRead), 2);
}

TEST_P(DiskTierTest, PersistentWriteFailuresFailEveryWriteAndClearRecovers) {
  const int64_t bytes = 4096;
  MAKE_TIER_OR_SKIP(tier, Options(bytes, 16));
  HostRecords src(5, bytes, 0), dst(5, bytes, 0);
  FillAll(src, 91);
  std::vector<int64_t> first;
  ASSERT_TRUE(tier->Write({src.Get(0)}, &first).ok());
  injector_.FailRange(FaultSite::kDiskWrite, 1, -1, ENOSPC);
  std::vector<int64_t> records;
  std::vector<absl::Status> per_op;
  EXPECT_EQ(tier->Write({src.Get(1), src.Get(2), src.Get(3)}, &records, &per_op).code(),
            absl::StatusCode::kResourceExhausted);
  for (const absl::Status& s : per_op) EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tier->num_used(), 1);
  injector_.Clear();
  records.clear();
  ASSERT_TRUE(tier->Write({src.Get(4)}, &records).ok());
  ASSERT_TRUE(tier->Read({{first[0], dst.Get(0)}, {records[0], dst.Get(4)}}).ok());
  EXPECT_EQ(std::memcmp(src.Get(0), dst.Get(0), bytes), 0);
  EXPECT_EQ(std::memcmp(src.Get(4), dst.Get(4), bytes), 0);
}

TEST_P(DiskTierTest, FileTruncatedUnderTheTierGivesShortReadDataLoss) {
  const int64_t bytes = 8192;
  MAKE_TIER_OR_SKIP(tier, Options(bytes, 8));
  HostRecords src(4, bytes, 0), dst(4, bytes, 0);
  FillAll(src, 5);
  std::vector<int64_t> records;
  ASSERT_TRUE(tier->Write(src.Pointers(), &records).ok());
  // Keep records 0 and 1 on disk, cut the rest away: a real short read (0 bytes at EOF).
  ASSERT_EQ(ftruncate(tier->fd_for_testing(), 2 * tier->record_stride()), 0);
  std::vector<absl::Status> per_op;
  absl::Status s = tier->Read({{records[0], dst.Get(0)}, {records[3], dst.Get(3)},
                               {records[1], dst.Get(1)}},
                              &per_op);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("short read of record " + std::to_string(records[3])),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(per_op[0].ok());
  EXPECT_TRUE(per_op[2].ok());
  EXPECT_EQ(std::memcmp(src.Get(0), dst.Get(0), bytes), 0);
  EXPECT_EQ(std::memcmp(src.Get(1), dst.Get(1), bytes), 0);
}

TEST_P(DiskTierTest, RandomFaultsUnderConcurrencyNeverCorruptData) {
  const int kThreads = 3, kRounds = 8, kPerBatch = 10;
  const int64_t bytes = 12288;
  MAKE_TIER_OR_SKIP(tier, Options(bytes, kThreads * kPerBatch * 2, 4));
  injector_.FailRange(FaultSite::kDiskWrite, 7, 3, EIO);
  injector_.FailRange(FaultSite::kDiskWrite, 50, 2, ENOSPC);
  injector_.FailRange(FaultSite::kDiskRead, 11, 4, EIO);
  injector_.FailNth(FaultSite::kDiskRead, 40, FaultInjector::kShortTransfer);
  std::atomic<int> corrupt{0}, write_fail{0}, read_fail{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        HostRecords src(kPerBatch, bytes, 0), dst(kPerBatch, bytes, 0);
        FillAll(src, uint64_t(1000 + t * 50 + round));
        std::vector<int64_t> records;
        std::vector<absl::Status> wst, rst;
        if (!tier->Write(src.Pointers(), &records, &wst).ok()) ++write_fail;
        if (wst.size() != size_t(kPerBatch)) {  // the batch was refused as a whole
          ++corrupt;
          continue;
        }
        std::vector<DiskReadOp> reads;
        std::vector<int64_t> which, ok_records;
        for (int i = 0; i < kPerBatch; ++i) {
          if (!wst[i].ok()) continue;
          reads.push_back({records[i], dst.Get(i)});
          which.push_back(i);
          ok_records.push_back(records[i]);
        }
        if (!tier->Read(reads, &rst).ok()) ++read_fail;
        for (size_t j = 0; j < which.size(); ++j) {
          if (rst[j].ok() &&
              std::memcmp(src.Get(which[j]), dst.Get(which[j]), size_t(bytes)) != 0) {
            ++corrupt;
          }
        }
        if (!tier->Free(ok_records).ok()) ++corrupt;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(corrupt.load(), 0);
  EXPECT_GE(write_fail.load(), 1);
  EXPECT_GE(read_fail.load(), 1);
  EXPECT_EQ(tier->stats().write_errors, 5);
  EXPECT_EQ(tier->stats().read_errors, 5);
  EXPECT_EQ(tier->num_used(), 0);
}

TEST_P(DiskTierTest, MisuseReturnsStatusesAndChangesNothing) {
  const int64_t bytes = 4096;
  MAKE_TIER_OR_SKIP(tier, Options(bytes, 4));
  HostRecords src(2, bytes, 0), dst(2, bytes, 0);
  FillAll(src, 1);
  std::vector<int64_t> records;
  ASSERT_TRUE(tier->Write(src.Pointers(), &records).ok());
  EXPECT_EQ(tier->WriteAsync({src.Get(0), nullptr}, &records).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->WriteAsync({src.Get(0)}, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->Read({{4, dst.Get(0)}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->Read({{-1, dst.Get(0)}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->Read({{records[0], nullptr}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->Read({{2, dst.Get(0)}}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tier->Free({records[0], records[0]}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tier->Free({records[1], 17}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier->num_used(), 2);
  EXPECT_EQ(tier->Wait(12345).code(), absl::StatusCode::kNotFound);
  // Both records still hold their data.
  ASSERT_TRUE(tier->Read({{records[0], dst.Get(0)}, {records[1], dst.Get(1)}}).ok());
  EXPECT_EQ(FirstMismatch(src, dst), -1);
  EXPECT_EQ(tier->stats().writes, 2);
}

TEST_P(DiskTierTest, DestroyingWithOperationsInFlightWaitsForThem) {
  const int64_t n = 64, bytes = 65536;
  HostRecords src(n, bytes, 0);
  FillAll(src, 2);
  {
    MAKE_TIER_OR_SKIP(tier, Options(bytes, n, 2));
    std::vector<int64_t> records;
    ASSERT_TRUE(tier->WriteAsync(src.Pointers(), &records).ok());
  }  // the destructor drains the queue; src outlives it
  SUCCEED();
}

INSTANTIATE_TEST_SUITE_P(Engines, DiskTierTest,
                         ::testing::Values(Mode{false, true}, Mode{false, false},
                                           Mode{true, true}, Mode{true, false}),
                         [](const ::testing::TestParamInfo<Mode>& info) {
                           return ModeName(info.param);
                         });

TEST(DiskTierCreate, RejectsBadOptions) {
  TempDir dir("twl-disk-test");
  DiskTierOptions o;
  o.path = dir.path();
  o.record_bytes = 0;
  o.capacity_bytes = 1 << 20;
  EXPECT_EQ(DiskTier::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.record_bytes = 5000;
  o.capacity_bytes = 8191;  // less than one 8 KiB stride
  EXPECT_EQ(DiskTier::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.capacity_bytes = 8192;
  o.queue_depth = 0;
  EXPECT_EQ(DiskTier::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.queue_depth = 4;
  o.path = dir.path() + "/no/such/dir/file";
  EXPECT_EQ(DiskTier::Create(o).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(DiskTierCreate, PreallocatesTheCapacityAndRefusesWhatCannotFit) {
  TempDir dir("twl-disk-test");
  DiskTierOptions o;
  o.path = dir.path();
  o.record_bytes = 5000;  // stride 8 KiB
  o.capacity_bytes = 100 * 8192 + 100;
  auto tier = DiskTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  EXPECT_EQ((*tier)->capacity(), 100);
  if ((*tier)->preallocated()) {
    struct stat st;
    ASSERT_EQ(fstat((*tier)->fd_for_testing(), &st), 0);
    EXPECT_EQ(st.st_size, 100 * 8192);
  }
  // Twice the free space of the filesystem: refused before any byte is reserved.
  struct statvfs fs;
  ASSERT_EQ(statvfs(dir.path().c_str(), &fs), 0);
  const int64_t twice_free = 2 * int64_t(fs.f_bavail) * int64_t(fs.f_frsize);
  o.record_bytes = 1 << 20;
  o.capacity_bytes = std::max<int64_t>(twice_free, int64_t(1) << 30);
  absl::StatusOr<std::unique_ptr<DiskTier>> big = DiskTier::Create(o);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(big.status().message().find("disk tier full"), std::string::npos);
  // Too many records to track.
  o.record_bytes = 4096;
  o.capacity_bytes = int64_t(4096) << 32;
  EXPECT_EQ(DiskTier::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  // Without preallocation a tier larger than the disk is created; writes would find out.
  o.record_bytes = 1 << 20;
  o.capacity_bytes = std::max<int64_t>(twice_free, int64_t(1) << 30);
  o.preallocate = false;
  auto lazy = DiskTier::Create(o);
  ASSERT_TRUE(lazy.ok()) << lazy.status();
  EXPECT_FALSE((*lazy)->preallocated());
}

TEST(DiskTierCreate, FileIsUnlinkedUnlessKept) {
  TempDir dir("twl-disk-test");
  DiskTierOptions o;
  o.record_bytes = 4096;
  o.capacity_bytes = 1 << 20;
  o.path = dir.path();
  auto a = DiskTier::Create(o);
  ASSERT_TRUE(a.ok()) << a.status();
  struct stat st;
  EXPECT_NE(stat((*a)->path().c_str(), &st), 0);  // a cache, not storage: gone already
  EXPECT_EQ((*a)->path().rfind(dir.path() + "/twl-kv-", 0), 0u) << (*a)->path();
  o.path = dir.path() + "/kept.kv";
  o.keep_file = true;
  auto b = DiskTier::Create(o);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(stat(o.path.c_str(), &st), 0);
  EXPECT_EQ((*b)->capacity(), 256);
}

TEST(DiskTierCreate, ProcessInjectorIsUsedByDefault) {
  TempDir dir("twl-disk-test");
  DiskTierOptions o;
  o.path = dir.path();
  o.record_bytes = 4096;
  o.capacity_bytes = 16 * 4096;
  auto tier = DiskTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  HostRecords src(2, 4096, 0);
  FillAll(src, 4);
  ProcessFaultInjector().FailNth(FaultSite::kDiskWrite, 2, EIO);
  std::vector<int64_t> records;
  std::vector<absl::Status> per_op;
  absl::Status s = (*tier)->Write(src.Pointers(), &records, &per_op);
  ProcessFaultInjector().Clear();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(per_op[0].ok());
  EXPECT_FALSE(per_op[1].ok());
}

TEST(DiskTierCreate, ReportsTheEngine) {
  TempDir dir("twl-disk-test");
  DiskTierOptions o;
  o.path = dir.path();
  o.record_bytes = 4096;
  o.capacity_bytes = 4096;
  auto tier = DiskTier::Create(o);
  ASSERT_TRUE(tier.ok()) << tier.status();
  const DiskTier& t = **tier;
  if (t.engine() == DiskEngine::kIoUring) {
    EXPECT_STREQ(t.engine_name(), "io_uring");
    EXPECT_TRUE(t.fallback_reason().empty());
  } else {
    EXPECT_STREQ(t.engine_name(), "pread/pwrite threads");
    EXPECT_NE(t.fallback_reason().find("io_uring_queue_init"), std::string::npos);
  }
}

// In a child process whose seccomp filter refuses io_uring_setup with EPERM (as Docker's
// default profile does), a tier falls back to the threads, says why, and round-trips data.
// Exit code: 0 ok, 10+ the failed check.
int ChildWithIoUringForbidden(const std::string& dir) {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])),
                            filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 10;
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return 11;
  DiskTierOptions o;
  o.path = dir;
  o.record_bytes = 3000;
  o.capacity_bytes = 64 * 4096;
  auto tier = DiskTier::Create(o);
  if (!tier.ok()) return 12;
  if ((*tier)->engine() != DiskEngine::kThreadPool) return 13;
  if ((*tier)->fallback_reason().find("io_uring_queue_init: Operation not permitted") ==
      std::string::npos) {
    return 14;
  }
  HostRecords src(20, 3000, 8), dst(20, 3000, 8);
  FillAll(src, 31);
  std::vector<int64_t> records;
  if (!(*tier)->Write(src.Pointers(), &records).ok()) return 15;
  std::vector<DiskReadOp> reads;
  for (int i = 0; i < 20; ++i) reads.push_back({records[i], dst.Get(i)});
  if (!(*tier)->Read(reads).ok()) return 16;
  return FirstMismatch(src, dst) == -1 ? 0 : 17;
}

TEST(DiskTierCreate, FallsBackWhenSeccompForbidsIoUring) {
  TempDir dir("twl-disk-test");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(ChildWithIoUringForbidden(dir.path()));
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "failed check " << WEXITSTATUS(status);
}

TEST(FaultInjector, CountsFromNowAndFiresExactlyInRange) {
  FaultInjector inj;
  EXPECT_EQ(inj.Check(FaultSite::kDiskRead), 0);
  inj.FailRange(FaultSite::kDiskRead, 2, 3, EIO);  // reads 3, 4, 5 overall
  std::vector<int> got;
  for (int i = 0; i < 6; ++i) got.push_back(inj.Check(FaultSite::kDiskRead));
  EXPECT_EQ(got, (std::vector<int>{0, EIO, EIO, EIO, 0, 0}));
  EXPECT_EQ(inj.Check(FaultSite::kDiskWrite), 0);  // other site unaffected
  EXPECT_EQ(inj.ops_seen(FaultSite::kDiskRead), 7);
  EXPECT_EQ(inj.faults_injected(FaultSite::kDiskRead), 3);
  EXPECT_EQ(inj.faults_injected(FaultSite::kDiskWrite), 0);
}

}  // namespace
}  // namespace twl
