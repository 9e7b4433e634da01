// The CPU backend on its own (below the Runtime): page copies carry the quantized K and the
// page bounds (a copied page decodes exactly like its source), dtype conversion, bounds
// checks, and memory accounting.
#include "runtime/cpu_backend.h"

#include <random>

#include <gtest/gtest.h>

namespace twl {
namespace {

RuntimeConfig Config() {
  RuntimeConfig c;
  c.num_layers = 1;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.page_size = 8;
  c.backend = BackendKind::kCpu;
  return c;
}

std::vector<fp16_t> RandomHalf(size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.2f, 1.0f);
  std::vector<fp16_t> x(n);
  for (auto& v : x) v = FloatToHalf(nd(rng));
  return x;
}

absl::Status AppendRows(Backend& b, int32_t page, int32_t first,
                        int32_t rows, const std::vector<fp16_t>& k, const std::vector<fp16_t>& v) {
  std::vector<int32_t> page_id(static_cast<size_t>(rows), page), slot(static_cast<size_t>(rows));
  for (int32_t r = 0; r < rows; ++r) slot[size_t(r)] = first + r;
  return b.Append(AppendView{rows, k.data(), v.data(), page_id.data(), slot.data()},
                  DType::kFp16, MemSpace::kHost, nullptr);
}

// Decodes one single-page sequence held in `page` with `len` rows.
std::vector<fp16_t> DecodeOnePage(Backend& b, const RuntimeConfig& c, int32_t page, int32_t len,
                                  const std::vector<fp16_t>& q, StepTelemetry* t) {
  DecodeRequest r;
  const int32_t seq_len = len;
  r.batch.num_seqs = 1;
  r.batch.num_q_heads = c.num_q_heads;
  r.batch.seq_len = &seq_len;
  r.batch.page_table = &page;
  r.batch.max_pages = 1;
  std::vector<fp16_t> out(q.size());
  r.q = q.data();
  r.out = out.data();
  r.selector.kind = SelectorKind::kQuest;
  r.selector.budget_pages = 1;
  r.pruner.p = 0.8f;
  EXPECT_TRUE(b.Decode(r, t).ok());
  return out;
}

TEST(CpuBackend, CopiedPageDecodesLikeItsSource) {
  const RuntimeConfig c = Config();
  auto b = CreateCpuBackend(c, 6);
  ASSERT_TRUE(b.ok()) << b.status();
  std::mt19937_64 rng(17);
  const size_t row = size_t(c.num_kv_heads) * c.head_dim;
  const int32_t rows = 5;
  const auto k = RandomHalf(rows * row, rng), v = RandomHalf(rows * row, rng);
  ASSERT_TRUE(AppendRows(**b, 2, 0, rows, k, v).ok());
  ASSERT_TRUE((*b)->CopyPage(2, 4, rows).ok());
  std::vector<fp16_t> rk(rows * row), rv(rows * row);
  ASSERT_TRUE((*b)->ReadPage(4, rows, rk.data(), rv.data()).ok());
  EXPECT_EQ(rk, k);
  EXPECT_EQ(rv, v);
  const auto q = RandomHalf(size_t(c.num_q_heads) * c.head_dim, rng);
  StepTelemetry ts, td;
  const auto out_src = DecodeOnePage(**b, c, 2, rows, q, &ts);
  const auto out_dst = DecodeOnePage(**b, c, 4, rows, q, &td);
  EXPECT_EQ(out_src, out_dst);
  EXPECT_EQ(ts.kept_tokens, td.kept_tokens);
  EXPECT_EQ(ts.est_mass, td.est_mass);  // same quantized K

  // Rows appended to the copy later do not touch the source.
  const auto k2 = RandomHalf(2 * row, rng), v2 = RandomHalf(2 * row, rng);
  ASSERT_TRUE(AppendRows(**b, 4, rows, 2, k2, v2).ok());
  ASSERT_TRUE((*b)->ReadPage(2, rows, rk.data(), rv.data()).ok());
  EXPECT_EQ(rk, k);
  StepTelemetry again;
  EXPECT_EQ(DecodeOnePage(**b, c, 2, rows, q, &again), out_src);
}

TEST(CpuBackend, ConvertsBf16AndFp32Input) {
  const RuntimeConfig c = Config();
  auto b = CreateCpuBackend(c, 2);
  ASSERT_TRUE(b.ok());
  const size_t n = size_t(3) * c.num_kv_heads * c.head_dim;
  std::vector<float> k(n), v(n);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (size_t i = 0; i < n; ++i) {
    k[i] = nd(rng);
    v[i] = nd(rng);
  }
  const int32_t page_id[3] = {1, 1, 1}, slot[3] = {0, 1, 2};
  AppendView in{3, reinterpret_cast<const fp16_t*>(k.data()),
                reinterpret_cast<const fp16_t*>(v.data()), page_id, slot};
  ASSERT_TRUE((*b)->Append(in, DType::kFp32, MemSpace::kHost, nullptr).ok());
  std::vector<fp16_t> rk(n), rv(n);
  ASSERT_TRUE((*b)->ReadPage(1, 3, rk.data(), rv.data()).ok());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(rk[i], FloatToHalf(k[i]));
    ASSERT_EQ(rv[i], FloatToHalf(v[i]));
  }
}

TEST(CpuBackend, RejectsOutOfRangePagesAndRows) {
  const RuntimeConfig c = Config();
  auto b = CreateCpuBackend(c, 3);
  ASSERT_TRUE(b.ok());
  std::vector<fp16_t> buf(size_t(c.page_size) * c.num_kv_heads * c.head_dim, FloatToHalf(1.0f));
  EXPECT_EQ((*b)->ReadPage(3, 1, buf.data(), buf.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*b)->ReadPage(0, 9, buf.data(), buf.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*b)->CopyPage(0, -1, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*b)->CopyPage(0, 1, 9).code(), absl::StatusCode::kInvalidArgument);
  const int32_t bad_page = 3, slot = 0;
  AppendView in{1, buf.data(), buf.data(), &bad_page, &slot};
  EXPECT_EQ((*b)->Append(in, DType::kFp16, MemSpace::kHost, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  const int32_t good_page = 0;
  in.page_id = &good_page;
  EXPECT_EQ((*b)->Append(in, DType::kFp16, MemSpace::kDevice, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateCpuBackend(c, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackend, MemoryMatchesBytesPerPage) {
  for (int32_t bits : {2, 4, 8, 16}) {
    RuntimeConfig c = Config();
    c.k_bits = bits;
    auto b = CreateCpuBackend(c, 10);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ((*b)->Memory().host_pool_bytes_total, 10 * CpuBackendBytesPerPage(c)) << bits;
  }
}

}  // namespace
}  // namespace twl
