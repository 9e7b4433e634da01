// The 0.2 additions of the C API: twl_decode_ex (BF16 / FP32 q and out around the FP16
// pipeline), twl_get_capabilities and twl_set_log_callback.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "api_test_util.h"

namespace twl_test {
namespace {

uint16_t FloatToBf16(float f) {  // round to nearest even (finite inputs)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float Bf16ToFloat(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Batch {
  twilight::RuntimePtr rt;
  std::vector<twl_seq_id> seqs;
  int32_t elems = 0;  // of q / out
};

Batch MakeBatch(std::mt19937* rng) {
  Batch b;
  b.rt = MakeRuntime(SmallConfig());
  const twl_runtime_config c = SmallConfig();
  for (int32_t n : {5, 37}) {
    twl_seq_id s = TWL_INVALID_SEQ_ID;
    EXPECT_EQ(twl_sequence_create(b.rt.get(), &s), TWL_OK);
    EXPECT_EQ(AppendRandom(b.rt.get(), s, 0, n, c.num_kv_heads, c.head_dim, rng), TWL_OK);
    b.seqs.push_back(s);
  }
  b.elems = int32_t(b.seqs.size()) * c.num_q_heads * c.head_dim;
  return b;
}

twl_status DecodeEx(const Batch& b, const void* q, void* out, twl_dtype dtype) {
  return twl_decode_ex(b.rt.get(), 0, b.seqs.data(), int32_t(b.seqs.size()), q, out, dtype,
                       TWL_MEMORY_HOST, nullptr, nullptr);
}

TEST(ApiDecodeEx, Fp16IsTwlDecode) {
  std::mt19937 rng(1);
  Batch b = MakeBatch(&rng);
  const std::vector<uint16_t> q = RandomHalf(&rng, size_t(b.elems));
  std::vector<uint16_t> a(size_t(b.elems)), e(size_t(b.elems));
  ASSERT_EQ(twl_decode(b.rt.get(), 0, b.seqs.data(), 2, q.data(), a.data(), TWL_MEMORY_HOST,
                       nullptr, nullptr),
            TWL_OK);
  ASSERT_EQ(DecodeEx(b, q.data(), e.data(), TWL_DTYPE_FP16), TWL_OK);
  EXPECT_EQ(a, e);
}

TEST(ApiDecodeEx, Fp32IsTheFp16ResultWidened) {
  std::mt19937 rng(2);
  Batch b = MakeBatch(&rng);
  const std::vector<uint16_t> q = RandomHalf(&rng, size_t(b.elems));
  const std::vector<float> q32 = ToFloat(q);  // exactly the FP16 values
  std::vector<uint16_t> out16(size_t(b.elems));
  std::vector<float> out32(size_t(b.elems));
  ASSERT_EQ(DecodeEx(b, q.data(), out16.data(), TWL_DTYPE_FP16), TWL_OK);
  ASSERT_EQ(DecodeEx(b, q32.data(), out32.data(), TWL_DTYPE_FP32), TWL_OK)
      << twl_runtime_last_error(b.rt.get());
  EXPECT_EQ(out32, ToFloat(out16));
}

TEST(ApiDecodeEx, Bf16MatchesDenseAttention) {
  std::mt19937 rng(3);
  twl_runtime_config c = SmallConfig();
  c.top_p = 1.0f;
  c.selector = TWL_SELECTOR_FULL;
  c.k_bits = 16;
  twilight::RuntimePtr rt = MakeRuntime(c);
  twl_seq_id s = TWL_INVALID_SEQ_ID;
  ASSERT_EQ(twl_sequence_create(rt.get(), &s), TWL_OK);
  ASSERT_EQ(AppendRandom(rt.get(), s, 0, 50, c.num_kv_heads, c.head_dim, &rng), TWL_OK);
  const size_t n = size_t(c.num_q_heads) * c.head_dim;
  std::normal_distribution<float> dist;
  std::vector<uint16_t> q(n);
  std::vector<float> qf(n);
  for (size_t i = 0; i < n; ++i) {
    q[i] = FloatToBf16(dist(rng));
    qf[i] = Bf16ToFloat(q[i]);
  }
  std::vector<uint16_t> out(n, 0);
  ASSERT_EQ(twl_decode_ex(rt.get(), 0, &s, 1, q.data(), out.data(), TWL_DTYPE_BF16,
                          TWL_MEMORY_HOST, nullptr, nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  // q of this size is exact in FP16 up to rounding of its mantissa's low bits: compare with
  // the dense answer at BF16 output precision.
  const std::vector<float> ref =
      DenseAttention(qf, ReadKv(rt.get(), s, 0), c.num_q_heads, c.num_kv_heads, c.head_dim);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(Bf16ToFloat(out[i]), ref[i], 1e-2 + 8e-3 * std::fabs(ref[i])) << i;
  }
}

TEST(ApiDecodeEx, ErrorsLeaveOutUnchanged) {
  std::mt19937 rng(4);
  Batch b = MakeBatch(&rng);
  const std::vector<float> q(size_t(b.elems), 0.5f);
  std::vector<float> out(size_t(b.elems), 7.0f);
  EXPECT_STATUS_WITH_MESSAGE(DecodeEx(b, q.data(), out.data(), static_cast<twl_dtype>(9)),
                             TWL_INVALID_ARGUMENT, b.rt.get(), "twl_decode_ex");
  EXPECT_EQ(DecodeEx(b, nullptr, out.data(), TWL_DTYPE_FP32), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_decode_ex(b.rt.get(), 0, b.seqs.data(), 0, q.data(), out.data(), TWL_DTYPE_FP32,
                          TWL_MEMORY_HOST, nullptr, nullptr),
            TWL_INVALID_ARGUMENT);
  twl_seq_id unknown = b.seqs[1] + 100;
  EXPECT_EQ(twl_decode_ex(b.rt.get(), 0, &unknown, 1, q.data(), out.data(), TWL_DTYPE_BF16,
                          TWL_MEMORY_HOST, nullptr, nullptr),
            TWL_NOT_FOUND);
  EXPECT_EQ(twl_decode_ex(b.rt.get(), 0, b.seqs.data(), 2, q.data(), out.data(), TWL_DTYPE_BF16,
                          TWL_MEMORY_DEVICE, nullptr, nullptr),
            TWL_UNSUPPORTED);  // device memory on the CPU backend
  EXPECT_EQ(twl_decode_ex(nullptr, 0, b.seqs.data(), 2, q.data(), out.data(), TWL_DTYPE_BF16,
                          TWL_MEMORY_HOST, nullptr, nullptr),
            TWL_INVALID_ARGUMENT);
  for (float x : out) ASSERT_EQ(x, 7.0f);
}

TEST(ApiCapabilities, DescribesThisBuild) {
  twl_capabilities caps;
  // The first version ended before kv_dtypes (appended): smaller is refused, that size is
  // served without writing past it.
  caps.struct_size = offsetof(twl_capabilities, kv_dtypes) - 1;
  EXPECT_EQ(twl_get_capabilities(&caps), TWL_INVALID_ARGUMENT);
  std::memset(&caps, 0xee, sizeof(caps));
  caps.struct_size = offsetof(twl_capabilities, kv_dtypes);
  ASSERT_EQ(twl_get_capabilities(&caps), TWL_OK);
  EXPECT_EQ(caps.struct_size, offsetof(twl_capabilities, kv_dtypes));
  EXPECT_EQ(caps.kv_dtypes[0], 0xeeeeeeeeu) << "written past the caller's struct";
  EXPECT_EQ(twl_get_capabilities(nullptr), TWL_INVALID_ARGUMENT);
  std::memset(&caps, 0xff, sizeof(caps));
  caps.struct_size = sizeof(caps);
  ASSERT_EQ(twl_get_capabilities(&caps), TWL_OK);
  EXPECT_EQ(caps.struct_size, sizeof(caps));
  EXPECT_TRUE(caps.backends_built & (1u << TWL_BACKEND_CPU));
  EXPECT_FALSE(caps.backends_built & (1u << TWL_BACKEND_AUTO));
  const std::vector<int32_t> cpu_dims(caps.head_dims[TWL_BACKEND_CPU],
                                      caps.head_dims[TWL_BACKEND_CPU] + 7);
  EXPECT_EQ(cpu_dims, (std::vector<int32_t>{8, 16, 32, 64, 96, 128, 256}));
  EXPECT_EQ(caps.head_dims[TWL_BACKEND_CPU][7], 0);
  EXPECT_EQ(caps.decode_dtypes[TWL_BACKEND_CPU], 7u);
  EXPECT_EQ(caps.kv_dtypes[TWL_BACKEND_CPU], 3u);  // FP16 and BF16
  EXPECT_EQ(caps.head_dims[TWL_BACKEND_AUTO][0], 0);
  const bool gpu_built = caps.backends_built & (1u << TWL_BACKEND_GPU_OFFLOAD);
  if (gpu_built) {
    EXPECT_GE(caps.num_cuda_archs, 1);
    EXPECT_GE(caps.cuda_archs[0], 50);
    EXPECT_EQ(caps.max_q_per_kv[TWL_BACKEND_GPU_HBM], 16);
    const std::vector<int32_t> gpu_dims(caps.head_dims[TWL_BACKEND_GPU_HBM],
                                        caps.head_dims[TWL_BACKEND_GPU_HBM] + 5);
    EXPECT_EQ(gpu_dims, (std::vector<int32_t>{64, 96, 128, 256, 0}));
  } else {
    EXPECT_EQ(caps.num_cuda_archs, 0);
    EXPECT_EQ(caps.gpu_usable, 0);
    EXPECT_EQ(caps.head_dims[TWL_BACKEND_GPU_HBM][0], 0);
  }
  // Every advertised CPU head dim is accepted, an unlisted one is not.
  for (int32_t d : cpu_dims) {
    twl_runtime_config c = SmallConfig();
    c.head_dim = d;
    twl_runtime* rt = nullptr;
    EXPECT_EQ(twl_runtime_create(&c, &rt), TWL_OK) << d;
    twl_runtime_free(rt);
  }
  twl_runtime_config c = SmallConfig();
  c.head_dim = 80;
  twl_runtime* rt = nullptr;
  EXPECT_EQ(twl_runtime_create(&c, &rt), TWL_INVALID_ARGUMENT);
}

struct LogSink {
  std::mutex mu;
  std::vector<std::pair<twl_log_level, std::string>> got;
  static void Fn(twl_log_level level, const char* message, void* user) {
    auto* self = static_cast<LogSink*>(user);
    std::lock_guard<std::mutex> lock(self->mu);
    self->got.emplace_back(level, message);
  }
};

int FailOnce() {
  twl_runtime_config c = SmallConfig();
  c.num_q_heads = 3;  // not a multiple of num_kv_heads
  twl_runtime* rt = nullptr;
  return twl_runtime_create(&c, &rt);
}

TEST(ApiLog, CallbackGetsFailuresAtDebugLevelOnly) {
  LogSink sink;
  twl_set_log_callback(&LogSink::Fn, &sink, TWL_LOG_DEBUG);
  EXPECT_EQ(FailOnce(), TWL_INVALID_ARGUMENT);
  twl_set_log_callback(&LogSink::Fn, &sink, TWL_LOG_WARNING);
  EXPECT_EQ(FailOnce(), TWL_INVALID_ARGUMENT);  // debug message: filtered
  twl_set_log_callback(nullptr, nullptr, TWL_LOG_DEBUG);  // back to stderr, warnings only
  EXPECT_EQ(FailOnce(), TWL_INVALID_ARGUMENT);
  ASSERT_EQ(sink.got.size(), 1u);
  EXPECT_EQ(sink.got[0].first, TWL_LOG_DEBUG);
  EXPECT_NE(sink.got[0].second.find("twl_runtime_create"), std::string::npos) << sink.got[0].second;
  EXPECT_EQ(sink.got[0].second, std::string(twl_runtime_last_error(nullptr)));
}

TEST(ApiLog, OutOfRangeLevelIsClamped) {
  LogSink sink;
  twl_set_log_callback(&LogSink::Fn, &sink, static_cast<twl_log_level>(99));
  EXPECT_EQ(FailOnce(), TWL_INVALID_ARGUMENT);
  twl_set_log_callback(nullptr, nullptr, TWL_LOG_ERROR);
  EXPECT_EQ(sink.got.size(), 1u);
}

}  // namespace
}  // namespace twl_test
