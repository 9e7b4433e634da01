// Concurrency stress through the C API: the worker of tests/cpu/concurrency_stress.h on one
// twl_runtime from several threads, each thread driving only its own sequences (the rule of
// twilight.h), while another thread polls the runtime-wide calls (memory, config, async error).
// Every result is checked against the thread's private model; TSan runs it in CI.
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cpu/concurrency_stress.h"
#include "gtest/gtest.h"
#include "twilight.h"

namespace {

using twl_stress::Code;

Code ToCode(twl_status s) {
  switch (s) {
    case TWL_OK: return Code::kOk;
    case TWL_INVALID_ARGUMENT: return Code::kInvalid;
    case TWL_NOT_FOUND: return Code::kNotFound;
    case TWL_CAPACITY_EXHAUSTED: return Code::kCapacity;
    case TWL_FAILED_PRECONDITION: return Code::kPrecondition;
    default: return Code::kOther;
  }
}

class CapiTarget final : public twl_stress::Target {
 public:
  CapiTarget(twl_runtime* rt, const twl_stress::Shape& shape) : rt_(rt), shape_(shape) {}
  Code Create(int64_t* id) override { return ToCode(twl_sequence_create(rt_, id)); }
  Code Free(int64_t id) override { return ToCode(twl_sequence_free(rt_, id)); }
  Code Fork(int64_t parent, int64_t* child) override {
    return ToCode(twl_sequence_fork(rt_, parent, child));
  }
  Code Append(int64_t id, int32_t layer, int32_t n, const uint16_t* k,
              const uint16_t* v) override {
    return ToCode(
        twl_sequence_append(rt_, id, layer, n, k, v, TWL_DTYPE_FP16, TWL_MEMORY_HOST));
  }
  Code Decode(int32_t layer, const std::vector<int64_t>& seqs, const uint16_t* q, uint16_t* out,
              const std::vector<float>& p) override {
    const Code c = ToCode(twl_decode(rt_, layer, seqs.data(), int32_t(seqs.size()), q, out,
                                     TWL_MEMORY_HOST, p.empty() ? nullptr : p.data(), nullptr));
    if (c != Code::kOk) return c;
    // The telemetry this thread sees is that of its own step.
    twl_step_stats st;
    st.struct_size = sizeof(st);
    if (twl_runtime_last_step(rt_, &st) != TWL_OK || st.num_seqs != int32_t(seqs.size()) ||
        st.layer != layer) {
      return Code::kOther;
    }
    return c;
  }
  Code Read(int64_t id, int32_t layer, std::vector<uint16_t>* k,
            std::vector<uint16_t>* v) override {
    int32_t len = 0;
    twl_status s = twl_sequence_read_kv(rt_, id, layer, nullptr, nullptr, 0, &len);
    if (s != TWL_OK) return ToCode(s);
    k->assign(size_t(len) * shape_.TokenElems(), 0);
    v->assign(k->size(), 0);
    return ToCode(twl_sequence_read_kv(rt_, id, layer, k->data(), v->data(), len, &len));
  }
  std::string LastError() override { return twl_runtime_last_error(rt_); }

 private:
  twl_runtime* rt_;
  const twl_stress::Shape shape_;
};

TEST(CapiStress, WorkersMatchTheirModelsUnderContention) {
  twl_runtime_config c = twl_runtime_config_default();
  c.num_layers = 2;
  c.num_q_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.page_size = 5;
  c.k_bits = 8;
  c.top_p = 0.85f;
  c.selector = TWL_SELECTOR_FULL;
  c.dense_layers = 0;
  c.backend = TWL_BACKEND_CPU;
  c.host_pool_bytes = 200 * int64_t(c.page_size) * c.num_kv_heads * c.head_dim * 4;
  twl_runtime* raw = nullptr;
  ASSERT_EQ(twl_runtime_create(&c, &raw), TWL_OK) << twl_runtime_last_error(nullptr);
  std::unique_ptr<twl_runtime, void (*)(twl_runtime*)> rt(raw, twl_runtime_free);
  twl_stress::Shape shape;
  shape.num_layers = c.num_layers;
  shape.num_q_heads = c.num_q_heads;
  shape.num_kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  shape.dense_layers = 0;

  constexpr int kWorkers = 5;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(twl_stress::StressSeconds(4.0)));
  std::vector<twl_stress::WorkerStats> stats(kWorkers);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> polls{0};
  std::string poll_error;
  std::thread poller([&] {
    while (!stop.load()) {
      twl_memory_usage m;
      m.struct_size = sizeof(m);
      twl_runtime_config got;
      got.struct_size = sizeof(got);
      if (twl_runtime_memory(rt.get(), &m) != TWL_OK || m.host_pool_bytes_used < 0 ||
          m.host_pool_bytes_used > m.host_pool_bytes_total ||
          twl_runtime_get_config(rt.get(), &got) != TWL_OK || got.num_layers != 2 ||
          twl_runtime_async_error(rt.get()) != TWL_OK) {
        poll_error = twl_runtime_last_error(rt.get());
        return;
      }
      polls.fetch_add(1);
    }
  });
  {
    std::vector<std::thread> threads;
    for (int w = 0; w < kWorkers; ++w) {
      threads.emplace_back([&, w] {
        CapiTarget target(rt.get(), shape);
        twl_stress::Worker worker(&target, shape, c.top_p, 777u + uint32_t(w));
        stats[size_t(w)] = worker.Run(deadline);
      });
    }
    for (std::thread& t : threads) t.join();
  }
  stop.store(true);
  poller.join();

  int64_t decodes = 0, dense = 0, hull = 0;
  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_EQ(stats[size_t(w)].failures, 0) << "worker " << w << ": "
                                            << stats[size_t(w)].first_failure;
    decodes += stats[size_t(w)].decodes;
    dense += stats[size_t(w)].dense_checked;
    hull += stats[size_t(w)].hull_checked;
  }
  std::printf("stress: %d workers, %lld decodes (%lld checked dense, %lld hull), %lld polls\n",
              kWorkers, (long long)decodes, (long long)dense, (long long)hull,
              (long long)polls.load());
  EXPECT_EQ(poll_error, "");
  EXPECT_GT(decodes, 10);
  EXPECT_GT(dense, 0);
  EXPECT_GT(hull, 0);
  EXPECT_GT(polls.load(), 0);
  twl_memory_usage m;
  m.struct_size = sizeof(m);
  ASSERT_EQ(twl_runtime_memory(rt.get(), &m), TWL_OK);
  EXPECT_EQ(m.host_pool_bytes_used, 0);
}

}  // namespace
