// Fault injection through the public C API: every injected failure comes back as the status
// twilight.h documents, with a message, and what was appended before stays readable (bit for
// bit) and decodes to the same output. Faults:
//   - host pool allocation failure at runtime creation, at each of the CPU backend's arenas in
//     turn (cache/host_arena.h SetHostAllocLimitForTesting): nothing leaks, other runtimes are
//     untouched;
//   - a backend write failure inside an append, a copy-on-write and a restore
//     (runtime/cpu_backend.h SetCpuBackendWriteFailureForTesting): all-or-nothing;
//   - the pool running full in the middle of a restore;
//   - file I/O errors of save (a file size limit: EFBIG) and restore (unreadable paths);
//   - the disk tier's injected I/O errors (offload/fault_injection.h), mapped to C API codes,
//     on the tier itself and behind a runtime with a disk tier (append, decode, read_kv).
// This binary links the C API statically (tests/fuzz/CMakeLists.txt) so that the hooks, which
// libtwilight.so does not export, reach the same copy of the core as the C entry points.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "api/status_map.h"
#include "cache/host_arena.h"
#include "gtest/gtest.h"
#include "offload/disk_tier.h"
#include "offload/fault_injection.h"
#include "runtime/cpu_backend.h"
#include "twilight.h"

namespace {

namespace fs = std::filesystem;

twl_runtime_config SmallConfig() {
  twl_runtime_config c = twl_runtime_config_default();
  c.num_layers = 2;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.page_size = 8;
  c.backend = TWL_BACKEND_CPU;
  c.host_pool_bytes = 256 << 10;  // 128 pages of 8 tokens
  return c;
}

struct RtDeleter {
  void operator()(twl_runtime* rt) const { twl_runtime_free(rt); }
};
using RtPtr = std::unique_ptr<twl_runtime, RtDeleter>;

RtPtr Create(const twl_runtime_config& c) {
  twl_runtime* rt = nullptr;
  const twl_status s = twl_runtime_create(&c, &rt);
  EXPECT_EQ(s, TWL_OK) << twl_runtime_last_error(nullptr);
  return RtPtr(rt);
}

std::vector<uint16_t> RandomHalf(std::mt19937* rng, size_t n) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> f(n);
  for (float& x : f) x = dist(*rng);
  std::vector<uint16_t> h(n);
  twl_fp32_to_fp16(f.data(), h.data(), n);
  return h;
}

// What one (sequence, layer) holds, read through the API.
struct LayerKv {
  int32_t len = -1;
  std::vector<uint16_t> k, v;
  bool operator==(const LayerKv& o) const { return len == o.len && k == o.k && v == o.v; }
};

LayerKv Read(twl_runtime* rt, twl_seq_id seq, int32_t layer) {
  LayerKv kv;
  int32_t len = 0;
  EXPECT_EQ(twl_sequence_read_kv(rt, seq, layer, nullptr, nullptr, 0, &len), TWL_OK)
      << twl_runtime_last_error(rt);
  twl_runtime_config c;
  c.struct_size = sizeof(c);
  EXPECT_EQ(twl_runtime_get_config(rt, &c), TWL_OK);
  kv.k.resize(size_t(len) * c.num_kv_heads * c.head_dim);
  kv.v.resize(kv.k.size());
  EXPECT_EQ(twl_sequence_read_kv(rt, seq, layer, kv.k.data(), kv.v.data(), len, &kv.len), TWL_OK)
      << twl_runtime_last_error(rt);
  return kv;
}

int64_t PoolUsed(twl_runtime* rt) {
  twl_memory_usage m;
  m.struct_size = sizeof(m);
  EXPECT_EQ(twl_runtime_memory(rt, &m), TWL_OK);
  return m.host_pool_bytes_used;
}

// A runtime holding two sequences (one a fork of the other, sharing a partial page) with
// random K/V in both layers, plus a fixed query: the state every fault must leave intact.
class Fixture {
 public:
  explicit Fixture(uint32_t seed) : rng_(seed) {
    rt_ = Create(SmallConfig());
    c_.struct_size = sizeof(c_);
    EXPECT_EQ(twl_runtime_get_config(rt_.get(), &c_), TWL_OK);
    tok_ = size_t(c_.num_kv_heads) * c_.head_dim;
    EXPECT_EQ(twl_sequence_create(rt_.get(), &a_), TWL_OK);
    for (int32_t layer = 0; layer < 2; ++layer) EXPECT_EQ(Append(a_, layer, 21 + layer), TWL_OK);
    EXPECT_EQ(twl_sequence_fork(rt_.get(), a_, &b_), TWL_OK);
    q_ = RandomHalf(&rng_, 2 * size_t(c_.num_q_heads) * c_.head_dim);
    before_ = Snapshot();
  }

  twl_runtime* rt() { return rt_.get(); }
  twl_seq_id a() const { return a_; }
  twl_seq_id b() const { return b_; }
  const twl_runtime_config& config() const { return c_; }

  twl_status Append(twl_seq_id seq, int32_t layer, int32_t n) {
    const std::vector<uint16_t> k = RandomHalf(&rng_, size_t(n) * tok_);
    const std::vector<uint16_t> v = RandomHalf(&rng_, size_t(n) * tok_);
    return twl_sequence_append(rt_.get(), seq, layer, n, k.data(), v.data(), TWL_DTYPE_FP16,
                               TWL_MEMORY_HOST);
  }

  struct State {
    std::vector<LayerKv> kv;              // a layer 0, a layer 1, b layer 0, b layer 1
    std::vector<uint16_t> out0, out1;     // decode of {a, b} per layer
    int64_t pool_used = 0;
  };

  State Snapshot() {
    State s;
    for (twl_seq_id seq : {a_, b_}) {
      for (int32_t layer = 0; layer < 2; ++layer) s.kv.push_back(Read(rt_.get(), seq, layer));
    }
    for (int32_t layer = 0; layer < 2; ++layer) {
      std::vector<uint16_t>& out = layer == 0 ? s.out0 : s.out1;
      out.assign(q_.size(), 0);
      const twl_seq_id seqs[2] = {a_, b_};
      EXPECT_EQ(twl_decode(rt_.get(), layer, seqs, 2, q_.data(), out.data(), TWL_MEMORY_HOST,
                           nullptr, nullptr),
                TWL_OK)
          << twl_runtime_last_error(rt_.get());
    }
    s.pool_used = PoolUsed(rt_.get());
    return s;
  }

  // The state after a failed call equals the state before it.
  void ExpectIntact(const char* what) {
    const State now = Snapshot();
    ASSERT_EQ(now.kv.size(), before_.kv.size());
    for (size_t i = 0; i < now.kv.size(); ++i) {
      EXPECT_TRUE(now.kv[i] == before_.kv[i]) << what << ": K/V " << i << " changed";
    }
    EXPECT_EQ(now.out0, before_.out0) << what << ": layer 0 decode changed";
    EXPECT_EQ(now.out1, before_.out1) << what << ": layer 1 decode changed";
    EXPECT_EQ(now.pool_used, before_.pool_used) << what << ": pool use changed";
  }

  void Rebase() { before_ = Snapshot(); }

 private:
  std::mt19937 rng_;
  RtPtr rt_;
  twl_runtime_config c_{};
  size_t tok_ = 0;
  twl_seq_id a_ = -1, b_ = -1;
  std::vector<uint16_t> q_;
  State before_;
};

#define EXPECT_FAILS_WITH(call, code, rt, fn)                                        \
  do {                                                                               \
    const twl_status status_ = (call);                                               \
    EXPECT_EQ(status_, (code)) << #call << ": " << twl_runtime_last_error(rt);        \
    EXPECT_EQ(std::string(twl_runtime_last_error(rt)).rfind(fn, 0), 0u)              \
        << #call << ": message '" << twl_runtime_last_error(rt) << "'";              \
  } while (0)

// Resets the hooks even when an assertion returns early.
struct HookGuard {
  ~HookGuard() {
    twl::SetHostAllocLimitForTesting(-1);
    twl::SetCpuBackendWriteFailureForTesting(-1);
  }
};

TEST(CapiFaults, HostPoolAllocationFailureAtEveryArenaLeaksNothing) {
  HookGuard guard;
  Fixture fx(1);
  // Bytes one more runtime of this configuration takes: measured, not assumed.
  const int64_t base = twl::HostBytesInUse(twl::HostMemKind::kAligned);
  int64_t need = 0;
  {
    RtPtr probe = Create(SmallConfig());
    need = twl::HostBytesInUse(twl::HostMemKind::kAligned) - base;
  }
  ASSERT_GT(need, 0);
  ASSERT_EQ(twl::HostBytesInUse(twl::HostMemKind::kAligned), base);
  // Limits from "nothing fits" to "one byte short": the failure moves through the arenas
  // (FP16 blocks, codes, scale, zero, min, max), each partially built runtime must unwind.
  std::vector<int64_t> steps;
  for (int64_t allowed = 0; allowed < need; allowed += std::max<int64_t>(need / 100, 1)) {
    steps.push_back(allowed);
  }
  steps.push_back(need - 1);
  for (int64_t allowed : steps) {
    twl::SetHostAllocLimitForTesting(base + std::max<int64_t>(allowed, 0));
    twl_runtime_config c = SmallConfig();
    twl_runtime* rt = reinterpret_cast<twl_runtime*>(&c);  // must be overwritten
    const twl_status s = twl_runtime_create(&c, &rt);
    twl::SetHostAllocLimitForTesting(-1);
    EXPECT_TRUE(s == TWL_CAPACITY_EXHAUSTED || s == TWL_OUT_OF_MEMORY)
        << "limit +" << allowed << ": " << twl_status_string(s);
    EXPECT_EQ(rt, nullptr);
    EXPECT_EQ(std::string(twl_runtime_last_error(nullptr)).rfind("twl_runtime_create", 0), 0u)
        << twl_runtime_last_error(nullptr);
    EXPECT_EQ(twl::HostBytesInUse(twl::HostMemKind::kAligned), base)
        << "a failed create at limit +" << allowed << " leaked host memory";
  }
  fx.ExpectIntact("failed runtime creations");
  // With the limit lifted the same configuration works, and the old runtime still appends.
  RtPtr again = Create(SmallConfig());
  EXPECT_NE(again, nullptr);
  EXPECT_EQ(fx.Append(fx.a(), 0, 3), TWL_OK) << twl_runtime_last_error(fx.rt());
}

TEST(CapiFaults, BackendWriteFailureInAppendChangesNothing) {
  HookGuard guard;
  Fixture fx(2);
  for (int32_t n : {1, 7, 30}) {  // within the partial page, filling it, spilling to new pages
    twl::SetCpuBackendWriteFailureForTesting(0);
    EXPECT_FAILS_WITH(fx.Append(fx.a(), 1, n), TWL_INTERNAL, fx.rt(), "twl_sequence_append");
    twl::SetCpuBackendWriteFailureForTesting(-1);
    fx.ExpectIntact("failed append");
  }
  // b shares a's partial last page: its first append copies that page first (copy-on-write).
  // Fail the copy (the 1st write) and then the append after a successful copy (the 2nd).
  for (int32_t fail_after : {0, 1}) {
    twl::SetCpuBackendWriteFailureForTesting(fail_after);
    EXPECT_FAILS_WITH(fx.Append(fx.b(), 0, 2), TWL_INTERNAL, fx.rt(), "twl_sequence_append");
    twl::SetCpuBackendWriteFailureForTesting(-1);
    fx.ExpectIntact(fail_after == 0 ? "failed copy-on-write" : "failed append after the copy");
  }
  // Afterwards both sequences take appends again, independently.
  EXPECT_EQ(fx.Append(fx.b(), 0, 2), TWL_OK) << twl_runtime_last_error(fx.rt());
  EXPECT_EQ(Read(fx.rt(), fx.b(), 0).len, Read(fx.rt(), fx.a(), 0).len + 2);
}

class TempDir {
 public:
  TempDir() {
    std::string t = (fs::temp_directory_path() / "twl-fault-XXXXXX").string();
    EXPECT_NE(mkdtemp(t.data()), nullptr);
    path_ = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string File(const char* name) const { return (path_ / name).string(); }
  size_t Entries() const {
    return size_t(std::distance(fs::directory_iterator(path_), fs::directory_iterator()));
  }

 private:
  fs::path path_;
};

std::vector<char> Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(CapiFaults, BackendWriteFailureInRestoreCreatesNothing) {
  HookGuard guard;
  Fixture fx(3);
  TempDir dir;
  const std::string path = dir.File("a.twl");
  ASSERT_EQ(twl_sequence_save(fx.rt(), fx.a(), path.c_str()), TWL_OK)
      << twl_runtime_last_error(fx.rt());
  fx.Rebase();
  // Restore appends layer 0 then layer 1: fail the first and the second of those writes.
  for (int32_t fail_after : {0, 1}) {
    twl::SetCpuBackendWriteFailureForTesting(fail_after);
    twl_seq_id id = 42;
    EXPECT_FAILS_WITH(twl_sequence_restore(fx.rt(), path.c_str(), &id), TWL_INTERNAL, fx.rt(),
                      "twl_sequence_restore");
    twl::SetCpuBackendWriteFailureForTesting(-1);
    EXPECT_EQ(id, TWL_INVALID_SEQ_ID);
    fx.ExpectIntact("failed restore");
  }
  twl_seq_id id = -1;
  ASSERT_EQ(twl_sequence_restore(fx.rt(), path.c_str(), &id), TWL_OK)
      << twl_runtime_last_error(fx.rt());
  for (int32_t layer = 0; layer < 2; ++layer) {
    EXPECT_TRUE(Read(fx.rt(), id, layer) == Read(fx.rt(), fx.a(), layer));
  }
}

TEST(CapiFaults, PoolFullInTheMiddleOfARestoreCreatesNothing) {
  Fixture fx(4);
  TempDir dir;
  // A long sequence in a second, small runtime of the same shape...
  twl_runtime_config small = SmallConfig();
  small.host_pool_bytes = 48 << 10;  // 24 pages
  RtPtr other = Create(small);
  twl_seq_id big = -1;
  ASSERT_EQ(twl_sequence_create(other.get(), &big), TWL_OK);
  std::mt19937 rng(9);
  const size_t tok = size_t(small.num_kv_heads) * small.head_dim;
  for (int32_t layer = 0; layer < 2; ++layer) {
    const std::vector<uint16_t> k = RandomHalf(&rng, 80 * tok), v = RandomHalf(&rng, 80 * tok);
    ASSERT_EQ(twl_sequence_append(other.get(), big, layer, 80, k.data(), v.data(),
                                  TWL_DTYPE_FP16, TWL_MEMORY_HOST),
              TWL_OK);  // 10 pages per layer
  }
  const std::string path = dir.File("big.twl");
  ASSERT_EQ(twl_sequence_save(other.get(), big, path.c_str()), TWL_OK);
  // ...then fill that runtime so that layer 0 of the file fits and layer 1 does not.
  twl_seq_id filler = -1;
  ASSERT_EQ(twl_sequence_create(other.get(), &filler), TWL_OK);
  const std::vector<uint16_t> k = RandomHalf(&rng, 24 * tok), v = RandomHalf(&rng, 24 * tok);
  ASSERT_EQ(twl_sequence_append(other.get(), filler, 0, 24, k.data(), v.data(), TWL_DTYPE_FP16,
                                TWL_MEMORY_HOST),
            TWL_OK);  // 3 pages: 24 - 20 - 3 = 1 left, then free `big`: 21 free
  ASSERT_EQ(twl_sequence_free(other.get(), big), TWL_OK);
  const std::vector<uint16_t> k2 = RandomHalf(&rng, 88 * tok), v2 = RandomHalf(&rng, 88 * tok);
  ASSERT_EQ(twl_sequence_append(other.get(), filler, 1, 88, k2.data(), v2.data(),
                                TWL_DTYPE_FP16, TWL_MEMORY_HOST),
            TWL_OK);  // 11 pages: 10 free, one layer's worth
  const int64_t used = PoolUsed(other.get());
  const LayerKv f0 = Read(other.get(), filler, 0), f1 = Read(other.get(), filler, 1);
  twl_seq_id id = 3;
  EXPECT_FAILS_WITH(twl_sequence_restore(other.get(), path.c_str(), &id), TWL_CAPACITY_EXHAUSTED,
                    other.get(), "twl_sequence_restore");
  EXPECT_EQ(id, TWL_INVALID_SEQ_ID);
  EXPECT_EQ(PoolUsed(other.get()), used) << "the half-restored sequence was not undone";
  EXPECT_TRUE(Read(other.get(), filler, 0) == f0);
  EXPECT_TRUE(Read(other.get(), filler, 1) == f1);
  fx.ExpectIntact("restore failure in another runtime");
}

TEST(CapiFaults, SaveHittingAFileSizeLimitIsIoErrorAndKeepsTheOldFile) {
  Fixture fx(5);
  TempDir dir;
  const std::string path = dir.File("a.twl");
  ASSERT_EQ(twl_sequence_save(fx.rt(), fx.b(), path.c_str()), TWL_OK);
  const std::vector<char> old = Slurp(path);
  ASSERT_GT(old.size(), 2000u);
  // Writes past 1 KiB fail with EFBIG (SIGXFSZ ignored), as on a full or quota-limited disk.
  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const twl_status s = twl_sequence_save(fx.rt(), fx.a(), path.c_str());
  const std::string message = twl_runtime_last_error(fx.rt());
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, old_handler);
  EXPECT_EQ(s, TWL_IO_ERROR) << message;
  EXPECT_EQ(message.rfind("twl_sequence_save", 0), 0u) << message;
  EXPECT_EQ(Slurp(path), old) << "a failed save changed the existing file";
  EXPECT_EQ(dir.Entries(), 1u) << "a failed save left its temporary file behind";
  fx.ExpectIntact("failed save");
  // The old file still restores to b's data.
  twl_seq_id id = -1;
  ASSERT_EQ(twl_sequence_restore(fx.rt(), path.c_str(), &id), TWL_OK)
      << twl_runtime_last_error(fx.rt());
  EXPECT_TRUE(Read(fx.rt(), id, 0) == Read(fx.rt(), fx.b(), 0));
}

TEST(CapiFaults, UnreadableRestorePathsAreIoErrors) {
  Fixture fx(6);
  TempDir dir;
  twl_seq_id id = 1;
  EXPECT_FAILS_WITH(twl_sequence_restore(fx.rt(), dir.File("missing").c_str(), &id),
                    TWL_IO_ERROR, fx.rt(), "twl_sequence_restore");
  EXPECT_EQ(id, TWL_INVALID_SEQ_ID);
  // A directory is not a regular file: refused before any read.
  const std::string sub = dir.File("sub");
  ASSERT_EQ(mkdir(sub.c_str(), 0700), 0);
  const twl_status s = twl_sequence_restore(fx.rt(), sub.c_str(), &id);
  EXPECT_EQ(s, TWL_IO_ERROR) << twl_status_string(s);
  EXPECT_EQ(id, TWL_INVALID_SEQ_ID);
  fx.ExpectIntact("failed restores");
}

// The disk tier on its own: its statuses map to C API codes (capacity full -> retry after
// freeing; a bad read -> discard; a failed write -> internal), and the records written before
// a fault keep their data. (Behind the runtime, the runtime marks its I/O failures as
// TWL_IO_ERROR: see the test below.)
TEST(CapiFaults, DiskTierFaultsMapToDocumentedCodesAndKeepEarlierRecords) {
  twl::FaultInjector injector;
  twl::DiskTierOptions options;
  TempDir dir;
  options.path = dir.File("");
  options.record_bytes = 4096;
  options.capacity_bytes = 64 * 4096;
  options.force_thread_pool = true;  // the same on every machine (io_uring may be forbidden)
  options.injector = &injector;
  auto tier = twl::DiskTier::Create(options);
  ASSERT_TRUE(tier.ok()) << tier.status();
  std::vector<std::vector<uint8_t>> data(4, std::vector<uint8_t>(4096));
  std::mt19937 rng(11);
  for (auto& d : data) {
    for (uint8_t& b : d) b = uint8_t(rng());
  }
  std::vector<const void*> src = {data[0].data(), data[1].data()};
  std::vector<int64_t> records;
  ASSERT_TRUE((*tier)->Write(src, &records).ok());

  const struct {
    twl::FaultSite site;
    int err;
    twl_status code;
  } faults[] = {
      {twl::FaultSite::kDiskWrite, ENOSPC, TWL_CAPACITY_EXHAUSTED},
      {twl::FaultSite::kDiskWrite, EIO, TWL_INTERNAL},
      {twl::FaultSite::kDiskRead, EIO, TWL_CORRUPT_DATA},
      {twl::FaultSite::kDiskRead, twl::FaultInjector::kShortTransfer, TWL_CORRUPT_DATA},
  };
  for (const auto& f : faults) {
    injector.FailNth(f.site, 1, f.err);
    absl::Status s;
    std::vector<int64_t> more;
    std::vector<uint8_t> sink(4096);
    if (f.site == twl::FaultSite::kDiskWrite) {
      std::vector<const void*> one = {data[2].data()};
      s = (*tier)->Write(one, &more);
    } else {
      std::vector<twl::DiskReadOp> op = {{records[1], sink.data()}};
      s = (*tier)->Read(op);
    }
    injector.Clear();
    EXPECT_EQ(twl::api::ToTwlStatus(s), f.code) << s;
    // Records written before the fault read back intact.
    std::vector<uint8_t> back0(4096), back1(4096);
    std::vector<twl::DiskReadOp> ops = {{records[0], back0.data()}, {records[1], back1.data()}};
    ASSERT_TRUE((*tier)->Read(ops).ok());
    EXPECT_EQ(back0, data[0]);
    EXPECT_EQ(back1, data[1]);
  }
}

// The disk tier behind the C API (config disk_path / disk_bytes, 4 host page slots): a full
// disk on a spill is TWL_CAPACITY_EXHAUSTED, a failed page write or read is TWL_IO_ERROR
// (append, decode, read_kv); the failed call changes no sequence, and once the fault clears
// the same calls work and every token reads back bit for bit.
TEST(CapiFaults, DiskTierRuntimeFaultsReturnTheirCodesAndLoseNothing) {
  struct ClearFaults {
    ~ClearFaults() { twl::ProcessFaultInjector().Clear(); }
  } clear;
  twl::FaultInjector& inj = twl::ProcessFaultInjector();
  TempDir dir;
  const std::string path = dir.File("");
  twl_runtime_config c = SmallConfig();
  c.host_pool_bytes = 4 * 2048;  // 4 pages of 8 tokens x 2 KV heads x head dim 32
  c.disk_path = path.c_str();
  c.disk_bytes = 40 * 2048;  // 40 records: pages are packed at their size
  c.top_p = 1.0f;
  c.selector = TWL_SELECTOR_FULL;
  RtPtr rt = Create(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(21);
  const size_t tok = size_t(c.num_kv_heads) * c.head_dim;
  twl_seq_id a = -1, b = -1;
  ASSERT_EQ(twl_sequence_create(rt.get(), &a), TWL_OK);
  ASSERT_EQ(twl_sequence_create(rt.get(), &b), TWL_OK);
  const std::vector<uint16_t> ka = RandomHalf(&rng, 32 * tok), va = RandomHalf(&rng, 32 * tok);
  const std::vector<uint16_t> kb = RandomHalf(&rng, 32 * tok), vb = RandomHalf(&rng, 32 * tok);
  ASSERT_EQ(twl_sequence_append(rt.get(), a, 0, 32, ka.data(), va.data(), TWL_DTYPE_FP16,
                                TWL_MEMORY_HOST),
            TWL_OK);  // fills the 4 slots
  auto append_b = [&](int32_t n) {
    return twl_sequence_append(rt.get(), b, 0, n, kb.data(), vb.data(), TWL_DTYPE_FP16,
                               TWL_MEMORY_HOST);
  };
  auto length = [&](twl_seq_id seq) {
    int32_t len = -1;
    EXPECT_EQ(twl_sequence_length(rt.get(), seq, 0, &len), TWL_OK);
    return len;
  };

  inj.FailRange(twl::FaultSite::kDiskWrite, 1, -1, ENOSPC);
  EXPECT_EQ(append_b(8), TWL_CAPACITY_EXHAUSTED) << twl_runtime_last_error(rt.get());
  EXPECT_NE(std::string(twl_runtime_last_error(rt.get())).find("disk tier full"),
            std::string::npos);
  inj.Clear();
  inj.FailNth(twl::FaultSite::kDiskWrite, 1, EIO);
  EXPECT_EQ(append_b(8), TWL_IO_ERROR) << twl_runtime_last_error(rt.get());
  inj.Clear();
  EXPECT_EQ(length(b), 0);
  ASSERT_EQ(append_b(32), TWL_OK) << twl_runtime_last_error(rt.get());  // a goes to disk

  const std::vector<uint16_t> q = RandomHalf(&rng, size_t(c.num_q_heads) * c.head_dim);
  std::vector<uint16_t> out(q.size()), out_again(q.size());
  inj.FailRange(twl::FaultSite::kDiskRead, 1, -1, EIO);
  EXPECT_EQ(twl_decode(rt.get(), 0, &a, 1, q.data(), out.data(), TWL_MEMORY_HOST, nullptr,
                       nullptr),
            TWL_IO_ERROR)
      << twl_runtime_last_error(rt.get());
  std::vector<uint16_t> k(32 * tok), v(32 * tok);
  int32_t len = 0;
  EXPECT_EQ(twl_sequence_read_kv(rt.get(), a, 0, k.data(), v.data(), 32, &len), TWL_IO_ERROR);
  inj.Clear();

  EXPECT_EQ(length(a), 32);
  EXPECT_TRUE(Read(rt.get(), a, 0) == (LayerKv{32, ka, va}));
  EXPECT_TRUE(Read(rt.get(), b, 0) == (LayerKv{32, kb, vb}));
  ASSERT_EQ(twl_decode(rt.get(), 0, &a, 1, q.data(), out.data(), TWL_MEMORY_HOST, nullptr,
                       nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  twl_step_stats st;
  st.struct_size = sizeof(st);
  ASSERT_EQ(twl_runtime_last_step(rt.get(), &st), TWL_OK);
  EXPECT_EQ(st.disk_pages_loaded, 4);
  // The same step again (pages now on the host) gives the same output.
  ASSERT_EQ(twl_decode(rt.get(), 0, &a, 1, q.data(), out_again.data(), TWL_MEMORY_HOST, nullptr,
                       nullptr),
            TWL_OK);
  EXPECT_EQ(out, out_again);
}

// A workload over the disk tier with random faults: a runtime whose host pool holds 12 pages
// over a disk tier of 96 pages, mirrored by a runtime without a disk tier that receives the
// same successful appends. Faults (EIO, ENOSPC, short transfers) are armed a few operations
// ahead on reads and writes; every call returns OK, TWL_IO_ERROR or TWL_CAPACITY_EXHAUSTED,
// and whatever it returns, every sequence still reads back exactly what was appended, a failed
// read_kv writes nothing, and every successful decode is bit-identical to the mirror's.
class DiskFixture {
 public:
  static constexpr int kSeqs = 4;

  DiskFixture() : rng_(21) {
    twl::ProcessFaultInjector().Clear();
    twl_runtime_config c = SmallConfig();
    c.selector = TWL_SELECTOR_FULL;
    c.host_pool_bytes = 128 * 2048;  // the mirror holds everything in its host pool
    mirror_ = Create(c);
    c.host_pool_bytes = 12 * 2048;  // pages of 8 tokens x 2 KV heads x 32 dims x K+V x FP16
    c.disk_path = dir_path_.c_str();
    c.disk_bytes = 96 * 2048;  // 96 records of one page (2 KiB, packed)
    disk_ = Create(c);
    c_ = c;
    tok_ = size_t(c.num_kv_heads) * c.head_dim;
    for (int i = 0; i < kSeqs && ok(); ++i) {
      twl_seq_id a = -1, b = -1;
      EXPECT_EQ(twl_sequence_create(disk_.get(), &a), TWL_OK);
      EXPECT_EQ(twl_sequence_create(mirror_.get(), &b), TWL_OK);
      ids_.push_back({a, b});
      model_k_.emplace_back(2);
      model_v_.emplace_back(2);
    }
  }
  ~DiskFixture() { twl::ProcessFaultInjector().Clear(); }

  bool ok() const { return disk_ && mirror_; }
  twl_runtime* disk() { return disk_.get(); }

  // Appends n random tokens to sequence i, layer; on success also to the mirror and model.
  twl_status Append(int i, int32_t layer, int32_t n) {
    const std::vector<uint16_t> k = RandomHalf(&rng_, size_t(n) * tok_);
    const std::vector<uint16_t> v = RandomHalf(&rng_, size_t(n) * tok_);
    const twl_status s = twl_sequence_append(disk_.get(), ids_[size_t(i)].first, layer, n,
                                             k.data(), v.data(), TWL_DTYPE_FP16, TWL_MEMORY_HOST);
    if (s == TWL_OK) {
      EXPECT_EQ(twl_sequence_append(mirror_.get(), ids_[size_t(i)].second, layer, n, k.data(),
                                    v.data(), TWL_DTYPE_FP16, TWL_MEMORY_HOST),
                TWL_OK);
      auto& mk = model_k_[size_t(i)][size_t(layer)];
      auto& mv = model_v_[size_t(i)][size_t(layer)];
      mk.insert(mk.end(), k.begin(), k.end());
      mv.insert(mv.end(), v.begin(), v.end());
    }
    return s;
  }

  // Decodes the sequences `which` in layer on both runtimes; on success the outputs must be
  // bit-identical (the disk tier moves data, it never changes it).
  twl_status Decode(const std::vector<int>& which, int32_t layer) {
    std::vector<twl_seq_id> a, b;
    for (int i : which) {
      a.push_back(ids_[size_t(i)].first);
      b.push_back(ids_[size_t(i)].second);
    }
    const std::vector<uint16_t> q =
        RandomHalf(&rng_, which.size() * size_t(c_.num_q_heads) * c_.head_dim);
    std::vector<float> p(which.size());
    for (size_t i = 0; i < p.size(); ++i) p[i] = i % 2 ? 1.0f : 0.8f;
    std::vector<uint16_t> out_a(q.size(), 0x7e00), out_b(q.size(), 0x7e00);
    const twl_status s = twl_decode(disk_.get(), layer, a.data(), int32_t(a.size()), q.data(),
                                    out_a.data(), TWL_MEMORY_HOST, p.data(), nullptr);
    if (s != TWL_OK) return s;
    EXPECT_EQ(twl_decode(mirror_.get(), layer, b.data(), int32_t(b.size()), q.data(),
                         out_b.data(), TWL_MEMORY_HOST, p.data(), nullptr),
              TWL_OK);
    EXPECT_EQ(out_a, out_b) << "the disk tier changed a decode's output";
    return s;
  }

  // read_kv under whatever fault is armed: OK with the model's data, or an I/O error that
  // leaves the buffers untouched.
  twl_status ReadUnderFaults(int i, int32_t layer) {
    const size_t n = model_k_[size_t(i)][size_t(layer)].size();
    std::vector<uint16_t> k(n + 1, 0x1234), v(n + 1, 0x1234);
    int32_t len = -1;
    const twl_status s = twl_sequence_read_kv(disk_.get(), ids_[size_t(i)].first, layer,
                                              k.data(), v.data(), int64_t(n / tok_), &len);
    if (s == TWL_OK) {
      EXPECT_TRUE(std::equal(k.begin(), k.end() - 1, model_k_[size_t(i)][size_t(layer)].begin()));
      EXPECT_TRUE(std::equal(v.begin(), v.end() - 1, model_v_[size_t(i)][size_t(layer)].begin()));
    } else {
      EXPECT_TRUE(std::all_of(k.begin(), k.end(), [](uint16_t x) { return x == 0x1234; }))
          << "a failed read_kv wrote to the buffer";
    }
    return s;
  }

  // Every sequence reads back exactly its model (with no fault armed).
  void ExpectIntact(const std::string& what) {
    twl::ProcessFaultInjector().Clear();
    for (int i = 0; i < kSeqs; ++i) {
      for (int32_t layer = 0; layer < 2; ++layer) {
        const LayerKv kv = Read(disk_.get(), ids_[size_t(i)].first, layer);
        EXPECT_EQ(kv.k, model_k_[size_t(i)][size_t(layer)]) << what << ": seq " << i;
        EXPECT_EQ(kv.v, model_v_[size_t(i)][size_t(layer)]) << what << ": seq " << i;
      }
    }
  }

  int64_t Tokens(int i, int32_t layer) const {
    return int64_t(model_k_[size_t(i)][size_t(layer)].size() / tok_);
  }

 private:
  TempDir dir_;
  std::string dir_path_ = dir_.File("");
  std::mt19937 rng_;
  RtPtr mirror_, disk_;
  twl_runtime_config c_{};
  size_t tok_ = 0;
  std::vector<std::pair<twl_seq_id, twl_seq_id>> ids_;
  std::vector<std::vector<std::vector<uint16_t>>> model_k_, model_v_;  // [seq][layer]
};

TEST(CapiDiskFaults, RandomFaultsDuringAWorkloadNeverLoseOrCorruptData) {
  DiskFixture fx;
  ASSERT_TRUE(fx.ok());
  std::mt19937 rng(5);
  const int errs[] = {EIO, ENOSPC, twl::FaultInjector::kShortTransfer, EIO};
  int armed = 0, failed = 0, decodes = 0;
  for (int step = 0; step < 200 && !HasFailure(); ++step) {
    if (rng() % 3 == 0) {  // a fault a few disk operations ahead
      const auto site = rng() % 2 ? twl::FaultSite::kDiskRead : twl::FaultSite::kDiskWrite;
      twl::ProcessFaultInjector().FailRange(site, 1 + int64_t(rng() % 4), 1 + int64_t(rng() % 3),
                                            errs[rng() % 4]);
      ++armed;
    }
    const int i = int(rng() % DiskFixture::kSeqs);
    const int32_t layer = int32_t(rng() % 2);
    const uint32_t op = rng() % 6;
    twl_status s = TWL_OK;
    if (op < 3 || fx.Tokens(i, layer) == 0) {
      if (fx.Tokens(i, layer) > 28) continue;  // at most 5 pages per (sequence, layer)
      s = fx.Append(i, layer, 1 + int32_t(rng() % 12));
    } else if (op < 5) {
      // At most two sequences (10 pages) per step: a step must fit in the 12 host slots.
      std::vector<int> which = {i};
      const int j = int(rng() % DiskFixture::kSeqs);
      if (j != i && fx.Tokens(j, layer) > 0) which.push_back(j);
      s = fx.Decode(which, layer);
      decodes += s == TWL_OK;
    } else {
      s = fx.ReadUnderFaults(i, layer);
    }
    EXPECT_TRUE(s == TWL_OK || s == TWL_IO_ERROR || s == TWL_CAPACITY_EXHAUSTED)
        << twl_status_string(s) << ": " << twl_runtime_last_error(fx.disk());
    failed += s != TWL_OK;
    if (step % 25 == 24) fx.ExpectIntact("step " + std::to_string(step));
  }
  fx.ExpectIntact("the end");
  EXPECT_GT(armed, 30);
  EXPECT_GT(failed, 5) << "too few injected faults reached a call";
  EXPECT_GT(decodes, 20);
}

}  // namespace

namespace {

// Regression (found by the fuzzer: quantizing a K row holding inf/NaN converted NaN to int,
// undefined behaviour): non-finite K/V are the caller's data and are stored as given; they
// may make that sequence's output non-finite but never another sequence's in the same batch.
TEST(CapiFaults, NonFiniteInputOnlyAffectsItsOwnSequence) {
  Fixture fx(7);
  twl_runtime* rt = fx.rt();
  const twl_runtime_config& c = fx.config();
  const size_t tok = size_t(c.num_kv_heads) * c.head_dim;
  twl_seq_id bad = -1;
  ASSERT_EQ(twl_sequence_create(rt, &bad), TWL_OK);
  std::mt19937 rng(8);
  for (int32_t layer = 0; layer < 2; ++layer) {
    std::vector<uint16_t> k = RandomHalf(&rng, 9 * tok), v = RandomHalf(&rng, 9 * tok);
    k[3] = 0x7e00;                // NaN
    k[tok + 5] = 0x7c00;          // +inf
    k[2 * tok + 1] = 0xfc00;      // -inf
    for (size_t i = 3 * tok; i < 4 * tok; ++i) k[i] = 0x7c00;  // a whole row of +inf
    v[7] = 0x7e00;
    ASSERT_EQ(twl_sequence_append(rt, bad, layer, 9, k.data(), v.data(), TWL_DTYPE_FP16,
                                  TWL_MEMORY_HOST),
              TWL_OK)
        << twl_runtime_last_error(rt);
    const LayerKv back = Read(rt, bad, layer);
    EXPECT_EQ(back.k, k) << "non-finite values are stored as given";
    EXPECT_EQ(back.v, v);
  }
  const std::vector<uint16_t> q = RandomHalf(&rng, 2 * size_t(c.num_q_heads) * c.head_dim);
  std::vector<uint16_t> out(q.size());
  const twl_seq_id seqs[2] = {fx.a(), bad};
  for (int32_t layer = 0; layer < 2; ++layer) {
    ASSERT_EQ(twl_decode(rt, layer, seqs, 2, q.data(), out.data(), TWL_MEMORY_HOST, nullptr,
                         nullptr),
              TWL_OK)
        << twl_runtime_last_error(rt);
    std::vector<float> f(out.size() / 2);
    twl_fp16_to_fp32(out.data(), f.data(), f.size());  // the first sequence's rows
    for (float x : f) ASSERT_TRUE(std::isfinite(x)) << "a NaN leaked into another sequence";
  }
  ASSERT_EQ(twl_sequence_free(rt, bad), TWL_OK);
  fx.ExpectIntact("a sequence with non-finite K/V came and went");
}

}  // namespace
