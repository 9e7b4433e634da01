// libFuzzer driver of the public C API (twilight.h): each input is decoded into a runtime
// configuration (valid or odd) and then a sequence of calls with arguments chosen by the input:
// sequence create/free/fork, append with odd shapes, dtypes, null pointers and huge n, decode with
// bad p, unknown or duplicate ids, read-back with odd capacities, telemetry and memory queries
// with odd struct sizes, and save/restore of intact, truncated, bit-flipped, re-checksummed and
// arbitrary files.
//
// It is also an oracle, not only a crash finder: a model of every sequence's K/V (what was
// appended, converted as the header documents) is kept beside the runtime, and
//   - every status must be one the header lists for the arguments given (a set of allowed codes
//     is derived from what is wrong with the call), with a message naming the function;
//   - a failed call changes nothing (later read-backs still equal the model, pool use is
//     unchanged by a failed restore); read-back equals the model bit for bit;
//   - decode output is finite, inside the convex hull of the attended V, and equal to dense
//     attention where the configuration makes Twilight dense (dense layers, or the full
//     selector with p = 1);
//   - freeing every sequence returns the pool to empty.
// Some configurations put a disk tier under the host pool; the driver then also arms disk
// read/write faults (EIO, ENOSPC, short transfers) through the process-wide fault injector, and
// the calls that move pages may return TWL_IO_ERROR / TWL_CAPACITY_EXHAUSTED, with the same
// oracle: whatever they return, the data stays equal to the model.
// Three classes are widened on purpose (issue 15): tunables whose sums and products overflow
// (INT32_MAX sinks, budgets, page sizes, 2^24 layers, huge GQA groups: refused at create or
// harmless, never TWL_INTERNAL); buffers at odd addresses (k, v, q, out, seqs, seq_p and the
// read-back buffers are copied to 1..7 bytes past an aligned address, chosen by a generator of
// their own so that the input layout is unchanged; results must equal the model exactly as
// for aligned buffers); and file types for save/restore (a FIFO, a symbolic link, a directory:
// restore must not block and must refuse, save must leave them as they were).
// Any violation aborts, which libFuzzer reports as a crash. The same file runs without
// libFuzzer through replay_main.cc (ctest fuzz_corpus_replay).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "offload/fault_injection.h"
#include "twilight.h"

namespace {

[[noreturn]] void Violation(int line, const char* fmt, ...) {
  std::fprintf(stderr, "api_fuzz.cc:%d: contract violation: ", line);
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::abort();
}
// TWL_FUZZ_TRACE=1 prints every call and its status (to triage a crash input).
bool Tracing() {
  static const bool on = std::getenv("TWL_FUZZ_TRACE") != nullptr;
  return on;
}
#define TRACE(...)                                   \
  do {                                               \
    if (Tracing()) std::fprintf(stderr, __VA_ARGS__); \
  } while (0)

#define FUZZ_CHECK(cond, ...)                 \
  do {                                        \
    if (!(cond)) Violation(__LINE__, __VA_ARGS__); \
  } while (0)

// Reads the input front to back; past its end every read is 0, so any input is a program.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool empty() const { return p_ >= end_; }
  uint8_t U8() { return p_ < end_ ? *p_++ : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(U8()) << (8 * i);
    return v;
  }
  int Pick(int n) { return n <= 1 ? 0 : U8() % n; }
  template <typename T, size_t N>
  T From(const T (&choices)[N]) {
    return choices[Pick(int(N))];
  }
  // The rest of the input (for file contents), at most max bytes.
  std::vector<uint8_t> Take(size_t max) {
    const size_t n = std::min<size_t>(max, size_t(end_ - p_));
    std::vector<uint8_t> out(p_, p_ + n);
    p_ += n;
    return out;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// Tensor contents come from a small generator seeded by the input, so that inputs stay short.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9e3779b97f4a7c15ull + 1) {}
  uint64_t Next() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return s_;
  }
  float Uniform(float lo, float hi) { return lo + (hi - lo) * float(Next() >> 40) / 16777216.0f; }

 private:
  uint64_t s_;
};

uint16_t ToHalf(float f) {
  uint16_t h;
  twl_fp32_to_fp16(&f, &h, 1);
  return h;
}
float ToFloat(uint16_t h) {
  float f;
  twl_fp16_to_fp32(&h, &f, 1);
  return f;
}

// CRC-32C (Castagnoli, reflected), bitwise: the save file's checksum, to forge files whose
// checksums are right but whose fields are not.
uint32_t Crc32c(const uint8_t* p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int b = 0; b < 8; ++b) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

struct SeqModel {
  std::vector<std::vector<uint16_t>> k, v;  // [layer][len * num_kv_heads * head_dim]
  bool finite = true;                       // every appended value finite
};

struct SavedFile {
  std::string path;
  SeqModel model;
};

// One scratch directory per process, removed at exit (never destroyed before that handler).
const std::string& TempDir() {
  static const std::string* dir = [] {
    const char* base = std::getenv("TMPDIR");
    auto* d = new std::string(std::string(base && *base ? base : "/tmp") + "/twl-fuzz-XXXXXX");
    if (mkdtemp(d->data()) == nullptr) Violation(__LINE__, "mkdtemp failed");
    std::atexit([] { rmdir(TempDir().c_str()); });
    return d;
  }();
  return *dir;
}

bool ReadFile(const std::string& path, std::vector<uint8_t>* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  out->clear();
  uint8_t buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out->insert(out->end(), buf, buf + n);
  std::fclose(f);
  return true;
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) Violation(__LINE__, "cannot write %s", path.c_str());
  if (!data.empty() && std::fwrite(data.data(), 1, data.size(), f) != data.size()) {
    Violation(__LINE__, "short write of %s", path.c_str());
  }
  std::fclose(f);
}

// Values no enumerator names. The enums' *_FORCE_INT32_ members make every non-negative
// int32 a valid C++ value of them, so these are well-formed on this side of the call.
constexpr twl_dtype kBadDtype = static_cast<twl_dtype>(7);
constexpr twl_selector kBadSelector = static_cast<twl_selector>(0x7fffffff);
constexpr twl_fetch_path kBadFetch = static_cast<twl_fetch_path>(3);
constexpr twl_memory_space kBadSpace = static_cast<twl_memory_space>(2);
constexpr twl_backend kBadBackend = static_cast<twl_backend>(9);

bool Allowed(twl_status s, const std::vector<twl_status>& allowed) {
  return std::find(allowed.begin(), allowed.end(), s) != allowed.end();
}

// A buffer at an odd address: `bytes` of src (or zeros) placed `offset` (1..7) bytes past an
// 8-aligned address inside *storage. offset 0: src itself (aligned as the caller gave it).
template <typename T>
T* Misaligned(std::vector<uint64_t>* storage, T* src, size_t bytes, int offset) {
  if (offset == 0 || src == nullptr) return src;
  storage->assign(bytes / 8 + 2, 0);
  unsigned char* at = reinterpret_cast<unsigned char*>(storage->data()) + offset;
  if (bytes) std::memcpy(at, src, bytes);
  return static_cast<T*>(static_cast<void*>(at));
}

// The misalignment of one call's buffers, from a generator of its own (not the input), so
// that adding it changed no input's meaning: a quarter of the calls use odd addresses.
int OddOffset(uint32_t seed) {
  Rng r(uint64_t(seed) ^ 0xa11c0ffeeull);
  return r.Next() % 4 == 0 ? int(1 + r.Next() % 7) : 0;
}

class Harness {
 public:
  explicit Harness(Bytes* in) : in_(*in) {}
  ~Harness() { Teardown(); }

  void Run() {
    twl::ProcessFaultInjector().Clear();
    CreateRuntime();
    for (int op = 0; op < 200 && !in_.empty(); ++op) Step();
    VerifyAll();
    FreeAllAndCheckEmpty();
    Teardown();
  }

 private:
  // ---- status checking ---------------------------------------------------------------------
  void Expect(twl_status got, const std::vector<twl_status>& allowed, const char* fn,
              const twl_runtime* rt) {
    TRACE("%s -> %s %s\n", fn, twl_status_string(got), got ? twl_runtime_last_error(rt) : "");
    FUZZ_CHECK(got >= TWL_OK && got <= TWL_INTERNAL, "%s returned %d, not a twl_status", fn,
               int(got));
    if (!Allowed(got, allowed)) {
      std::string list;
      for (twl_status s : allowed) list += std::string(" ") + twl_status_string(s);
      Violation(__LINE__, "%s returned %s (%s), allowed:%s", fn, twl_status_string(got),
                twl_runtime_last_error(rt), list.c_str());
    }
    if (got != TWL_OK) {
      const char* msg = twl_runtime_last_error(rt);
      FUZZ_CHECK(msg != nullptr && std::strncmp(msg, fn, std::strlen(fn)) == 0,
                 "%s failed with %s but the last error is '%s'", fn, twl_status_string(got),
                 msg ? msg : "(null)");
    }
  }

  // ---- runtime -------------------------------------------------------------------------------
  twl_runtime_config DecodeConfig() {
    twl_runtime_config c = twl_runtime_config_default();
    // Values past the first rows overflow an int32 somewhere if accepted (issue 15): they are
    // appended at the end of each table, so the seeds' indices keep their meaning.
    const int32_t layers[] = {1, 2, 3, 2, 1, 0, -1, 64, 1000, 4096, 4097, 1 << 24, INT32_MAX};
    const int32_t kv_heads[] = {1, 2, 3, 1, 0, -2, 40, 1024, 1025, INT32_MAX};
    const int32_t groups[] = {1, 2, 3, 1, 0, 1 << 20, INT32_MAX};
    const int32_t dims[] = {8, 16, 32, 8, 16, 0, 12, -8, 7, 512, INT32_MAX};
    const int32_t pages[] = {4, 1, 3, 7, 16, 0, -1, 4097, 5, 4096, INT32_MAX};
    const int32_t bits[] = {0, 2, 4, 8, 16, 4, 3, -4, 32};
    const float ps[] = {0.0f, 0.9f, 1.0f, 0.5f, 1.0f, 1e-30f, 1.5f, -0.1f, NAN, INFINITY};
    const twl_selector selectors[] = {TWL_SELECTOR_DEFAULT, TWL_SELECTOR_QUEST, TWL_SELECTOR_FULL,
                                      TWL_SELECTOR_FULL, kBadSelector,
                                      TWL_SELECTOR_DOUBLE_SPARSITY};
    const int32_t budgets[] = {0, 0, 1, 8, 1000, -1, INT32_MAX, INT32_MAX - 1};
    const float fractions[] = {0.0f, 0.25f, 1.0f, 0.01f, 1.5f, -0.5f, NAN};
    const int32_t sinks[] = {-1, 0, 1, 3, -5, 1 << 20, INT32_MAX, INT32_MAX - 1, (1 << 30) / 4,
                             (1 << 30) / 4 + 1, (1 << 30) / 16};
    const int32_t dense[] = {-1, 0, 1, 2, 0, 5, -3, INT32_MAX};
    // No absurd pools here: a real allocation failure is tested deterministically in
    // capi_fault_test.cc (under ASan a terabyte request would be granted lazily and then the
    // per-page bookkeeping would exhaust the fuzzer's memory limit, which is not a bug).
    const int64_t pools[] = {64 << 10, 16 << 10, 4 << 10, 256 << 10, 1 << 20, 100, -1, 0};
    const int64_t gpu_caches[] = {0, 1 << 20, -1};
    const twl_fetch_path fetches[] = {TWL_FETCH_AUTO, TWL_FETCH_GATHER, TWL_FETCH_COPY_ENGINE,
                                      kBadFetch};
    const twl_backend backends[] = {TWL_BACKEND_CPU,         TWL_BACKEND_CPU, TWL_BACKEND_CPU,
                                    TWL_BACKEND_AUTO,        TWL_BACKEND_GPU_HBM,
                                    TWL_BACKEND_GPU_OFFLOAD, kBadBackend};
    const int32_t devices[] = {-1, 0, 3, -7};
    const int32_t telemetry[] = {-1, 1, 0, 2};
    c.num_layers = in_.From(layers);
    c.num_kv_heads = in_.From(kv_heads);
    c.num_q_heads = int32_t(std::clamp<int64_t>(int64_t(c.num_kv_heads) * in_.From(groups),
                                                INT32_MIN, INT32_MAX));
    c.head_dim = in_.From(dims);
    c.page_size = in_.From(pages);
    c.k_bits = in_.From(bits);
    c.top_p = in_.From(ps);
    c.selector = in_.From(selectors);
    c.selector_budget_tokens = in_.From(budgets);
    c.selector_budget_fraction = in_.From(fractions);
    c.sink_pages = in_.From(sinks);
    c.dense_layers = in_.From(dense);
    c.host_pool_bytes = in_.From(pools);
    // The library-chosen pool (1 GiB) is valid but slow to create under ASan: rarely.
    if (c.host_pool_bytes == 0 && in_.Pick(4) != 0) c.host_pool_bytes = 32 << 10;
    c.gpu_cache_bytes = in_.From(gpu_caches);
    c.fetch_path = in_.From(fetches);
    c.backend = in_.From(backends);
    c.device_id = in_.From(devices);
    c.collect_telemetry = in_.From(telemetry);
    // The disk tier: mostly off; on with a few sizes; or one of the ways to get it wrong.
    switch (in_.Pick(8)) {
      case 5:
      case 6: {
        const int64_t sizes[] = {64 << 10, 256 << 10, 16 << 10, 4096, 1, INT64_MAX,
                                 int64_t(1) << 50};
        c.disk_path = TempDir().c_str();
        c.disk_bytes = in_.From(sizes);
        break;
      }
      case 7: {
        const int bad = in_.Pick(4);
        static const std::string missing = TempDir() + "/no-such-dir";
        c.disk_path = bad == 1 ? nullptr : bad == 2 ? missing.c_str() : TempDir().c_str();
        c.disk_bytes = bad == 0 ? 0 : bad == 3 ? -4096 : 64 << 10;
        break;
      }
      default:
        break;
    }
    return c;
  }

  // The ranges of twilight.h, plus the runtime's own limits (page_size <= 4096, dense_layers
  // <= num_layers, a pool that holds at least one page).
  // nullptr when valid, else the rule broken.
  static const char* ConfigInvalid(const twl_runtime_config& c) {
    auto one_of = [](int32_t v, std::initializer_list<int32_t> set) {
      return std::find(set.begin(), set.end(), v) != set.end();
    };
    if (c.num_layers < 1 || c.num_kv_heads < 1 || c.num_q_heads < 1 ||
        c.num_q_heads % c.num_kv_heads != 0 || !one_of(c.head_dim, {8, 16, 32, 64, 96, 128, 256})) {
      return "shape";
    }
    if (c.num_layers > 4096 || c.num_q_heads > 1024) return "shape bounds";
    if (c.page_size < 0 || c.page_size > 4096 || !one_of(c.k_bits, {0, 2, 4, 8, 16})) return "page size or k_bits";
    if (!(c.top_p >= 0.0f && c.top_p <= 1.0f)) return "top_p";  // 0: library chooses; NaN fails
    if (!one_of(int32_t(c.selector), {0, 1, 2, 3}) || c.selector_budget_tokens < 0) return "selector or budget tokens";
    if (c.selector == TWL_SELECTOR_DOUBLE_SPARSITY && c.k_bits == 16) return "double sparsity needs k_bits < 16";
    if (!(c.selector_budget_fraction >= 0.0f && c.selector_budget_fraction <= 1.0f)) return "budget fraction";
    if (c.sink_pages < -1 || c.dense_layers < -1 || c.dense_layers > c.num_layers) return "sinks or dense layers";
    if (c.host_pool_bytes < 0 || c.gpu_cache_bytes < 0) return "pool sizes";
    {
      const int64_t page = c.page_size == 0 ? 16 : c.page_size;
      const int64_t sinks = c.sink_pages == -1 ? 1 : c.sink_pages;
      if (sinks * page > (int64_t(1) << 30)) return "sink tokens above 2^30";
    }
    if (!one_of(int32_t(c.fetch_path), {0, 1, 2}) || !one_of(int32_t(c.backend), {0, 1, 2, 3})) {
      return "fetch path or backend";
    }
    if (c.device_id < -1 || c.collect_telemetry < -1 || c.collect_telemetry > 1) return "device or telemetry";
    if (c.disk_bytes < 0 || (c.disk_path != nullptr) != (c.disk_bytes > 0)) return "disk fields";
    const int64_t page = c.page_size == 0 ? 16 : c.page_size;
    const int64_t page_bytes = page * c.num_kv_heads * c.head_dim * 4;
    if (c.host_pool_bytes != 0 && c.host_pool_bytes < page_bytes) return "pool below one page";
    return nullptr;
  }

  void CreateRuntime() {
    twl_runtime_config c = DecodeConfig();
    // Odd struct sizes: too small must fail, larger (a newer caller) must work.
    struct {
      twl_runtime_config config;
      unsigned char newer_fields[32];
    } big;
    std::memset(&big, 0, sizeof(big));
    big.config = c;
    const int size_mode = in_.Pick(8);
    const twl_runtime_config* arg = &big.config;
    bool size_ok = true;
    if (size_mode == 0) {
      big.config.struct_size = 0;
      size_ok = false;
    } else if (size_mode == 1) {
      big.config.struct_size = sizeof(size_t);  // smaller than any version of the struct
      size_ok = false;
    } else if (size_mode == 4) {
      // An older caller whose struct ends inside disk_bytes: the fields past its size take
      // their defaults (disk_bytes, which this driver leaves unset anyway, and k_scheme).
      big.config.struct_size = offsetof(twl_runtime_config, k_scheme) - 4;
    } else if (size_mode == 2) {
      big.config.struct_size = sizeof(big);
    } else if (size_mode == 3) {
      arg = nullptr;
      size_ok = false;
    }
    twl_runtime* rt = reinterpret_cast<twl_runtime*>(uintptr_t(0x1));  // must be reset
    TRACE("create: struct_size mode %d, disk_path %s, disk_bytes %lld, backend %d\n", size_mode,
          c.disk_path ? c.disk_path : "(null)", (long long)c.disk_bytes, int(c.backend));
    twl_status s = twl_runtime_create(arg, &rt);
    Expect(s, size_ok ? std::vector<twl_status>{TWL_OK, TWL_INVALID_ARGUMENT, TWL_UNAVAILABLE,
                                                TWL_OUT_OF_MEMORY, TWL_CAPACITY_EXHAUSTED,
                                                TWL_UNSUPPORTED, TWL_IO_ERROR}
                      : std::vector<twl_status>{TWL_INVALID_ARGUMENT},
           "twl_runtime_create", nullptr);
    FUZZ_CHECK((s == TWL_OK) == (rt != nullptr), "create: status %d but handle %p", int(s),
               static_cast<void*>(rt));
    FUZZ_CHECK(twl_runtime_create(&c, nullptr) == TWL_INVALID_ARGUMENT, "create(out=NULL)");
    // The documented ranges decide: accepted implies valid, and a valid CPU configuration is
    // accepted unless memory runs out.
    // What the library sees: an older caller's struct (mode 4) ends before disk_bytes.
    twl_runtime_config seen = c;
    if (size_mode == 4) seen.disk_bytes = 0;
    const char* invalid = ConfigInvalid(seen);
    const bool valid = invalid == nullptr;
    FUZZ_CHECK(s != TWL_OK || valid, "a config with bad %s was accepted", invalid);
    // (A disk tier has rules of its own, e.g. disk_bytes of at least one page: not modelled.)
    FUZZ_CHECK(!(valid && size_ok && c.backend == TWL_BACKEND_CPU && seen.disk_bytes == 0) ||
                   s == TWL_OK ||
                   s == TWL_OUT_OF_MEMORY || s == TWL_CAPACITY_EXHAUSTED,
               "a valid CPU config was refused: %s", twl_runtime_last_error(nullptr));
    if (s != TWL_OK) {
      NullHandleCalls();
      // Go on with a valid small runtime so that the rest of the input still runs.
      twl_runtime_config f = twl_runtime_config_default();
      f.num_layers = 2;
      f.num_kv_heads = 1 + in_.Pick(2);
      f.num_q_heads = f.num_kv_heads * (1 + in_.Pick(2));
      f.head_dim = 16;
      f.page_size = 1 + in_.Pick(6);
      f.k_bits = 4;
      f.selector = in_.Pick(2) ? TWL_SELECTOR_FULL : TWL_SELECTOR_QUEST;
      f.host_pool_bytes = 32 << 10;
      f.backend = TWL_BACKEND_CPU;
      s = twl_runtime_create(&f, &rt);
      Expect(s, {TWL_OK}, "twl_runtime_create", nullptr);
    }
    rt_ = rt;
    cfg_.struct_size = sizeof(cfg_);
    Expect(twl_runtime_get_config(rt_, &cfg_), {TWL_OK}, "twl_runtime_get_config", rt_);
    TRACE("config: layers %d q %d kv %d dim %d page %d bits %d p %g sel %d budget %d/%g sinks %d "
          "dense %d pool %lld telemetry %d\n",
          cfg_.num_layers, cfg_.num_q_heads, cfg_.num_kv_heads, cfg_.head_dim, cfg_.page_size,
          cfg_.k_bits, double(cfg_.top_p), int(cfg_.selector), cfg_.selector_budget_tokens,
          double(cfg_.selector_budget_fraction), cfg_.sink_pages, cfg_.dense_layers,
          (long long)cfg_.host_pool_bytes, cfg_.collect_telemetry);
    FUZZ_CHECK(cfg_.page_size >= 1 && cfg_.top_p > 0.0f && cfg_.top_p <= 1.0f &&
                   (cfg_.k_bits == 2 || cfg_.k_bits == 4 || cfg_.k_bits == 8 || cfg_.k_bits == 16) &&
                   cfg_.sink_pages >= 0 && cfg_.dense_layers >= 0 && cfg_.host_pool_bytes > 0 &&
                   cfg_.collect_telemetry >= 0 && cfg_.backend != TWL_BACKEND_AUTO,
               "resolved config still holds a sentinel");
    tok_ = size_t(cfg_.num_kv_heads) * size_t(cfg_.head_dim);
    disk_ = cfg_.disk_bytes > 0;
    FUZZ_CHECK(twl_runtime_backend(rt_) == cfg_.backend, "backend mismatch");
    FUZZ_CHECK(twl_runtime_backend_name(rt_) != nullptr, "backend name NULL");
  }

  // Every entry point with a null handle: INVALID_ARGUMENT with a message, never a crash.
  void NullHandleCalls() {
    twl_seq_id id = 7;
    int32_t len = 0;
    uint16_t buf[8] = {};
    twl_runtime_config c;
    c.struct_size = sizeof(c);
    twl_step_stats st;
    st.struct_size = sizeof(st);
    twl_memory_usage m;
    m.struct_size = sizeof(m);
    const std::vector<twl_status> bad = {TWL_INVALID_ARGUMENT};
    Expect(twl_sequence_create(nullptr, &id), bad, "twl_sequence_create", nullptr);
    FUZZ_CHECK(id == TWL_INVALID_SEQ_ID, "create on NULL runtime left id %lld", (long long)id);
    Expect(twl_sequence_free(nullptr, 1), bad, "twl_sequence_free", nullptr);
    Expect(twl_sequence_fork(nullptr, 1, &id), bad, "twl_sequence_fork", nullptr);
    Expect(twl_sequence_length(nullptr, 1, 0, &len), bad, "twl_sequence_length", nullptr);
    Expect(twl_sequence_append(nullptr, 1, 0, 1, buf, buf, TWL_DTYPE_FP16, TWL_MEMORY_HOST), bad,
           "twl_sequence_append", nullptr);
    Expect(twl_sequence_read_kv(nullptr, 1, 0, buf, buf, 1, &len), bad, "twl_sequence_read_kv",
           nullptr);
    Expect(twl_decode(nullptr, 0, &id, 1, buf, buf, TWL_MEMORY_HOST, nullptr, nullptr), bad,
           "twl_decode", nullptr);
    Expect(twl_runtime_get_config(nullptr, &c), bad, "twl_runtime_get_config", nullptr);
    Expect(twl_runtime_last_step(nullptr, &st), bad, "twl_runtime_last_step", nullptr);
    Expect(twl_runtime_last_step_heads(nullptr, nullptr, nullptr, nullptr, 0, nullptr, 0), bad,
           "twl_runtime_last_step_heads", nullptr);
    Expect(twl_runtime_memory(nullptr, &m), bad, "twl_runtime_memory", nullptr);
    Expect(twl_runtime_async_error(nullptr), bad, "twl_runtime_async_error", nullptr);
    Expect(twl_sequence_save(nullptr, 1, "/tmp/x"), bad, "twl_sequence_save", nullptr);
    Expect(twl_sequence_restore(nullptr, "/tmp/x", &id), bad, "twl_sequence_restore", nullptr);
    FUZZ_CHECK(twl_runtime_backend(nullptr) == TWL_BACKEND_AUTO, "backend(NULL)");
    FUZZ_CHECK(std::strcmp(twl_runtime_backend_name(nullptr), "") == 0, "backend_name(NULL)");
    twl_runtime_free(nullptr);
  }

  void Teardown() {
    twl::ProcessFaultInjector().Clear();
    if (rt_ == nullptr) return;
    for (const SavedFile& f : files_) std::remove(f.path.c_str());
    for (const std::string& p : scratch_) std::remove(p.c_str());
    files_.clear();
    scratch_.clear();
    twl_runtime_free(rt_);
    rt_ = nullptr;
  }

  // ---- choosing arguments ---------------------------------------------------------------------
  twl_seq_id PickSeq() {
    const int mode = in_.Pick(10);
    if (mode < 7 && !model_.empty()) {
      auto it = model_.begin();
      std::advance(it, in_.Pick(int(model_.size())));
      return it->first;
    }
    if (mode == 7 && !freed_.empty()) return freed_[size_t(in_.Pick(int(freed_.size())))];
    const twl_seq_id odd[] = {0, -1, TWL_INVALID_SEQ_ID, int64_t(1) << 40, INT64_MIN, 12345};
    return in_.From(odd);
  }

  int32_t PickLayer() {
    if (in_.Pick(8) != 0) return in_.Pick(std::min(cfg_.num_layers, 4));
    const int32_t odd[] = {-1, cfg_.num_layers, INT32_MIN, INT32_MAX, cfg_.num_layers - 1};
    return in_.From(odd);
  }

  bool LayerOk(int32_t layer) const { return layer >= 0 && layer < cfg_.num_layers; }

  // Values of one tensor: moderate finite values, or (rarely) raw bit patterns.
  void FillHalf(std::vector<uint16_t>* x, Rng* rng, bool raw) {
    for (uint16_t& h : *x) {
      h = raw ? uint16_t(rng->Next()) : ToHalf(rng->Uniform(-2.0f, 2.0f));
    }
  }

  static bool AllFinite(const std::vector<uint16_t>& x) {
    for (uint16_t h : x) {
      if ((h & 0x7c00u) == 0x7c00u) return false;
    }
    return true;
  }

  SeqModel* Find(twl_seq_id seq) {
    auto it = model_.find(seq);
    return it == model_.end() ? nullptr : &it->second;
  }

  int32_t ModelLen(const SeqModel& m, int32_t layer) const {
    return int32_t(m.k[size_t(layer)].size() / tok_);
  }

  // ---- operations --------------------------------------------------------------------------
  void Step() {
    switch (in_.Pick(17)) {
      case 0: case 1: OpCreate(); break;
      case 2: case 3: case 4: case 5: OpAppend(); break;
      case 6: case 7: case 8: OpDecode(); break;
      case 9: OpRead(); break;
      case 10: OpFork(); break;
      case 11: OpFree(); break;
      case 12: OpSave(); break;
      case 13: OpRestore(); break;
      case 14: OpQueries(); break;
      case 15: OpBound(); break;
      default: OpMisc(); break;
    }
  }

  void OpCreate() {
    twl_seq_id id = 99;
    const bool null_out = in_.Pick(8) == 0;
    const twl_status s = twl_sequence_create(rt_, null_out ? nullptr : &id);
    Expect(s, null_out ? std::vector<twl_status>{TWL_INVALID_ARGUMENT}
                       : std::vector<twl_status>{TWL_OK, TWL_OUT_OF_MEMORY},
           "twl_sequence_create", rt_);
    if (s != TWL_OK) return;
    FUZZ_CHECK(id != TWL_INVALID_SEQ_ID && model_.count(id) == 0 && !WasFreed(id),
               "sequence id %lld reused", (long long)id);
    SeqModel m;
    m.k.resize(size_t(cfg_.num_layers));
    m.v.resize(size_t(cfg_.num_layers));
    model_[id] = std::move(m);
  }

  bool WasFreed(twl_seq_id id) const {
    return std::find(freed_.begin(), freed_.end(), id) != freed_.end();
  }

  void OpAppend() {
    const twl_seq_id seq = PickSeq();
    const int32_t layer = PickLayer();
    const uint32_t seed = in_.U32();
    Rng rng(seed);
    const int n_mode = in_.Pick(12);
    int32_t n = 1 + in_.Pick(24);
    bool null_k = false, null_v = false;
    size_t alloc_tokens = 0;
    // Pool capacity in tokens (one page holds page_size tokens of every KV head).
    const int64_t page_bytes = int64_t(cfg_.page_size) * int64_t(tok_) * 4;
    const int64_t pool_tokens = cfg_.host_pool_bytes / page_bytes * cfg_.page_size;
    switch (n_mode) {
      case 0: n = 0; break;
      case 1: n = -1; break;
      case 2: n = INT32_MIN; break;
      case 3: n = INT32_MAX; null_k = true; break;  // huge n, no buffer: must be rejected
      case 4: {  // more than the pool holds, with real buffers (bounded to 4 MiB)
        const int64_t want = pool_tokens + 1 + in_.Pick(16);
        if (want * int64_t(tok_) * 4 > (4 << 20)) break;
        n = int32_t(want);
        break;
      }
      case 5: n = 1 + in_.Pick(200); break;
      default: break;
    }
    if (in_.Pick(10) == 0) (in_.Pick(2) ? null_k : null_v) = true;
    if (n > 0 && !(n == INT32_MAX)) alloc_tokens = size_t(n);
    const twl_dtype dtypes[] = {TWL_DTYPE_FP16, TWL_DTYPE_FP16, TWL_DTYPE_FP16, TWL_DTYPE_BF16,
                                TWL_DTYPE_FP32, kBadDtype};
    const twl_memory_space spaces[] = {TWL_MEMORY_HOST, TWL_MEMORY_HOST, TWL_MEMORY_HOST,
                                       TWL_MEMORY_HOST, TWL_MEMORY_DEVICE, kBadSpace};
    const twl_dtype dtype = in_.From(dtypes);
    const twl_memory_space space = in_.From(spaces);
    const bool raw = in_.Pick(16) == 0;

    // Input in its dtype, and what the cache must hold afterwards (FP16 bits).
    const size_t elems = alloc_tokens * tok_;
    std::vector<uint16_t> k16(elems), v16(elems);
    FillHalf(&k16, &rng, raw);
    FillHalf(&v16, &rng, raw);
    std::vector<uint16_t> k_in16, v_in16;
    std::vector<float> k_in32, v_in32;
    const void* kp = nullptr;
    const void* vp = nullptr;
    if (dtype == TWL_DTYPE_FP32) {
      k_in32.resize(elems);
      v_in32.resize(elems);
      for (size_t i = 0; i < elems; ++i) {
        k_in32[i] = raw ? ToFloat(k16[i]) * 1.000123f : ToFloat(k16[i]) * 1.0001f;
        v_in32[i] = ToFloat(v16[i]) * 0.99991f;
      }
      twl_fp32_to_fp16(k_in32.data(), k16.data(), elems);
      twl_fp32_to_fp16(v_in32.data(), v16.data(), elems);
      kp = k_in32.data();
      vp = v_in32.data();
    } else if (dtype == TWL_DTYPE_BF16) {
      k_in16.resize(elems);
      v_in16.resize(elems);
      for (size_t i = 0; i < elems; ++i) {
        for (auto [src, dst] : {std::pair{&k16, &k_in16}, std::pair{&v16, &v_in16}}) {
          float f = ToFloat((*src)[i]);
          uint32_t bits;
          std::memcpy(&bits, &f, 4);
          (*dst)[i] = uint16_t(bits >> 16);  // truncate to bf16
          bits = uint32_t((*dst)[i]) << 16;
          std::memcpy(&f, &bits, 4);
          (*src)[i] = ToHalf(f);  // bf16 -> fp32 is exact, then rounded to fp16
        }
      }
      kp = k_in16.data();
      vp = v_in16.data();
    } else {
      kp = k16.data();
      vp = v16.data();
    }
    if (elems == 0) kp = vp = nullptr;
    if (null_k) kp = nullptr;
    if (null_v) vp = nullptr;
    // Host buffers at odd addresses must append the same values.
    std::vector<uint64_t> k_odd, v_odd;
    const int odd = space == TWL_MEMORY_HOST ? OddOffset(seed) : 0;
    const size_t in_bytes = elems * (dtype == TWL_DTYPE_FP32 ? 4 : 2);
    kp = Misaligned(&k_odd, kp, in_bytes, odd);
    vp = Misaligned(&v_odd, vp, in_bytes, odd);

    // What may come back: the code of any one thing wrong with the call.
    SeqModel* m = Find(seq);
    std::vector<twl_status> allowed;
    const bool bad_dtype =
        dtype != TWL_DTYPE_FP16 && dtype != TWL_DTYPE_BF16 && dtype != TWL_DTYPE_FP32;
    const bool bad_space = space != TWL_MEMORY_HOST && space != TWL_MEMORY_DEVICE;
    if (!LayerOk(layer) || n < 0 || bad_dtype || bad_space) allowed.push_back(TWL_INVALID_ARGUMENT);
    if (n > 0 && (kp == nullptr || vp == nullptr)) allowed.push_back(TWL_INVALID_ARGUMENT);
    if (space == TWL_MEMORY_DEVICE && cfg_.backend == TWL_BACKEND_CPU) {
      allowed.push_back(TWL_UNSUPPORTED);
    }
    if (m == nullptr) allowed.push_back(TWL_NOT_FOUND);
    if (allowed.empty()) {
      allowed = {TWL_OK};
      if (n > 0) {
        allowed.push_back(TWL_CAPACITY_EXHAUSTED);
        allowed.push_back(TWL_OUT_OF_MEMORY);
        if (armed_) allowed.push_back(TWL_IO_ERROR);
      }
    }
    TRACE("append seq %lld layer %d n %d dtype %d space %d raw %d null %d%d odd %d\n",
          (long long)seq, layer, n, int(dtype), int(space), int(raw), int(kp == nullptr),
          int(vp == nullptr), odd);
    const int64_t used_before = PoolUsed();
    const twl_status s = twl_sequence_append(rt_, seq, layer, n, kp, vp, dtype, space);
    Expect(s, allowed, "twl_sequence_append", rt_);
    if (s == TWL_OK && n > 0) {
      m->k[size_t(layer)].insert(m->k[size_t(layer)].end(), k16.begin(), k16.end());
      m->v[size_t(layer)].insert(m->v[size_t(layer)].end(), v16.begin(), v16.end());
      m->finite = m->finite && AllFinite(k16) && AllFinite(v16);
      touched_.insert(layer);
    } else if (s != TWL_OK && !disk_) {  // (with a disk tier other pages may move)
      FUZZ_CHECK(PoolUsed() == used_before, "failed append changed pool use %lld -> %lld",
                 (long long)used_before, (long long)PoolUsed());
    }
    if (m != nullptr && LayerOk(layer) && in_.Pick(4) == 0) CheckRead(seq, layer);
  }

  // twl_append_batch: up to 5 entries whose ids may repeat or be unknown and whose counts may
  // be 0 or negative, FP16 host input (sometimes null); all or nothing against the model.
  void OpAppendBatch() {
    const int32_t layer = PickLayer();
    const int32_t num = in_.Pick(10) == 0 ? -1 : in_.Pick(6);
    Rng rng(in_.U32());
    std::vector<twl_seq_id> seqs;
    std::vector<int32_t> counts;
    bool negative = false, duplicate = false, unknown = false;
    int64_t total = 0;
    for (int32_t i = 0; i < num; ++i) {
      const twl_seq_id id = PickSeq();
      const int32_t c = in_.Pick(12) == 0 ? -1 : (in_.Pick(4) == 0 ? 0 : 1 + in_.Pick(20));
      duplicate = duplicate || std::find(seqs.begin(), seqs.end(), id) != seqs.end();
      unknown = unknown || Find(id) == nullptr;
      negative = negative || c < 0;
      if (c > 0) total += c;
      seqs.push_back(id);
      counts.push_back(c);
    }
    std::vector<uint16_t> k16(size_t(total) * tok_), v16(k16.size());
    FillHalf(&k16, &rng, false);
    FillHalf(&v16, &rng, false);
    const bool null_kv = total > 0 && in_.Pick(12) == 0;
    const void* kp = null_kv || total == 0 ? nullptr : k16.data();
    const void* vp = total == 0 ? nullptr : v16.data();

    std::vector<twl_status> allowed;
    if (!LayerOk(layer) || num < 0 || negative || duplicate || (null_kv && !negative)) {
      allowed.push_back(TWL_INVALID_ARGUMENT);
    }
    if (unknown && num > 0) allowed.push_back(TWL_NOT_FOUND);
    if (allowed.empty()) {
      allowed = {TWL_OK};
      if (total > 0) {
        allowed.push_back(TWL_CAPACITY_EXHAUSTED);
        allowed.push_back(TWL_OUT_OF_MEMORY);
        if (armed_) allowed.push_back(TWL_IO_ERROR);
      }
    }
    TRACE("append batch layer %d num %d total %lld\n", layer, num, (long long)total);
    const int64_t used_before = PoolUsed();
    const twl_status s = twl_append_batch(rt_, layer, seqs.data(), counts.data(), num, kp, vp,
                                          TWL_DTYPE_FP16, TWL_MEMORY_HOST, nullptr);
    Expect(s, allowed, "twl_append_batch", rt_);
    if (s == TWL_OK) {
      size_t at = 0;
      for (size_t i = 0; i < seqs.size(); ++i) {
        if (counts[i] <= 0) continue;
        SeqModel& m = model_.at(seqs[i]);
        const size_t n = size_t(counts[i]) * tok_;
        m.k[size_t(layer)].insert(m.k[size_t(layer)].end(), k16.begin() + at, k16.begin() + at + n);
        m.v[size_t(layer)].insert(m.v[size_t(layer)].end(), v16.begin() + at, v16.begin() + at + n);
        at += n;
        touched_.insert(layer);
      }
    } else if (!disk_) {  // all or nothing: no pages kept (with a disk tier pages may move)
      FUZZ_CHECK(PoolUsed() == used_before, "failed batch append changed pool use %lld -> %lld",
                 (long long)used_before, (long long)PoolUsed());
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (Find(seqs[i]) != nullptr && LayerOk(layer) && in_.Pick(4) == 0) CheckRead(seqs[i], layer);
    }
  }

  int64_t PoolUsed() {
    twl_memory_usage mem;
    mem.struct_size = sizeof(mem);
    Expect(twl_runtime_memory(rt_, &mem), {TWL_OK}, "twl_runtime_memory", rt_);
    FUZZ_CHECK(mem.host_pool_bytes_used >= 0 &&
                   mem.host_pool_bytes_used <= mem.host_pool_bytes_total,
               "pool use %lld of %lld", (long long)mem.host_pool_bytes_used,
               (long long)mem.host_pool_bytes_total);
    return mem.host_pool_bytes_used;
  }

  // Read-back must equal the model bit for bit.
  void CheckRead(twl_seq_id seq, int32_t layer) {
    const SeqModel& m = model_.at(seq);
    const int32_t want = ModelLen(m, layer);
    int32_t len = -5;
    Expect(twl_sequence_read_kv(rt_, seq, layer, nullptr, nullptr, 0, &len), {TWL_OK},
           "twl_sequence_read_kv", rt_);
    FUZZ_CHECK(len == want, "seq %lld layer %d has %d tokens, model %d", (long long)seq, layer,
               len, want);
    int32_t len2 = 0;
    Expect(twl_sequence_length(rt_, seq, layer, &len2), {TWL_OK}, "twl_sequence_length", rt_);
    FUZZ_CHECK(len2 == want, "length %d vs model %d", len2, want);
    if (want == 0) return;
    std::vector<uint16_t> k(size_t(want) * tok_), v(k.size());
    const twl_status s = twl_sequence_read_kv(rt_, seq, layer, k.data(), v.data(), want, &len);
    Expect(s, armed_ ? std::vector<twl_status>{TWL_OK, TWL_IO_ERROR} : std::vector<twl_status>{TWL_OK},
           "twl_sequence_read_kv", rt_);
    if (s != TWL_OK) return;
    FUZZ_CHECK(k == m.k[size_t(layer)] && v == m.v[size_t(layer)],
               "read-back of seq %lld layer %d differs from what was appended", (long long)seq,
               layer);
  }

  void OpRead() {
    const twl_seq_id seq = PickSeq();
    const int32_t layer = PickLayer();
    SeqModel* m = Find(seq);
    const int mode = in_.Pick(6);
    const int32_t len = (m && LayerOk(layer)) ? ModelLen(*m, layer) : 0;
    int64_t capacity = len;
    bool null_buffers = false, null_len = false;
    switch (mode) {
      case 0: capacity = 0; null_buffers = true; break;     // size query
      case 1: capacity = std::max<int64_t>(len - 1, 0); break;  // too small (if len > 0)
      case 2: capacity = len + 3; break;
      case 3: capacity = -1; break;
      case 4: null_len = true; break;
      default: break;
    }
    if (mode == 5 && in_.Pick(3) == 0) null_buffers = true;  // capacity > 0 with NULL buffers
    std::vector<uint16_t> k(size_t(std::max<int64_t>(capacity, 0)) * tok_ + 1, 0xbeef);
    std::vector<uint16_t> v(k.size(), 0xbeef);
    const std::vector<uint16_t> k_before = k;
    std::vector<twl_status> allowed;
    if (null_len || !LayerOk(layer) || capacity < 0 || (capacity > 0 && null_buffers)) {
      allowed.push_back(TWL_INVALID_ARGUMENT);
    }
    if (m == nullptr) allowed.push_back(TWL_NOT_FOUND);
    if (allowed.empty()) {
      allowed.push_back(capacity < len && !(capacity == 0 && null_buffers) ? TWL_INVALID_ARGUMENT
                                                                           : TWL_OK);
      if (allowed[0] == TWL_OK && armed_ && len > 0 && !null_buffers) {
        allowed.push_back(TWL_IO_ERROR);
      }
    }
    int32_t out_len = -9;
    // Odd addresses for the output buffers too; copied back for the checks below.
    std::vector<uint64_t> k_odd, v_odd;
    const int odd = OddOffset(uint32_t(counter_ * 2654435761u + uint32_t(mode)));
    ++counter_;
    uint16_t* kb = Misaligned(&k_odd, k.data(), k.size() * 2, odd);
    uint16_t* vb = Misaligned(&v_odd, v.data(), v.size() * 2, odd);
    const twl_status s = twl_sequence_read_kv(
        rt_, seq, layer, null_buffers ? nullptr : kb, null_buffers ? nullptr : vb,
        capacity, null_len ? nullptr : &out_len);
    if (odd != 0) {
      std::memcpy(k.data(), kb, k.size() * 2);
      std::memcpy(v.data(), vb, v.size() * 2);
    }
    Expect(s, allowed, "twl_sequence_read_kv", rt_);
    if (s == TWL_OK) {
      FUZZ_CHECK(out_len == len, "read_kv len %d vs model %d", out_len, len);
      if (!null_buffers) {
        FUZZ_CHECK(std::equal(m->k[size_t(layer)].begin(), m->k[size_t(layer)].end(), k.begin()),
                   "read_kv K differs");
        FUZZ_CHECK(std::equal(m->v[size_t(layer)].begin(), m->v[size_t(layer)].end(), v.begin()),
                   "read_kv V differs");
        FUZZ_CHECK(k.back() == 0xbeef, "read_kv wrote past its length");
      }
    } else if (!null_buffers) {
      FUZZ_CHECK(k == k_before, "failed read_kv wrote to the buffer");
    }
    if (s == TWL_INVALID_ARGUMENT && m != nullptr && LayerOk(layer) && !null_len &&
        capacity >= 0 && !(capacity > 0 && null_buffers)) {
      FUZZ_CHECK(out_len == len, "read_kv with a small buffer did not report the length");
    }
  }

  // A bound batch over a few sequences for one step: a reservation (refused at max_tokens,
  // changing nothing), then every layer's batch append, checked against the model by the
  // later reads and decodes; an append before the reservation and a bad layer on the way.
  // Host backend without a disk tier only (a failed disk write would leave reserved rows the
  // model cannot know).
  void OpBound() {
    if (model_.empty() || disk_ || cfg_.backend != TWL_BACKEND_CPU || cfg_.num_layers > 64) return;
    std::vector<twl_seq_id> seqs;
    const int want = 1 + in_.Pick(3);
    for (int i = 0; i < want; ++i) {
      const twl_seq_id id = PickSeq();
      if (Find(id) && std::find(seqs.begin(), seqs.end(), id) == seqs.end()) seqs.push_back(id);
    }
    if (seqs.empty()) return;
    int32_t longest = 0;
    for (twl_seq_id id : seqs) {
      for (int32_t l = 0; l < cfg_.num_layers; ++l) {
        longest = std::max(longest, ModelLen(model_.at(id), l));
      }
    }
    const int32_t max_tokens = std::max(longest + int32_t(in_.Pick(3)), 1);  // 0: no room
    const int32_t n = int32_t(seqs.size());
    twl_batch_id b = TWL_INVALID_BATCH_ID;
    twl_status s = twl_batch_create(rt_, seqs.data(), n, max_tokens, &b);
    Expect(s, {TWL_OK, TWL_INVALID_ARGUMENT, TWL_OUT_OF_MEMORY}, "twl_batch_create", rt_);
    if (s != TWL_OK) return;
    TRACE("bound batch of %d, max_tokens %d, longest %d\n", n, max_tokens, longest);
    std::vector<uint16_t> k(size_t(n) * tok_), v(size_t(n) * tok_);
    Rng rng(in_.U32());
    FillHalf(&k, &rng, false);
    FillHalf(&v, &rng, false);
    if (in_.Pick(4) == 0) {
      Expect(twl_batch_append(rt_, b, 0, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
             {TWL_FAILED_PRECONDITION}, "twl_batch_append", rt_);
    }
    const int64_t used_before = PoolUsed();
    s = twl_batch_reserve(rt_, b, nullptr);
    if (max_tokens > longest) {
      Expect(s, {TWL_OK, TWL_CAPACITY_EXHAUSTED, TWL_OUT_OF_MEMORY}, "twl_batch_reserve", rt_);
    } else {
      Expect(s, {TWL_FAILED_PRECONDITION}, "twl_batch_reserve", rt_);
    }
    if (s == TWL_OK) {
      const int32_t bad = in_.Pick(2) ? -1 : cfg_.num_layers;
      Expect(twl_batch_append(rt_, b, bad, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
             {TWL_INVALID_ARGUMENT}, "twl_batch_append", rt_);
      for (int32_t l = 0; l < cfg_.num_layers; ++l) {
        FillHalf(&k, &rng, false);
        FillHalf(&v, &rng, false);
        Expect(twl_batch_append(rt_, b, l, k.data(), v.data(), TWL_DTYPE_FP16, nullptr),
               {TWL_OK}, "twl_batch_append", rt_);
        for (int32_t i = 0; i < n; ++i) {
          SeqModel& m = model_.at(seqs[size_t(i)]);
          const auto row = [&](const std::vector<uint16_t>& x) { return x.begin() + i * tok_; };
          m.k[size_t(l)].insert(m.k[size_t(l)].end(), row(k), row(k) + tok_);
          m.v[size_t(l)].insert(m.v[size_t(l)].end(), row(v), row(v) + tok_);
        }
        touched_.insert(l);
      }
    } else {
      FUZZ_CHECK(PoolUsed() == used_before, "failed reservation changed pool use %lld -> %lld",
                 (long long)used_before, (long long)PoolUsed());
    }
    Expect(twl_batch_free(rt_, b), {TWL_OK}, "twl_batch_free", rt_);
  }

  void OpFork() {
    const twl_seq_id parent = PickSeq();
    const bool null_out = in_.Pick(10) == 0;
    twl_seq_id child = 77;
    const twl_status s = twl_sequence_fork(rt_, parent, null_out ? nullptr : &child);
    std::vector<twl_status> allowed;
    if (null_out) allowed.push_back(TWL_INVALID_ARGUMENT);
    if (Find(parent) == nullptr) allowed.push_back(TWL_NOT_FOUND);
    if (allowed.empty()) allowed = {TWL_OK, TWL_OUT_OF_MEMORY};
    Expect(s, allowed, "twl_sequence_fork", rt_);
    if (s != TWL_OK) {
      if (!null_out) FUZZ_CHECK(child == TWL_INVALID_SEQ_ID, "failed fork left an id");
      return;
    }
    FUZZ_CHECK(model_.count(child) == 0 && !WasFreed(child), "fork reused id %lld",
               (long long)child);
    model_[child] = model_.at(parent);
  }

  void OpFree() {
    const twl_seq_id seq = PickSeq();
    const twl_status s = twl_sequence_free(rt_, seq);
    Expect(s, {Find(seq) ? TWL_OK : TWL_NOT_FOUND}, "twl_sequence_free", rt_);
    if (s == TWL_OK) {
      model_.erase(seq);
      freed_.push_back(seq);
    }
  }

  // Dense attention of one sequence over its layer, FP32/FP64, from the model.
  void DenseRef(const SeqModel& m, int32_t layer, const uint16_t* q, std::vector<double>* out) {
    const int32_t len = ModelLen(m, layer);
    const int32_t group = cfg_.num_q_heads / cfg_.num_kv_heads;
    const double scale = 1.0 / std::sqrt(double(cfg_.head_dim));
    const std::vector<uint16_t>& K = m.k[size_t(layer)];
    const std::vector<uint16_t>& V = m.v[size_t(layer)];
    out->assign(size_t(cfg_.num_q_heads) * cfg_.head_dim, 0.0);
    std::vector<double> w(static_cast<size_t>(len));
    for (int32_t qh = 0; qh < cfg_.num_q_heads; ++qh) {
      const int32_t h = qh / group;
      double mx = -1e300;
      for (int32_t t = 0; t < len; ++t) {
        double dot = 0;
        for (int32_t c = 0; c < cfg_.head_dim; ++c) {
          dot += double(ToFloat(q[size_t(qh) * cfg_.head_dim + c])) *
                 ToFloat(K[(size_t(t) * cfg_.num_kv_heads + h) * cfg_.head_dim + c]);
        }
        w[size_t(t)] = dot * scale;
        mx = std::max(mx, w[size_t(t)]);
      }
      double sum = 0;
      for (double& x : w) sum += (x = std::exp(x - mx));
      for (int32_t t = 0; t < len; ++t) {
        for (int32_t c = 0; c < cfg_.head_dim; ++c) {
          (*out)[size_t(qh) * cfg_.head_dim + c] +=
              w[size_t(t)] / sum *
              ToFloat(V[(size_t(t) * cfg_.num_kv_heads + h) * cfg_.head_dim + c]);
        }
      }
    }
  }

  void OpDecode() {
    const int32_t layer = PickLayer();
    const int count_mode = in_.Pick(10);
    int32_t num_seqs = 1 + in_.Pick(4);
    if (count_mode == 0) num_seqs = 0;
    if (count_mode == 1) num_seqs = -1;
    std::vector<twl_seq_id> seqs(size_t(std::max(num_seqs, 0)) + 1);
    for (size_t i = 0; i < seqs.size(); ++i) seqs[i] = PickSeq();
    const bool use_p = in_.Pick(3) == 0;
    const float p_choices[] = {1.0f, 0.9f, 0.5f, 1.0f, 0.99f, 1e-6f, 0.0f, -1.0f, 1.5f, NAN,
                               INFINITY};
    std::vector<float> p(seqs.size());
    for (float& x : p) x = in_.Pick(3) ? p_choices[in_.Pick(5)] : in_.From(p_choices);
    const twl_memory_space spaces[] = {TWL_MEMORY_HOST, TWL_MEMORY_HOST, TWL_MEMORY_HOST,
                                       TWL_MEMORY_HOST, TWL_MEMORY_HOST, TWL_MEMORY_DEVICE,
                                       kBadSpace};
    const twl_memory_space space = in_.From(spaces);
    const bool null_q = in_.Pick(16) == 0, null_seqs = in_.Pick(16) == 0;
    const uint32_t seed = in_.U32();
    Rng rng(seed);
    const bool raw = in_.Pick(16) == 0;
    const size_t q_row = size_t(cfg_.num_q_heads) * cfg_.head_dim;
    std::vector<uint16_t> q(seqs.size() * q_row);
    FillHalf(&q, &rng, raw);
    std::vector<uint16_t> out(q.size(), 0x7e00), out_before;
    out_before = out;

    std::vector<twl_status> allowed;
    if (!LayerOk(layer) || num_seqs < 1 || null_q || null_seqs ||
        (space != TWL_MEMORY_HOST && space != TWL_MEMORY_DEVICE)) {
      allowed.push_back(TWL_INVALID_ARGUMENT);
    }
    if (space == TWL_MEMORY_DEVICE && cfg_.backend == TWL_BACKEND_CPU) {
      allowed.push_back(TWL_UNSUPPORTED);
    }
    bool all_finite = !raw;
    if (num_seqs >= 1) {
      std::set<twl_seq_id> distinct;
      for (int32_t i = 0; i < num_seqs; ++i) {
        if (!distinct.insert(seqs[size_t(i)]).second) allowed.push_back(TWL_INVALID_ARGUMENT);
        if (use_p && !(p[size_t(i)] > 0.0f && p[size_t(i)] <= 1.0f)) {
          allowed.push_back(TWL_INVALID_ARGUMENT);
        }
        const SeqModel* m = Find(seqs[size_t(i)]);
        if (m == nullptr) {
          allowed.push_back(TWL_NOT_FOUND);
        } else if (LayerOk(layer) && ModelLen(*m, layer) == 0) {
          allowed.push_back(TWL_FAILED_PRECONDITION);
        } else if (!m->finite) {
          all_finite = false;
        }
      }
    }
    TRACE("decode layer %d n %d raw %d p %s:", layer, num_seqs, int(raw), use_p ? "yes" : "no");
    for (int32_t i = 0; i < std::max(num_seqs, 0); ++i) {
      TRACE(" %lld/%g", (long long)seqs[size_t(i)], double(p[size_t(i)]));
    }
    TRACE("\n");
    const bool clean = allowed.empty();
    if (clean) {
      allowed = {TWL_OK, TWL_OUT_OF_MEMORY};
      if (disk_) allowed.push_back(TWL_CAPACITY_EXHAUSTED);  // more kept pages than host slots
      if (armed_) allowed.push_back(TWL_IO_ERROR);
    }
    // q, out, seqs and seq_p at odd addresses (host memory needs no alignment); out is copied
    // back for the checks below.
    const int odd = space == TWL_MEMORY_HOST ? OddOffset(seed) : 0;
    std::vector<uint64_t> q_odd, out_odd, seqs_odd, p_odd;
    const uint16_t* qb = Misaligned(&q_odd, q.data(), q.size() * 2, odd);
    uint16_t* ob = Misaligned(&out_odd, out.data(), out.size() * 2, odd);
    const twl_seq_id* sb =
        Misaligned(&seqs_odd, seqs.data(), seqs.size() * sizeof(twl_seq_id), odd);
    const float* pb = Misaligned(&p_odd, p.data(), p.size() * sizeof(float), odd);
    const twl_status s = twl_decode(rt_, layer, null_seqs ? nullptr : sb, num_seqs,
                                    null_q ? nullptr : qb, ob, space, use_p ? pb : nullptr,
                                    nullptr);
    if (odd != 0) std::memcpy(out.data(), ob, out.size() * 2);
    Expect(s, allowed, "twl_decode", rt_);
    if (s != TWL_OK) {
      if (s == TWL_INVALID_ARGUMENT || s == TWL_NOT_FOUND || s == TWL_FAILED_PRECONDITION ||
          s == TWL_UNSUPPORTED || (disk_ && (s == TWL_IO_ERROR || s == TWL_CAPACITY_EXHAUSTED))) {
        FUZZ_CHECK(out == out_before, "decode failed with %s but wrote out",
                   twl_status_string(s));
      }
      return;
    }
    if (all_finite && !disk_ && !armed_ && space == TWL_MEMORY_HOST) {
      // twl_decode_ex with FP32 q/out is the FP16 step widened (q holds FP16 values exactly).
      std::vector<float> q32(q.size()), out32(out.size()), want(out.size());
      for (size_t i = 0; i < q.size(); ++i) q32[i] = ToFloat(q[i]);
      for (size_t i = 0; i < out.size(); ++i) want[i] = ToFloat(out[i]);
      const twl_status s32 = twl_decode_ex(rt_, layer, seqs.data(), num_seqs, q32.data(),
                                           out32.data(), TWL_DTYPE_FP32, space,
                                           use_p ? p.data() : nullptr, nullptr);
      Expect(s32, {TWL_OK, TWL_OUT_OF_MEMORY}, "twl_decode_ex", rt_);
      if (s32 == TWL_OK) {
        for (size_t i = 0; i < size_t(num_seqs) * q_row; ++i) {  // the rows decoded
          FUZZ_CHECK(std::memcmp(&out32[i], &want[i], sizeof(float)) == 0,
                     "twl_decode_ex(FP32) differs from twl_decode at %zu: %.9g vs %.9g", i,
                     double(out32[i]), double(want[i]));
        }
      }
    }
    last_decode_seqs_ = num_seqs;
    last_decode_layer_ = layer;
    last_decode_finite_ = all_finite;
    if (!all_finite) return;
    // Output checks per sequence.
    for (int32_t i = 0; i < num_seqs; ++i) {
      const SeqModel& m = model_.at(seqs[size_t(i)]);
      const uint16_t* qi = q.data() + size_t(i) * q_row;
      const uint16_t* oi = out.data() + size_t(i) * q_row;
      const float pi = use_p ? p[size_t(i)] : cfg_.top_p;
      const bool dense = layer < cfg_.dense_layers || (cfg_.selector == TWL_SELECTOR_FULL && pi == 1.0f);
      const int32_t len = ModelLen(m, layer);
      const int32_t group = cfg_.num_q_heads / cfg_.num_kv_heads;
      std::vector<double> ref;
      if (dense) DenseRef(m, layer, qi, &ref);
      for (int32_t qh = 0; qh < cfg_.num_q_heads; ++qh) {
        const int32_t h = qh / group;
        for (int32_t c = 0; c < cfg_.head_dim; ++c) {
          const float o = ToFloat(oi[size_t(qh) * cfg_.head_dim + c]);
          FUZZ_CHECK(std::isfinite(o), "decode output not finite (seq %lld head %d)",
                     (long long)seqs[size_t(i)], qh);
          // Attention over any non-empty subset is a convex combination of V rows.
          float lo = INFINITY, hi = -INFINITY;
          for (int32_t t = 0; t < len; ++t) {
            const float x =
                ToFloat(m.v[size_t(layer)][(size_t(t) * cfg_.num_kv_heads + h) * cfg_.head_dim + c]);
            lo = std::min(lo, x);
            hi = std::max(hi, x);
          }
          const float slack = 2e-3f + 2e-3f * std::max(std::fabs(lo), std::fabs(hi));
          FUZZ_CHECK(o >= lo - slack && o <= hi + slack,
                     "decode output %g outside the V hull [%g, %g] (seq %lld head %d ch %d)", o, lo,
                     hi, (long long)seqs[size_t(i)], qh, c);
          if (dense) {
            const double r = ref[size_t(qh) * cfg_.head_dim + c];
            FUZZ_CHECK(std::fabs(o - r) <= 3e-3 + 3e-3 * std::fabs(r),
                       "dense-equivalent decode %g vs dense %g (seq %lld layer %d head %d ch %d)",
                       o, r, (long long)seqs[size_t(i)], layer, qh, c);
          }
        }
      }
    }
  }

  // Queries with odd struct sizes. Any size below the struct's first version fails and writes
  // nothing; the current size and larger ones (a newer caller) succeed; sizes in between (an
  // older caller) may succeed. A call never writes at or past the struct_size it was given.
  template <typename T, typename Fn>
  void OddStruct(Fn&& call, const char* fn) {
    union {
      T value;
      unsigned char bytes[sizeof(T) + 16];
    } box;
    std::memset(box.bytes, 0xab, sizeof(box.bytes));
    const int mode = in_.Pick(5);
    const size_t sizes[] = {sizeof(T), 0, sizeof(size_t), sizeof(T) - 1, sizeof(box.bytes)};
    const size_t size = sizes[mode];
    std::memcpy(box.bytes, &size, sizeof(size));
    const bool null_out = in_.Pick(12) == 0;
    const twl_status s = call(null_out ? nullptr : &box.value);
    if (s != TWL_OK) Expect(s, {TWL_INVALID_ARGUMENT}, fn, rt_);
    FUZZ_CHECK(s == TWL_OK || null_out || mode == 1 || mode == 2 || mode == 3,
               "%s refused struct_size %zu", fn, size);
    FUZZ_CHECK(s != TWL_OK || (mode != 1 && mode != 2 && !null_out),
               "%s accepted struct_size %zu", fn, size);
    size_t size_after;
    std::memcpy(&size_after, box.bytes, sizeof(size_after));
    FUZZ_CHECK(size_after == size, "%s changed struct_size", fn);
    const size_t untouched_from = s == TWL_OK ? size : sizeof(size_t);
    for (size_t b = untouched_from; b < sizeof(box.bytes); ++b) {
      FUZZ_CHECK(box.bytes[b] == 0xab, "%s wrote byte %zu of a %zu-byte struct (status %s)", fn,
                 b, size, twl_status_string(s));
    }
  }

  void OpQueries() {
    switch (in_.Pick(5)) {
      case 0:
        OddStruct<twl_runtime_config>(
            [&](twl_runtime_config* c) { return twl_runtime_get_config(rt_, c); },
            "twl_runtime_get_config");
        break;
      case 1:
        OddStruct<twl_memory_usage>(
            [&](twl_memory_usage* m) { return twl_runtime_memory(rt_, m); },
            "twl_runtime_memory");
        break;
      case 2:
        OddStruct<twl_step_stats>(
            [&](twl_step_stats* st) { return twl_runtime_last_step(rt_, st); },
            "twl_runtime_last_step");
        break;
      case 3: {
        twl_step_stats st;
        st.struct_size = sizeof(st);
        Expect(twl_runtime_last_step(rt_, &st), {TWL_OK}, "twl_runtime_last_step", rt_);
        if (cfg_.collect_telemetry && last_decode_seqs_ > 0) {
          FUZZ_CHECK(st.num_seqs == last_decode_seqs_ && st.layer == last_decode_layer_,
                     "last step is %d seqs layer %d, expected %d / %d", st.num_seqs, st.layer,
                     last_decode_seqs_, last_decode_layer_);
        }
        const int64_t q_need = int64_t(st.num_seqs) * st.num_q_heads;
        const int64_t kv_need = int64_t(st.num_seqs) * st.num_kv_heads;
        const int64_t q_cap = std::max<int64_t>(q_need + in_.Pick(3) - 1, 0);
        const int64_t kv_cap = std::max<int64_t>(kv_need + in_.Pick(3) - 1, 0);
        std::vector<int32_t> sel(size_t(q_cap) + 1, -3), kept(size_t(q_cap) + 1, -3),
            kept_kv(size_t(kv_cap) + 1, -3);
        std::vector<float> mass(size_t(q_cap) + 1, -3.0f);
        const twl_status s = twl_runtime_last_step_heads(
            rt_, sel.data(), in_.Pick(2) ? kept.data() : nullptr, mass.data(), q_cap,
            kept_kv.data(), kv_cap);
        std::vector<twl_status> allowed;
        if (q_cap < q_need || kv_cap < kv_need) allowed.push_back(TWL_INVALID_ARGUMENT);
        if (!cfg_.collect_telemetry) allowed.push_back(TWL_FAILED_PRECONDITION);
        if (allowed.empty()) allowed.push_back(TWL_OK);
        Expect(s, allowed, "twl_runtime_last_step_heads", rt_);
        if (s == TWL_OK) {
          for (int64_t i = 0; i < q_need; ++i) {
            FUZZ_CHECK(sel[size_t(i)] >= 0 && mass[size_t(i)] >= 0.0f &&
                           mass[size_t(i)] <= 1.0001f,
                       "bad per-head telemetry");
          }
          for (int64_t i = 0; i < kv_need && last_decode_finite_; ++i) {
            // (A NaN query or key may legitimately leave nothing to keep.)
            FUZZ_CHECK(kept_kv[size_t(i)] >= 1, "a KV head attended no token");
          }
          FUZZ_CHECK(sel[size_t(q_cap)] == -3 && kept_kv[size_t(kv_cap)] == -3,
                     "telemetry written past its capacity");
        }
        break;
      }
      default: {
        const twl_seq_id seq = PickSeq();
        const int32_t layer = PickLayer();
        int32_t len = -1;
        const bool null_out = in_.Pick(8) == 0;
        std::vector<twl_status> allowed;
        if (null_out || !LayerOk(layer)) allowed.push_back(TWL_INVALID_ARGUMENT);
        if (!Find(seq)) allowed.push_back(TWL_NOT_FOUND);
        if (allowed.empty()) allowed.push_back(TWL_OK);
        const twl_status s = twl_sequence_length(rt_, seq, layer, null_out ? nullptr : &len);
        Expect(s, allowed, "twl_sequence_length", rt_);
        if (s == TWL_OK) {
          FUZZ_CHECK(len == ModelLen(model_.at(seq), layer), "length differs from the model");
        }
      }
    }
  }

  void OpMisc() {
    switch (in_.Pick(6)) {
      case 5:
        OpAppendBatch();
        break;
      case 4: {  // a disk fault a few operations ahead (only a disk tier does disk I/O)
        const int errs[] = {EIO, ENOSPC, twl::FaultInjector::kShortTransfer, EINTR};
        const twl::FaultSite site =
            in_.Pick(2) ? twl::FaultSite::kDiskRead : twl::FaultSite::kDiskWrite;
        const int64_t nth = 1 + in_.Pick(6), count = in_.Pick(8) == 0 ? -1 : 1 + in_.Pick(3);
        const int err = in_.From(errs);
        if (disk_) {
          twl::ProcessFaultInjector().FailRange(site, nth, count, err);
          armed_ = true;
          TRACE("arm fault site %d nth %lld count %lld err %d\n", int(site), (long long)nth,
                (long long)count, err);
        }
        break;
      }
      case 0: {
        const int code = in_.Pick(2) ? in_.Pick(16) : int(in_.U32() & 0x7fffffffu);
        const char* name = twl_status_string(static_cast<twl_status>(code));
        FUZZ_CHECK(name != nullptr && name[0] != '\0', "status string of %d", code);
        break;
      }
      case 1: {
        Expect(twl_runtime_async_error(rt_), {TWL_OK}, "twl_runtime_async_error", rt_);
        FUZZ_CHECK(twl_version() == TWL_VERSION_NUMBER, "version");
        FUZZ_CHECK(std::strcmp(twl_version_string(), TWL_VERSION_STRING) == 0, "version string");
        break;
      }
      case 2: {  // conversions: FP16 -> FP32 -> FP16 is the identity (NaN stays NaN)
        Rng rng(in_.U32());
        std::vector<uint16_t> h(size_t(in_.Pick(64))), back(h.size());
        for (uint16_t& x : h) x = uint16_t(rng.Next());
        std::vector<float> f(h.size());
        twl_fp16_to_fp32(h.data(), f.data(), h.size());
        twl_fp32_to_fp16(f.data(), back.data(), h.size());
        for (size_t i = 0; i < h.size(); ++i) {
          const bool nan = (h[i] & 0x7c00u) == 0x7c00u && (h[i] & 0x3ffu) != 0;
          FUZZ_CHECK(nan ? ((back[i] & 0x7c00u) == 0x7c00u && (back[i] & 0x3ffu) != 0)
                         : back[i] == h[i],
                     "fp16 %04x round-trips to %04x", h[i], back[i]);
        }
        twl_fp16_to_fp32(nullptr, nullptr, 5);  // documented never to fail
        twl_fp32_to_fp16(nullptr, nullptr, 5);
        break;
      }
      default:
        VerifyAll();
        break;
    }
  }

  // ---- save / restore ------------------------------------------------------------------------
  std::string NewPath(const char* tag) {
    std::string p = TempDir() + "/" + tag + std::to_string(counter_++);
    scratch_.push_back(p);
    return p;
  }

  void OpSave() {
    const twl_seq_id seq = PickSeq();
    const int mode = in_.Pick(8);
    std::string path = NewPath("save");
    const char* arg = path.c_str();
    std::vector<twl_status> allowed;
    std::vector<uint8_t> existing;
    bool had_file = false;
    int special = 0;  // 1 FIFO, 2 directory, 3 symbolic link at path
    if (mode == 0) {
      arg = nullptr;
      allowed.push_back(TWL_INVALID_ARGUMENT);
    } else if (mode == 1) {
      arg = "";
      allowed.push_back(TWL_INVALID_ARGUMENT);
    } else if (mode == 2) {
      path = TempDir() + "/no-such-dir/x";
      arg = path.c_str();
      allowed.push_back(TWL_IO_ERROR);
    } else if (mode == 3 && !files_.empty()) {  // overwrite an earlier save
      path = files_[size_t(in_.Pick(int(files_.size())))].path;
      arg = path.c_str();
      had_file = ReadFile(path, &existing);
    } else if (mode == 4) {  // not a regular file at path: never replaced
      special = 1 + in_.Pick(3);
      if (special == 1) FUZZ_CHECK(mkfifo(arg, 0600) == 0, "mkfifo %s", arg);
      if (special == 2) FUZZ_CHECK(mkdir(arg, 0700) == 0, "mkdir %s", arg);
      if (special == 3) {
        const std::string target = NewPath("target");
        WriteFile(target, {1, 2, 3});
        FUZZ_CHECK(symlink(target.c_str(), arg) == 0, "symlink %s", arg);
      }
      allowed.push_back(TWL_IO_ERROR);
    }
    if (!Find(seq)) allowed.push_back(TWL_NOT_FOUND);
    if (allowed.empty()) {
      allowed = {TWL_OK, TWL_OUT_OF_MEMORY};
      if (armed_) allowed.push_back(TWL_IO_ERROR);  // a spilled page could not be read
    }
    const twl_status s = twl_sequence_save(rt_, seq, arg);
    Expect(s, allowed, "twl_sequence_save", rt_);
    if (special != 0) {
      struct stat st;
      FUZZ_CHECK(lstat(arg, &st) == 0 &&
                     (special == 1   ? S_ISFIFO(st.st_mode)
                      : special == 2 ? S_ISDIR(st.st_mode)
                                     : S_ISLNK(st.st_mode)),
                 "save replaced a %s", special == 1 ? "FIFO" : special == 2 ? "directory" : "link");
      return;
    }
    if (s == TWL_OK) {
      for (SavedFile& f : files_) {
        if (f.path == path) f.model = model_.at(seq);
      }
      if (std::none_of(files_.begin(), files_.end(),
                       [&](const SavedFile& f) { return f.path == path; })) {
        files_.push_back({path, model_.at(seq)});
      }
      struct stat st;
      FUZZ_CHECK(stat(path.c_str(), &st) == 0 && (st.st_mode & 0077) == 0,
                 "saved file is readable by others (mode %o)", unsigned(st.st_mode));
    } else if (had_file) {
      std::vector<uint8_t> now;
      FUZZ_CHECK(ReadFile(path, &now) && now == existing, "failed save changed the old file");
    }
  }

  void OpRestore() {
    const int mode = in_.Pick(10);
    std::string path;
    std::vector<twl_status> allowed;
    const SavedFile* src = files_.empty() ? nullptr : &files_[size_t(in_.Pick(int(files_.size())))];
    std::vector<uint8_t> bytes;
    if (src != nullptr && !ReadFile(src->path, &bytes)) src = nullptr;
    bool expect_model = false;
    if (mode <= 1 && src != nullptr) {  // intact
      path = src->path;
      allowed = {TWL_OK, TWL_CAPACITY_EXHAUSTED, TWL_OUT_OF_MEMORY};
      expect_model = true;
    } else if (mode == 2 && src != nullptr && !bytes.empty()) {  // truncated
      bytes.resize(in_.U32() % bytes.size());
      path = NewPath("trunc");
      WriteFile(path, bytes);
      allowed = {TWL_CORRUPT_DATA};
    } else if (mode == 3 && src != nullptr && !bytes.empty()) {  // one byte damaged
      const size_t at = in_.U32() % bytes.size();
      bytes[at] ^= uint8_t(1 + in_.Pick(255));
      path = NewPath("flip");
      WriteFile(path, bytes);
      allowed = {TWL_CORRUPT_DATA};
    } else if (mode == 4 && src != nullptr && bytes.size() >= 64) {
      // A header field replaced and the header checksum recomputed: the semantic checks.
      const size_t fields[] = {8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56};
      const size_t at = in_.From(fields);
      const uint32_t values[] = {0, 1, 2, 0xffffffffu, 0x80000000u, 1u << 20, (1u << 20) + 1,
                                 in_.U32()};
      const uint32_t val = in_.From(values);
      for (int i = 0; i < 4; ++i) bytes[at + size_t(i)] = uint8_t(val >> (8 * i));
      const uint32_t crc = Crc32c(bytes.data(), 60);
      for (int i = 0; i < 4; ++i) bytes[60 + size_t(i)] = uint8_t(crc >> (8 * i));
      path = NewPath("hdr");
      WriteFile(path, bytes);
      // Informational fields (page_size, k_bits, reserved) or an unchanged value restore fine.
      allowed = {TWL_OK, TWL_CORRUPT_DATA, TWL_INVALID_ARGUMENT, TWL_UNSUPPORTED,
                 TWL_CAPACITY_EXHAUSTED, TWL_OUT_OF_MEMORY};
      expect_model = true;  // if it restores, it must restore the same data
    } else if (mode == 5 && src != nullptr && bytes.size() >= 64 + 8) {
      // A layer length changed with a valid table checksum: the size check must catch it.
      std::vector<uint8_t> b = bytes;
      const uint32_t layers = cfg_.num_layers;
      const size_t table = 64;
      if (b.size() >= table + 4ull * layers + 4) {
        const size_t at = table + 4ull * size_t(in_.Pick(int(layers)));
        const uint32_t values[] = {0, 1, 0x7fffffffu, 0xffffffffu, in_.U32()};
        const uint32_t val = in_.From(values);
        for (int i = 0; i < 4; ++i) b[at + size_t(i)] = uint8_t(val >> (8 * i));
        const uint32_t crc = Crc32c(b.data() + table, 4ull * layers);
        for (int i = 0; i < 4; ++i) b[table + 4ull * layers + size_t(i)] = uint8_t(crc >> (8 * i));
      }
      path = NewPath("table");
      WriteFile(path, b);
      allowed = {TWL_OK, TWL_CORRUPT_DATA, TWL_CAPACITY_EXHAUSTED, TWL_OUT_OF_MEMORY};
      expect_model = true;
    } else if (mode == 6) {  // arbitrary bytes
      path = NewPath("raw");
      WriteFile(path, in_.Take(size_t(in_.U8()) * 4));
      allowed = {TWL_CORRUPT_DATA, TWL_INVALID_ARGUMENT, TWL_UNSUPPORTED, TWL_OK,
                 TWL_CAPACITY_EXHAUSTED};
    } else if (mode == 7) {
      path = TempDir() + "/never-written";
      allowed = {TWL_IO_ERROR};
    } else if (mode == 8) {
      // Not a regular file: refused at once (a FIFO must not block); a link to a save restores.
      const int kind = in_.Pick(4);
      if (kind == 0) {
        path = TempDir();  // a directory
      } else {
        path = NewPath(kind == 1 ? "fifo" : "link");
        std::string fifo = path;
        if (kind == 2) fifo = NewPath("fifo");
        if (kind != 3) FUZZ_CHECK(mkfifo(fifo.c_str(), 0600) == 0, "mkfifo %s", fifo.c_str());
        if (kind >= 2) {
          const std::string target = kind == 3 && src != nullptr ? src->path : fifo;
          FUZZ_CHECK(symlink(target.c_str(), path.c_str()) == 0, "symlink %s", path.c_str());
        }
      }
      allowed = {TWL_IO_ERROR};
      if (kind == 3 && src != nullptr) {
        allowed = {TWL_OK, TWL_CAPACITY_EXHAUSTED, TWL_OUT_OF_MEMORY};
        expect_model = true;
      } else if (kind == 3) {
        allowed = {TWL_IO_ERROR};  // a dangling link
      }
    } else {
      twl_seq_id id = 5;
      Expect(twl_sequence_restore(rt_, nullptr, &id), {TWL_INVALID_ARGUMENT},
             "twl_sequence_restore", rt_);
      Expect(twl_sequence_restore(rt_, TempDir().c_str(), nullptr), {TWL_INVALID_ARGUMENT},
             "twl_sequence_restore", rt_);
      return;
    }
    if (armed_) allowed.push_back(TWL_IO_ERROR);
    const int64_t used_before = PoolUsed();
    twl_seq_id id = 5;
    const twl_status s = twl_sequence_restore(rt_, path.c_str(), &id);
    Expect(s, allowed, "twl_sequence_restore", rt_);
    if (s != TWL_OK) {
      FUZZ_CHECK(id == TWL_INVALID_SEQ_ID, "failed restore left id %lld", (long long)id);
      FUZZ_CHECK(disk_ || PoolUsed() == used_before, "failed restore changed pool use");
      return;
    }
    FUZZ_CHECK(model_.count(id) == 0 && !WasFreed(id), "restore reused id %lld", (long long)id);
    SeqModel m;
    if (expect_model) {
      m = src->model;
    } else {  // unknown content: adopt what was restored, then it must stay so
      m.k.resize(size_t(cfg_.num_layers));
      m.v.resize(size_t(cfg_.num_layers));
      for (int32_t l = 0; l < cfg_.num_layers; ++l) {
        int32_t len = 0;
        Expect(twl_sequence_length(rt_, id, l, &len), {TWL_OK}, "twl_sequence_length", rt_);
        m.k[size_t(l)].resize(size_t(len) * tok_);
        m.v[size_t(l)].resize(size_t(len) * tok_);
        if (len > 0) {
          Expect(twl_sequence_read_kv(rt_, id, l, m.k[size_t(l)].data(), m.v[size_t(l)].data(),
                                      len, &len),
                 {TWL_OK}, "twl_sequence_read_kv", rt_);
          touched_.insert(l);
        }
        m.finite = m.finite && AllFinite(m.k[size_t(l)]) && AllFinite(m.v[size_t(l)]);
      }
    }
    model_[id] = std::move(m);
    for (int32_t l = 0; l < std::min(cfg_.num_layers, 4); ++l) CheckRead(id, l);
  }

  // Everything the runtime holds equals the model; then every sequence is freed and the pool
  // must be empty again.
  void VerifyAll() {
    if (rt_ == nullptr) return;
    twl::ProcessFaultInjector().Clear();  // the disk works again: everything must read back
    armed_ = false;
    for (const auto& [seq, m] : model_) {
      for (int32_t l : touched_) CheckRead(seq, l);
      CheckRead(seq, cfg_.num_layers - 1);
    }
  }

  void FreeAllAndCheckEmpty() {
    if (rt_ == nullptr) return;
    twl::ProcessFaultInjector().Clear();
    armed_ = false;
    for (auto it = model_.begin(); it != model_.end();) {
      Expect(twl_sequence_free(rt_, it->first), {TWL_OK}, "twl_sequence_free", rt_);
      it = model_.erase(it);
    }
    FUZZ_CHECK(PoolUsed() == 0, "pool not empty after every sequence was freed");
    twl_memory_usage mem;
    mem.struct_size = sizeof(mem);
    Expect(twl_runtime_memory(rt_, &mem), {TWL_OK}, "twl_runtime_memory", rt_);
    FUZZ_CHECK(mem.disk_bytes == 0, "disk tier holds %lld bytes after every sequence was freed",
               (long long)mem.disk_bytes);
  }

  Bytes& in_;
  twl_runtime* rt_ = nullptr;
  twl_runtime_config cfg_{};
  size_t tok_ = 0;  // elements of one token's K (all KV heads)
  std::map<twl_seq_id, SeqModel> model_;
  std::vector<twl_seq_id> freed_;
  std::set<int32_t> touched_;
  std::vector<SavedFile> files_;
  std::vector<std::string> scratch_;
  int counter_ = 0;
  bool disk_ = false;   // the runtime has a disk tier: pages move, pool use is not checked
  bool armed_ = false;  // a disk fault was armed in this input (stays set)
  int32_t last_decode_seqs_ = 0, last_decode_layer_ = -1;
  bool last_decode_finite_ = true;

};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  Harness h(&in);
  h.Run();
  return 0;
}
