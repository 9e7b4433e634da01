// Every error path of the C API returns its documented status with a message naming the
// function, and leaves the runtime as it was: after each bad call the cached K/V (read back)
// and a decode of a fixed query are bit-identical to a snapshot taken before.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "api_test_util.h"

namespace twl_test {
namespace {

class ApiErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = SmallConfig();
    rt_ = MakeRuntime(config_);
    ASSERT_TRUE(rt_);
    rng_.seed(20250205);
    for (twl_seq_id* s : {&a_, &b_, &empty_}) {
      ASSERT_EQ(twl_sequence_create(rt_.get(), s), TWL_OK);
    }
    // Lengths that leave partial pages (page size 8).
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      ASSERT_EQ(AppendRandom(rt_.get(), a_, layer, 29 + layer, 2, 32, &rng_), TWL_OK);
      ASSERT_EQ(AppendRandom(rt_.get(), b_, layer, 13, 2, 32, &rng_), TWL_OK);
    }
    q_ = twl_test::RandomHalf(&rng_, QElems() * 2);
    snapshot_ = Snapshot();
  }

  size_t QElems() const { return size_t(config_.num_q_heads) * config_.head_dim; }

  struct State {
    std::vector<LayerKv> kv;    // [seq a, b][layer]
    std::vector<uint16_t> out;  // decode of {a, b} per layer
    twl_memory_usage memory{};
    bool operator==(const State& o) const {
      return kv == o.kv && out == o.out &&
             memory.host_pool_bytes_used == o.memory.host_pool_bytes_used;
    }
  };

  State Snapshot() {
    State s;
    const twl_seq_id batch[2] = {a_, b_};
    for (twl_seq_id seq : batch) {
      for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
        s.kv.push_back(ReadKv(rt_.get(), seq, layer));
      }
    }
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      std::vector<uint16_t> out(QElems() * 2, 0);
      EXPECT_EQ(twl_decode(rt_.get(), layer, batch, 2, q_.data(), out.data(), TWL_MEMORY_HOST,
                           nullptr, nullptr),
                TWL_OK)
          << twl_runtime_last_error(rt_.get());
      s.out.insert(s.out.end(), out.begin(), out.end());
    }
    s.memory.struct_size = sizeof(s.memory);
    EXPECT_EQ(twl_runtime_memory(rt_.get(), &s.memory), TWL_OK);
    return s;
  }

  void ExpectUnchanged(const char* after) {
    EXPECT_TRUE(Snapshot() == snapshot_) << "state changed after " << after;
  }

  twl_runtime_config config_;
  twilight::RuntimePtr rt_;
  std::mt19937 rng_;
  twl_seq_id a_ = -1, b_ = -1, empty_ = -1;
  std::vector<uint16_t> q_;
  State snapshot_;
};

TEST_F(ApiErrors, NullRuntimeHandle) {
  twl_seq_id id = 0;
  int32_t len = 0;
  uint16_t buf[4];
  twl_step_stats st;
  st.struct_size = sizeof(st);
  twl_memory_usage m;
  m.struct_size = sizeof(m);
  twl_runtime_config c;
  c.struct_size = sizeof(c);
  const twl_status expect = TWL_INVALID_ARGUMENT;
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_create(nullptr, &id), expect, nullptr,
                             "twl_sequence_create");
  EXPECT_EQ(id, TWL_INVALID_SEQ_ID);
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_free(nullptr, a_), expect, nullptr, "twl_sequence_free");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_fork(nullptr, a_, &id), expect, nullptr,
                             "twl_sequence_fork");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_length(nullptr, a_, 0, &len), expect, nullptr,
                             "twl_sequence_length");
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(nullptr, a_, 0, 1, buf, buf, TWL_DTYPE_FP16, TWL_MEMORY_HOST), expect,
      nullptr, "twl_sequence_append");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_read_kv(nullptr, a_, 0, buf, buf, 1, &len), expect,
                             nullptr, "twl_sequence_read_kv");
  EXPECT_STATUS_WITH_MESSAGE(
      twl_decode(nullptr, 0, &a_, 1, q_.data(), buf, TWL_MEMORY_HOST, nullptr, nullptr), expect,
      nullptr, "twl_decode");
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_last_step(nullptr, &st), expect, nullptr,
                             "twl_runtime_last_step");
  EXPECT_STATUS_WITH_MESSAGE(
      twl_runtime_last_step_heads(nullptr, nullptr, nullptr, nullptr, 0, nullptr, 0), expect,
      nullptr, "twl_runtime_last_step_heads");
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_memory(nullptr, &m), expect, nullptr,
                             "twl_runtime_memory");
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_get_config(nullptr, &c), expect, nullptr,
                             "twl_runtime_get_config");
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_async_error(nullptr), expect, nullptr,
                             "twl_runtime_async_error");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_save(nullptr, a_, "/tmp/x"), expect, nullptr,
                             "twl_sequence_save");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_restore(nullptr, "/tmp/x", &id), expect, nullptr,
                             "twl_sequence_restore");
  // A handle that is not a runtime (wrong magic) is refused the same way.
  std::vector<unsigned char> junk(4096, 0x5a);
  auto* fake = reinterpret_cast<twl_runtime*>(junk.data());
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_create(fake, &id), expect, nullptr,
                             "twl_sequence_create");
  twl_runtime_free(fake);  // not a live handle: ignored
  ExpectUnchanged("null handles");
}

TEST_F(ApiErrors, UnknownSequence) {
  twl_runtime* rt = rt_.get();
  const twl_seq_id unknown = 987654;
  int32_t len = -7;
  twl_seq_id id = 0;
  uint16_t buf[64] = {};
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_free(rt, unknown), TWL_NOT_FOUND, rt,
                             "twl_sequence_free");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_fork(rt, unknown, &id), TWL_NOT_FOUND, rt,
                             "twl_sequence_fork");
  EXPECT_EQ(id, TWL_INVALID_SEQ_ID);
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_length(rt, unknown, 0, &len), TWL_NOT_FOUND, rt,
                             "twl_sequence_length");
  EXPECT_EQ(len, -7) << "out untouched on failure";
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, unknown, 0, 1, buf, buf, TWL_DTYPE_FP16, TWL_MEMORY_HOST),
      TWL_NOT_FOUND, rt, "twl_sequence_append");
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, unknown, 0, 0, nullptr, nullptr, TWL_DTYPE_FP16, TWL_MEMORY_HOST),
      TWL_NOT_FOUND, rt, "twl_sequence_append");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_read_kv(rt, unknown, 0, buf, buf, 1, &len), TWL_NOT_FOUND,
                             rt, "twl_sequence_read_kv");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_save(rt, unknown, "/tmp/twl_api_unknown.seq"),
                             TWL_NOT_FOUND, rt, "twl_sequence_save");
  // Decode: the unknown id in the middle of a batch; out is untouched.
  const twl_seq_id batch[3] = {a_, unknown, b_};
  std::vector<uint16_t> q = twl_test::RandomHalf(&rng_, QElems() * 3);
  std::vector<uint16_t> out(QElems() * 3, 0xabcd);
  EXPECT_STATUS_WITH_MESSAGE(
      twl_decode(rt, 0, batch, 3, q.data(), out.data(), TWL_MEMORY_HOST, nullptr, nullptr),
      TWL_NOT_FOUND, rt, "twl_decode");
  EXPECT_NE(std::string(twl_runtime_last_error(rt)).find("987654"), std::string::npos)
      << "the message names the id: " << twl_runtime_last_error(rt);
  EXPECT_EQ(out, std::vector<uint16_t>(QElems() * 3, 0xabcd));
  // A freed id stays unknown (ids are not reused).
  twl_seq_id c = -1;
  ASSERT_EQ(twl_sequence_create(rt, &c), TWL_OK);
  ASSERT_EQ(twl_sequence_free(rt, c), TWL_OK);
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_free(rt, c), TWL_NOT_FOUND, rt, "twl_sequence_free");
  twl_seq_id d = -1;
  ASSERT_EQ(twl_sequence_create(rt, &d), TWL_OK);
  EXPECT_NE(d, c);
  ASSERT_EQ(twl_sequence_free(rt, d), TWL_OK);
  ExpectUnchanged("unknown sequences");
}

TEST_F(ApiErrors, BadAppends) {
  twl_runtime* rt = rt_.get();
  const size_t elems = 3 * size_t(config_.num_kv_heads) * config_.head_dim;
  const std::vector<uint16_t> k = twl_test::RandomHalf(&rng_, elems);
  const char* fn = "twl_sequence_append";
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, a_, 0, 3, nullptr, k.data(), TWL_DTYPE_FP16, TWL_MEMORY_HOST),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, a_, 0, 3, k.data(), nullptr, TWL_DTYPE_FP16, TWL_MEMORY_HOST),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, a_, 0, -1, k.data(), k.data(), TWL_DTYPE_FP16, TWL_MEMORY_HOST),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, a_, -1, 3, k.data(), k.data(), TWL_DTYPE_FP16, TWL_MEMORY_HOST),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_append(rt, a_, config_.num_layers, 3, k.data(), k.data(),
                                                 TWL_DTYPE_FP16, TWL_MEMORY_HOST),
                             TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, a_, 0, 3, k.data(), k.data(), twl_dtype(7), TWL_MEMORY_HOST),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, a_, 0, 3, k.data(), k.data(), TWL_DTYPE_FP16, twl_memory_space(5)),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      twl_sequence_append(rt, a_, 0, 3, k.data(), k.data(), TWL_DTYPE_FP16, TWL_MEMORY_DEVICE),
      TWL_UNSUPPORTED, rt, fn);
  // n == 0 is a no-op that succeeds.
  EXPECT_EQ(twl_sequence_append(rt, a_, 0, 0, nullptr, nullptr, TWL_DTYPE_FP16, TWL_MEMORY_HOST),
            TWL_OK);
  ExpectUnchanged("bad appends");
}

TEST_F(ApiErrors, BadDecodes) {
  twl_runtime* rt = rt_.get();
  const twl_seq_id batch[2] = {a_, b_};
  std::vector<uint16_t> out(QElems() * 2, 0x1234);
  const std::vector<uint16_t> untouched = out;
  const char* fn = "twl_decode";
  auto decode = [&](int32_t layer, const twl_seq_id* seqs, int32_t n, const void* q, void* o,
                    twl_memory_space space, const float* p) {
    return twl_decode(rt, layer, seqs, n, q, o, space, p, nullptr);
  };
  EXPECT_STATUS_WITH_MESSAGE(decode(0, nullptr, 2, q_.data(), out.data(), TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(decode(0, batch, 2, nullptr, out.data(), TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(decode(0, batch, 2, q_.data(), nullptr, TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(decode(0, batch, 0, q_.data(), out.data(), TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(decode(0, batch, -3, q_.data(), out.data(), TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(decode(-1, batch, 2, q_.data(), out.data(), TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      decode(config_.num_layers, batch, 2, q_.data(), out.data(), TWL_MEMORY_HOST, nullptr),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(
      decode(0, batch, 2, q_.data(), out.data(), twl_memory_space(3), nullptr),
      TWL_INVALID_ARGUMENT, rt, fn);
  EXPECT_STATUS_WITH_MESSAGE(decode(0, batch, 2, q_.data(), out.data(), TWL_MEMORY_DEVICE, nullptr),
                             TWL_UNSUPPORTED, rt, fn);
  const twl_seq_id dup[2] = {a_, a_};
  EXPECT_STATUS_WITH_MESSAGE(decode(0, dup, 2, q_.data(), out.data(), TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, rt, fn);
  // p outside (0, 1], NaN included, in either position.
  const float bad_p[] = {
      0.0f, -0.1f, 1.0001f, 1.5f, std::nanf(""), std::numeric_limits<float>::infinity(), -0.0f};
  for (float p : bad_p) {
    for (int pos = 0; pos < 2; ++pos) {
      float ps[2] = {0.9f, 0.9f};
      ps[pos] = p;
      EXPECT_STATUS_WITH_MESSAGE(decode(0, batch, 2, q_.data(), out.data(), TWL_MEMORY_HOST, ps),
                                 TWL_INVALID_ARGUMENT, rt, fn);
    }
  }
  // A sequence with no token in the layer.
  const twl_seq_id with_empty[2] = {a_, empty_};
  EXPECT_STATUS_WITH_MESSAGE(
      decode(0, with_empty, 2, q_.data(), out.data(), TWL_MEMORY_HOST, nullptr),
      TWL_FAILED_PRECONDITION, rt, fn);
  EXPECT_EQ(out, untouched) << "out is untouched by calls rejected before any work";
  // Valid edge values of p are accepted.
  const float edge_p[2] = {1.0f, 1e-6f};
  EXPECT_EQ(decode(0, batch, 2, q_.data(), out.data(), TWL_MEMORY_HOST, edge_p), TWL_OK)
      << twl_runtime_last_error(rt);
  ExpectUnchanged("bad decodes");
}

TEST_F(ApiErrors, BadReadsAndTelemetryBuffers) {
  twl_runtime* rt = rt_.get();
  int32_t len = -1;
  std::vector<uint16_t> k(64 * 64, 0x7777), v(64 * 64, 0x7777);
  const std::vector<uint16_t> k0 = k;
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_read_kv(rt, a_, 0, k.data(), v.data(), 10, &len),
                             TWL_INVALID_ARGUMENT, rt, "twl_sequence_read_kv");
  EXPECT_EQ(len, 29) << "the length comes back even when the buffers are too small";
  EXPECT_EQ(k, k0) << "nothing written";
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_read_kv(rt, a_, 0, k.data(), v.data(), 64, nullptr),
                             TWL_INVALID_ARGUMENT, rt, "twl_sequence_read_kv");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_read_kv(rt, a_, 0, nullptr, nullptr, 64, &len),
                             TWL_INVALID_ARGUMENT, rt, "twl_sequence_read_kv");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_read_kv(rt, a_, 5, k.data(), v.data(), 64, &len),
                             TWL_INVALID_ARGUMENT, rt, "twl_sequence_read_kv");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_length(rt, a_, 0, nullptr), TWL_INVALID_ARGUMENT, rt,
                             "twl_sequence_length");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_create(rt, nullptr), TWL_INVALID_ARGUMENT, rt,
                             "twl_sequence_create");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_fork(rt, a_, nullptr), TWL_INVALID_ARGUMENT, rt,
                             "twl_sequence_fork");

  // The snapshot's last decode was {a, b}: 2 x 4 q-head entries, 2 x 2 KV-head entries.
  int32_t kept[8], kept_kv[4];
  std::fill(kept, kept + 8, -5);
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_last_step_heads(rt, nullptr, kept, nullptr, 7, nullptr, 0),
                             TWL_INVALID_ARGUMENT, rt, "twl_runtime_last_step_heads");
  EXPECT_EQ(kept[0], -5) << "nothing written";
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_last_step_heads(rt, nullptr, kept, nullptr, 8, kept_kv, 3),
                             TWL_INVALID_ARGUMENT, rt, "twl_runtime_last_step_heads");
  EXPECT_EQ(twl_runtime_last_step_heads(rt, nullptr, kept, nullptr, 8, kept_kv, 4), TWL_OK);
  for (int i = 0; i < 8; ++i) EXPECT_GE(kept[i], 1) << i;
  ExpectUnchanged("bad reads");
}

TEST_F(ApiErrors, SaveAndRestoreBadPaths) {
  twl_runtime* rt = rt_.get();
  twl_seq_id id = 5;
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_save(rt, a_, nullptr), TWL_INVALID_ARGUMENT, rt,
                             "twl_sequence_save");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_save(rt, a_, ""), TWL_INVALID_ARGUMENT, rt,
                             "twl_sequence_save");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_save(rt, a_, "/nonexistent-dir-twl/x.seq"), TWL_IO_ERROR,
                             rt, "twl_sequence_save");
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_restore(rt, "/nonexistent-dir-twl/x.seq", &id),
                             TWL_IO_ERROR, rt, "twl_sequence_restore");
  EXPECT_EQ(id, TWL_INVALID_SEQ_ID);
  EXPECT_STATUS_WITH_MESSAGE(twl_sequence_restore(rt, "/tmp", nullptr), TWL_INVALID_ARGUMENT, rt,
                             "twl_sequence_restore");
  ExpectUnchanged("bad save/restore paths");
}

// A pool of a few pages: appends fail with TWL_CAPACITY_EXHAUSTED, change nothing, and work
// again once pages are freed.
TEST(ApiCapacity, ExhaustedPoolIsReportedAndRecoverable) {
  twl_runtime_config c = twl_test::SmallConfig();
  const int64_t page_bytes = int64_t(c.num_kv_heads) * 2 * c.page_size * c.head_dim * 2;
  c.host_pool_bytes = 6 * page_bytes;  // 6 pages of 8 tokens
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(7);
  twl_seq_id a = -1, b = -1;
  ASSERT_EQ(twl_sequence_create(rt.get(), &a), TWL_OK);
  ASSERT_EQ(twl_sequence_create(rt.get(), &b), TWL_OK);
  ASSERT_EQ(AppendRandom(rt.get(), a, 0, 20, 2, 32, &rng), TWL_OK);  // 3 pages
  ASSERT_EQ(AppendRandom(rt.get(), b, 0, 12, 2, 32, &rng), TWL_OK);  // 2 pages
  const LayerKv a0 = ReadKv(rt.get(), a, 0), b0 = ReadKv(rt.get(), b, 0);
  twl_memory_usage m0;
  m0.struct_size = sizeof(m0);
  ASSERT_EQ(twl_runtime_memory(rt.get(), &m0), TWL_OK);

  // 20 more tokens for b need 2 more pages (1 is free).
  EXPECT_STATUS_WITH_MESSAGE(AppendRandom(rt.get(), b, 0, 20, 2, 32, &rng), TWL_CAPACITY_EXHAUSTED,
                             rt.get(), "twl_sequence_append");
  EXPECT_TRUE(ReadKv(rt.get(), b, 0) == b0);
  EXPECT_TRUE(ReadKv(rt.get(), a, 0) == a0);
  twl_memory_usage m1;
  m1.struct_size = sizeof(m1);
  ASSERT_EQ(twl_runtime_memory(rt.get(), &m1), TWL_OK);
  EXPECT_EQ(m1.host_pool_bytes_used, m0.host_pool_bytes_used);

  // Fork shares pages; the child's first append must copy the shared partial page, and with
  // the pool full that copy fails cleanly too.
  ASSERT_EQ(AppendRandom(rt.get(), b, 1, 8, 2, 32, &rng), TWL_OK);  // takes the last free page
  twl_seq_id child = -1;
  const twl_status fork = twl_sequence_fork(rt.get(), a, &child);
  ASSERT_EQ(fork, TWL_OK) << twl_runtime_last_error(rt.get());
  const twl_status cow = AppendRandom(rt.get(), child, 0, 1, 2, 32, &rng);
  EXPECT_EQ(cow, TWL_CAPACITY_EXHAUSTED) << twl_runtime_last_error(rt.get());
  EXPECT_TRUE(ReadKv(rt.get(), child, 0) == a0);
  EXPECT_TRUE(ReadKv(rt.get(), a, 0) == a0);

  // Free b: the same appends now fit.
  ASSERT_EQ(twl_sequence_free(rt.get(), b), TWL_OK);
  EXPECT_EQ(AppendRandom(rt.get(), child, 0, 1, 2, 32, &rng), TWL_OK)
      << twl_runtime_last_error(rt.get());
  EXPECT_TRUE(ReadKv(rt.get(), a, 0) == a0) << "copy-on-write leaves the parent alone";
  int32_t len = 0;
  ASSERT_EQ(twl_sequence_length(rt.get(), child, 0, &len), TWL_OK);
  EXPECT_EQ(len, 21);
}

}  // namespace
}  // namespace twl_test
