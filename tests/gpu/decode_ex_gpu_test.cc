// twl_decode_ex with device memory on the GPU backends: BF16 and FP32 q/out are converted by a
// kernel on the caller's stream around the FP16 step. The result must be the FP16 step's output
// (same backend, host memory) rounded to the caller's dtype.
#include <cstring>
#include <random>
#include <vector>

#include "api/twilight.h"
#include "gpu_test_util.h"

namespace twl::testing {
namespace {

uint16_t FloatToBf16Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float Bf16BitsToFloat(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

class DecodeExGpu : public ::testing::TestWithParam<twl_backend> {};

TEST_P(DecodeExGpu, Bf16AndFp32MatchTheFp16Step) {
  TWL_SKIP_WITHOUT_GPU();
  twl_runtime_config c = twl_runtime_config_default();
  c.num_layers = 1;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  c.backend = GetParam();
  c.top_p = 1.0f;
  c.selector = TWL_SELECTOR_FULL;
  twl_runtime* rt = nullptr;
  ASSERT_EQ(twl_runtime_create(&c, &rt), TWL_OK) << twl_runtime_last_error(nullptr);
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  const int32_t n_tok = 300, batch = 2;
  std::vector<twl_seq_id> seqs(batch);
  for (twl_seq_id& s : seqs) {
    ASSERT_EQ(twl_sequence_create(rt, &s), TWL_OK);
    std::vector<float> kf(size_t(n_tok) * 2 * 128), vf(kf.size());
    for (float& x : kf) x = dist(rng);
    for (float& x : vf) x = dist(rng);
    ASSERT_EQ(twl_sequence_append(rt, s, 0, n_tok, kf.data(), vf.data(), TWL_DTYPE_FP32,
                                  TWL_MEMORY_HOST),
              TWL_OK);
  }
  const size_t n = size_t(batch) * 8 * 128;
  std::vector<uint16_t> q_bf(n), q16(n);
  std::vector<float> q32(n);
  for (size_t i = 0; i < n; ++i) {
    q_bf[i] = FloatToBf16Bits(dist(rng));
    q32[i] = Bf16BitsToFloat(q_bf[i]);  // exact in FP16 too (|q| small, 8-bit mantissa)
  }
  twl_fp32_to_fp16(q32.data(), q16.data(), n);
  std::vector<uint16_t> out16(n);
  ASSERT_EQ(twl_decode(rt, 0, seqs.data(), batch, q16.data(), out16.data(), TWL_MEMORY_HOST,
                       nullptr, nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt);
  std::vector<float> out16f(n);
  twl_fp16_to_fp32(out16.data(), out16f.data(), n);

  absl::StatusOr<void*> stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  for (void* st : {*stream, static_cast<void*>(nullptr)}) {  // caller's stream, then legacy
    gpu::DeviceBuffer dq = Upload(q_bf), dout;
    ASSERT_TRUE(dout.Reserve(n * 2).ok());
    ASSERT_EQ(twl_decode_ex(rt, 0, seqs.data(), batch, dq.get(), dout.get(), TWL_DTYPE_BF16,
                            TWL_MEMORY_DEVICE, nullptr, st),
              TWL_OK)
        << twl_runtime_last_error(rt);
    ASSERT_TRUE(gpu::StreamSync(st).ok());
    ASSERT_TRUE(gpu::DeviceSync().ok());
    std::vector<uint16_t> got(n);
    ASSERT_TRUE(gpu::CopyToHost(got.data(), dout.get(), n * 2).ok());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(got[i], FloatToBf16Bits(out16f[i])) << i;
    }

    gpu::DeviceBuffer dq32 = Upload(q32), dout32;
    ASSERT_TRUE(dout32.Reserve(n * 4).ok());
    ASSERT_EQ(twl_decode_ex(rt, 0, seqs.data(), batch, dq32.get(), dout32.get(), TWL_DTYPE_FP32,
                            TWL_MEMORY_DEVICE, nullptr, st),
              TWL_OK)
        << twl_runtime_last_error(rt);
    ASSERT_TRUE(gpu::DeviceSync().ok());
    std::vector<float> got32(n);
    ASSERT_TRUE(gpu::CopyToHost(got32.data(), dout32.get(), n * 4).ok());
    EXPECT_EQ(got32, out16f);
  }
  gpu::StreamDestroy(*stream);
  twl_runtime_free(rt);
}

INSTANTIATE_TEST_SUITE_P(Backends, DecodeExGpu,
                         ::testing::Values(TWL_BACKEND_GPU_HBM, TWL_BACKEND_GPU_OFFLOAD));

}  // namespace
}  // namespace twl::testing
