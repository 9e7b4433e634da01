// Concurrency stress of twl::Runtime on the CPU backend: several worker threads create, append
// to, fork, read back, decode and free their own sequences on one runtime for a bounded time
// (TWL_STRESS_SECONDS, default 4 s), each checking every result against a private model of what
// it appended (see concurrency_stress.h), while an observer thread reads lengths, K/V and memory
// of arbitrary ids (twl::Runtime promises every method is thread-safe). The pool is small
// enough that appends are sometimes refused for capacity while other threads hold pages. Run
// under ThreadSanitizer by scripts/run-sanitizers.sh.
#include <atomic>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "cpu/concurrency_stress.h"
#include "gtest/gtest.h"
#include "runtime/runtime.h"

namespace twl {
namespace {

using twl_stress::Code;

Code ToCode(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk: return Code::kOk;
    case absl::StatusCode::kInvalidArgument: return Code::kInvalid;
    case absl::StatusCode::kNotFound: return Code::kNotFound;
    case absl::StatusCode::kResourceExhausted: return Code::kCapacity;
    case absl::StatusCode::kFailedPrecondition: return Code::kPrecondition;
    default: return Code::kOther;
  }
}

class RuntimeTarget final : public twl_stress::Target {
 public:
  explicit RuntimeTarget(Runtime* rt) : rt_(*rt) {}
  Code Create(int64_t* id) override { return Keep(rt_.CreateSequence(), id); }
  Code Free(int64_t id) override { return Keep(rt_.FreeSequence(id)); }
  Code Fork(int64_t parent, int64_t* child) override {
    return Keep(rt_.ForkSequence(parent), child);
  }
  Code Append(int64_t id, int32_t layer, int32_t n, const uint16_t* k,
              const uint16_t* v) override {
    return Keep(rt_.Append(id, layer, n, k, v, DType::kFp16, MemSpace::kHost));
  }
  Code Decode(int32_t layer, const std::vector<int64_t>& seqs, const uint16_t* q, uint16_t* out,
              const std::vector<float>& p) override {
    StepTelemetry t;
    const Code c = Keep(rt_.Decode(layer, seqs, q, out, MemSpace::kHost, p, nullptr, &t));
    if (c == Code::kOk && (t.num_seqs != int32_t(seqs.size()) || t.layer != layer)) {
      last_error_ = "telemetry of another call";
      return Code::kOther;
    }
    return c;
  }
  Code Read(int64_t id, int32_t layer, std::vector<uint16_t>* k,
            std::vector<uint16_t>* v) override {
    return Keep(rt_.ReadKv(id, layer, k, v));
  }
  std::string LastError() override { return last_error_; }

 private:
  Code Keep(const absl::Status& s) {
    if (!s.ok()) last_error_ = s.ToString();
    return ToCode(s);
  }
  Code Keep(const absl::StatusOr<SeqId>& s, int64_t* id) {
    if (s.ok()) *id = *s;
    return Keep(s.status());
  }

  Runtime& rt_;
  std::string last_error_;
};

TEST(ConcurrencyStress, RuntimeWorkersMatchTheirModelsUnderContention) {
  RuntimeConfig c;
  c.num_layers = 2;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.page_size = 7;  // odd: appends straddle pages
  c.k_bits = 4;
  c.top_p = 0.9f;
  c.selector = SelectorKind::kFull;  // p = 1 then means dense (see concurrency_stress.h)
  c.dense_layers = 1;
  c.backend = BackendKind::kCpu;
  // 160 pages of 7 tokens: less than 6 workers x 3 sequences x 2 layers x 96 tokens.
  c.host_pool_bytes = 160 * int64_t(c.page_size) * c.num_kv_heads * c.head_dim * 4;
  auto created = Runtime::Create(c);
  ASSERT_TRUE(created.ok()) << created.status();
  Runtime& rt = **created;
  twl_stress::Shape shape;
  shape.num_layers = c.num_layers;
  shape.num_q_heads = c.num_q_heads;
  shape.num_kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  shape.dense_layers = c.dense_layers;

  constexpr int kWorkers = 6;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(twl_stress::StressSeconds(4.0)));
  std::vector<twl_stress::WorkerStats> stats(kWorkers);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> observer_reads{0};
  std::string observer_error;
  std::thread observer([&] {
    std::mt19937 rng(99);
    while (!stop.load()) {
      const MemoryUsage m = rt.Memory();
      if (m.host_pool_bytes_used < 0 || m.host_pool_bytes_used > m.host_pool_bytes_total) {
        observer_error = "memory usage out of range";
        return;
      }
      const SeqId id = 1 + SeqId(rng() % 64);
      const int32_t layer = int32_t(rng() % 2);
      absl::StatusOr<int32_t> len = rt.SequenceLength(id, layer);
      if (!len.ok() && len.status().code() != absl::StatusCode::kNotFound) {
        observer_error = len.status().ToString();
        return;
      }
      std::vector<fp16_t> k, v;
      const absl::Status read = rt.ReadKv(id, layer, &k, &v);
      if (read.ok() && (k.size() != v.size() || k.size() % shape.TokenElems() != 0)) {
        observer_error = "ReadKv returned a torn shape";
        return;
      }
      if (!read.ok() && read.code() != absl::StatusCode::kNotFound) {
        observer_error = read.ToString();
        return;
      }
      observer_reads.fetch_add(1);
    }
  });
  {
    std::vector<std::thread> threads;
    for (int w = 0; w < kWorkers; ++w) {
      threads.emplace_back([&, w] {
        RuntimeTarget target(&rt);
        twl_stress::Worker worker(&target, shape, c.top_p, 1234u + uint32_t(w));
        stats[size_t(w)] = worker.Run(deadline);
      });
    }
    for (std::thread& t : threads) t.join();
  }
  stop.store(true);
  observer.join();

  int64_t decodes = 0, dense = 0, hull = 0, appends = 0;
  for (int w = 0; w < kWorkers; ++w) {
    const twl_stress::WorkerStats& s = stats[size_t(w)];
    EXPECT_EQ(s.failures, 0) << "worker " << w << ": " << s.first_failure;
    decodes += s.decodes;
    dense += s.dense_checked;
    hull += s.hull_checked;
    appends += s.appends;
  }
  std::printf("stress: %d workers, %lld appends, %lld decodes (%lld checked dense, %lld hull), "
              "%lld observer reads\n",
              kWorkers, (long long)appends, (long long)decodes, (long long)dense, (long long)hull,
              (long long)observer_reads.load());
  EXPECT_EQ(observer_error, "");
  // Not vacuous: every kind of check ran (a few hundred operations even under TSan).
  EXPECT_GT(appends, 10);
  EXPECT_GT(decodes, 10);
  EXPECT_GT(dense, 0);
  EXPECT_GT(hull, 0);
  EXPECT_GT(observer_reads.load(), 0);
  // Every worker freed its sequences: no page may stay allocated.
  EXPECT_EQ(rt.Memory().host_pool_bytes_used, 0);
}

}  // namespace
}  // namespace twl
