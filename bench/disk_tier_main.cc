// twl_disk_tier: write and read throughput of the NVMe tier (offload/disk_tier.h) for
// batches of FP16 page records, io_uring against the pread/pwrite thread fallback, at
// several queue depths. Writes fill consecutive records (what spilling does); reads fetch
// the written records in a random order (what bringing pages back does) and are checked
// byte for byte against what was written. Prints a table and writes it as CSV.
//
//   twl_disk_tier [--dir $TMPDIR] [--record-kib 64] [--mib 64] [--batch 64] [--reps 3]
//                 [--depths 1,8,32] [--engines uring,threads] [--buffered]
//                 [--no-preallocate] [--max-seconds 0.5] [--read-order random|seq]
//                 [--csv out/disk_tier.csv]
//
// The device's reference rates for the disk tier under the GPU (bench/serve_bench's
// twilight-disk method): sequential reads (--read-order seq --record-kib 1024) and 8 KiB
// random reads (--record-kib 8, high queue depth).
//
// Each phase runs --reps times (the records are freed in between); the table shows the
// median throughput and the spread. Defaults finish in about 10 s on a disk doing ~500 MB/s
// and use at most --mib of disk at a time (the file is preallocated, unlinked at once, and
// gone when each measurement ends).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "offload/disk_tier.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string dir;
  int record_kib = 64;  // 8 KV heads x page 16 x head_dim 128 x K+V x fp16
  int mib = 64;         // data per phase
  int batch = 64;       // records per batch
  int reps = 3;         // repetitions per phase (median reported)
  std::vector<int> depths = {1, 8, 32};
  std::vector<std::string> engines = {"uring", "threads"};
  bool buffered = false;
  bool preallocate = true;
  double max_seconds = 0.5;  // per phase: stop early on a slow disk
  std::string csv = "out/disk_tier.csv";
  bool sequential_reads = false;  // reads in record order instead of a random one
};

}  // namespace

ABSL_FLAG(std::string, dir, "", "directory of the test file (empty: $TMPDIR or /tmp)");
ABSL_FLAG(int32_t, record_kib, 64, "KiB per page record");
ABSL_FLAG(int32_t, mib, 64, "MiB written and read per phase");
ABSL_FLAG(int32_t, batch, 64, "records per batch");
ABSL_FLAG(int32_t, reps, 3, "repetitions per phase (the median is reported)");
ABSL_FLAG(std::vector<std::string>, depths, std::vector<std::string>({"1", "8", "32"}),
          "queue depths, comma-separated");
ABSL_FLAG(std::vector<std::string>, engines, std::vector<std::string>({"uring", "threads"}),
          "engines: uring, threads");
ABSL_FLAG(bool, buffered, false, "no O_DIRECT (reads then mostly come from the page cache)");
ABSL_FLAG(bool, preallocate, true,
          "fallocate the file (--no-preallocate: let writes extend it)");
ABSL_FLAG(double, max_seconds, 0.5, "per phase: stop early on a slow disk");
ABSL_FLAG(std::string, csv, "out/disk_tier.csv", "CSV output path");
ABSL_FLAG(std::string, read_order, "random",
          "random (what bringing pages back does) or seq (records in file order)");

namespace {

Options ParseArgs(int argc, char** argv) {
  using twl::tools::RequireFlag;
  twl::tools::ParseToolFlags(
      argc, argv, __FILE__,
      "usage: twl_disk_tier [flags]\n"
      "Measures the disk tier's write and read throughput for batches of page records.");
  Options o;
  o.dir = absl::GetFlag(FLAGS_dir);
  o.record_kib = absl::GetFlag(FLAGS_record_kib);
  RequireFlag(o.record_kib >= 1 && o.record_kib <= 65536, "record_kib", "must be in [1, 65536]");
  o.mib = absl::GetFlag(FLAGS_mib);
  RequireFlag(o.mib >= 1 && o.mib <= (1 << 20), "mib", "must be in [1, 1048576]");
  o.batch = absl::GetFlag(FLAGS_batch);
  RequireFlag(o.batch >= 1 && o.batch <= 65536, "batch", "must be in [1, 65536]");
  o.reps = absl::GetFlag(FLAGS_reps);
  RequireFlag(o.reps >= 1 && o.reps <= 1000, "reps", "must be in [1, 1000]");
  o.depths = twl::tools::IntListFlag(absl::GetFlag(FLAGS_depths), "depths", 1, 4096);
  o.engines = absl::GetFlag(FLAGS_engines);
  RequireFlag(!o.engines.empty(), "engines", "needs at least one of uring, threads");
  for (const std::string& e : o.engines) {
    RequireFlag(e == "uring" || e == "threads", "engines", "each must be uring or threads");
  }
  o.buffered = absl::GetFlag(FLAGS_buffered);
  o.preallocate = absl::GetFlag(FLAGS_preallocate);
  o.max_seconds = absl::GetFlag(FLAGS_max_seconds);
  RequireFlag(o.max_seconds > 0 && o.max_seconds <= 1e6, "max_seconds", "must be > 0");
  o.csv = absl::GetFlag(FLAGS_csv);
  const std::string order = absl::GetFlag(FLAGS_read_order);
  RequireFlag(order == "random" || order == "seq", "read_order", "must be random or seq");
  o.sequential_reads = order == "seq";
  return o;
}

struct Phase {
  int64_t records = 0;
  double seconds = 0;
  int64_t mismatches = 0;
  std::string error;
};

// Keeps up to kOutstanding batches in flight so that batch boundaries do not drain the queue.
constexpr int kOutstanding = 4;

struct Buffers {
  Buffers(int64_t batch, int64_t bytes) : batch(batch), bytes(bytes) {
    src = static_cast<char*>(std::aligned_alloc(4096, size_t(batch * bytes)));
    dst = static_cast<char*>(std::aligned_alloc(4096, size_t(kOutstanding * batch * bytes)));
    std::mt19937_64 rng(42);
    for (int64_t i = 0; i < batch * bytes / 8; ++i) {
      const uint64_t x = rng() | 0x0101010101010101ull;  // never a zero byte
      std::memcpy(src + i * 8, &x, 8);
    }
  }
  ~Buffers() {
    std::free(src);
    std::free(dst);
  }
  int64_t batch, bytes;
  char* src;  // [batch][bytes]: the same batch is written again and again
  char* dst;  // [kOutstanding][batch][bytes]
};

Phase WritePhase(twl::DiskTier* tier, const Buffers& buf, int64_t total_records,
                 double max_seconds, std::vector<int64_t>* records) {
  Phase ph;
  std::vector<const void*> src(buf.batch);
  for (int64_t i = 0; i < buf.batch; ++i) src[i] = buf.src + i * buf.bytes;
  std::vector<twl::DiskTier::Ticket> tickets;
  const auto t0 = Clock::now();
  int64_t submitted = 0;
  while (submitted < total_records) {
    if (int(tickets.size()) == kOutstanding) {
      absl::Status s = tier->Wait(tickets.front());
      tickets.erase(tickets.begin());
      if (!s.ok()) ph.error = std::string(s.message());
      if (std::chrono::duration<double>(Clock::now() - t0).count() > max_seconds) break;
    }
    const int64_t n = std::min<int64_t>(buf.batch, total_records - submitted);
    auto t = tier->WriteAsync(absl::MakeConstSpan(src.data(), size_t(n)), records);
    if (!t.ok()) {
      ph.error = std::string(t.status().message());
      break;
    }
    tickets.push_back(*t);
    submitted += n;
  }
  for (twl::DiskTier::Ticket t : tickets) {
    absl::Status s = tier->Wait(t);
    if (!s.ok()) ph.error = std::string(s.message());
  }
  ph.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ph.records = submitted;
  return ph;
}

// Reads `records` (the k-th written from src record k % batch) in a random order, or in
// file order (ascending record index) when `sequential`.
Phase ReadPhase(twl::DiskTier* tier, const Buffers& buf, const std::vector<int64_t>& records,
                double max_seconds, bool sequential) {
  Phase ph;
  std::vector<int64_t> order(records.size());
  std::iota(order.begin(), order.end(), 0);
  if (sequential) {
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return records[size_t(a)] < records[size_t(b)]; });
  } else {
    std::shuffle(order.begin(), order.end(), std::mt19937(7));
  }
  struct InFlight {
    twl::DiskTier::Ticket ticket;
    int slot;
    std::vector<int64_t> which;
  };
  std::vector<InFlight> flight;
  int next_slot = 0;
  auto finish = [&](InFlight& f) {
    absl::Status s = tier->Wait(f.ticket);
    if (!s.ok()) ph.error = std::string(s.message());
    for (size_t i = 0; i < f.which.size(); ++i) {
      const char* got = buf.dst + (int64_t(f.slot) * buf.batch + int64_t(i)) * buf.bytes;
      const char* want = buf.src + (f.which[i] % buf.batch) * buf.bytes;
      if (std::memcmp(got, want, size_t(buf.bytes)) != 0) ++ph.mismatches;
    }
  };
  const auto t0 = Clock::now();
  size_t pos = 0;
  while (pos < order.size()) {
    if (int(flight.size()) == kOutstanding) {
      finish(flight.front());
      next_slot = flight.front().slot;
      flight.erase(flight.begin());
      if (std::chrono::duration<double>(Clock::now() - t0).count() > max_seconds) break;
    } else {
      next_slot = int(flight.size());
    }
    InFlight f;
    f.slot = next_slot;
    std::vector<twl::DiskReadOp> ops;
    while (pos < order.size() && int64_t(ops.size()) < buf.batch) {
      const int64_t k = order[pos++];
      f.which.push_back(k);
      ops.push_back({records[k],
                     buf.dst + (int64_t(f.slot) * buf.batch + int64_t(ops.size())) * buf.bytes});
    }
    auto t = tier->ReadAsync(ops);
    if (!t.ok()) {
      ph.error = std::string(t.status().message());
      break;
    }
    f.ticket = *t;
    ph.records += int64_t(ops.size());
    flight.push_back(std::move(f));
  }
  for (InFlight& f : flight) finish(f);
  ph.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return ph;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = ParseArgs(argc, argv);
  const int64_t bytes = int64_t(opt.record_kib) * 1024;
  const int64_t total = std::max<int64_t>(1, int64_t(opt.mib) * 1024 * 1024 / bytes);
  Buffers buf(opt.batch, bytes);

  twl::bench::Table table({"engine", "direct", "qd", "op", "records", "MiB", "seconds", "MiB/s",
                           "min MiB/s", "max MiB/s", "IOPS", "us/op", "verified", "error"});
  table.title = absl::StrFormat(
      "disk tier: %d KiB records, batches of %d (%d in flight), %d MiB per phase, median of "
      "%d; writes sequential, reads %s",
      opt.record_kib, opt.batch, kOutstanding, opt.mib, opt.reps,
      opt.sequential_reads ? "sequential" : "random");
  bool any_error = false;
  std::string uring_note;
  for (const std::string& engine : opt.engines) {
    for (const int depth : opt.depths) {
      twl::DiskTierOptions o;
      o.path = opt.dir;
      o.record_bytes = bytes;
      o.capacity_bytes = total * bytes;
      o.queue_depth = depth;
      o.force_thread_pool = engine == "threads";
      o.try_direct_io = !opt.buffered;
      o.preallocate = opt.preallocate;
      auto tier = twl::DiskTier::Create(o);
      if (!tier.ok()) {
        std::fprintf(stderr, "twl_disk_tier: %s\n", std::string(tier.status().message()).c_str());
        return 1;
      }
      if (engine == "uring" && (*tier)->engine() != twl::DiskEngine::kIoUring) {
        uring_note = "io_uring unavailable (" + (*tier)->fallback_reason() +
                     "): the 'uring' rows ran on the thread fallback";
      }
      // reps of (write, read, free); per phase: the median rep by throughput.
      std::vector<Phase> writes, reads;
      for (int rep = 0; rep < opt.reps; ++rep) {
        std::vector<int64_t> records;
        records.reserve(size_t(total));
        writes.push_back(WritePhase(tier->get(), buf, total, opt.max_seconds, &records));
        reads.push_back(ReadPhase(tier->get(), buf, records, opt.max_seconds,
                                  opt.sequential_reads));
        absl::Status s = (*tier)->Free(records);
        if (!s.ok()) reads.back().error = std::string(s.message());
      }
      for (std::vector<Phase>* phases : {&writes, &reads}) {
        const bool is_write = phases == &writes;
        std::vector<double> rate;
        int64_t mismatches = 0;
        std::string error;
        for (const Phase& ph : *phases) {
          rate.push_back(double(ph.records) * double(bytes) / (1024.0 * 1024.0) /
                         std::max(ph.seconds, 1e-9));
          mismatches += ph.mismatches;
          if (error.empty()) error = ph.error;
        }
        std::vector<size_t> idx(rate.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return rate[a] < rate[b]; });
        const Phase& med = (*phases)[idx[idx.size() / 2]];
        const double mib = double(med.records) * double(bytes) / (1024.0 * 1024.0);
        const double secs = std::max(med.seconds, 1e-9);
        table.AddRow({(*tier)->engine_name(), (*tier)->direct_io() ? "yes" : "no", depth,
                      is_write ? "write" : "read", med.records, twl::bench::Cell(mib, 4),
                      twl::bench::Cell(med.seconds, 3), twl::bench::Cell(mib / secs, 4),
                      twl::bench::Cell(rate[idx.front()], 4), twl::bench::Cell(rate[idx.back()], 4),
                      twl::bench::Cell(double(med.records) / secs, 4),
                      twl::bench::Cell(secs * 1e6 / double(std::max<int64_t>(med.records, 1)), 3),
                      is_write ? "-" : (mismatches == 0 ? "ok" : "MISMATCH"), error});
        any_error |= !error.empty() || mismatches != 0;
      }
    }
  }
  table.Print();
  if (!uring_note.empty()) std::printf("note: %s\n", uring_note.c_str());
  std::printf("us/op = seconds / records with qd operations in flight (not a latency).\n");
  if (!opt.csv.empty()) {
    const std::filesystem::path dir = std::filesystem::path(opt.csv).parent_path();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);  // WriteCsv reports failure
    absl::Status s = table.WriteCsv(opt.csv);
    if (s.ok()) {
      std::printf("wrote %s\n", opt.csv.c_str());
    } else {
      std::fprintf(stderr, "twl_disk_tier: %s\n", std::string(s.message()).c_str());
      any_error = true;  // the run's result is lost: not a success
    }
  }
  return any_error ? 1 : 0;
}
