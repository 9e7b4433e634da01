// The NVMe tier: fixed-size records (e.g. the FP16 blocks of one page) in one file, written
// and read in asynchronous batches, so that the KV cache can grow past host memory.
//
// It is a cache of host data, not durable storage: nothing is ever fsync'ed, the file is
// unlinked right after it is opened (unless keep_file), and its contents mean nothing after
// the tier is destroyed or the process dies.
//
// File and alignment. Record i lives at byte i * record_stride(), the stride being
// record_bytes rounded up to the I/O alignment io_align(): 4 KiB, or with pack_records 512
// bytes where the file allows it (buffered I/O, or O_DIRECT that a 512-byte probe write at
// a 512-byte offset shows the device accepts), so that small records (a 1 KiB page) do not
// take 4 KiB each. The file is opened with O_DIRECT when the filesystem accepts it (checked by
// a probe write), else buffered. Under O_DIRECT a record whose host buffer is not io_align()
// aligned, or whose size is not a multiple of it, goes through an aligned bounce buffer
// (counted in stats()). By
// default the whole capacity is reserved with fallocate at creation (preallocate), so that a
// disk too small is reported by Create, not by a write in the middle of a decode step.
//
// Engines. io_uring (liburing) when io_uring_queue_init works; in containers whose seccomp
// profile forbids io_uring (or with force_thread_pool) a pool of threads doing pread/pwrite.
// Both keep at most queue_depth operations in flight; a batch larger than that is queued and
// fed as operations complete (io_uring: one reaper thread waits for completions and refills
// the ring; threads: min(queue_depth, 16) workers). engine() / engine_name() / fallback_reason() say which.
//
// Records. Allocation is part of a write: WriteAsync takes free records (all or nothing,
// ResourceExhausted "disk tier full" when there are too few) and returns their indices at
// once. A record becomes readable when its write completes successfully; a failed write
// gives its record back to the free list, so the caller's host copy stays the only copy.
// Free() returns records the caller no longer needs (not while a read of them is in flight).
//
// Status of an operation (per operation, in request order, from Wait):
//   ENOSPC / EDQUOT on write         ResourceExhausted "disk tier full: ... record R"
//   EIO or other errno on write,
//   write that moves no bytes        Internal "... record R ..." (record freed, host copy kept)
//   EIO on read, short read          DataLoss "... record R ..." (record stays allocated:
//                                    retry the read, or Free it and drop the page)
//   other errno on read              Internal
// EINTR/EAGAIN are retried; partial transfers are continued. Fault injection: the injector
// (options.injector, else ProcessFaultInjector()) is asked once per operation, in submission
// order, at the sites kDiskWrite / kDiskRead; an injected fault takes the paths above.
//
// Thread-safety: every method may be called from any thread. Host buffers must stay valid
// and untouched until the batch that uses them is waited for. The destructor waits for
// every operation in flight.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "offload/fault_injection.h"

namespace twl {

enum class DiskEngine : int32_t {
  kIoUring = 0,     // liburing submission/completion rings
  kThreadPool = 1,  // pread/pwrite on worker threads (fallback)
};

const char* DiskEngineName(DiskEngine engine);

struct DiskTierOptions {
  // A directory (a unique file "twl-kv-XXXXXX" is created in it) or a file path (created or
  // truncated). Empty: $TMPDIR, else /tmp.
  std::string path;
  int64_t record_bytes = 0;    // payload of one record (> 0)
  // Byte limit of the file: capacity = limit / record_stride records (at most 2^31 - 1;
  // the tier keeps 9 bytes of host memory per record).
  int64_t capacity_bytes = 0;
  int32_t queue_depth = 32;    // operations in flight at most (1..4096)
  bool force_thread_pool = false;  // use the pread/pwrite threads even if io_uring works
  bool try_direct_io = true;       // O_DIRECT when the filesystem supports it
  bool keep_file = false;          // do not unlink the file (debugging only)
  // Records at a 512-byte stride where the file allows it (see above); else 4 KiB.
  bool pack_records = false;
  // Reserve the whole capacity with fallocate at creation: ENOSPC shows up here (as
  // ResourceExhausted) instead of mid-run, and writes do not extend the file (extending
  // O_DIRECT writes serialize on the inode). Skipped where fallocate is not supported.
  bool preallocate = true;
  // Threads of the fallback engine: 0 = min(queue_depth, 16).
  int32_t thread_pool_size = 0;
  // Null: ProcessFaultInjector().
  FaultInjector* injector = nullptr;
};

// Where one record of a read goes.
struct DiskReadOp {
  int64_t record = -1;
  void* dst = nullptr;  // record_bytes of host memory
};

struct DiskTierStats {
  int64_t writes = 0, reads = 0;  // operations completed successfully
  int64_t bytes_written = 0, bytes_read = 0;  // payload bytes of those
  int64_t write_errors = 0, read_errors = 0;
  int64_t bounced = 0;  // operations that went through a bounce buffer
  int64_t retries = 0;  // EINTR/EAGAIN resubmissions and partial-transfer continuations
};

class DiskTier {
 public:
  using Ticket = int64_t;

  static absl::StatusOr<std::unique_ptr<DiskTier>> Create(const DiskTierOptions& options);
  ~DiskTier();
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  DiskEngine engine() const { return engine_; }
  const char* engine_name() const { return DiskEngineName(engine_); }
  // Why io_uring is not used ("" when it is): the failed call and its errno, or "forced".
  const std::string& fallback_reason() const { return fallback_reason_; }
  bool direct_io() const { return direct_io_; }
  bool preallocated() const { return preallocated_; }
  const std::string& path() const { return path_; }

  int64_t record_bytes() const { return record_bytes_; }
  int64_t record_stride() const { return record_stride_; }
  int64_t io_align() const { return io_align_; }  // 512 or 4096 (see above)
  int64_t capacity() const { return capacity_; }  // records
  int32_t queue_depth() const { return queue_depth_; }
  int64_t num_free() const;
  int64_t num_used() const { return capacity_ - num_free(); }
  // Bytes of the file's records in use (num_used * record_stride).
  int64_t bytes_used() const { return num_used() * record_stride_; }
  DiskTierStats stats() const;

  // Writes src[i] (record_bytes each) to newly allocated records, whose indices are
  // appended to *records in the same order before the call returns. All or nothing:
  // ResourceExhausted when fewer than src.size() records are free, InvalidArgument for a
  // null buffer; then nothing is allocated or submitted. An empty batch is a valid ticket.
  absl::StatusOr<Ticket> WriteAsync(absl::Span<const void* const> src,
                                    std::vector<int64_t>* records);
  // Reads records into host buffers. Each record must hold completed data (else
  // FailedPrecondition, nothing submitted); reading one record twice in a batch is fine.
  absl::StatusOr<Ticket> ReadAsync(absl::Span<const DiskReadOp> ops);

  // True when every operation of the batch has completed (NotFound for an unknown ticket).
  absl::StatusOr<bool> Poll(Ticket ticket) const;
  // Blocks until the batch completes and forgets the ticket. Returns the first failed
  // operation's status (in request order) or OK; *per_op (nullable) gets every operation's
  // status. NotFound for an unknown or already waited ticket.
  absl::Status Wait(Ticket ticket, std::vector<absl::Status>* per_op = nullptr);

  // Synchronous helpers: submit + Wait.
  absl::Status Write(absl::Span<const void* const> src, std::vector<int64_t>* records,
                     std::vector<absl::Status>* per_op = nullptr);
  absl::Status Read(absl::Span<const DiskReadOp> ops,
                    std::vector<absl::Status>* per_op = nullptr);

  // Returns records to the free list. All or nothing: InvalidArgument for an index out of
  // range, FailedPrecondition for a free record, one with a write or read in flight, or one
  // listed twice.
  absl::Status Free(absl::Span<const int64_t> records);

  // The open file descriptor, for tests that damage the file under the tier.
  int fd_for_testing() const { return fd_; }

 private:
  struct Op;
  struct Batch;
  enum class RecordState : uint8_t { kFree = 0, kWriting = 1, kValid = 2 };

  DiskTier() = default;
  absl::Status Init(const DiskTierOptions& options);
  absl::Status OpenFile(const DiskTierOptions& options);
  void InitEngine(const DiskTierOptions& options);

  absl::StatusOr<Ticket> Enqueue(std::unique_ptr<Batch> batch);
  // Requires mu_: moves queued ops into the engine while fewer than queue_depth are in
  // flight (io_uring: prepares SQEs and submits; threads: wakes workers).
  void PumpLocked();
  void TakeBounceLocked(Op* op);
  // Requires mu_: gives `op` to io_uring (or completes it at once with an injected fault).
  void SubmitUringLocked(Op* op);
  // Requires mu_: one result of an operation attempt (bytes moved or -errno). Either
  // resubmits the remainder or finishes the op.
  void OnResultLocked(Op* op, int64_t res);
  void FinishOpLocked(Op* op, absl::Status status);
  absl::Status ErrorStatus(const Op& op, int err, int64_t moved) const;

  void ReaperLoop();  // io_uring completions
  void WorkerLoop();  // thread-pool engine

  // Configuration (immutable after Create).
  std::string path_;
  int fd_ = -1;
  bool direct_io_ = false;
  bool preallocated_ = false;
  int64_t record_bytes_ = 0;
  int64_t record_stride_ = 0;
  int64_t io_align_ = 4096;
  int64_t capacity_ = 0;
  int32_t queue_depth_ = 0;
  DiskEngine engine_ = DiskEngine::kThreadPool;
  std::string fallback_reason_;
  FaultInjector* injector_ = nullptr;
  struct Uring;
  std::unique_ptr<Uring> uring_;  // io_uring engine state
  char* bounce_ = nullptr;        // [queue_depth][record_stride], 4 KiB aligned (O_DIRECT)

  mutable std::mutex mu_;
  std::condition_variable done_cv_;  // a batch completed
  std::condition_variable work_cv_;  // thread pool: an op is queued, or stop
  // Guarded by mu_:
  std::vector<RecordState> state_;     // [capacity]
  std::vector<int32_t> readers_;       // [capacity] reads in flight
  std::vector<int32_t> free_;          // stack of free records: back() is taken next
  std::deque<Op*> queued_;             // submitted, not yet given to the engine
  std::vector<int32_t> free_bounce_;   // bounce slots not in use
  int32_t in_flight_ = 0;              // ops given to the engine, not finished
  int64_t next_ticket_ = 1;
  absl::flat_hash_map<Ticket, std::unique_ptr<Batch>> batches_;
  DiskTierStats stats_;
  bool stop_ = false;

  std::vector<std::thread> threads_;  // reaper (io_uring) or workers (thread pool)
};

}  // namespace twl
