// twl_sequence_save / twl_sequence_restore: round trips (bit-identical K/V and decode, also
// into a runtime with another page size), and every damaged file (truncated anywhere, a
// flipped bit anywhere, a newer version, another model shape) refused with a clear status and
// no change to the runtime.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "api_test_util.h"

namespace twl_test {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/twl_api_" + std::to_string(getpid()) + "_" +
         name;
}

std::vector<char> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void WriteFile(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Bitwise CRC-32C, independent of the library's table-driven one.
uint32_t Crc32c(const char* p, size_t n) {
  uint32_t c = ~0u;
  for (size_t i = 0; i < n; ++i) {
    c ^= uint8_t(p[i]);
    for (int b = 0; b < 8; ++b) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

class ApiPersist : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = SmallConfig();
    rt_ = MakeRuntime(config_);
    ASSERT_TRUE(rt_);
    std::mt19937 rng(99);
    ASSERT_EQ(twl_sequence_create(rt_.get(), &seq_), TWL_OK);
    // Layers of different lengths (a prefill interrupted between layers), partial pages.
    ASSERT_EQ(AppendRandom(rt_.get(), seq_, 0, 37, 2, 32, &rng), TWL_OK);
    ASSERT_EQ(AppendRandom(rt_.get(), seq_, 1, 50, 2, 32, &rng), TWL_OK);
    path_ = TempPath(::testing::UnitTest::GetInstance()->current_test_info()->name() +
                     std::string(".seq"));
    ASSERT_EQ(twl_sequence_save(rt_.get(), seq_, path_.c_str()), TWL_OK)
        << twl_runtime_last_error(rt_.get());
    file_ = ReadFile(path_);
  }
  void TearDown() override { std::remove(path_.c_str()); }

  int64_t PoolUsed(twl_runtime* rt) {
    twl_memory_usage m;
    m.struct_size = sizeof(m);
    EXPECT_EQ(twl_runtime_memory(rt, &m), TWL_OK);
    return m.host_pool_bytes_used;
  }

  // Restoring `bytes` must fail with `expect` and leave the runtime as it was.
  void ExpectRefused(const std::vector<char>& bytes, twl_status expect, const std::string& what) {
    const std::string bad = path_ + ".bad";
    WriteFile(bad, bytes);
    const int64_t used = PoolUsed(rt_.get());
    const LayerKv before = ReadKv(rt_.get(), seq_, 1);
    twl_seq_id out = 12345;
    const twl_status s = twl_sequence_restore(rt_.get(), bad.c_str(), &out);
    EXPECT_EQ(s, expect) << what << ": " << twl_runtime_last_error(rt_.get());
    EXPECT_EQ(out, TWL_INVALID_SEQ_ID) << what;
    EXPECT_NE(std::string(twl_runtime_last_error(rt_.get())).find("twl_sequence_restore"),
              std::string::npos)
        << what;
    EXPECT_EQ(PoolUsed(rt_.get()), used) << what << ": no sequence may remain";
    EXPECT_TRUE(ReadKv(rt_.get(), seq_, 1) == before) << what;
    std::remove(bad.c_str());
  }

  twl_runtime_config config_;
  twilight::RuntimePtr rt_;
  twl_seq_id seq_ = -1;
  std::string path_;
  std::vector<char> file_;
};

TEST_F(ApiPersist, RoundTripIsBitIdentical) {
  // Header 64 + table 2*4+4 + per layer one chunk of K+V (+4 CRC).
  EXPECT_EQ(file_.size(), 64u + 12u + (37u + 50u) * 2 * 32 * 2 * 2 + 2 * 4);
  twl_seq_id restored = -1;
  ASSERT_EQ(twl_sequence_restore(rt_.get(), path_.c_str(), &restored), TWL_OK)
      << twl_runtime_last_error(rt_.get());
  EXPECT_NE(restored, seq_);
  for (int32_t layer = 0; layer < 2; ++layer) {
    EXPECT_TRUE(ReadKv(rt_.get(), restored, layer) == ReadKv(rt_.get(), seq_, layer)) << layer;
  }
  // Same decode output for both (same K/V, same query).
  std::mt19937 rng(5);
  const std::vector<uint16_t> q1 = twl_test::RandomHalf(&rng, 4 * 32);
  std::vector<uint16_t> q(q1);
  q.insert(q.end(), q1.begin(), q1.end());
  std::vector<uint16_t> out(2 * 4 * 32);
  const twl_seq_id batch[2] = {seq_, restored};
  ASSERT_EQ(
      twl_decode(rt_.get(), 1, batch, 2, q.data(), out.data(), TWL_MEMORY_HOST, nullptr, nullptr),
      TWL_OK);
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + 128, out.begin() + 128));
  // The restored sequence is independent: appending to it leaves the original alone.
  const LayerKv original = ReadKv(rt_.get(), seq_, 0);
  ASSERT_EQ(AppendRandom(rt_.get(), restored, 0, 3, 2, 32, &rng), TWL_OK);
  EXPECT_TRUE(ReadKv(rt_.get(), seq_, 0) == original);
}

TEST_F(ApiPersist, RestoresIntoAnotherPageSizeAndBackendConfig) {
  twl_runtime_config other = SmallConfig();
  other.page_size = 5;
  other.k_bits = 8;
  twilight::RuntimePtr rt2 = MakeRuntime(other);
  ASSERT_TRUE(rt2);
  twl_seq_id restored = -1;
  ASSERT_EQ(twl_sequence_restore(rt2.get(), path_.c_str(), &restored), TWL_OK)
      << twl_runtime_last_error(rt2.get());
  for (int32_t layer = 0; layer < 2; ++layer) {
    EXPECT_TRUE(ReadKv(rt2.get(), restored, layer) == ReadKv(rt_.get(), seq_, layer)) << layer;
  }
}

TEST_F(ApiPersist, SaveOverAnExistingFileAndFailedSaveKeepsIt) {
  // A failed save (unknown sequence) leaves the existing file untouched.
  EXPECT_EQ(twl_sequence_save(rt_.get(), 424242, path_.c_str()), TWL_NOT_FOUND);
  EXPECT_EQ(ReadFile(path_), file_);
  // A successful save replaces it atomically.
  twl_seq_id other = -1;
  ASSERT_EQ(twl_sequence_create(rt_.get(), &other), TWL_OK);
  std::mt19937 rng(3);
  ASSERT_EQ(AppendRandom(rt_.get(), other, 0, 4, 2, 32, &rng), TWL_OK);
  ASSERT_EQ(twl_sequence_save(rt_.get(), other, path_.c_str()), TWL_OK);
  EXPECT_NE(ReadFile(path_), file_);
  twl_seq_id restored = -1;
  ASSERT_EQ(twl_sequence_restore(rt_.get(), path_.c_str(), &restored), TWL_OK);
  EXPECT_TRUE(ReadKv(rt_.get(), restored, 0) == ReadKv(rt_.get(), other, 0));
  int32_t len = -1;
  ASSERT_EQ(twl_sequence_length(rt_.get(), restored, 1, &len), TWL_OK);
  EXPECT_EQ(len, 0) << "an empty layer round-trips";
}

TEST_F(ApiPersist, TruncatedOrExtendedFilesAreCorrupt) {
  const size_t n = file_.size();
  for (size_t keep : {size_t(0), size_t(7), size_t(63), size_t(64), size_t(70), size_t(76),
                      size_t(77), n / 2, n - 5, n - 1}) {
    ExpectRefused(std::vector<char>(file_.begin(), file_.begin() + keep), TWL_CORRUPT_DATA,
                  "truncated to " + std::to_string(keep));
  }
  std::vector<char> longer = file_;
  longer.push_back('x');
  ExpectRefused(longer, TWL_CORRUPT_DATA, "one byte extra");
}

TEST_F(ApiPersist, FlippedBitsAnywhereAreCorrupt) {
  // Every region: magic, version, shape, header CRC, table, table CRC, K, V, chunk CRC of
  // each layer. Payload bytes are sampled at a stride to keep the test fast.
  std::vector<size_t> offsets;
  for (size_t i = 0; i < 80; ++i) offsets.push_back(i);
  for (size_t i = 80; i < file_.size(); i += 97) offsets.push_back(i);
  offsets.push_back(file_.size() - 1);
  for (size_t off : offsets) {
    std::vector<char> bad = file_;
    bad[off] ^= 0x10;
    // Shape fields with a valid CRC would say "other model" instead; here the CRC is stale, so
    // every flip is corruption.
    ExpectRefused(bad, TWL_CORRUPT_DATA, "bit flipped at " + std::to_string(off));
  }
}

TEST_F(ApiPersist, NewerVersionIsUnsupportedAndOtherShapeIsInvalid) {
  auto with_header_field = [&](size_t offset, uint32_t value) {
    std::vector<char> bad = file_;
    for (int i = 0; i < 4; ++i) bad[offset + i] = char(value >> (8 * i));
    const uint32_t crc = Crc32c(bad.data(), 60);  // a consistent header
    for (int i = 0; i < 4; ++i) bad[60 + i] = char(crc >> (8 * i));
    return bad;
  };
  ExpectRefused(with_header_field(8, 3), TWL_UNSUPPORTED, "format version 3");
  // BF16 elements (type 1) need version 2; an unknown type is corrupt.
  ExpectRefused(with_header_field(40, 1), TWL_CORRUPT_DATA, "BF16 in a version-1 file");
  ExpectRefused(with_header_field(40, 2), TWL_CORRUPT_DATA, "element type 2");
  ExpectRefused(with_header_field(20, 4), TWL_INVALID_ARGUMENT, "4 KV heads");
  ExpectRefused(with_header_field(24, 64), TWL_INVALID_ARGUMENT, "head_dim 64");
  ExpectRefused(with_header_field(16, 3), TWL_INVALID_ARGUMENT, "3 layers");
  ExpectRefused(with_header_field(28, 0), TWL_CORRUPT_DATA, "chunk of 0 tokens");
  std::vector<char> not_ours(200, 'z');
  ExpectRefused(not_ours, TWL_CORRUPT_DATA, "not a Twilight file");
}

// kv_dtype BF16: the file records it (version 2, element type 1), restores bit-identically
// into a BF16 runtime, and a runtime of the other kv_dtype refuses it (and a BF16 runtime an
// FP16 file) with TWL_INVALID_ARGUMENT and no change.
TEST_F(ApiPersist, Bf16KvRoundTripsAndAMismatchedRestoreIsRefused) {
  twl_runtime_config bf = SmallConfig();
  bf.kv_dtype = TWL_DTYPE_BF16;
  twilight::RuntimePtr rb = MakeRuntime(bf);
  ASSERT_TRUE(rb);
  twl_seq_id seq = -1;
  ASSERT_EQ(twl_sequence_create(rb.get(), &seq), TWL_OK);
  std::mt19937 rng(7);
  ASSERT_EQ(AppendRandom(rb.get(), seq, 0, 21, 2, 32, &rng), TWL_OK);
  ASSERT_EQ(AppendRandom(rb.get(), seq, 1, 9, 2, 32, &rng), TWL_OK);
  const std::string path = path_ + ".bf16";
  ASSERT_EQ(twl_sequence_save(rb.get(), seq, path.c_str()), TWL_OK)
      << twl_runtime_last_error(rb.get());
  const std::vector<char> bytes = ReadFile(path);
  ASSERT_GE(bytes.size(), 64u);
  EXPECT_EQ(uint8_t(bytes[8]), 2u) << "format version";
  EXPECT_EQ(uint8_t(bytes[40]), 1u) << "element type BF16";
  twl_seq_id restored = -1;
  ASSERT_EQ(twl_sequence_restore(rb.get(), path.c_str(), &restored), TWL_OK)
      << twl_runtime_last_error(rb.get());
  for (int32_t layer = 0; layer < 2; ++layer) {
    EXPECT_TRUE(ReadKv(rb.get(), restored, layer) == ReadKv(rb.get(), seq, layer)) << layer;
  }
  // BF16 file into the FP16 runtime of the fixture, FP16 file into the BF16 runtime.
  ExpectRefused(bytes, TWL_INVALID_ARGUMENT, "BF16 file into an FP16 runtime");
  EXPECT_NE(std::string(twl_runtime_last_error(rt_.get())).find("kv_dtype"), std::string::npos);
  twl_seq_id out = 1;
  EXPECT_EQ(twl_sequence_restore(rb.get(), path_.c_str(), &out), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(out, TWL_INVALID_SEQ_ID);
  std::remove(path.c_str());
}

TEST_F(ApiPersist, RestoreThatDoesNotFitChangesNothing) {
  twl_runtime_config tiny = SmallConfig();
  const int64_t page_bytes = int64_t(tiny.num_kv_heads) * 2 * tiny.page_size * tiny.head_dim * 2;
  tiny.host_pool_bytes = 8 * page_bytes;  // the file needs 5 + 7 pages
  twilight::RuntimePtr rt2 = MakeRuntime(tiny);
  ASSERT_TRUE(rt2);
  twl_seq_id out = 1;
  EXPECT_EQ(twl_sequence_restore(rt2.get(), path_.c_str(), &out), TWL_CAPACITY_EXHAUSTED)
      << twl_runtime_last_error(rt2.get());
  EXPECT_EQ(out, TWL_INVALID_SEQ_ID);
  EXPECT_EQ(PoolUsed(rt2.get()), 0) << "the half-restored sequence was undone";
}

}  // namespace
}  // namespace twl_test
