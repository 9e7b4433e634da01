// C API basics: version, status names, configuration defaults and sentinels, runtime
// create/free and the errors of creation, through the public header only.
#include <cstddef>
#include <cstring>
#include <set>
#include <string>

#include "api_test_util.h"

namespace {

using twl_test::MakeRuntime;
using twl_test::SmallConfig;

TEST(ApiBasics, VersionMatchesHeader) {
  EXPECT_EQ(twl_version(), unsigned(TWL_VERSION_NUMBER));
  EXPECT_STREQ(twl_version_string(), TWL_VERSION_STRING);
  const std::string expect = std::to_string(TWL_VERSION_MAJOR) + "." +
                             std::to_string(TWL_VERSION_MINOR) + "." +
                             std::to_string(TWL_VERSION_PATCH);
  EXPECT_EQ(expect, TWL_VERSION_STRING);
}

TEST(ApiBasics, EveryStatusHasADistinctStaticName) {
  std::set<std::string> names;
  for (int s = TWL_OK; s <= TWL_INTERNAL; ++s) {
    const char* name = twl_status_string(twl_status(s));
    ASSERT_NE(name, nullptr);
    EXPECT_EQ(std::string(name).rfind("TWL_", 0), 0u) << name;
    EXPECT_NE(std::string(name), "TWL_UNKNOWN_STATUS") << s;
    names.insert(name);
    EXPECT_EQ(name, twl_status_string(twl_status(s))) << "static storage";
  }
  EXPECT_EQ(names.size(), size_t(TWL_INTERNAL + 1));
  EXPECT_STREQ(twl_status_string(TWL_STATUS_FORCE_INT32_), "TWL_UNKNOWN_STATUS");
  EXPECT_STREQ(twl_status_string(twl_status(1000)), "TWL_UNKNOWN_STATUS");
}

TEST(ApiBasics, ConfigDefaultIsAllSentinels) {
  const twl_runtime_config c = twl_runtime_config_default();
  EXPECT_EQ(c.struct_size, sizeof(twl_runtime_config));
  EXPECT_EQ(c.num_layers, 0);
  EXPECT_EQ(c.page_size, 0);
  EXPECT_EQ(c.k_bits, 0);
  EXPECT_EQ(c.top_p, 0.0f);
  EXPECT_EQ(c.sink_pages, -1);
  EXPECT_EQ(c.dense_layers, -1);
  EXPECT_EQ(c.device_id, -1);
  EXPECT_EQ(c.collect_telemetry, -1);
  EXPECT_EQ(c.backend, TWL_BACKEND_AUTO);
}

// TWL_SELECTOR_DEFAULT: FULL without a cap, QUEST (growing up to the cap) with one; an
// explicit choice stays as asked.
TEST(ApiBasics, DefaultSelectorIsFullUnlessCapped) {
  struct Case {
    twl_selector asked;
    int32_t budget_tokens;
    float budget_fraction;
    twl_selector resolved;
  };
  for (const Case& k : {Case{TWL_SELECTOR_DEFAULT, 0, 0.0f, TWL_SELECTOR_FULL},
                        Case{TWL_SELECTOR_DEFAULT, 0, 1.0f, TWL_SELECTOR_FULL},
                        Case{TWL_SELECTOR_DEFAULT, 256, 0.0f, TWL_SELECTOR_QUEST},
                        Case{TWL_SELECTOR_DEFAULT, 0, 0.25f, TWL_SELECTOR_QUEST},
                        Case{TWL_SELECTOR_QUEST, 0, 0.0f, TWL_SELECTOR_QUEST},
                        Case{TWL_SELECTOR_FULL, 256, 0.0f, TWL_SELECTOR_FULL}}) {
    twl_runtime_config cfg = SmallConfig();
    cfg.selector = k.asked;
    cfg.selector_budget_tokens = k.budget_tokens;
    cfg.selector_budget_fraction = k.budget_fraction;
    twilight::RuntimePtr rt = MakeRuntime(cfg);
    ASSERT_TRUE(rt);
    twl_runtime_config c;
    c.struct_size = sizeof(c);
    ASSERT_EQ(twl_runtime_get_config(rt.get(), &c), TWL_OK);
    EXPECT_EQ(c.selector, k.resolved) << "asked " << k.asked << ", budget " << k.budget_tokens
                                      << " tokens / " << k.budget_fraction;
  }
}

TEST(ApiBasics, CreateResolvesSentinels) {
  twilight::RuntimePtr rt = MakeRuntime(SmallConfig());
  ASSERT_TRUE(rt);
  twl_runtime_config c;
  c.struct_size = sizeof(c);
  ASSERT_EQ(twl_runtime_get_config(rt.get(), &c), TWL_OK);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.page_size, 8);
  EXPECT_EQ(c.k_bits, 4);
  EXPECT_FLOAT_EQ(c.top_p, 0.95f);
  EXPECT_EQ(c.selector, TWL_SELECTOR_FULL);  // the default without a cap
  EXPECT_FLOAT_EQ(c.selector_budget_fraction, 1.0f);
  EXPECT_EQ(c.sink_pages, 1);
  EXPECT_EQ(c.dense_layers, 0);
  EXPECT_GT(c.host_pool_bytes, 0);
  EXPECT_EQ(c.backend, TWL_BACKEND_CPU);
  EXPECT_EQ(c.device_id, 0);
  EXPECT_EQ(c.collect_telemetry, 1);
  EXPECT_EQ(twl_runtime_backend(rt.get()), TWL_BACKEND_CPU);
  EXPECT_STRNE(twl_runtime_backend_name(rt.get()), "");
  EXPECT_STREQ(twl_runtime_last_error(rt.get()), "") << "nothing failed yet";

  twl_memory_usage m;
  m.struct_size = sizeof(m);
  ASSERT_EQ(twl_runtime_memory(rt.get(), &m), TWL_OK);
  EXPECT_EQ(m.host_pool_bytes_used, 0);
  EXPECT_GT(m.host_pool_bytes_total, 0);
}

// k_scheme (appended): TWL_K_SCHEME_AUTO (0, the default) resolves to per page channel,
// TWL_K_SCHEME_TOKEN (2) to per token, and twl_runtime_get_config reports the resolved value
// (never 0). Both run on every backend (AUTO picks as for the default; a GPU backend is not
// TWL_UNSUPPORTED); a caller whose struct ends before the field gets the default, whatever
// follows in memory.
TEST(ApiBasics, KSchemeOnEveryBackendAndReadOnlyWhenTheStructHoldsIt) {
  twl_runtime_config c = SmallConfig();
  EXPECT_EQ(twl_runtime_config_default().k_scheme, TWL_K_SCHEME_AUTO);
  c.backend = TWL_BACKEND_AUTO;
  twl_backend auto_backend = TWL_BACKEND_CPU;
  twl_runtime_config got;
  got.struct_size = sizeof(got);
  {
    twilight::RuntimePtr rt0 = MakeRuntime(c);
    ASSERT_TRUE(rt0);
    auto_backend = twl_runtime_backend(rt0.get());
    ASSERT_EQ(twl_runtime_get_config(rt0.get(), &got), TWL_OK);
    EXPECT_EQ(got.k_scheme, TWL_K_SCHEME_PAGE_CHANNEL) << "the library's default scheme";
  }
  for (int32_t scheme : {TWL_K_SCHEME_PAGE_CHANNEL, TWL_K_SCHEME_TOKEN}) {
    c.backend = TWL_BACKEND_AUTO;
    c.k_scheme = scheme;
    twilight::RuntimePtr rt = MakeRuntime(c);
    ASSERT_TRUE(rt);
    EXPECT_EQ(twl_runtime_backend(rt.get()), auto_backend);
    ASSERT_EQ(twl_runtime_get_config(rt.get(), &got), TWL_OK);
    EXPECT_EQ(got.k_scheme, scheme);
    twl_runtime* raw = nullptr;
    // The GPU kernels take head_dim 64, 96, 128, 256 (gpu/kernels.h): SmallConfig's 32 would
    // be TWL_UNSUPPORTED for a reason other than the scheme. Without a GPU: TWL_UNAVAILABLE.
    twl_runtime_config gc = c;
    gc.head_dim = 64;
    gc.page_size = 16;
    for (twl_backend b : {TWL_BACKEND_GPU_HBM, TWL_BACKEND_GPU_OFFLOAD}) {
      gc.backend = b;
      const twl_status st = twl_runtime_create(&gc, &raw);
      EXPECT_TRUE(st == TWL_OK || st == TWL_UNAVAILABLE)
          << "scheme " << scheme << ", backend " << b << ": " << twl_status_string(st) << ": "
          << twl_runtime_last_error(nullptr);
      EXPECT_EQ(raw != nullptr, st == TWL_OK);
      if (raw) {
        ASSERT_EQ(twl_runtime_get_config(raw, &got), TWL_OK);
        EXPECT_EQ(got.k_scheme, scheme);
        twl_runtime_free(raw);
      }
      raw = nullptr;
    }
  }
  twl_runtime* raw = nullptr;
  twl_test::OldCallerConfig old;
  twl_test::InitOldCallerConfig(&old, offsetof(twl_runtime_config, k_scheme));
  old.config.k_scheme = 5;  // beyond the old struct: not read
  ASSERT_EQ(twl_runtime_create(&old.config, &raw), TWL_OK) << twl_runtime_last_error(nullptr);
  twilight::RuntimePtr owned(raw);
  ASSERT_EQ(twl_runtime_get_config(raw, &got), TWL_OK);
  EXPECT_EQ(got.k_scheme, TWL_K_SCHEME_PAGE_CHANNEL);
}

// Values other than 0, 1 and 2 are refused at the boundary with a message naming the field
// and the valid values (the C values are not core/page_layout.h's, so the C++ check cannot
// speak for them).
TEST(ApiBasics, KSchemeOutOfRangeIsInvalidWithAClearMessage) {
  twl_runtime_config c = SmallConfig();
  for (int32_t bad : {-1, 3, 5}) {
    c.k_scheme = bad;
    twl_runtime* raw = nullptr;
    EXPECT_EQ(twl_runtime_create(&c, &raw), TWL_INVALID_ARGUMENT) << bad;
    EXPECT_EQ(raw, nullptr);
    const std::string msg = twl_runtime_last_error(nullptr);
    EXPECT_NE(msg.find("k_scheme " + std::to_string(bad) + " unknown"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2 per token"), std::string::npos) << msg;
  }
}

// Memory follows the scheme: per token the host store holds a scale and a zero (FP16) per
// token and KV head that per page channel does not, so with the same pool (same page count)
// the two totals differ by exactly 4 bytes per token and KV head; k_bits 16 has neither.
TEST(ApiBasics, KSchemeMemoryHasNoPerTokenScaleUnderPageChannel) {
  twl_runtime_config c = SmallConfig();
  const int64_t page_bytes = int64_t(c.num_kv_heads) * 2 * c.page_size * c.head_dim * 2;
  const int64_t pages = 1024;
  c.host_pool_bytes = pages * page_bytes;
  auto total = [&](int32_t scheme, int32_t k_bits) {
    c.k_scheme = scheme;
    c.k_bits = k_bits;
    twilight::RuntimePtr rt = MakeRuntime(c);
    twl_memory_usage m;
    m.struct_size = sizeof(m);
    EXPECT_EQ(twl_runtime_memory(rt.get(), &m), TWL_OK);
    return m.host_pool_bytes_total;
  };
  const int64_t tok = total(TWL_K_SCHEME_TOKEN, 4), pc = total(TWL_K_SCHEME_PAGE_CHANNEL, 4),
                dflt = total(TWL_K_SCHEME_AUTO, 4);
  // Per block: the per-token scale/zero (4 B a token) against the channel ranges, which the
  // host store keeps decoded (FP16 lo and hi, 4 B a channel: core/channel_range.h).
  EXPECT_EQ(tok - pc, pages * c.num_kv_heads * (c.page_size * 4 - 4 * int64_t(c.head_dim)));
  EXPECT_EQ(dflt, pc);
  EXPECT_EQ(total(TWL_K_SCHEME_TOKEN, 16), total(TWL_K_SCHEME_PAGE_CHANNEL, 16));
}

// kv_dtype (appended): FP16 by default, BF16 accepted and reported (K/V read back as BF16
// bits), FP32/unknown values and BF16 with k_bits 16 invalid; a caller whose struct ends
// before the field gets FP16 whatever follows in memory.
TEST(ApiBasics, KvDtypeBf16AndReadOnlyWhenTheStructHoldsIt) {
  EXPECT_EQ(twl_runtime_config_default().kv_dtype, TWL_DTYPE_FP16);
  twl_runtime_config c = SmallConfig();
  c.kv_dtype = TWL_DTYPE_BF16;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  twl_runtime_config got;
  got.struct_size = sizeof(got);
  ASSERT_EQ(twl_runtime_get_config(rt.get(), &got), TWL_OK);
  EXPECT_EQ(got.kv_dtype, TWL_DTYPE_BF16);
  // FP32 input is stored rounded to BF16 (3.0f + 2^-10 is not a BF16 value: it rounds to 3).
  twl_seq_id seq = -1;
  ASSERT_EQ(twl_sequence_create(rt.get(), &seq), TWL_OK);
  const size_t elems = size_t(c.num_kv_heads) * c.head_dim;
  std::vector<float> k(elems, 3.0f + 1.0f / 1024.0f), v(elems, -0.5f);
  ASSERT_EQ(twl_sequence_append(rt.get(), seq, 0, 1, k.data(), v.data(), TWL_DTYPE_FP32,
                                TWL_MEMORY_HOST),
            TWL_OK);
  const twl_test::LayerKv kv = twl_test::ReadKv(rt.get(), seq, 0);
  ASSERT_EQ(kv.k.size(), elems);
  EXPECT_EQ(kv.k[0], 0x4040u) << "BF16 3.0";
  EXPECT_EQ(kv.v[0], 0xBF00u) << "BF16 -0.5";
  twl_runtime* raw = nullptr;
  for (twl_dtype bad : {TWL_DTYPE_FP32, static_cast<twl_dtype>(7)}) {
    c.kv_dtype = bad;
    EXPECT_EQ(twl_runtime_create(&c, &raw), TWL_INVALID_ARGUMENT);
    EXPECT_EQ(raw, nullptr);
  }
  c.kv_dtype = TWL_DTYPE_BF16;
  c.k_bits = 16;
  EXPECT_EQ(twl_runtime_create(&c, &raw), TWL_INVALID_ARGUMENT);
  EXPECT_NE(std::string(twl_runtime_last_error(nullptr)).find("kv_dtype"), std::string::npos);
  twl_test::OldCallerConfig old;
  twl_test::InitOldCallerConfig(&old, offsetof(twl_runtime_config, kv_dtype));
  old.config.kv_dtype = TWL_DTYPE_BF16;  // beyond the old struct: not read
  ASSERT_EQ(twl_runtime_create(&old.config, &raw), TWL_OK) << twl_runtime_last_error(nullptr);
  twilight::RuntimePtr owned(raw);
  ASSERT_EQ(twl_runtime_get_config(raw, &got), TWL_OK);
  EXPECT_EQ(got.kv_dtype, TWL_DTYPE_FP16);
}

TEST(ApiBasics, FreeNullIsANoOp) {
  twl_runtime_free(nullptr);
  EXPECT_EQ(twl_runtime_backend(nullptr), TWL_BACKEND_AUTO);
  EXPECT_STREQ(twl_runtime_backend_name(nullptr), "");
}

TEST(ApiBasics, CreateRejectsBadArguments) {
  twl_runtime* rt = reinterpret_cast<twl_runtime*>(0x1);
  EXPECT_EQ(twl_runtime_create(nullptr, &rt), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(rt, nullptr) << "out is cleared on failure";
  EXPECT_NE(std::string(twl_runtime_last_error(nullptr)).find("twl_runtime_create"),
            std::string::npos);

  twl_runtime_config good = SmallConfig();
  EXPECT_EQ(twl_runtime_create(&good, nullptr), TWL_INVALID_ARGUMENT);

  struct Case {
    const char* what;
    void (*edit)(twl_runtime_config*);
  };
  const Case cases[] = {
      {"struct_size", [](twl_runtime_config* c) { c->struct_size = 8; }},
      {"model shape unset", [](twl_runtime_config* c) { c->num_layers = 0; }},
      {"num_kv_heads", [](twl_runtime_config* c) { c->num_kv_heads = 0; }},
      {"GQA divisibility", [](twl_runtime_config* c) { c->num_q_heads = 5; }},
      {"head_dim", [](twl_runtime_config* c) { c->head_dim = 33; }},
      {"k_bits", [](twl_runtime_config* c) { c->k_bits = 3; }},
      {"top_p > 1", [](twl_runtime_config* c) { c->top_p = 1.5f; }},
      {"top_p < 0", [](twl_runtime_config* c) { c->top_p = -0.5f; }},
      {"top_p NaN", [](twl_runtime_config* c) { c->top_p = std::nanf(""); }},
      {"selector", [](twl_runtime_config* c) { c->selector = twl_selector(9); }},
      {"budget fraction", [](twl_runtime_config* c) { c->selector_budget_fraction = 2.0f; }},
      {"sink_pages", [](twl_runtime_config* c) { c->sink_pages = -2; }},
      {"dense_layers", [](twl_runtime_config* c) { c->dense_layers = 3; }},
      {"host_pool_bytes < 0", [](twl_runtime_config* c) { c->host_pool_bytes = -1; }},
      {"pool holds no page", [](twl_runtime_config* c) { c->host_pool_bytes = 100; }},
      {"backend", [](twl_runtime_config* c) { c->backend = twl_backend(7); }},
      {"fetch_path", [](twl_runtime_config* c) { c->fetch_path = twl_fetch_path(5); }},
      {"device_id", [](twl_runtime_config* c) { c->device_id = -3; }},
      {"collect_telemetry", [](twl_runtime_config* c) { c->collect_telemetry = 2; }},
  };
  for (const Case& k : cases) {
    twl_runtime_config c = good;
    k.edit(&c);
    twl_runtime* out = reinterpret_cast<twl_runtime*>(0x1);
    EXPECT_EQ(twl_runtime_create(&c, &out), TWL_INVALID_ARGUMENT) << k.what;
    EXPECT_EQ(out, nullptr) << k.what;
    EXPECT_STRNE(twl_runtime_last_error(nullptr), "") << k.what;
  }
}

TEST(ApiBasics, LargerStructFromANewerHeaderIsAccepted) {
  // A newer header appends fields; this library ignores what it does not know.
  struct Newer {
    twl_runtime_config v1;
    int64_t future_field;
  } newer;
  newer.v1 = SmallConfig();
  newer.v1.struct_size = sizeof(newer);
  newer.future_field = 42;
  twl_runtime* rt = nullptr;
  ASSERT_EQ(twl_runtime_create(&newer.v1, &rt), TWL_OK) << twl_runtime_last_error(nullptr);
  twl_runtime_free(rt);
}

TEST(ApiBasics, GpuBackendWithoutGpuIsUnavailableOrWorks) {
  twl_runtime_config c = SmallConfig();
  c.backend = TWL_BACKEND_GPU_OFFLOAD;
  c.head_dim = 64;  // a head dim the GPU kernels take (SmallConfig's 32 is CPU-only)
  c.page_size = 16;
  twl_runtime* rt = nullptr;
  const twl_status s = twl_runtime_create(&c, &rt);
  if (s == TWL_OK) {  // a machine with a GPU
    EXPECT_EQ(twl_runtime_backend(rt), TWL_BACKEND_GPU_OFFLOAD);
    twl_runtime_free(rt);
    return;
  }
  EXPECT_EQ(s, TWL_UNAVAILABLE) << twl_runtime_last_error(nullptr);
  EXPECT_EQ(rt, nullptr);
  EXPECT_STRNE(twl_runtime_last_error(nullptr), "");
}

TEST(ApiBasics, OutStructsCheckTheirSize) {
  twilight::RuntimePtr rt = MakeRuntime(SmallConfig());
  ASSERT_TRUE(rt);
  twl_runtime_config c;
  c.struct_size = 4;
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_get_config(rt.get(), &c), TWL_INVALID_ARGUMENT, rt.get(),
                             "twl_runtime_get_config");
  twl_memory_usage m;
  m.struct_size = 0;
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_memory(rt.get(), &m), TWL_INVALID_ARGUMENT, rt.get(),
                             "twl_runtime_memory");
  twl_step_stats st;
  st.struct_size = offsetof(twl_step_stats, disk_pages_loaded) - 8;  // below the first version
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_last_step(rt.get(), &st), TWL_INVALID_ARGUMENT, rt.get(),
                             "twl_runtime_last_step");
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_last_step(rt.get(), nullptr), TWL_INVALID_ARGUMENT,
                             rt.get(), "twl_runtime_last_step");
  // Before any decode: layer -1, no sequences.
  st.struct_size = sizeof(st);
  ASSERT_EQ(twl_runtime_last_step(rt.get(), &st), TWL_OK);
  EXPECT_EQ(st.layer, -1);
  EXPECT_EQ(st.num_seqs, 0);
  EXPECT_EQ(twl_runtime_async_error(rt.get()), TWL_OK);
}

TEST(ApiBasics, ConversionsRoundTrip) {
  const float in[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 1e-7f, 3.14159f, INFINITY};
  uint16_t h[8];
  float back[8];
  twl_fp32_to_fp16(in, h, 8);
  twl_fp16_to_fp32(h, back, 8);
  EXPECT_EQ(h[2], 0x3c00);
  EXPECT_EQ(h[4], 0x7bff);
  EXPECT_EQ(h[7], 0x7c00);
  for (int i = 0; i < 7; ++i) {
    EXPECT_NEAR(back[i], in[i], std::fabs(in[i]) * 1e-3f + 6e-8f) << i;
  }
  EXPECT_TRUE(std::isinf(back[7]));
  uint16_t nan16;
  const float nan = std::nanf("");
  twl_fp32_to_fp16(&nan, &nan16, 1);
  float nan_back;
  twl_fp16_to_fp32(&nan16, &nan_back, 1);
  EXPECT_TRUE(std::isnan(nan_back));
}

// The header compiles as strict C99 (c99_check.c) and its entry points work from C.
extern "C" int twl_test_c99_smoke(void);
TEST(ApiBasics, C99CallerWorks) { EXPECT_EQ(twl_test_c99_smoke(), 0); }

}  // namespace
