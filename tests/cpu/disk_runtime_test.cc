// The disk tier inside the runtime (CPU backend): KV several times larger than the host pool
// reads back exactly, decodes like dense attention where nothing is pruned and bit for bit
// like the same runtime without a disk tier, and injected disk faults (ENOSPC / EIO on
// spill, EIO on load) return their status and lose nothing. Plus the page-slot bookkeeping
// (runtime/disk_residency) under random reserve/release sequences with every page swapped.
// Data: random FP16 K/V with planted keys (tests/support/ref_store), never zeros.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "offload/fault_injection.h"
#include "support/disk_fixture.h"
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"
#include "support/temp_dir.h"
#include "runtime/disk_io_status.h"
#include "runtime/disk_residency.h"
#include "runtime/runtime.h"
#include "support/ref_store.h"
#include "runtime/geometry.h"
#include "support/runtime_fixture.h"

namespace twl {
namespace {

using testing::ClearFaultsOnExit;
using testing::TempDir;

using testing::MakeRuntime;

using testing::MakeRandomStore;
using testing::RefStore;
using testing::RelError;
using testing::ToFloat;

constexpr int32_t kPageSize = 16;
constexpr int64_t kPageBytes = 2 * (2 * kPageSize * 64 * 2);  // 2 KV heads, d = 64: 8 KiB

RuntimeConfig BaseConfig() {
  RuntimeConfig c;
  c.num_layers = 2;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.page_size = kPageSize;
  c.backend = BackendKind::kCpu;
  return c;
}

RuntimeConfig DiskConfig(const std::string& dir, int32_t host_pages, int32_t disk_pages) {
  RuntimeConfig c = BaseConfig();
  c.host_pool_bytes = host_pages * kPageBytes;
  c.disk_path = dir;
  c.disk_bytes = disk_pages * kPageBytes;  // 8 KiB records: the 4 KiB stride adds nothing
  return c;
}

int64_t Row(const RefStore& st) { return int64_t(st.g.num_kv_heads) * st.g.head_dim; }

absl::Status AppendRange(Runtime& rt, SeqId seq, int32_t layer, const RefStore& st, int32_t s,
                         int32_t from, int32_t n) {
  return rt.Append(seq, layer, n, st.k_in[size_t(s)].data() + from * Row(st),
                   st.v_in[size_t(s)].data() + from * Row(st), DType::kFp16, MemSpace::kHost);
}

// Appends all of store sequence s in random chunks of 1..max_chunk tokens.
void AppendInChunks(Runtime& rt, SeqId seq, int32_t layer, const RefStore& st, int32_t s,
                    std::mt19937_64& rng, int32_t max_chunk) {
  const int32_t len = st.seq_len[size_t(s)];
  for (int32_t at = 0; at < len;) {
    const int32_t n = std::min<int32_t>(len - at, 1 + int32_t(rng() % uint64_t(max_chunk)));
    ASSERT_TRUE(AppendRange(rt, seq, layer, st, s, at, n).ok()) << "at " << at << " n " << n;
    at += n;
  }
}

// The first `len` tokens of store sequence s.
std::vector<fp16_t> Prefix(const std::vector<fp16_t>& all, const RefStore& st, int32_t len) {
  return std::vector<fp16_t>(all.begin(), all.begin() + len * Row(st));
}

void ExpectKv(const Runtime& rt, SeqId seq, int32_t layer, const std::vector<fp16_t>& k,
              const std::vector<fp16_t>& v) {
  std::vector<fp16_t> rk, rv;
  const absl::Status s = rt.ReadKv(seq, layer, &rk, &rv);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(rk == k) << "K differs";
  EXPECT_TRUE(rv == v) << "V differs";
}

// Dense attention of every store sequence (FP16 output) over its whole cache.
std::vector<fp16_t> DenseRef(RefStore& st) {
  std::vector<fp16_t> dense(st.q.size());
  EXPECT_TRUE(
      DenseAttentionRef(st.g, st.Batch(), st.Query(), st.Kv(), OutputView{dense.data()}).ok());
  return dense;
}

// Rows of sequence s in a [num_seqs][num_q_heads][head_dim] array.
std::vector<fp16_t> SeqRows(const std::vector<fp16_t>& a, const RefStore& st, int32_t s) {
  const int64_t per = int64_t(st.num_q_heads) * st.g.head_dim;
  return std::vector<fp16_t>(a.begin() + s * per, a.begin() + (s + 1) * per);
}

TEST(DiskRuntime, KvEightTimesTheHostPoolReadsBackExactly) {
  TempDir dir("twl-disk-runtime");
  ASSERT_FALSE(dir.path().empty());
  // 6 host page slots, 120 disk records; ~70 pages of KV in two layers.
  const RuntimeConfig c = DiskConfig(dir.path(), 6, 120);
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  EXPECT_NE(rt->backend_name().find("disk tier"), std::string::npos) << rt->backend_name();
  const std::vector<int32_t> lens = {1, 17, 100, 47, 64, 130, 33, 90};
  RefStore st0 = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 21);
  RefStore st1 = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 22);
  std::mt19937_64 rng(7);
  std::vector<SeqId> ids;
  for (size_t s = 0; s < lens.size(); ++s) ids.push_back(*rt->CreateSequence());
  // Interleaved appends, some larger than the host pool (130 tokens = 9 pages > 6 slots: the
  // chunked path), so pages of every sequence go back and forth.
  for (size_t s = 0; s < lens.size(); ++s) {
    AppendInChunks(*rt, ids[s], 0, st0, int32_t(s), rng, s % 2 ? 29 : 200);
    AppendInChunks(*rt, ids[s], 1, st1, int32_t(s), rng, 45);
  }
  int64_t pages = 0;
  for (int32_t len : lens) pages += 2 * ((len + kPageSize - 1) / kPageSize);
  ASSERT_GE(pages, 8 * 6) << "KV should be >= 8x the host pool";
  const MemoryUsage m = rt->Memory();
  EXPECT_GE(m.disk_bytes, (pages - 6) * kPageBytes) << "every page beyond the pool is on disk";
  EXPECT_GT(m.host_pool_bytes_used, 0);
  EXPECT_LE(m.host_pool_bytes_used, m.host_pool_bytes_total);
  for (size_t s = 0; s < lens.size(); ++s) {
    EXPECT_EQ(*rt->SequenceLength(ids[s], 0), lens[s]);
    ExpectKv(*rt, ids[s], 0, st0.k_in[s], st0.v_in[s]);
    ExpectKv(*rt, ids[s], 1, st1.k_in[s], st1.v_in[s]);
  }
  // Reading spilled pages does not move them: the disk holds as much as before.
  EXPECT_EQ(rt->Memory().disk_bytes, m.disk_bytes);
  for (SeqId id : ids) ASSERT_TRUE(rt->FreeSequence(id).ok());
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, 0);
  EXPECT_EQ(rt->Memory().disk_bytes, 0) << "freed pages release their disk records";
}

TEST(DiskRuntime, FullSelectorAtPOneEqualsDenseAttention) {
  TempDir dir("twl-disk-runtime");
  RuntimeConfig c = DiskConfig(dir.path(), 8, 80);
  c.selector = SelectorKind::kFull;
  c.top_p = 1.0f;
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  // 8 sequences of up to 7 pages in each of two layers (~90 pages), decoded one at a time
  // (a step must fit in the 8 slots), so nearly every step reads its pages back from disk.
  const std::vector<int32_t> lens = {100, 37, 112, 80, 5, 96, 64, 111};
  RefStore st[2] = {MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 31),
                    MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 32)};
  std::mt19937_64 rng(9);
  std::vector<SeqId> ids;
  for (size_t s = 0; s < lens.size(); ++s) {
    ids.push_back(*rt->CreateSequence());
    for (int32_t l = 0; l < 2; ++l) AppendInChunks(*rt, ids[s], l, st[l], int32_t(s), rng, 40);
  }
  int64_t loaded = 0;
  for (int32_t l = 0; l < 2; ++l) {
    const std::vector<fp16_t> dense = DenseRef(st[l]);
    for (size_t s = 0; s < lens.size(); ++s) {
      const std::vector<fp16_t> q = SeqRows(st[l].q, st[l], int32_t(s));
      std::vector<fp16_t> out(q.size(), FloatToHalf(std::numeric_limits<float>::quiet_NaN()));
      StepTelemetry t;
      const absl::Status status =
          rt->Decode(l, {ids[s]}, q.data(), out.data(), MemSpace::kHost, {}, nullptr, &t);
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_LE(RelError(ToFloat(out), ToFloat(SeqRows(dense, st[l], int32_t(s)))), 1e-3)
          << "layer " << l << " sequence " << s;
      const int32_t seq_pages = (lens[s] + kPageSize - 1) / kPageSize;
      EXPECT_LE(t.disk_pages_loaded, seq_pages);
      EXPECT_GE(t.ms_disk, 0.0);
      loaded += t.disk_pages_loaded;
    }
  }
  EXPECT_GT(loaded, 40) << "most pages had to come back from disk";
}

class DiskVsHost : public ::testing::TestWithParam<int32_t> {};

// Same inputs into a runtime with a 16-slot host pool + disk and one holding everything in
// host memory: every decode output and every budget is identical, over steps with appends.
TEST_P(DiskVsHost, TwilightDecodeIsBitIdenticalToNoDiskTier) {
  TempDir dir("twl-disk-runtime");
  RuntimeConfig c = DiskConfig(dir.path(), 16, 200);
  c.k_bits = GetParam();
  c.top_p = 0.9f;
  c.selector = SelectorKind::kQuest;
  c.selector_budget_fraction = 0.1f;  // 2 pages + sink + last per KV head: <= 8 per sequence
  RuntimeConfig host = c;
  host.disk_path.clear();
  host.disk_bytes = 0;
  host.host_pool_bytes = 400 * kPageBytes;
  auto rd = MakeRuntime(c);
  auto rh = MakeRuntime(host);
  ASSERT_TRUE(rd && rh);

  const int32_t steps = 5;
  const std::vector<int32_t> lens = {150, 190, 120, 175, 200, 163};
  std::vector<int32_t> full = lens;
  for (int32_t& n : full) n += steps;
  RefStore st[2] = {MakeRandomStore(GeometryOf(c), c.num_q_heads, full, 41),
                    MakeRandomStore(GeometryOf(c), c.num_q_heads, full, 42)};
  std::mt19937_64 rng(11);
  std::vector<SeqId> idd, idh;
  for (size_t s = 0; s < lens.size(); ++s) {
    idd.push_back(*rd->CreateSequence());
    idh.push_back(*rh->CreateSequence());
    for (int32_t l = 0; l < 2; ++l) {
      for (int32_t at = 0; at < lens[s];) {
        const int32_t n = std::min<int32_t>(lens[s] - at, 1 + int32_t(rng() % 60));
        ASSERT_TRUE(AppendRange(*rd, idd[s], l, st[l], int32_t(s), at, n).ok());
        ASSERT_TRUE(AppendRange(*rh, idh[s], l, st[l], int32_t(s), at, n).ok());
        at += n;
      }
    }
  }
  const int64_t per = int64_t(c.num_q_heads) * c.head_dim;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int64_t loaded = 0;
  for (int32_t step = 0; step < steps; ++step) {
    for (int32_t l = 0; l < 2; ++l) {
      if (step > 0) {
        for (size_t s = 0; s < lens.size(); ++s) {
          ASSERT_TRUE(AppendRange(*rd, idd[s], l, st[l], int32_t(s), lens[s] + step - 1, 1).ok());
          ASSERT_TRUE(AppendRange(*rh, idh[s], l, st[l], int32_t(s), lens[s] + step - 1, 1).ok());
        }
      }
      // Batches of two sequences (at most 2 x 8 pages per step: fits the 16 slots).
      for (size_t s = 0; s < lens.size(); s += 2) {
        std::vector<fp16_t> q(size_t(2 * per));
        for (int64_t i = 0; i < 2 * per; ++i) {
          // The store's query of the sequence, drifting a little from step to step.
          const int64_t src = int64_t(s) * per + i;
          q[size_t(i)] = FloatToHalf(HalfToFloat(st[l].q[size_t(src)]) + 0.3f * nd(rng));
        }
        std::vector<fp16_t> od(q.size()), oh(q.size());
        StepTelemetry td, th;
        const std::vector<SeqId> bd = {idd[s], idd[s + 1]}, bh = {idh[s], idh[s + 1]};
        absl::Status sd = rd->Decode(l, bd, q.data(), od.data(), MemSpace::kHost, {}, nullptr, &td);
        absl::Status sh = rh->Decode(l, bh, q.data(), oh.data(), MemSpace::kHost, {}, nullptr, &th);
        ASSERT_TRUE(sd.ok()) << sd;
        ASSERT_TRUE(sh.ok()) << sh;
        EXPECT_EQ(std::memcmp(od.data(), oh.data(), od.size() * sizeof(fp16_t)), 0)
            << "step " << step << " layer " << l << " batch " << s;
        EXPECT_EQ(td.kept_tokens, th.kept_tokens);
        EXPECT_EQ(td.selected_tokens, th.selected_tokens);
        EXPECT_EQ(td.blocks_needed, th.blocks_needed);
        EXPECT_EQ(th.disk_pages_loaded, 0);
        loaded += td.disk_pages_loaded;
      }
    }
  }
  EXPECT_GT(loaded, 0);
}

INSTANTIATE_TEST_SUITE_P(KBits, DiskVsHost, ::testing::Values(4, 16));

TEST(DiskRuntime, StepLargerThanTheHostPoolIsResourceExhausted) {
  TempDir dir("twl-disk-runtime");
  RuntimeConfig c = DiskConfig(dir.path(), 4, 40);
  c.selector = SelectorKind::kFull;
  c.top_p = 1.0f;
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  const std::vector<int32_t> lens = {100, 50};  // 7 pages: more than the 4 slots
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 51);
  std::mt19937_64 rng(13);
  const SeqId big = *rt->CreateSequence(), small = *rt->CreateSequence();
  AppendInChunks(*rt, big, 0, st, 0, rng, 100);
  AppendInChunks(*rt, small, 0, st, 1, rng, 100);
  std::vector<fp16_t> q = SeqRows(st.q, st, 0), out(q.size());
  const absl::Status s = rt->Decode(0, {big}, q.data(), out.data(), MemSpace::kHost, {}, nullptr,
                                    nullptr);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("host pool"), std::string::npos) << s;
  // The runtime is fine afterwards: the small sequence decodes, the big one reads back.
  q = SeqRows(st.q, st, 1);
  const absl::Status s2 = rt->Decode(0, {small}, q.data(), out.data(), MemSpace::kHost, {},
                                     nullptr, nullptr);
  EXPECT_TRUE(s2.ok()) << s2;
  ExpectKv(*rt, big, 0, st.k_in[0], st.v_in[0]);
}

TEST(DiskRuntime, ForkedPagesOnDiskAreCopiedOnWrite) {
  TempDir dir("twl-disk-runtime");
  const RuntimeConfig c = DiskConfig(dir.path(), 4, 40);
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {50, 64, 50}, 61);
  const SeqId a = *rt->CreateSequence();
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 0, 40).ok());  // pages 16 + 16 + 8 (partial)
  const SeqId child = *rt->ForkSequence(a);
  const SeqId filler = *rt->CreateSequence();
  ASSERT_TRUE(AppendRange(*rt, filler, 0, st, 1, 0, 64).ok());  // pushes a's pages to disk
  // The child's first append copies the shared partial page (from disk) before writing.
  ASSERT_TRUE(AppendRange(*rt, child, 0, st, 2, 0, 3).ok());
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 40, 10).ok());
  ExpectKv(*rt, a, 0, Prefix(st.k_in[0], st, 50), Prefix(st.v_in[0], st, 50));
  std::vector<fp16_t> ck = Prefix(st.k_in[0], st, 40), cv = Prefix(st.v_in[0], st, 40);
  const std::vector<fp16_t> k3 = Prefix(st.k_in[2], st, 3), v3 = Prefix(st.v_in[2], st, 3);
  ck.insert(ck.end(), k3.begin(), k3.end());
  cv.insert(cv.end(), v3.begin(), v3.end());
  ExpectKv(*rt, child, 0, ck, cv);
  ExpectKv(*rt, filler, 0, st.k_in[1], st.v_in[1]);
  for (SeqId id : {a, child, filler}) ASSERT_TRUE(rt->FreeSequence(id).ok());
  EXPECT_EQ(rt->Memory().disk_bytes, 0);
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, 0);
}

TEST(DiskRuntime, DiskFullOnSpillFailsTheAppendAndChangesNothing) {
  ClearFaultsOnExit clear;
  TempDir dir("twl-disk-runtime");
  const RuntimeConfig c = DiskConfig(dir.path(), 4, 40);
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {70, 40}, 71);
  const SeqId a = *rt->CreateSequence(), b = *rt->CreateSequence();
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 0, 64).ok());  // the 4 slots, all dirty
  const MemoryUsage before = rt->Memory();
  ASSERT_EQ(before.disk_bytes, 0);

  ProcessFaultInjector().FailRange(FaultSite::kDiskWrite, 1, -1, ENOSPC);
  absl::Status s = AppendRange(*rt, b, 0, st, 1, 0, 20);  // needs 2 slots: spills 2 pages
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("disk tier full"), std::string::npos) << s;
  s = AppendRange(*rt, a, 0, st, 0, 64, 6);  // a new page for a
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_EQ(*rt->SequenceLength(a, 0), 64);
  EXPECT_EQ(*rt->SequenceLength(b, 0), 0);
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, before.host_pool_bytes_used);
  EXPECT_EQ(rt->Memory().disk_bytes, 0);
  ExpectKv(*rt, a, 0, Prefix(st.k_in[0], st, 64), Prefix(st.v_in[0], st, 64));

  // A plain I/O error on the spill: marked as disk I/O, nothing changes either.
  ProcessFaultInjector().Clear();
  ProcessFaultInjector().FailNth(FaultSite::kDiskWrite, 1, EIO);
  s = AppendRange(*rt, b, 0, st, 1, 0, 10);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(IsDiskIoError(s)) << s;
  EXPECT_EQ(*rt->SequenceLength(b, 0), 0);
  ExpectKv(*rt, a, 0, Prefix(st.k_in[0], st, 64), Prefix(st.v_in[0], st, 64));

  // Once the disk works again the same appends succeed.
  ProcessFaultInjector().Clear();
  ASSERT_TRUE(AppendRange(*rt, b, 0, st, 1, 0, 40).ok());
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 64, 6).ok());
  ExpectKv(*rt, a, 0, st.k_in[0], st.v_in[0]);
  ExpectKv(*rt, b, 0, st.k_in[1], st.v_in[1]);
  EXPECT_GT(rt->Memory().disk_bytes, 0);
}

TEST(DiskRuntime, ReadErrorOnLoadFailsDecodeAndKeepsThePageOnDisk) {
  ClearFaultsOnExit clear;
  TempDir dir("twl-disk-runtime");
  RuntimeConfig c = DiskConfig(dir.path(), 4, 40);
  c.selector = SelectorKind::kFull;
  c.top_p = 1.0f;
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {60, 64}, 81);
  const SeqId a = *rt->CreateSequence(), b = *rt->CreateSequence();
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 0, 60).ok());
  ASSERT_TRUE(AppendRange(*rt, b, 0, st, 1, 0, 64).ok());  // a's 4 pages go to disk
  const std::vector<fp16_t> dense = DenseRef(st);
  const std::vector<fp16_t> q = SeqRows(st.q, st, 0);
  std::vector<fp16_t> out(q.size());

  ProcessFaultInjector().FailRange(FaultSite::kDiskRead, 1, -1, EIO);
  absl::Status s = rt->Decode(0, {a}, q.data(), out.data(), MemSpace::kHost, {}, nullptr,
                              nullptr);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_TRUE(IsDiskIoError(s)) << s;
  std::vector<fp16_t> k, v;
  s = rt->ReadKv(a, 0, &k, &v);
  EXPECT_TRUE(absl::IsDataLoss(s) && IsDiskIoError(s)) << s;
  // Appending into a's partial last page (on disk) needs it back: fails, a unchanged.
  s = AppendRange(*rt, a, 0, st, 0, 60, 1);
  EXPECT_TRUE(IsDiskIoError(s)) << s;
  EXPECT_EQ(*rt->SequenceLength(a, 0), 60);

  ProcessFaultInjector().Clear();
  ExpectKv(*rt, a, 0, st.k_in[0], st.v_in[0]);
  StepTelemetry t;
  s = rt->Decode(0, {a}, q.data(), out.data(), MemSpace::kHost, {}, nullptr, &t);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_LE(RelError(ToFloat(out), ToFloat(SeqRows(dense, st, 0))), 1e-3);
  EXPECT_EQ(t.disk_pages_loaded, 4);
  ExpectKv(*rt, b, 0, st.k_in[1], st.v_in[1]);
}

TEST(DiskRuntime, ReadErrorInAChunkedAppendLeavesTheSequenceUnchanged) {
  ClearFaultsOnExit clear;
  TempDir dir("twl-disk-runtime");
  const RuntimeConfig c = DiskConfig(dir.path(), 4, 40);
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {140, 64}, 91);
  const SeqId a = *rt->CreateSequence(), b = *rt->CreateSequence();
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 0, 40).ok());
  ASSERT_TRUE(AppendRange(*rt, b, 0, st, 1, 0, 64).ok());  // a's partial page goes to disk
  // 100 tokens: a's partial page + 6 new ones, 7 pages > 4 slots. The read of the partial
  // page (the last chunk written) fails after the new pages were written and spilled.
  ProcessFaultInjector().FailRange(FaultSite::kDiskRead, 1, -1, EIO);
  absl::Status s = AppendRange(*rt, a, 0, st, 0, 40, 100);
  EXPECT_TRUE(IsDiskIoError(s)) << s;
  ProcessFaultInjector().Clear();
  EXPECT_EQ(*rt->SequenceLength(a, 0), 40);
  ExpectKv(*rt, a, 0, Prefix(st.k_in[0], st, 40), Prefix(st.v_in[0], st, 40));
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 40, 100).ok());
  ExpectKv(*rt, a, 0, st.k_in[0], st.v_in[0]);
  ExpectKv(*rt, b, 0, st.k_in[1], st.v_in[1]);
  for (SeqId id : {a, b}) ASSERT_TRUE(rt->FreeSequence(id).ok());
  EXPECT_EQ(rt->Memory().disk_bytes, 0) << "pages of the failed append were released";
}

TEST(DiskRuntime, ConfigurationErrors) {
  TempDir dir("twl-disk-runtime");
  RuntimeConfig c = DiskConfig(dir.path(), 4, 40);
  c.backend = BackendKind::kGpuHbm;  // every page in HBM: no host tier to spill from
  EXPECT_TRUE(absl::IsUnimplemented(Runtime::Create(c).status()));
  c.backend = BackendKind::kGpuOffload;  // the disk tier under the pinned pool
  {
    const auto rt = Runtime::Create(c);
    if (rt.ok()) {
      EXPECT_EQ((*rt)->backend_kind(), BackendKind::kGpuOffload);
    } else {
      EXPECT_TRUE(absl::IsUnavailable(rt.status())) << rt.status();  // no GPU here
    }
  }
  c.backend = BackendKind::kAuto;  // picks the CPU: the disk tier needs it
  {
    auto rt = Runtime::Create(c);
    ASSERT_TRUE(rt.ok()) << rt.status();
    EXPECT_EQ((*rt)->backend_kind(), BackendKind::kCpu);
  }
  c.backend = BackendKind::kCpu;
  RuntimeConfig bad = c;
  bad.disk_path.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(Runtime::Create(bad).status()));
  bad = c;
  bad.disk_bytes = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(Runtime::Create(bad).status()));
  bad.disk_bytes = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(Runtime::Create(bad).status()));
  bad = c;
  bad.disk_bytes = kPageBytes / 2;  // less than one record
  EXPECT_TRUE(absl::IsInvalidArgument(Runtime::Create(bad).status()));
  bad = c;
  bad.disk_path = dir.path() + "/missing";
  EXPECT_TRUE(absl::IsInvalidArgument(Runtime::Create(bad).status()));
  // Capacity: host slots + records - 1 pages.
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {43 * kPageSize + 1}, 5);
  const SeqId a = *rt->CreateSequence();
  ASSERT_TRUE(AppendRange(*rt, a, 0, st, 0, 0, 43 * kPageSize).ok());
  const absl::Status full = AppendRange(*rt, a, 0, st, 0, 43 * kPageSize, 1);
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  ExpectKv(*rt, a, 0, Prefix(st.k_in[0], st, 43 * kPageSize),
           Prefix(st.v_in[0], st, 43 * kPageSize));
}

// ---- runtime/disk_residency: slots, records and data under random use ------------------

TEST(DiskResidency, RandomReserveAndReleaseKeepEveryPageIntact) {
  TempDir dir("twl-disk-runtime");
  RuntimeConfig config = BaseConfig();
  config.num_kv_heads = 2;
  config.num_q_heads = 2;
  config.head_dim = 8;
  config.page_size = 4;
  config.disk_path = dir.path();
  const PageGeometry g = GeometryOf(config);
  const int64_t page_elems = int64_t(g.num_kv_heads) * g.FpBlockElems();
  for (int32_t slots : {1, 2, 5}) {
    const int32_t records = 12;
    config.disk_bytes = records * 512;  // the stride of a 256-byte record (packed)
    auto tier = CreatePageDiskTier(config);
    ASSERT_TRUE(tier.ok()) << tier.status();
    const int32_t pages = slots - 1 + records;  // every page live: each swap is tight
    auto res = DiskResidency::Create(g, pages, slots, std::move(*tier));
    ASSERT_TRUE(res.ok()) << res.status();
    DiskResidency& d = **res;
    std::mt19937_64 rng(uint64_t(slots) * 101);
    std::vector<int32_t> version(size_t(pages), -1);  // -1: no data
    auto fill = [&](int32_t page, int32_t ver, std::vector<fp16_t>* out) {
      out->resize(size_t(page_elems));
      for (int64_t i = 0; i < page_elems; ++i) {
        (*out)[size_t(i)] = testing::DiskTestValue(page, ver, i);
      }
    };
    std::vector<fp16_t> want;
    for (int32_t op = 0; op < 400; ++op) {
      if (rng() % 6 == 0) {  // free a page
        const int32_t p = int32_t(rng() % uint64_t(pages));
        d.Release(p);
        version[size_t(p)] = -1;
      } else {  // reserve a random set, then write some of it
        std::vector<int32_t> set;
        const int32_t n = 1 + int32_t(rng() % uint64_t(slots));
        while (int32_t(set.size()) < n) {
          const int32_t p = int32_t(rng() % uint64_t(pages));
          if (std::find(set.begin(), set.end(), p) == set.end()) set.push_back(p);
        }
        DiskIoCounts io;
        const absl::Status s = d.Reserve(set, &io);
        ASSERT_TRUE(s.ok()) << s << " op " << op;
        for (int32_t p : set) {
          ASSERT_NE(d.HostPage(p), nullptr);
          if (version[size_t(p)] < 0 || rng() % 3 == 0) {  // fresh pages must be written
            ASSERT_TRUE(d.MarkDirty({p}).ok());
            fill(p, op, &want);
            std::memcpy(d.HostPage(p), want.data(), want.size() * sizeof(fp16_t));
            version[size_t(p)] = op;
          }
        }
      }
      ASSERT_TRUE(d.CheckConsistency().ok()) << d.CheckConsistency() << " op " << op;
    }
    // Every live page reads back its last version, from the host or from disk.
    for (int32_t p = 0; p < pages; ++p) {
      if (version[size_t(p)] < 0) continue;
      fill(p, version[size_t(p)], &want);
      ASSERT_NO_FATAL_FAILURE(testing::ExpectPageHolds(d, g, p, want));
    }
  }
}

TEST(DiskResidency, MorePagesThanTheSlotsPlusRecordsIsRejected) {
  TempDir dir("twl-disk-runtime");
  RuntimeConfig config = BaseConfig();
  config.disk_path = dir.path();
  config.disk_bytes = 4 * kPageBytes;
  auto tier = CreatePageDiskTier(config);
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto res = DiskResidency::Create(GeometryOf(config), 3 + 4, 3, std::move(*tier));
  EXPECT_TRUE(absl::IsInvalidArgument(res.status())) << res.status();
}

}  // namespace
// A reservation takes one row per layer and member; when those need pages and pool and disk
// tier are full, it says the disk tier is full (like an append) and takes nothing.
TEST(DiskRuntime, ReservationOnAFullDiskTierSaysSoAndTakesNothing) {
  TempDir dir("twl-disk-runtime");
  const RuntimeConfig c = DiskConfig(dir.path(), 2, 4);
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {256}, 83);
  const SeqId a = *rt->CreateSequence();
  // Whole pages, alternating layers, until no page is left.
  int32_t len[2] = {0, 0};
  for (int32_t layer = 0;; layer ^= 1) {
    absl::Status s = AppendRange(*rt, a, layer, st, 0, len[layer], kPageSize);
    if (!s.ok()) {
      ASSERT_TRUE(absl::IsResourceExhausted(s)) << s;
      break;
    }
    len[layer] += kPageSize;
    ASSERT_LT(len[layer], 256);
  }
  ASSERT_GT(len[0] + len[1], 0);
  absl::StatusOr<int64_t> batch = rt->BindBatch({a}, 64);
  ASSERT_TRUE(batch.ok()) << batch.status();
  const MemoryUsage before = rt->Memory();
  absl::Status s = rt->ReserveBatchRows(*batch, nullptr);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("disk tier full"), std::string::npos) << s;
  EXPECT_NE(s.message().find("batch reserve"), std::string::npos) << s;
  for (int32_t layer : {0, 1}) EXPECT_EQ(*rt->SequenceLength(a, layer), len[layer]);
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, before.host_pool_bytes_used);
  EXPECT_EQ(rt->Memory().disk_bytes, before.disk_bytes);
  ExpectKv(*rt, a, 0, Prefix(st.k_in[0], st, len[0]), Prefix(st.v_in[0], st, len[0]));
  // Freeing the sequence gives every page back; a later reservation then succeeds.
  ASSERT_TRUE(rt->UnbindBatch(*batch).ok());
  ASSERT_TRUE(rt->FreeSequence(a).ok());
  const SeqId b = *rt->CreateSequence();
  batch = rt->BindBatch({b}, 64);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_TRUE(rt->ReserveBatchRows(*batch, nullptr).ok());
}

}  // namespace twl
