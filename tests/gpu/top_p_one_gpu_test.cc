// p = 1 with the full selector is dense attention on the GPU backends too (issue 15): the true
// top token carries an outlier channel that rounds its INT4/INT2 code of the query's channel to
// 0, so its estimated weight underflows to 0 in float (exp(-125)); a pruner that keeps only
// weights > 0 drops it and the output is the other tokens' V (0.25) instead of its V (4.0).
// The underflow needs one scale per token (kKSchemeToken), which the test sets: per page
// channel the query's channel keeps its own range.
// Mirrors ApiReliability.TopPOneKeepsEveryCandidateWhateverItsEstimate (CPU, tests/api).
#include <cmath>
#include <vector>

#include "core/half.h"
#include "gpu_test_util.h"
#include "runtime/runtime.h"

namespace twl {
namespace {

TEST(TopPOneGpu, KeepsEveryCandidateWhateverItsEstimate) {
  TWL_SKIP_WITHOUT_GPU();
  // head_dim 64: INT4 takes the tensor-core score path, INT2 the scalar one.
  for (BackendKind backend : {BackendKind::kGpuHbm, BackendKind::kGpuOffload}) {
    for (int32_t bits : {4, 2}) {
      for (bool per_seq : {false, true}) {
        RuntimeConfig c;
        c.num_layers = 1;
        c.num_q_heads = 1;
        c.num_kv_heads = 1;
        c.head_dim = 64;
        c.page_size = 16;
        c.k_bits = bits;
        c.k_scheme = kKSchemeToken;
        c.selector = SelectorKind::kFull;
        c.top_p = per_seq ? 0.9f : 1.0f;
        c.backend = backend;
        c.host_pool_bytes = 64 << 20;
        auto rt = Runtime::Create(c);
        ASSERT_TRUE(rt.ok()) << rt.status();
        auto seq = (*rt)->CreateSequence();
        ASSERT_TRUE(seq.ok());
        const int32_t n = 40;
        std::vector<float> k(size_t(n) * 64, 0.0f), v(size_t(n) * 64, 0.25f);
        k[0] = 60.0f;  // outlier channel of the top token: scale 4 (INT4) or 20 (INT2)
        k[1] = 1.9f;   // true score 1000 * 1.9 / 8 = 237.5; code 0, estimate 0
        for (int32_t t = 1; t < n; ++t) k[size_t(t) * 64 + 1] = 1.0f;  // 125, exact estimate
        for (int32_t j = 0; j < 64; ++j) v[size_t(j)] = 4.0f;
        ASSERT_TRUE((*rt)->Append(*seq, 0, n, k.data(), v.data(), DType::kFp32, MemSpace::kHost)
                        .ok());
        std::vector<fp16_t> q(64, FloatToHalf(0.0f)), out(64, 0);
        q[1] = FloatToHalf(1000.0f);
        const float one = 1.0f;
        const SeqId ids[1] = {*seq};
        StepTelemetry t;
        const absl::Status s =
            (*rt)->Decode(0, ids, q.data(), out.data(), MemSpace::kHost,
                          per_seq ? absl::MakeConstSpan(&one, 1) : absl::Span<const float>(),
                          nullptr, &t);
        ASSERT_TRUE(s.ok()) << s;
        // Dense: token 0 outweighs the others by exp(112.5): the output is its V.
        for (int32_t j = 0; j < 64; ++j) {
          ASSERT_NEAR(HalfToFloat(out[size_t(j)]), 4.0f, 1e-2f)
              << (backend == BackendKind::kGpuHbm ? "hbm" : "offload") << " k_bits " << bits
              << (per_seq ? " seq_p" : " top_p") << " channel " << j;
        }
        ASSERT_EQ(t.kept_tokens.size(), 1u);
        EXPECT_EQ(t.kept_tokens[0], n);
        EXPECT_EQ(t.kept_tokens_kv[0], n);
        EXPECT_FLOAT_EQ(t.est_mass[0], 1.0f);
      }
    }
  }
}

}  // namespace
}  // namespace twl
