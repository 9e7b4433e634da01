// Runtime::AppendBatch on the CPU backend: one call for many sequences leaves the cache
// (FP16 rows and the quantized K + page bounds that decode reads) exactly as per-sequence
// appends do, including with a disk tier (whose writes go in chunks of host slots), and a
// batch that cannot be written whole is refused before anything changes.
#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/cuda/append_launch.h"
#include "runtime/runtime.h"
#include "support/runtime_fixture.h"

namespace twl {
namespace {

using testing::MakeRuntime;

RuntimeConfig Config() {
  RuntimeConfig c;
  c.num_layers = 2;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.page_size = 16;
  c.backend = BackendKind::kCpu;
  c.host_pool_bytes = int64_t(4) << 20;
  c.top_p = 0.8f;
  c.selector_budget_tokens = 32;
  return c;
}
constexpr int64_t kPageBytes = 2 * (2 * 16 * 64 * 2);  // 2 KV heads, d = 64: 8 KiB

std::vector<fp16_t> Random(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<fp16_t> out(n);
  for (fp16_t& x : out) x = FloatToHalf(nd(rng));
  return out;
}

struct Snapshot {
  std::vector<std::vector<fp16_t>> k, v;
  bool operator==(const Snapshot& o) const { return k == o.k && v == o.v; }
};
Snapshot Read(const Runtime& rt, const std::vector<SeqId>& ids) {
  Snapshot s;
  for (SeqId id : ids) {
    for (int32_t l = 0; l < rt.config().num_layers; ++l) {
      s.k.emplace_back();
      s.v.emplace_back();
      EXPECT_TRUE(rt.ReadKv(id, l, &s.k.back(), &s.v.back()).ok());
    }
  }
  return s;
}

// Feeds `batch` through AppendBatch and `single` through Append, the same tokens.
void AppendBoth(Runtime& batch, const std::vector<SeqId>& ib, Runtime& single,
                const std::vector<SeqId>& is, int32_t layer, const std::vector<int32_t>& counts,
                std::mt19937_64& rng) {
  const int64_t row = int64_t(batch.config().num_kv_heads) * batch.config().head_dim;
  int64_t total = 0;
  for (int32_t n : counts) total += n;
  const std::vector<fp16_t> k = Random(rng, size_t(total * row)), v = Random(rng, size_t(total * row));
  absl::Status s = batch.AppendBatch(layer, ib, counts, k.data(), v.data(), DType::kFp16,
                                     MemSpace::kHost, nullptr);
  ASSERT_TRUE(s.ok()) << s;
  int64_t at = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] > 0) {
      s = single.Append(is[i], layer, counts[i], k.data() + at * row, v.data() + at * row,
                        DType::kFp16, MemSpace::kHost);
      ASSERT_TRUE(s.ok()) << s;
    }
    at += counts[i];
  }
}

void ExpectSameDecode(Runtime& a, const std::vector<SeqId>& ia, Runtime& b,
                      const std::vector<SeqId>& ib, std::mt19937_64& rng) {
  const RuntimeConfig& c = a.config();
  const std::vector<fp16_t> q = Random(rng, ia.size() * c.num_q_heads * c.head_dim);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    std::vector<fp16_t> oa(q.size()), ob(q.size());
    StepTelemetry ta, tb;
    ASSERT_TRUE(a.Decode(l, ia, q.data(), oa.data(), MemSpace::kHost, {}, nullptr, &ta).ok());
    ASSERT_TRUE(b.Decode(l, ib, q.data(), ob.data(), MemSpace::kHost, {}, nullptr, &tb).ok());
    EXPECT_EQ(oa, ob) << "layer " << l;
    // Equal budgets: the quantized K and page bounds the selector and pruner read are equal.
    EXPECT_EQ(ta.selected_tokens, tb.selected_tokens);
    EXPECT_EQ(ta.kept_tokens, tb.kept_tokens);
  }
}

TEST(AppendBatch, EqualsPerSequenceAppends) {
  auto batch = MakeRuntime(Config());
  auto single = MakeRuntime(Config());
  ASSERT_TRUE(batch && single);
  std::vector<SeqId> ib, is;
  for (int i = 0; i < 4; ++i) {
    ib.push_back(*batch->CreateSequence());
    is.push_back(*single->CreateSequence());
  }
  std::mt19937_64 rng(21);
  for (int32_t layer = 0; layer < 2; ++layer) {
    AppendBoth(*batch, ib, *single, is, layer, {100, 33, 16, 7}, rng);
    for (int step = 0; step < 5; ++step) AppendBoth(*batch, ib, *single, is, layer, {1, 1, 1, 1}, rng);
    AppendBoth(*batch, ib, *single, is, layer, {0, 40, 3, 0}, rng);
  }
  EXPECT_TRUE(Read(*batch, ib) == Read(*single, is));
  EXPECT_EQ(batch->Memory().host_pool_bytes_used, single->Memory().host_pool_bytes_used);
  ExpectSameDecode(*batch, ib, *single, is, rng);

  // Sizes that disagree, and an id listed twice, change nothing.
  const Snapshot before = Read(*batch, ib);
  const std::vector<fp16_t> kv(64 * 2 * 8, FloatToHalf(1.0f));
  const std::vector<int32_t> three = {1, 1, 1};
  EXPECT_EQ(batch->AppendBatch(0, ib, three, kv.data(), kv.data(), DType::kFp16, MemSpace::kHost,
                               nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<SeqId> dup = {ib[0], ib[1], ib[0]};
  EXPECT_EQ(batch->AppendBatch(0, dup, three, kv.data(), kv.data(), DType::kFp16, MemSpace::kHost,
                               nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Read(*batch, ib) == before);
}

// A fresh directory for the disk tier's file (the file itself is unlinked at once).
struct TempDir {
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/twl-append-batch-XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) path = tmpl;
  }
  ~TempDir() {
    if (!path.empty()) rmdir(path.c_str());
  }
  std::string path;
};

TEST(AppendBatch, DiskTierWritesBatchesWholeOrNotAtAll) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  RuntimeConfig dc = Config();
  dc.host_pool_bytes = 4 * kPageBytes;  // 4 host slots
  dc.disk_path = dir.path;
  dc.disk_bytes = 64 * kPageBytes;
  auto disk = MakeRuntime(dc);
  auto plain = MakeRuntime(Config());
  ASSERT_TRUE(disk && plain);
  std::vector<SeqId> id, ip;
  for (int i = 0; i < 6; ++i) {
    id.push_back(*disk->CreateSequence());
    ip.push_back(*plain->CreateSequence());
  }
  std::mt19937_64 rng(9);
  // Five of six sequences end on a partial page; then a batch spanning more pages than there
  // are host slots (written in chunks), extending three partial pages (they fit in one chunk).
  AppendBoth(*disk, id, *plain, ip, 0, {20, 5, 16, 9, 40, 3}, rng);
  std::vector<SeqId> four(id.begin(), id.begin() + 4), four_p(ip.begin(), ip.begin() + 4);
  AppendBoth(*disk, four, *plain, four_p, 0, {30, 50, 2, 7}, rng);
  EXPECT_TRUE(Read(*disk, id) == Read(*plain, ip));

  // Five partially filled pages would not fit in the chunk written last: refused up front.
  const Snapshot before = Read(*disk, id);
  const std::vector<int32_t> ones = {1, 1, 1, 1, 1, 1};
  const std::vector<fp16_t> kv = Random(rng, 6 * 2 * 64);
  absl::Status s = disk->AppendBatch(0, id, ones, kv.data(), kv.data(), DType::kFp16,
                                     MemSpace::kHost, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(Read(*disk, id) == before);
}

// The host plan of the bulk GPU append: one segment per run of consecutive rows of a page.
TEST(AppendBatch, PlanAppendSegmentsCutsRunsPerPage) {
  // Sequence A: rows 13..15 of page 7, all of page 2, rows 0..4 of page 9; sequence B: row 3
  // of page 4.
  std::vector<int32_t> page, slot;
  for (int32_t r = 13; r < 16; ++r) page.push_back(7), slot.push_back(r);
  for (int32_t r = 0; r < 16; ++r) page.push_back(2), slot.push_back(r);
  for (int32_t r = 0; r < 5; ++r) page.push_back(9), slot.push_back(r);
  page.push_back(4), slot.push_back(3);
  std::vector<AppendSegment> segs;
  ASSERT_TRUE(PlanAppendSegments(page.data(), slot.data(), int32_t(page.size()), &segs));
  ASSERT_EQ(segs.size(), 4u);
  const int32_t want[4][4] = {{7, 13, 16, 0}, {2, 0, 16, 3}, {9, 0, 5, 19}, {4, 3, 4, 24}};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(segs[i].page, want[i][0]);
    EXPECT_EQ(segs[i].row_begin, want[i][1]);
    EXPECT_EQ(segs[i].row_end, want[i][2]);
    EXPECT_EQ(segs[i].src_token, want[i][3]);
    EXPECT_EQ(segs[i].stage, -1);
  }
  // A page written in two runs (or rows out of order) is not for the bulk path.
  page.push_back(7), slot.push_back(0);
  EXPECT_FALSE(PlanAppendSegments(page.data(), slot.data(), int32_t(page.size()), &segs));
  const int32_t p2[2] = {5, 5}, s2[2] = {4, 3};
  EXPECT_FALSE(PlanAppendSegments(p2, s2, 2, &segs));
  EXPECT_TRUE(PlanAppendSegments(p2, s2, 0, &segs));
  EXPECT_TRUE(segs.empty());
}

}  // namespace
}  // namespace twl
