// Several threads drive different sequences of one runtime at once (create, append, decode,
// fork, free), as a serving system's workers would. Each thread's results must equal those of
// the same work done alone on a fresh runtime, and each thread sees its own telemetry and
// error messages.
#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "api_test_util.h"

namespace {

using twl_test::MakeRuntime;
using twl_test::RandomHalf;
using twl_test::SmallConfig;

constexpr int kThreads = 4;
constexpr int kSteps = 12;

struct WorkerResult {
  std::vector<uint16_t> outputs;  // every decode output, in order
  std::vector<int32_t> kept;      // per-head kept tokens of every decode
  int failures = 0;
  std::string first_failure;
};

// The work of one worker: two sequences of its own, prefill, then decode steps that append a
// token per layer and decode both sequences; a fork in the middle; everything freed at the end.
WorkerResult RunWorker(twl_runtime* rt, int worker, std::atomic<int>* start_gate) {
  WorkerResult r;
  auto check = [&](twl_status s, const char* what) {
    if (s == TWL_OK) return true;
    if (r.failures++ == 0) {
      r.first_failure =
          std::string(what) + ": " + twl_status_string(s) + " " + twl_runtime_last_error(rt);
    }
    return false;
  };
  twl_runtime_config c;
  c.struct_size = sizeof(c);
  if (!check(twl_runtime_get_config(rt, &c), "get_config")) return r;
  std::mt19937 rng(1000 + worker);
  const size_t tok = size_t(c.num_kv_heads) * c.head_dim;
  const size_t q_elems = size_t(c.num_q_heads) * c.head_dim;
  if (start_gate != nullptr) {
    start_gate->fetch_add(1);
    while (start_gate->load() < kThreads) std::this_thread::yield();
  }
  twl_seq_id seqs[2] = {-1, -1};
  for (twl_seq_id& s : seqs) {
    if (!check(twl_sequence_create(rt, &s), "create")) return r;
  }
  for (int i = 0; i < 2; ++i) {
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      const int32_t n = 40 + 13 * i + worker;
      const std::vector<uint16_t> k = RandomHalf(&rng, n * tok), v = RandomHalf(&rng, n * tok);
      check(twl_sequence_append(rt, seqs[i], layer, n, k.data(), v.data(), TWL_DTYPE_FP16,
                                TWL_MEMORY_HOST),
            "prefill");
    }
  }
  for (int step = 0; step < kSteps && r.failures == 0; ++step) {
    if (step == kSteps / 2) {  // a fork replaces the second sequence
      twl_seq_id child = -1;
      check(twl_sequence_fork(rt, seqs[0], &child), "fork");
      check(twl_sequence_free(rt, seqs[1]), "free");
      seqs[1] = child;
    }
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      for (twl_seq_id s : seqs) {
        const std::vector<uint16_t> k = RandomHalf(&rng, tok), v = RandomHalf(&rng, tok);
        check(twl_sequence_append(rt, s, layer, 1, k.data(), v.data(), TWL_DTYPE_FP16,
                                  TWL_MEMORY_HOST),
              "append");
      }
      const std::vector<uint16_t> q = RandomHalf(&rng, 2 * q_elems);
      std::vector<uint16_t> out(2 * q_elems);
      const float p[2] = {0.9f, 0.97f};
      if (!check(twl_decode(rt, layer, seqs, 2, q.data(), out.data(), TWL_MEMORY_HOST, p, nullptr),
                 "decode")) {
        break;
      }
      r.outputs.insert(r.outputs.end(), out.begin(), out.end());
      // Telemetry is this thread's own: its batch of 2, this layer.
      twl_step_stats st;
      st.struct_size = sizeof(st);
      check(twl_runtime_last_step(rt, &st), "last_step");
      if (st.num_seqs != 2 || st.layer != layer) {
        ++r.failures;
        r.first_failure = "telemetry of another thread's step";
      }
      std::vector<int32_t> kept(2 * c.num_q_heads);
      check(twl_runtime_last_step_heads(rt, nullptr, kept.data(), nullptr, int64_t(kept.size()),
                                        nullptr, 0),
            "last_step_heads");
      r.kept.insert(r.kept.end(), kept.begin(), kept.end());
    }
  }
  // A failing call in this thread leaves its message here and nowhere else.
  const std::string tag = "worker-" + std::to_string(worker);
  twl_seq_id ignored;
  if (twl_sequence_restore(rt, ("/nonexistent-twl/" + tag).c_str(), &ignored) != TWL_IO_ERROR ||
      std::string(twl_runtime_last_error(rt)).find(tag) == std::string::npos) {
    ++r.failures;
    r.first_failure = "per-thread last error";
  }
  for (twl_seq_id s : seqs) check(twl_sequence_free(rt, s), "final free");
  return r;
}

TEST(ApiThreads, ConcurrentWorkersMatchSerialRuns) {
  twilight::RuntimePtr shared = MakeRuntime(SmallConfig());
  ASSERT_TRUE(shared);
  std::vector<WorkerResult> concurrent(kThreads);
  std::atomic<int> gate{0};
  {
    std::vector<std::thread> threads;
    for (int w = 0; w < kThreads; ++w) {
      threads.emplace_back([&, w] { concurrent[w] = RunWorker(shared.get(), w, &gate); });
    }
    for (std::thread& t : threads) t.join();
  }
  for (int w = 0; w < kThreads; ++w) {
    ASSERT_EQ(concurrent[w].failures, 0) << "worker " << w << ": " << concurrent[w].first_failure;
    twilight::RuntimePtr alone = MakeRuntime(SmallConfig());
    ASSERT_TRUE(alone);
    const WorkerResult serial = RunWorker(alone.get(), w, nullptr);
    ASSERT_EQ(serial.failures, 0) << serial.first_failure;
    // The CPU pipeline computes each (sequence, head) independently of the rest of the batch
    // and of other threads, so the results are bit-identical.
    EXPECT_EQ(concurrent[w].outputs, serial.outputs) << "worker " << w;
    EXPECT_EQ(concurrent[w].kept, serial.kept) << "worker " << w;
    EXPECT_EQ(concurrent[w].outputs.size(),
              size_t(kSteps) * 2 * 2 * 4 * 32);  // steps x layers x seqs x q heads x dim
  }
  twl_memory_usage m;
  m.struct_size = sizeof(m);
  ASSERT_EQ(twl_runtime_memory(shared.get(), &m), TWL_OK);
  EXPECT_EQ(m.host_pool_bytes_used, 0) << "every worker freed its sequences";
}

}  // namespace
