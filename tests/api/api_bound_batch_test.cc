// Bound batches through the C API on the CPU backend (issue 11.3): the tables the runtime
// keeps for a bound batch follow every append (ragged, across page boundaries, copy-on-write
// after a fork), twl_decode_batch decodes bit for bit like twl_decode of the same sequences,
// and every misuse has a clear status with nothing changed. Appends split in a reservation
// and a batch append store and decode exactly like twl_append_batch.
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "api_test_util.h"

namespace twl_test {
namespace {

constexpr int32_t kMaxTokens = 100;

class ApiBoundBatch : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = SmallConfig();  // 2 layers, 4 q / 2 KV heads, d 32, page 8
    rt_ = MakeRuntime(c_);
    ASSERT_NE(rt_, nullptr);
  }
  twl_runtime* rt() { return rt_.get(); }

  twl_seq_id NewSeq(int32_t prompt) {
    twl_seq_id s = TWL_INVALID_SEQ_ID;
    EXPECT_EQ(twl_sequence_create(rt(), &s), TWL_OK);
    for (int32_t l = 0; l < c_.num_layers && prompt > 0; ++l) {
      EXPECT_EQ(AppendRandom(rt(), s, l, prompt, c_.num_kv_heads, c_.head_dim, &rng_), TWL_OK);
    }
    return s;
  }
  // counts[i] new tokens to seqs[i] in every layer, one twl_append_batch per layer.
  twl_status AppendRagged(const std::vector<twl_seq_id>& seqs, const std::vector<int32_t>& counts) {
    int32_t total = 0;
    for (int32_t n : counts) total += n;
    for (int32_t l = 0; l < c_.num_layers; ++l) {
      const size_t elems = size_t(total) * c_.num_kv_heads * c_.head_dim;
      const std::vector<uint16_t> k = RandomHalf(&rng_, elems), v = RandomHalf(&rng_, elems);
      const twl_status s = twl_append_batch(rt(), l, seqs.data(), counts.data(),
                                            int32_t(seqs.size()), k.data(), v.data(),
                                            TWL_DTYPE_FP16, TWL_MEMORY_HOST, nullptr);
      if (s != TWL_OK) return s;
    }
    return TWL_OK;
  }
  // Checks the batch's tables against the sequences: lengths equal, ceil(len / page) valid
  // page ids then -1, and decode_batch bit-equal to twl_decode in every layer.
  void ExpectBatchMatches(twl_batch_id b, const std::vector<twl_seq_id>& seqs,
                          int32_t max_tokens = kMaxTokens) {
    const int32_t n = int32_t(seqs.size());
    const int32_t max_pages = (max_tokens + c_.page_size - 1) / c_.page_size;
    for (int32_t l = 0; l < c_.num_layers; ++l) {
      std::vector<int32_t> lens(size_t(n), -7), pages(size_t(n) * max_pages, -7);
      int32_t mp = 0;
      ASSERT_EQ(twl_batch_tables(rt(), b, l, lens.data(), n, pages.data(),
                                 int64_t(pages.size()), &mp),
                TWL_OK)
          << twl_runtime_last_error(rt());
      ASSERT_EQ(mp, max_pages);
      for (int32_t i = 0; i < n; ++i) {
        int32_t len = -1;
        ASSERT_EQ(twl_sequence_length(rt(), seqs[size_t(i)], l, &len), TWL_OK);
        EXPECT_EQ(lens[size_t(i)], len) << "layer " << l << " entry " << i;
        const int32_t used = (len + c_.page_size - 1) / c_.page_size;
        for (int32_t p = 0; p < max_pages; ++p) {
          const int32_t id = pages[size_t(i) * max_pages + size_t(p)];
          if (p < used) {
            EXPECT_GE(id, 0) << "layer " << l << " entry " << i << " page " << p;
          } else {
            EXPECT_EQ(id, -1) << "layer " << l << " entry " << i << " page " << p;
          }
        }
      }
      const size_t qn = size_t(n) * c_.num_q_heads * c_.head_dim;
      const std::vector<uint16_t> q = RandomHalf(&rng_, qn, 2.0f);
      std::vector<uint16_t> a(qn, 0xFFFF), e(qn, 0x7E00);
      ASSERT_EQ(twl_decode_batch(rt(), b, l, q.data(), a.data(), TWL_DTYPE_FP16, nullptr), TWL_OK)
          << twl_runtime_last_error(rt());
      ASSERT_EQ(twl_decode(rt(), l, seqs.data(), n, q.data(), e.data(), TWL_MEMORY_HOST, nullptr,
                           nullptr),
                TWL_OK);
      EXPECT_EQ(a, e) << "layer " << l << ": decode_batch differs from twl_decode";
    }
  }

  twl_runtime_config c_;
  twilight::RuntimePtr rt_;
  std::mt19937 rng_{1234};
};

TEST_F(ApiBoundBatch, TablesFollowRaggedAppendsAcrossPagesAndDecodeLikeDecode) {
  const std::vector<twl_seq_id> seqs = {NewSeq(5), NewSeq(16), NewSeq(1)};
  twl_memory_usage m0{}, m1{};
  m0.struct_size = m1.struct_size = sizeof(twl_memory_usage);
  ASSERT_EQ(twl_runtime_memory(rt(), &m0), TWL_OK);
  twl_batch_id b = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt(), seqs.data(), 3, kMaxTokens, &b), TWL_OK)
      << twl_runtime_last_error(rt());
  ASSERT_NE(b, TWL_INVALID_BATCH_ID);
  // The runtime's copy of the tables is counted: layers x 3 x (1 length + 13 pages + a
  // reserved row's 5 words) words.
  ASSERT_EQ(twl_runtime_memory(rt(), &m1), TWL_OK);
  EXPECT_EQ(m1.host_table_bytes - m0.host_table_bytes, int64_t(c_.num_layers) * 3 * 19 * 4);
  ExpectBatchMatches(b, seqs);
  // Ragged: zero counts, single tokens, multi-page chunks; lengths cross many pages.
  const std::vector<std::vector<int32_t>> rounds = {
      {1, 1, 1}, {0, 3, 7}, {11, 0, 1}, {1, 1, 0}, {20, 17, 9}, {1, 1, 1}, {8, 8, 8}};
  for (const auto& counts : rounds) {
    ASSERT_EQ(AppendRagged(seqs, counts), TWL_OK) << twl_runtime_last_error(rt());
    ExpectBatchMatches(b, seqs);
  }
  // An unbound sequence appended to in between changes nothing of the batch.
  const twl_seq_id other = NewSeq(30);
  ExpectBatchMatches(b, seqs);
  // Two batches over overlapping sequences, in another order, both kept current.
  const std::vector<twl_seq_id> seqs2 = {seqs[2], other};
  twl_batch_id b2 = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt(), seqs2.data(), 2, kMaxTokens, &b2), TWL_OK);
  ASSERT_EQ(AppendRagged({other, seqs[2], seqs[0]}, {5, 4, 3}), TWL_OK);
  ExpectBatchMatches(b, seqs);
  ExpectBatchMatches(b2, seqs2);
  ASSERT_EQ(twl_runtime_memory(rt(), &m0), TWL_OK);
  EXPECT_EQ(twl_batch_free(rt(), b2), TWL_OK);
  EXPECT_EQ(twl_batch_free(rt(), b), TWL_OK);
  ASSERT_EQ(twl_runtime_memory(rt(), &m1), TWL_OK);
  EXPECT_EQ(m0.host_table_bytes - m1.host_table_bytes, int64_t(c_.num_layers) * 5 * 19 * 4);
}

TEST_F(ApiBoundBatch, ForkAndCopyOnWriteKeepTheTablesRight) {
  const twl_seq_id a = NewSeq(13);  // partial last page (13 of 16)
  twl_seq_id child = TWL_INVALID_SEQ_ID;
  ASSERT_EQ(twl_sequence_fork(rt(), a, &child), TWL_OK);
  // Both bound: they share every page now.
  const std::vector<twl_seq_id> both = {a, child};
  twl_batch_id b = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt(), both.data(), 2, kMaxTokens, &b), TWL_OK);
  const int32_t max_pages = (kMaxTokens + c_.page_size - 1) / c_.page_size;
  std::vector<int32_t> before(size_t(2) * max_pages);
  ASSERT_EQ(twl_batch_tables(rt(), b, 0, nullptr, 0, before.data(), int64_t(before.size()), nullptr),
            TWL_OK);
  EXPECT_EQ(before[0], before[size_t(max_pages)]);
  EXPECT_EQ(before[1], before[size_t(max_pages) + 1]);
  // The parent's append copies the shared partial page: its entry must change, the child's not.
  ASSERT_EQ(AppendRagged({a}, {1}), TWL_OK);
  std::vector<int32_t> after(before.size());
  ASSERT_EQ(twl_batch_tables(rt(), b, 0, nullptr, 0, after.data(), int64_t(after.size()), nullptr),
            TWL_OK);
  EXPECT_EQ(after[0], before[0]);                      // full page still shared
  EXPECT_NE(after[1], before[1]);                      // the copied partial page
  EXPECT_EQ(after[size_t(max_pages) + 1], before[1]);  // the child kept the original
  ExpectBatchMatches(b, both);
  // A fork of a bound sequence is not bound; appending to it leaves the batch as it was.
  twl_seq_id grandchild = TWL_INVALID_SEQ_ID;
  ASSERT_EQ(twl_sequence_fork(rt(), child, &grandchild), TWL_OK);
  ASSERT_EQ(AppendRagged({grandchild}, {9}), TWL_OK);
  ASSERT_EQ(AppendRagged({child}, {2}), TWL_OK);
  ExpectBatchMatches(b, both);
  EXPECT_EQ(twl_sequence_free(rt(), grandchild), TWL_OK);
  ExpectBatchMatches(b, both);
  EXPECT_EQ(twl_batch_free(rt(), b), TWL_OK);
}

TEST_F(ApiBoundBatch, MisuseGivesClearStatusesAndChangesNothing) {
  const twl_seq_id s1 = NewSeq(20), s2 = NewSeq(3);
  twl_batch_id b = 99;
  const twl_seq_id dup[2] = {s1, s1};
  EXPECT_EQ(twl_batch_create(rt(), dup, 2, kMaxTokens, &b), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(b, TWL_INVALID_BATCH_ID);
  const twl_seq_id unknown[2] = {s1, 424242};
  EXPECT_EQ(twl_batch_create(rt(), unknown, 2, kMaxTokens, &b), TWL_NOT_FOUND);
  const twl_seq_id ok[2] = {s1, s2};
  EXPECT_EQ(twl_batch_create(rt(), ok, 0, kMaxTokens, &b), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_create(rt(), nullptr, 2, kMaxTokens, &b), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_create(rt(), ok, 2, kMaxTokens, nullptr), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_create(nullptr, ok, 2, kMaxTokens, &b), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_create(rt(), ok, 2, 0, &b), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_create(rt(), ok, 2, 2147483647, &b), TWL_INVALID_ARGUMENT);  // > pool
  EXPECT_NE(std::string(twl_runtime_last_error(rt())).find("pool"), std::string::npos);
  EXPECT_EQ(twl_batch_create(rt(), ok, 2, 19, &b), TWL_INVALID_ARGUMENT);  // s1 has 20
  EXPECT_NE(std::string(twl_runtime_last_error(rt())).find("max_tokens"), std::string::npos);
  ASSERT_EQ(twl_batch_create(rt(), ok, 2, 24, &b), TWL_OK);

  // Past max_tokens: the whole call fails, nothing is appended to any of its sequences.
  twl_memory_usage m0{};
  m0.struct_size = sizeof(m0);
  ASSERT_EQ(twl_runtime_memory(rt(), &m0), TWL_OK);
  EXPECT_EQ(AppendRagged({s2, s1}, {1, 5}), TWL_FAILED_PRECONDITION);
  EXPECT_NE(std::string(twl_runtime_last_error(rt())).find("max_tokens"), std::string::npos);
  twl_memory_usage m1{};
  m1.struct_size = sizeof(m1);
  ASSERT_EQ(twl_runtime_memory(rt(), &m1), TWL_OK);
  EXPECT_EQ(m1.host_pool_bytes_used, m0.host_pool_bytes_used);
  int32_t len = 0;
  ASSERT_EQ(twl_sequence_length(rt(), s2, 0, &len), TWL_OK);
  EXPECT_EQ(len, 3);
  ASSERT_EQ(twl_sequence_length(rt(), s1, 0, &len), TWL_OK);
  EXPECT_EQ(len, 20);
  ASSERT_EQ(AppendRagged({s2, s1}, {1, 4}), TWL_OK);  // exactly up to max_tokens is fine
  ExpectBatchMatches(b, {s1, s2}, 24);

  // A bound sequence cannot be freed; freeing the batch first makes it possible.
  EXPECT_EQ(twl_sequence_free(rt(), s1), TWL_FAILED_PRECONDITION);
  ASSERT_EQ(twl_sequence_length(rt(), s1, 1, &len), TWL_OK);
  EXPECT_EQ(len, 24);

  // Decode misuse leaves out untouched.
  const size_t qn = size_t(2) * c_.num_q_heads * c_.head_dim;
  const std::vector<uint16_t> q = RandomHalf(&rng_, qn);
  std::vector<uint16_t> out(qn, 0xABCD);
  EXPECT_EQ(twl_decode_batch(rt(), b + 1000, 0, q.data(), out.data(), TWL_DTYPE_FP16, nullptr),
            TWL_NOT_FOUND);
  EXPECT_EQ(twl_decode_batch(rt(), b, 2, q.data(), out.data(), TWL_DTYPE_FP16, nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_decode_batch(rt(), b, 0, nullptr, out.data(), TWL_DTYPE_FP16, nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_decode_batch(rt(), b, 0, q.data(), out.data(), static_cast<twl_dtype>(7), nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](uint16_t x) { return x == 0xABCD; }));
  std::vector<int32_t> small(1);
  EXPECT_EQ(twl_batch_tables(rt(), b, 0, small.data(), 1, nullptr, 0, nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_tables(rt(), b, 0, nullptr, 0, small.data(), 1, nullptr),
            TWL_INVALID_ARGUMENT);

  EXPECT_EQ(twl_batch_free(rt(), b), TWL_OK);
  EXPECT_EQ(twl_batch_free(rt(), b), TWL_NOT_FOUND);
  EXPECT_EQ(twl_decode_batch(rt(), b, 0, q.data(), out.data(), TWL_DTYPE_FP16, nullptr),
            TWL_NOT_FOUND);
  // Unbound: appends past the old max_tokens and the free work again.
  EXPECT_EQ(AppendRagged({s1}, {30}), TWL_OK);
  EXPECT_EQ(twl_sequence_free(rt(), s1), TWL_OK);
  EXPECT_EQ(twl_sequence_free(rt(), s2), TWL_OK);
  twl_memory_usage m2{};
  m2.struct_size = sizeof(m2);
  ASSERT_EQ(twl_runtime_memory(rt(), &m2), TWL_OK);
  EXPECT_EQ(m2.host_pool_bytes_used, 0);
}

TEST_F(ApiBoundBatch, EmptyLayerIsAPreconditionAndOtherDtypesMatchDecodeEx) {
  twl_seq_id empty = TWL_INVALID_SEQ_ID;
  ASSERT_EQ(twl_sequence_create(rt(), &empty), TWL_OK);
  const twl_seq_id full = NewSeq(12);
  const std::vector<twl_seq_id> seqs = {full, empty};
  twl_batch_id b = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt(), seqs.data(), 2, kMaxTokens, &b), TWL_OK);
  const size_t qn = size_t(2) * c_.num_q_heads * c_.head_dim;
  std::vector<float> q(qn), a(qn, 5.0f), e(qn);
  std::normal_distribution<float> dist;
  for (float& x : q) x = dist(rng_);
  EXPECT_EQ(twl_decode_batch(rt(), b, 0, q.data(), a.data(), TWL_DTYPE_FP32, nullptr),
            TWL_FAILED_PRECONDITION);
  EXPECT_TRUE(std::all_of(a.begin(), a.end(), [](float x) { return x == 5.0f; }));
  ASSERT_EQ(AppendRagged({empty}, {4}), TWL_OK);
  for (twl_dtype dt : {TWL_DTYPE_FP32, TWL_DTYPE_BF16}) {
    std::vector<uint16_t> q16(qn), a16(qn), e16(qn);
    const void* qp = q.data();
    void* ap = a.data();
    void* ep = e.data();
    if (dt == TWL_DTYPE_BF16) {
      for (size_t i = 0; i < qn; ++i) {
        uint32_t bits = 0;
        std::memcpy(&bits, &q[i], 4);
        q16[i] = uint16_t(bits >> 16);
      }
      qp = q16.data();
      ap = a16.data();
      ep = e16.data();
    }
    ASSERT_EQ(twl_decode_batch(rt(), b, 1, qp, ap, dt, nullptr), TWL_OK)
        << twl_runtime_last_error(rt());
    ASSERT_EQ(twl_decode_ex(rt(), 1, seqs.data(), 2, qp, ep, dt, TWL_MEMORY_HOST, nullptr, nullptr),
              TWL_OK);
    if (dt == TWL_DTYPE_BF16) {
      EXPECT_EQ(a16, e16);
    } else {
      EXPECT_EQ(a, e);
    }
  }
  EXPECT_EQ(twl_batch_free(rt(), b), TWL_OK);
}

// Appends split in a reservation and a batch append (twl_batch_reserve / twl_batch_append,
// added in 0.2.1): the stored rows, the tables and every decode equal those of twl_append_batch
// of the same tokens to twins, bit for bit, across page boundaries, after the copy-on-write
// of a shared partial page (the twins are forks), with FP32 input too.
TEST_F(ApiBoundBatch, ReservedRowsAppendLikeAppendBatch) {
  const std::vector<twl_seq_id> seqs = {NewSeq(5), NewSeq(13), NewSeq(1)};
  std::vector<twl_seq_id> twins;
  for (twl_seq_id s : seqs) {
    twl_seq_id t = TWL_INVALID_SEQ_ID;
    ASSERT_EQ(twl_sequence_fork(rt(), s, &t), TWL_OK);
    twins.push_back(t);
  }
  const int32_t n = int32_t(seqs.size());
  twl_batch_id b = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt(), seqs.data(), n, kMaxTokens, &b), TWL_OK);
  const size_t elems = size_t(n) * c_.num_kv_heads * c_.head_dim;
  const std::vector<int32_t> ones(size_t(n), 1);
  std::normal_distribution<float> dist;
  for (int32_t step = 0; step < 20; ++step) {
    ASSERT_EQ(twl_batch_reserve(rt(), b, nullptr), TWL_OK) << twl_runtime_last_error(rt());
    for (int32_t l = 0; l < c_.num_layers; ++l) {
      std::vector<uint16_t> k16 = RandomHalf(&rng_, elems), v16 = RandomHalf(&rng_, elems);
      std::vector<float> k32(elems), v32(elems);
      for (size_t i = 0; i < elems; ++i) {
        k32[i] = dist(rng_);
        v32[i] = dist(rng_);
      }
      const bool fp32 = step % 7 == 3;
      const void* k = fp32 ? static_cast<const void*>(k32.data()) : k16.data();
      const void* v = fp32 ? static_cast<const void*>(v32.data()) : v16.data();
      const twl_dtype dt = fp32 ? TWL_DTYPE_FP32 : TWL_DTYPE_FP16;
      ASSERT_EQ(twl_batch_append(rt(), b, l, k, v, dt, nullptr), TWL_OK)
          << twl_runtime_last_error(rt());
      ASSERT_EQ(twl_append_batch(rt(), l, twins.data(), ones.data(), n, k, v, dt,
                                 TWL_MEMORY_HOST, nullptr),
                TWL_OK);
    }
    ExpectBatchMatches(b, seqs);  // tables follow; decode_batch equals twl_decode
    const size_t qn = size_t(n) * c_.num_q_heads * c_.head_dim;
    for (int32_t l = 0; l < c_.num_layers; ++l) {
      for (int32_t i = 0; i < n; ++i) {
        int32_t len = 0, twin_len = 0;
        ASSERT_EQ(twl_sequence_length(rt(), seqs[size_t(i)], l, &len), TWL_OK);
        ASSERT_EQ(twl_sequence_length(rt(), twins[size_t(i)], l, &twin_len), TWL_OK);
        ASSERT_EQ(len, twin_len);
        const size_t row = size_t(c_.num_kv_heads) * c_.head_dim;
        std::vector<uint16_t> k(len * row), v(len * row), tk(len * row), tv(len * row);
        ASSERT_EQ(twl_sequence_read_kv(rt(), seqs[size_t(i)], l, k.data(), v.data(), len, &len),
                  TWL_OK);
        ASSERT_EQ(twl_sequence_read_kv(rt(), twins[size_t(i)], l, tk.data(), tv.data(), len,
                                       &twin_len),
                  TWL_OK);
        ASSERT_EQ(k, tk) << "step " << step << " layer " << l << " entry " << i;
        ASSERT_EQ(v, tv) << "step " << step << " layer " << l << " entry " << i;
      }
      const std::vector<uint16_t> q = RandomHalf(&rng_, qn, 2.0f);
      std::vector<uint16_t> a(qn), e(qn);
      ASSERT_EQ(twl_decode(rt(), l, seqs.data(), n, q.data(), a.data(), TWL_MEMORY_HOST, nullptr,
                           nullptr),
                TWL_OK);
      ASSERT_EQ(twl_decode(rt(), l, twins.data(), n, q.data(), e.data(), TWL_MEMORY_HOST,
                           nullptr, nullptr),
                TWL_OK);
      ASSERT_EQ(a, e) << "step " << step << " layer " << l;
    }
  }
  EXPECT_EQ(twl_batch_free(rt(), b), TWL_OK);
}

// Reservation misuse and limits: clear statuses, nothing reserved by a failed call (lengths
// and pool use unchanged in every layer), an append before any reservation refused.
TEST_F(ApiBoundBatch, ReservationMisuseAndLimitsChangeNothing) {
  const twl_seq_id s1 = NewSeq(20), s2 = NewSeq(3);
  const twl_seq_id ok[2] = {s1, s2};
  twl_batch_id b = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt(), ok, 2, 22, &b), TWL_OK);
  const size_t elems = size_t(2) * c_.num_kv_heads * c_.head_dim;
  const std::vector<uint16_t> k = RandomHalf(&rng_, elems), v = RandomHalf(&rng_, elems);
  EXPECT_EQ(twl_batch_reserve(nullptr, b, nullptr), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_reserve(rt(), b + 1000, nullptr), TWL_NOT_FOUND);
  EXPECT_EQ(twl_batch_append(rt(), b, 0, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
            TWL_FAILED_PRECONDITION);
  EXPECT_NE(std::string(twl_runtime_last_error(rt())).find("twl_batch_reserve"),
            std::string::npos);
  ASSERT_EQ(twl_batch_reserve(rt(), b, nullptr), TWL_OK);
  ASSERT_EQ(twl_batch_reserve(rt(), b, nullptr), TWL_OK);  // s1 at max_tokens (22) now
  twl_memory_usage m0{}, m1{};
  m0.struct_size = m1.struct_size = sizeof(twl_memory_usage);
  ASSERT_EQ(twl_runtime_memory(rt(), &m0), TWL_OK);
  EXPECT_EQ(twl_batch_reserve(rt(), b, nullptr), TWL_FAILED_PRECONDITION);
  EXPECT_NE(std::string(twl_runtime_last_error(rt())).find("max_tokens"), std::string::npos);
  ASSERT_EQ(twl_runtime_memory(rt(), &m1), TWL_OK);
  EXPECT_EQ(m1.host_pool_bytes_used, m0.host_pool_bytes_used);
  for (int32_t l = 0; l < c_.num_layers; ++l) {
    int32_t len = 0;
    ASSERT_EQ(twl_sequence_length(rt(), s1, l, &len), TWL_OK);
    EXPECT_EQ(len, 22);
    ASSERT_EQ(twl_sequence_length(rt(), s2, l, &len), TWL_OK);
    EXPECT_EQ(len, 5);
  }
  EXPECT_EQ(twl_batch_append(nullptr, b, 0, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_append(rt(), b, 0, nullptr, v.data(), TWL_DTYPE_FP16, nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_append(rt(), b, 2, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_append(rt(), b, -1, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_append(rt(), b, 0, k.data(), v.data(), static_cast<twl_dtype>(7), nullptr),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_batch_append(rt(), b + 1000, 0, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
            TWL_NOT_FOUND);
  for (int32_t l = 0; l < c_.num_layers; ++l) {
    EXPECT_EQ(twl_batch_append(rt(), b, l, k.data(), v.data(), TWL_DTYPE_FP16, nullptr), TWL_OK);
  }
  ExpectBatchMatches(b, {s1, s2}, 22);
  EXPECT_EQ(twl_batch_free(rt(), b), TWL_OK);
  EXPECT_EQ(twl_batch_reserve(rt(), b, nullptr), TWL_NOT_FOUND);
}

// A pool that cannot hold the next page of every sequence in every layer: the reservation
// fails with TWL_CAPACITY_EXHAUSTED and takes no row and no page.
TEST(ApiBoundBatchPool, ExhaustedPoolReservesNothing) {
  twl_runtime_config c = SmallConfig();
  const int64_t page_bytes = int64_t(c.num_kv_heads) * 2 * c.page_size * c.head_dim * 2;
  c.host_pool_bytes = 5 * page_bytes;  // 5 pages of 8 tokens
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(9);
  twl_seq_id a = TWL_INVALID_SEQ_ID, b = TWL_INVALID_SEQ_ID;
  ASSERT_EQ(twl_sequence_create(rt.get(), &a), TWL_OK);
  ASSERT_EQ(twl_sequence_create(rt.get(), &b), TWL_OK);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    ASSERT_EQ(AppendRandom(rt.get(), a, l, 8, c.num_kv_heads, c.head_dim, &rng), TWL_OK);
  }
  ASSERT_EQ(AppendRandom(rt.get(), b, 0, 8, c.num_kv_heads, c.head_dim, &rng), TWL_OK);
  ASSERT_EQ(AppendRandom(rt.get(), b, 1, 3, c.num_kv_heads, c.head_dim, &rng), TWL_OK);
  // 4 pages used; the next row needs a new page for a in both layers and b in layer 0: 3.
  const twl_seq_id ids[2] = {a, b};
  twl_batch_id batch = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt.get(), ids, 2, 40, &batch), TWL_OK);
  twl_memory_usage m0{}, m1{};
  m0.struct_size = m1.struct_size = sizeof(twl_memory_usage);
  ASSERT_EQ(twl_runtime_memory(rt.get(), &m0), TWL_OK);
  EXPECT_EQ(twl_batch_reserve(rt.get(), batch, nullptr), TWL_CAPACITY_EXHAUSTED);
  ASSERT_EQ(twl_runtime_memory(rt.get(), &m1), TWL_OK);
  EXPECT_EQ(m1.host_pool_bytes_used, m0.host_pool_bytes_used);
  int32_t len = 0;
  ASSERT_EQ(twl_sequence_length(rt.get(), a, 1, &len), TWL_OK);
  EXPECT_EQ(len, 8);
  ASSERT_EQ(twl_sequence_length(rt.get(), b, 1, &len), TWL_OK);
  EXPECT_EQ(len, 3);
  EXPECT_EQ(twl_batch_free(rt.get(), batch), TWL_OK);
  // No room under max_tokens comes first, whatever the pool holds (the fuzzer's find: the
  // pool was reported when the sequence planned first needed a page).
  twl_seq_id empty = TWL_INVALID_SEQ_ID, filler = TWL_INVALID_SEQ_ID;
  ASSERT_EQ(twl_sequence_create(rt.get(), &empty), TWL_OK);
  ASSERT_EQ(twl_sequence_create(rt.get(), &filler), TWL_OK);
  ASSERT_EQ(AppendRandom(rt.get(), filler, 0, 8, c.num_kv_heads, c.head_dim, &rng), TWL_OK);
  // The pool is full now; `empty` needs a page, `a` is at max_tokens (8).
  const twl_seq_id ea[2] = {empty, a};
  ASSERT_EQ(twl_batch_create(rt.get(), ea, 2, 8, &batch), TWL_OK);
  EXPECT_EQ(twl_batch_reserve(rt.get(), batch, nullptr), TWL_FAILED_PRECONDITION);
  EXPECT_NE(std::string(twl_runtime_last_error(rt.get())).find("max_tokens"), std::string::npos);
  EXPECT_EQ(twl_batch_free(rt.get(), batch), TWL_OK);
}

TEST_F(ApiBoundBatch, RuntimeFreeReleasesBoundBatches) {
  const twl_seq_id s = NewSeq(9);
  twl_batch_id b = TWL_INVALID_BATCH_ID;
  ASSERT_EQ(twl_batch_create(rt(), &s, 1, kMaxTokens, &b), TWL_OK);
  rt_.reset();  // LeakSanitizer (ASan tree) checks nothing of the batch outlives it
}

}  // namespace
}  // namespace twl_test
