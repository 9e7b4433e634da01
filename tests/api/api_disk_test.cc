// The disk tier through the C API: a host pool of 4 pages with ~9x that much KV spilled to
// disk reads back exactly and decodes like dense attention (top-p = 1, full selector, exact
// K); the configuration fields round-trip and their errors have their codes; a step larger
// than the host pool is TWL_CAPACITY_EXHAUSTED. (Injected disk faults through the C API are
// in tests/fuzz/capi_fault_test.cc, which links the core statically to reach the injector.)
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "api_test_util.h"

namespace twl_test {
namespace {

// SmallConfig: 2 KV heads x head dim 32 x page 8 tokens: 2 KiB of FP16 per page.
constexpr int64_t kPageBytes = 2 * 2 * 8 * 32 * 2;
// A record is a page rounded up to the file's I/O alignment (512 bytes where the filesystem
// allows it): 2 KiB pages take 2 KiB.
constexpr int64_t kRecordBytes = kPageBytes;

twl_runtime_config DiskConfig(const TempDir& dir, int64_t host_pages, int64_t disk_pages) {
  twl_runtime_config c = SmallConfig();
  c.host_pool_bytes = host_pages * kPageBytes;
  c.disk_path = dir.path();
  c.disk_bytes = disk_pages * kRecordBytes;
  return c;
}

int64_t DiskBytes(const twl_runtime* rt) {
  twl_memory_usage m;
  m.struct_size = sizeof(m);
  EXPECT_EQ(twl_runtime_memory(rt, &m), TWL_OK);
  return m.disk_bytes;
}

TEST(ApiDisk, KvLargerThanTheHostPoolReadsBackAndDecodesLikeDense) {
  TempDir dir;
  twl_runtime_config c = DiskConfig(dir, 4, 60);
  c.top_p = 1.0f;
  c.selector = TWL_SELECTOR_FULL;
  c.k_bits = 16;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  EXPECT_EQ(twl_runtime_backend(rt.get()), TWL_BACKEND_CPU);
  EXPECT_NE(std::string(twl_runtime_backend_name(rt.get())).find("disk"), std::string::npos);
  twl_runtime_config got;
  got.struct_size = sizeof(got);
  ASSERT_EQ(twl_runtime_get_config(rt.get(), &got), TWL_OK);
  ASSERT_NE(got.disk_path, nullptr);
  EXPECT_STREQ(got.disk_path, dir.path());
  EXPECT_NE(got.disk_path, dir.path()) << "the runtime keeps its own copy of the path";
  EXPECT_EQ(got.disk_bytes, c.disk_bytes);

  // 6 sequences x 2 layers, at most 4 pages each (a decode of one sequence fits the pool):
  // 36 pages of KV for 4 host slots.
  const int32_t lens[6] = {13, 30, 25, 7, 31, 20};
  std::mt19937 rng(5);
  std::vector<twl_seq_id> ids(6);
  std::vector<LayerKv> want(12);
  for (int32_t s = 0; s < 6; ++s) {
    ASSERT_EQ(twl_sequence_create(rt.get(), &ids[size_t(s)]), TWL_OK);
    for (int32_t l = 0; l < 2; ++l) {
      LayerKv& w = want[size_t(s * 2 + l)];
      w.len = lens[s];
      for (int32_t at = 0; at < lens[s];) {
        const int32_t n = std::min<int32_t>(lens[s] - at, 1 + int32_t(rng() % 11));
        const size_t elems = size_t(n) * c.num_kv_heads * c.head_dim;
        const std::vector<uint16_t> k = RandomHalf(&rng, elems), v = RandomHalf(&rng, elems);
        ASSERT_EQ(twl_sequence_append(rt.get(), ids[size_t(s)], l, n, k.data(), v.data(),
                                      TWL_DTYPE_FP16, TWL_MEMORY_HOST),
                  TWL_OK)
            << twl_runtime_last_error(rt.get());
        w.k.insert(w.k.end(), k.begin(), k.end());
        w.v.insert(w.v.end(), v.begin(), v.end());
        at += n;
      }
    }
  }
  EXPECT_GE(DiskBytes(rt.get()), (36 - 4) * kRecordBytes);
  for (int32_t s = 0; s < 6; ++s) {
    for (int32_t l = 0; l < 2; ++l) {
      EXPECT_TRUE(ReadKv(rt.get(), ids[size_t(s)], l) == want[size_t(s * 2 + l)])
          << "sequence " << s << " layer " << l;
    }
  }

  int64_t loaded = 0;
  const size_t qn = size_t(c.num_q_heads) * c.head_dim;
  for (int32_t l = 0; l < 2; ++l) {
    for (int32_t s = 0; s < 6; ++s) {
      const std::vector<uint16_t> q = RandomHalf(&rng, qn);
      std::vector<uint16_t> out(qn);
      ASSERT_EQ(twl_decode(rt.get(), l, &ids[size_t(s)], 1, q.data(), out.data(),
                           TWL_MEMORY_HOST, nullptr, nullptr),
                TWL_OK)
          << twl_runtime_last_error(rt.get());
      const std::vector<float> dense = DenseAttention(ToFloat(q), want[size_t(s * 2 + l)],
                                                      c.num_q_heads, c.num_kv_heads, c.head_dim);
      const std::vector<float> got_out = ToFloat(out);
      for (size_t i = 0; i < qn; ++i) {
        EXPECT_NEAR(got_out[i], dense[i], 2e-3 + 2e-3 * std::fabs(dense[i]))
            << "layer " << l << " sequence " << s << " element " << i;
      }
      twl_step_stats st;
      st.struct_size = sizeof(st);
      ASSERT_EQ(twl_runtime_last_step(rt.get(), &st), TWL_OK);
      EXPECT_LE(st.disk_pages_loaded, 4);
      EXPECT_GE(st.ms_disk, 0.0);
      EXPECT_GE(st.ms_fetch, st.ms_disk);
      loaded += st.disk_pages_loaded;
    }
  }
  EXPECT_GT(loaded, 12) << "most decoded pages came back from disk";

  for (twl_seq_id id : ids) ASSERT_EQ(twl_sequence_free(rt.get(), id), TWL_OK);
  EXPECT_EQ(DiskBytes(rt.get()), 0);
}

TEST(ApiDisk, AStepLargerThanTheHostPoolIsCapacityExhausted) {
  TempDir dir;
  twl_runtime_config c = DiskConfig(dir, 4, 20);
  c.top_p = 1.0f;
  c.selector = TWL_SELECTOR_FULL;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(6);
  twl_seq_id seq = TWL_INVALID_SEQ_ID;
  ASSERT_EQ(twl_sequence_create(rt.get(), &seq), TWL_OK);
  // One append of 6 pages into 4 slots works (written in chunks) ...
  ASSERT_EQ(twl_test::AppendRandom(rt.get(), seq, 0, 45, c.num_kv_heads, c.head_dim, &rng),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  // ... but attending to all 6 at once does not.
  const std::vector<uint16_t> q = RandomHalf(&rng, size_t(c.num_q_heads) * c.head_dim);
  std::vector<uint16_t> out(q.size());
  EXPECT_STATUS_WITH_MESSAGE(twl_decode(rt.get(), 0, &seq, 1, q.data(), out.data(),
                                        TWL_MEMORY_HOST, nullptr, nullptr),
                             TWL_CAPACITY_EXHAUSTED, rt.get(), "host pool");
  int32_t len = 0;
  EXPECT_EQ(twl_sequence_length(rt.get(), seq, 0, &len), TWL_OK);
  EXPECT_EQ(len, 45);
}

TEST(ApiDisk, ConfigurationErrorsAndOlderStructs) {
  TempDir dir;
  struct Case {
    const char* what;
    void (*edit)(twl_runtime_config*);
    twl_status want;
  };
  const Case cases[] = {
      {"disk_bytes without disk_path", [](twl_runtime_config* c) { c->disk_path = nullptr; },
       TWL_INVALID_ARGUMENT},
      {"disk_path without disk_bytes", [](twl_runtime_config* c) { c->disk_bytes = 0; },
       TWL_INVALID_ARGUMENT},
      {"disk_bytes < 0", [](twl_runtime_config* c) { c->disk_bytes = -4096; },
       TWL_INVALID_ARGUMENT},
      {"disk_bytes below one page", [](twl_runtime_config* c) { c->disk_bytes = 100; },
       TWL_INVALID_ARGUMENT},
      {"missing directory", [](twl_runtime_config* c) { c->disk_path = "/nonexistent/twl"; },
       TWL_INVALID_ARGUMENT},
      {"GPU HBM backend", [](twl_runtime_config* c) { c->backend = TWL_BACKEND_GPU_HBM; },
       TWL_UNSUPPORTED},
  };
  for (const Case& k : cases) {
    twl_runtime_config c = DiskConfig(dir, 4, 8);
    k.edit(&c);
    twl_runtime* rt = reinterpret_cast<twl_runtime*>(0x1);
    EXPECT_EQ(twl_runtime_create(&c, &rt), k.want) << k.what << ": "
                                                    << twl_runtime_last_error(nullptr);
    EXPECT_EQ(rt, nullptr) << k.what;
  }
  {
    // The GPU offload backend takes a disk tier: created where a GPU is, else unavailable
    // (never "unsupported").
    twl_runtime_config c = DiskConfig(dir, 4, 8);
    c.backend = TWL_BACKEND_GPU_OFFLOAD;
    twl_runtime* rt = nullptr;
    const twl_status s = twl_runtime_create(&c, &rt);
    EXPECT_TRUE(s == TWL_OK || s == TWL_UNAVAILABLE) << twl_runtime_last_error(nullptr);
    EXPECT_EQ(rt != nullptr, s == TWL_OK);
    twilight::RuntimePtr owned(rt);
  }

  // A caller compiled before the disk fields: its struct ends where they begin, and whatever
  // follows in memory is not read.
  twl_test::OldCallerConfig old;
  twl_test::InitOldCallerConfig(&old, offsetof(twl_runtime_config, disk_path));
  old.config.disk_path = reinterpret_cast<const char*>(0x1);
  old.config.disk_bytes = -7;
  twl_runtime* rt = nullptr;
  ASSERT_EQ(twl_runtime_create(&old.config, &rt), TWL_OK) << twl_runtime_last_error(nullptr);
  twilight::RuntimePtr owned(rt);
  twl_runtime_config got;
  got.struct_size = sizeof(got);
  ASSERT_EQ(twl_runtime_get_config(rt, &got), TWL_OK);
  EXPECT_EQ(got.disk_path, nullptr);
  EXPECT_EQ(got.disk_bytes, 0);
  EXPECT_EQ(DiskBytes(rt), 0);
  // Older out-structs are still filled up to their size.
  twl_step_stats st;
  std::memset(&st, 0xcd, sizeof(st));
  st.struct_size = offsetof(twl_step_stats, disk_pages_loaded);
  ASSERT_EQ(twl_runtime_last_step(rt, &st), TWL_OK);
  EXPECT_EQ(st.layer, -1);
  unsigned char tail[sizeof(st) - offsetof(twl_step_stats, disk_pages_loaded)];
  std::memcpy(tail, reinterpret_cast<const unsigned char*>(&st) +
                        offsetof(twl_step_stats, disk_pages_loaded),
              sizeof(tail));
  for (unsigned char b : tail) EXPECT_EQ(b, 0xcd) << "bytes past the caller's struct";
}

}  // namespace
}  // namespace twl_test
