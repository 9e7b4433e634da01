// The NVMe tier: record file, O_DIRECT probe, io_uring and pread/pwrite engines, record
// bookkeeping and error mapping (see disk_tier.h).
#include "offload/disk_tier.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace twl {
namespace {

constexpr int64_t kAlign = 4096;
constexpr int64_t kMinAlign = 512;  // packed records (DiskTierOptions::pack_records)
// Bookkeeping is 9 bytes per record in host memory; record ids fit an int32.
constexpr int64_t kMaxRecords = (int64_t(1) << 31) - 1;
constexpr uint64_t kStopTag = 0;  // user_data of the NOP that stops the reaper

std::string ErrnoText(int err) {
  const char* desc = strerrordesc_np(err);
  return desc ? absl::StrFormat("%s (errno %d)", desc, err) : absl::StrFormat("errno %d", err);
}

int64_t RoundUp(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

const char* DiskEngineName(DiskEngine engine) {
  switch (engine) {
    case DiskEngine::kIoUring: return "io_uring";
    case DiskEngine::kThreadPool: return "pread/pwrite threads";
  }
  return "unknown";
}

// One record's transfer.
struct DiskTier::Op {
  Batch* batch = nullptr;
  int32_t index = 0;     // in the batch
  bool write = false;
  int64_t record = -1;
  char* host = nullptr;  // caller's buffer (record_bytes)
  char* io = nullptr;    // buffer actually transferred: host, or a bounce slot
  bool needs_bounce = false;
  int32_t bounce = -1;
  int64_t length = 0;    // bytes to transfer
  int64_t done = 0;      // bytes transferred so far
  bool checked = false;  // the fault injector has been asked
  struct iovec iov = {};
};

struct DiskTier::Batch {
  std::vector<Op> ops;  // never resized after Enqueue: ops are addressed by pointer
  std::vector<absl::Status> status;
  int64_t remaining = 0;
};

struct DiskTier::Uring {
  struct io_uring ring;
  bool fixed_file = false;
  int32_t prepared = 0;  // SQEs prepared and not yet submitted
};

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Create(const DiskTierOptions& options) {
  std::unique_ptr<DiskTier> tier(new DiskTier());
  absl::Status s = tier->Init(options);
  if (!s.ok()) return s;
  return tier;
}

absl::Status DiskTier::Init(const DiskTierOptions& options) {
  if (options.record_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("disk tier: record_bytes must be > 0, got %d", options.record_bytes));
  }
  if (options.queue_depth < 1 || options.queue_depth > 4096) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "disk tier: queue_depth must be in [1, 4096], got %d", options.queue_depth));
  }
  record_bytes_ = options.record_bytes;
  // The smallest stride possible, checked before a file is made; the real one once the file
  // tells which alignment its I/O needs.
  record_stride_ = RoundUp(record_bytes_, options.pack_records ? kMinAlign : kAlign);
  if (options.capacity_bytes < record_stride_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "disk tier: capacity_bytes %d is less than one record (%d bytes on disk)",
        options.capacity_bytes, record_stride_));
  }
  queue_depth_ = options.queue_depth;
  injector_ = options.injector ? options.injector : &ProcessFaultInjector();

  absl::Status s = OpenFile(options);
  if (!s.ok()) return s;
  record_stride_ = RoundUp(record_bytes_, io_align_);
  if (options.capacity_bytes < record_stride_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "disk tier: capacity_bytes %d is less than one record (%d bytes on disk)",
        options.capacity_bytes, record_stride_));
  }
  capacity_ = options.capacity_bytes / record_stride_;
  if (capacity_ > kMaxRecords) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "disk tier: %d records of %d bytes is more than the %d records a tier tracks",
        capacity_, record_stride_, kMaxRecords));
  }
  if (options.preallocate) {
    // Refuse up front what cannot fit, rather than let fallocate fill the disk first.
    struct statvfs fs;
    if (fstatvfs(fd_, &fs) == 0 &&
        static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize) <
            static_cast<double>(capacity_ * record_stride_)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "disk tier full: %d bytes requested, %d available in %s", capacity_ * record_stride_,
          static_cast<int64_t>(fs.f_bavail * fs.f_frsize), path_));
    }
    // fallocate, not posix_fallocate: no slow emulation by writing zeros.
    const int err = fallocate(fd_, 0, 0, static_cast<off_t>(capacity_ * record_stride_)) == 0
                        ? 0
                        : errno;
    if (err == ENOSPC || err == EDQUOT || err == EFBIG) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "disk tier full: cannot reserve %d bytes in %s: %s", capacity_ * record_stride_,
          path_, ErrnoText(err)));
    }
    // EOPNOTSUPP/EINVAL (no fallocate on this filesystem): writes will extend the file.
    preallocated_ = err == 0;
  }

  state_.assign(capacity_, RecordState::kFree);
  readers_.assign(capacity_, 0);
  free_.resize(capacity_);
  // Record 0 is handed out first, so a fresh tier fills its file front to back.
  for (int64_t i = 0; i < capacity_; ++i) free_[i] = static_cast<int32_t>(capacity_ - 1 - i);

  if (direct_io_) {
    bounce_ = static_cast<char*>(
        std::aligned_alloc(size_t(io_align_),
                           static_cast<size_t>(RoundUp(queue_depth_ * record_stride_, io_align_))));
    if (!bounce_) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "disk tier: cannot allocate %d bytes of bounce buffers", queue_depth_ * record_stride_));
    }
    for (int32_t i = queue_depth_ - 1; i >= 0; --i) free_bounce_.push_back(i);
  }
  InitEngine(options);
  return absl::OkStatus();
}

absl::Status DiskTier::OpenFile(const DiskTierOptions& options) {
  std::string path = options.path;
  if (path.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    path = (tmp && *tmp) ? tmp : "/tmp";
  }
  if (IsDirectory(path)) {
    std::string tmpl = path + (path.back() == '/' ? "" : "/") + "twl-kv-XXXXXX";
    int fd = mkostemp(tmpl.data(), O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      return absl::FailedPreconditionError(absl::StrFormat(
          "disk tier: cannot create a file in %s: %s", path, ErrnoText(err)));
    }
    close(fd);
    path = tmpl;
  }
  path_ = path;

  const int base_flags = O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC;
  fd_ = -1;
  if (options.try_direct_io) {
    fd_ = open(path.c_str(), base_flags | O_DIRECT, 0600);
    if (fd_ >= 0) {
      // Some filesystems accept O_DIRECT at open and refuse the I/O: probe one block.
      void* probe = std::aligned_alloc(kAlign, kAlign);
      bool ok = false;
      if (probe) {
        std::memset(probe, 0, kAlign);
        ok = pwrite(fd_, probe, kAlign, 0) == kAlign && ftruncate(fd_, 0) == 0;
        std::free(probe);
      }
      if (ok && options.pack_records) {
        // 512-byte I/O at a 512-byte offset from a buffer that is 512- but not 4096-aligned:
        // if the device takes it, records can be packed at 512 bytes.
        char* small = static_cast<char*>(std::aligned_alloc(kAlign, 2 * kAlign));
        if (small) {
          std::memset(small, 0, 2 * kAlign);
          if (pwrite(fd_, small + kMinAlign, kMinAlign, kMinAlign) == kMinAlign &&
              ftruncate(fd_, 0) == 0) {
            io_align_ = kMinAlign;
          }
          std::free(small);
        }
      }
      if (ok) {
        direct_io_ = true;
      } else {
        close(fd_);
        fd_ = -1;
      }
    }
  }
  if (fd_ < 0) {
    io_align_ = options.pack_records ? kMinAlign : kAlign;  // buffered: any offset works
    fd_ = open(path.c_str(), base_flags, 0600);
    if (fd_ < 0) {
      const int err = errno;
      if (err == ENOSPC || err == EDQUOT) {
        return absl::ResourceExhaustedError(
            absl::StrFormat("disk tier full: cannot create %s: %s", path, ErrnoText(err)));
      }
      return absl::FailedPreconditionError(
          absl::StrFormat("disk tier: cannot open %s: %s", path, ErrnoText(err)));
    }
  }
  // The file is a cache: unlinking it now means it cannot outlive the process.
  if (!options.keep_file) unlink(path.c_str());
  return absl::OkStatus();
}

void DiskTier::InitEngine(const DiskTierOptions& options) {
  if (options.force_thread_pool) {
    fallback_reason_ = "forced by option";
  } else {
    auto uring = std::make_unique<Uring>();
    const int ret = io_uring_queue_init(static_cast<unsigned>(queue_depth_), &uring->ring, 0);
    if (ret < 0) {
      fallback_reason_ = "io_uring_queue_init: " + ErrnoText(-ret);
    } else {
      // A registered file saves the kernel a file-table lookup per operation.
      uring->fixed_file = io_uring_register_files(&uring->ring, &fd_, 1) == 0;
      uring_ = std::move(uring);
      engine_ = DiskEngine::kIoUring;
      threads_.emplace_back([this] { ReaperLoop(); });
      return;
    }
  }
  engine_ = DiskEngine::kThreadPool;
  const int32_t n = options.thread_pool_size > 0 ? options.thread_pool_size
                                                  : std::min<int32_t>(queue_depth_, 16);
  for (int32_t i = 0; i < std::min(n, queue_depth_); ++i) {
    threads_.emplace_back([this] { WorkerLoop(); });
  }
}

DiskTier::~DiskTier() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return in_flight_ == 0 && queued_.empty(); });
    stop_ = true;
    if (uring_ && !threads_.empty()) {
      struct io_uring_sqe* sqe = io_uring_get_sqe(&uring_->ring);
      if (sqe) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, kStopTag);
        while (io_uring_submit(&uring_->ring) < 0) {
        }
      }
    }
    work_cv_.notify_all();
  }
  for (std::thread& t : threads_) t.join();
  if (uring_) io_uring_queue_exit(&uring_->ring);
  if (fd_ >= 0) close(fd_);
  std::free(bounce_);
}

int64_t DiskTier::num_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size());
}

DiskTierStats DiskTier::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::StatusOr<DiskTier::Ticket> DiskTier::WriteAsync(absl::Span<const void* const> src,
                                                      std::vector<int64_t>* records) {
  if (records == nullptr) return absl::InvalidArgumentError("disk tier: records is null");
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("disk tier: write %d of the batch has a null buffer", i));
    }
  }
  auto batch = std::make_unique<Batch>();
  batch->ops.resize(src.size());
  batch->status.assign(src.size(), absl::OkStatus());
  batch->remaining = static_cast<int64_t>(src.size());
  std::unique_lock<std::mutex> lock(mu_);
  if (static_cast<int64_t>(free_.size()) < static_cast<int64_t>(src.size())) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "disk tier full: need %d records, %d of %d free (%d bytes each)", src.size(),
        free_.size(), capacity_, record_stride_));
  }
  for (size_t i = 0; i < src.size(); ++i) {
    Op& op = batch->ops[i];
    op.batch = batch.get();
    op.index = static_cast<int32_t>(i);
    op.write = true;
    op.record = free_.back();
    free_.pop_back();
    state_[op.record] = RecordState::kWriting;
    op.host = const_cast<char*>(static_cast<const char*>(src[i]));
    records->push_back(op.record);
  }
  lock.unlock();
  return Enqueue(std::move(batch));
}

absl::StatusOr<DiskTier::Ticket> DiskTier::ReadAsync(absl::Span<const DiskReadOp> ops) {
  auto batch = std::make_unique<Batch>();
  batch->ops.resize(ops.size());
  batch->status.assign(ops.size(), absl::OkStatus());
  batch->remaining = static_cast<int64_t>(ops.size());
  std::unique_lock<std::mutex> lock(mu_);
  for (size_t i = 0; i < ops.size(); ++i) {
    const int64_t r = ops[i].record;
    if (r < 0 || r >= capacity_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "disk tier: read %d of the batch: record %d out of range [0, %d)", i, r, capacity_));
    }
    if (ops[i].dst == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("disk tier: read %d of the batch has a null buffer", i));
    }
    if (state_[r] != RecordState::kValid) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "disk tier: record %d is %s", r,
          state_[r] == RecordState::kFree ? "not allocated" : "still being written"));
    }
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    Op& op = batch->ops[i];
    op.batch = batch.get();
    op.index = static_cast<int32_t>(i);
    op.write = false;
    op.record = ops[i].record;
    op.host = static_cast<char*>(ops[i].dst);
    ++readers_[op.record];
  }
  lock.unlock();
  return Enqueue(std::move(batch));
}

absl::StatusOr<DiskTier::Ticket> DiskTier::Enqueue(std::unique_ptr<Batch> batch) {
  for (Op& op : batch->ops) {
    const bool aligned = reinterpret_cast<uintptr_t>(op.host) % io_align_ == 0 &&
                         record_bytes_ % io_align_ == 0;
    op.needs_bounce = direct_io_ && !aligned;
    // Under O_DIRECT a bounced op moves the whole 4 KiB-rounded stride; otherwise exactly
    // the payload (equal to the stride when aligned).
    op.length = op.needs_bounce ? record_stride_ : record_bytes_;
    op.io = op.host;
  }
  std::lock_guard<std::mutex> lock(mu_);
  const Ticket ticket = next_ticket_++;
  for (Op& op : batch->ops) queued_.push_back(&op);
  batches_.emplace(ticket, std::move(batch));
  PumpLocked();
  return ticket;
}

// A free bounce slot becomes op's I/O buffer (there is one per queue slot, so one is free
// whenever an op starts).
void DiskTier::TakeBounceLocked(Op* op) {
  op->bounce = free_bounce_.back();
  free_bounce_.pop_back();
  op->io = bounce_ + op->bounce * record_stride_;
}

void DiskTier::PumpLocked() {
  if (engine_ == DiskEngine::kThreadPool) {
    if (!queued_.empty()) work_cv_.notify_all();
    return;
  }
  while (in_flight_ < queue_depth_ && !queued_.empty()) {
    Op* op = queued_.front();
    queued_.pop_front();
    ++in_flight_;
    if (op->needs_bounce) {
      TakeBounceLocked(op);
      if (op->write) {
        std::memcpy(op->io, op->host, static_cast<size_t>(record_bytes_));
        std::memset(op->io + record_bytes_, 0, static_cast<size_t>(record_stride_ - record_bytes_));
      }
    }
    SubmitUringLocked(op);
  }
  if (uring_ && uring_->prepared > 0) {
    int ret;
    do {
      ret = io_uring_submit(&uring_->ring);
    } while (ret == -EINTR || ret == -EAGAIN || ret == -EBUSY);
    uring_->prepared = 0;
  }
}

void DiskTier::SubmitUringLocked(Op* op) {
  if (!op->checked) {
    op->checked = true;
    const int fault =
        injector_->Check(op->write ? FaultSite::kDiskWrite : FaultSite::kDiskRead);
    if (fault != 0) {
      OnResultLocked(op, fault == FaultInjector::kShortTransfer ? 0 : -fault);
      return;
    }
  }
  struct io_uring_sqe* sqe = io_uring_get_sqe(&uring_->ring);
  if (sqe == nullptr) {
    // Cannot happen while in_flight_ <= queue_depth (the SQ has queue_depth entries), but
    // flush and retry rather than lose the operation.
    io_uring_submit(&uring_->ring);
    uring_->prepared = 0;
    sqe = io_uring_get_sqe(&uring_->ring);
    if (sqe == nullptr) {
      FinishOpLocked(op, absl::InternalError("disk tier: io_uring submission queue full"));
      return;
    }
  }
  op->iov.iov_base = op->io + op->done;
  op->iov.iov_len = static_cast<size_t>(op->length - op->done);
  const off_t offset = static_cast<off_t>(op->record * record_stride_ + op->done);
  const int fd = uring_->fixed_file ? 0 : fd_;
  if (op->write) {
    io_uring_prep_writev(sqe, fd, &op->iov, 1, offset);
  } else {
    io_uring_prep_readv(sqe, fd, &op->iov, 1, offset);
  }
  if (uring_->fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, op);
  ++uring_->prepared;
}

void DiskTier::OnResultLocked(Op* op, int64_t res) {
  if (res == -EINTR || res == -EAGAIN) {
    ++stats_.retries;
    SubmitUringLocked(op);
    return;
  }
  if (res < 0) {
    FinishOpLocked(op, ErrorStatus(*op, static_cast<int>(-res), op->done));
    return;
  }
  if (res == 0 && op->done < op->length) {
    FinishOpLocked(op, ErrorStatus(*op, 0, op->done));
    return;
  }
  op->done += res;
  if (op->done < op->length) {  // partial transfer: continue with the rest
    ++stats_.retries;
    SubmitUringLocked(op);
    return;
  }
  if (!op->write && op->bounce >= 0) {
    std::memcpy(op->host, op->io, static_cast<size_t>(record_bytes_));
  }
  FinishOpLocked(op, absl::OkStatus());
}

absl::Status DiskTier::ErrorStatus(const Op& op, int err, int64_t moved) const {
  if (op.write) {
    if (err == ENOSPC || err == EDQUOT) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "disk tier full: write of record %d failed: %s; the host copy is kept", op.record,
          ErrnoText(err)));
    }
    if (err == 0) {
      return absl::InternalError(absl::StrFormat(
          "disk tier: short write of record %d (%d of %d bytes); the host copy is kept",
          op.record, moved, op.length));
    }
    return absl::InternalError(absl::StrFormat(
        "disk tier: write of record %d failed: %s; the host copy is kept", op.record,
        ErrnoText(err)));
  }
  if (err == 0) {
    return absl::DataLossError(absl::StrFormat(
        "disk tier: short read of record %d (%d of %d bytes)", op.record, moved, op.length));
  }
  if (err == EIO) {
    return absl::DataLossError(
        absl::StrFormat("disk tier: read of record %d failed: %s", op.record, ErrnoText(err)));
  }
  return absl::InternalError(
      absl::StrFormat("disk tier: read of record %d failed: %s", op.record, ErrnoText(err)));
}

void DiskTier::FinishOpLocked(Op* op, absl::Status status) {
  if (op->bounce >= 0) {
    free_bounce_.push_back(op->bounce);
    op->bounce = -1;
  }
  --in_flight_;
  const int64_t r = op->record;
  if (op->write) {
    if (status.ok()) {
      state_[r] = RecordState::kValid;
      ++stats_.writes;
      stats_.bytes_written += record_bytes_;
    } else {
      state_[r] = RecordState::kFree;  // the write never took: the record goes back
      free_.push_back(static_cast<int32_t>(r));
      ++stats_.write_errors;
    }
  } else {
    --readers_[r];
    if (status.ok()) {
      ++stats_.reads;
      stats_.bytes_read += record_bytes_;
    } else {
      ++stats_.read_errors;
    }
  }
  if (op->needs_bounce) ++stats_.bounced;
  Batch* batch = op->batch;
  batch->status[op->index] = std::move(status);
  if (--batch->remaining == 0) done_cv_.notify_all();
}

void DiskTier::ReaperLoop() {
  struct io_uring* ring = &uring_->ring;
  while (true) {
    struct io_uring_cqe* cqe = nullptr;
    const int ret = io_uring_wait_cqe(ring, &cqe);
    if (ret < 0) {
      // -EINTR is a signal; anything else would mean a broken ring: do not spin hot.
      if (ret != -EINTR && ret != -EAGAIN) usleep(1000);
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    bool stop = false;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      ++seen;
      const uint64_t tag = io_uring_cqe_get_data64(cqe);
      if (tag == kStopTag) {
        stop = true;
      } else {
        OnResultLocked(reinterpret_cast<Op*>(tag), cqe->res);
      }
    }
    io_uring_cq_advance(ring, seen);
    PumpLocked();  // continuations and queued operations
    if (stop) return;
  }
}

void DiskTier::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return stop_ || !queued_.empty(); });
    if (queued_.empty()) return;  // stop_ and nothing left
    Op* op = queued_.front();
    queued_.pop_front();
    ++in_flight_;
    if (op->needs_bounce) TakeBounceLocked(op);
    // Asked under mu_, in queue order, so that "the Nth write" means the Nth submitted.
    op->checked = true;
    const int fault =
        injector_->Check(op->write ? FaultSite::kDiskWrite : FaultSite::kDiskRead);
    lock.unlock();

    int64_t res = 0;  // last result: bytes or -errno
    int64_t retries = 0;
    if (fault != 0) {
      res = fault == FaultInjector::kShortTransfer ? 0 : -fault;
    } else {
      if (op->write && op->bounce >= 0) {
        std::memcpy(op->io, op->host, static_cast<size_t>(record_bytes_));
        std::memset(op->io + record_bytes_, 0,
                    static_cast<size_t>(record_stride_ - record_bytes_));
      }
      while (op->done < op->length) {
        const off_t offset = static_cast<off_t>(op->record * record_stride_ + op->done);
        const size_t n = static_cast<size_t>(op->length - op->done);
        const ssize_t got = op->write ? pwrite(fd_, op->io + op->done, n, offset)
                                      : pread(fd_, op->io + op->done, n, offset);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) {
          ++retries;
          continue;
        }
        res = got < 0 ? -errno : got;
        if (got <= 0) break;
        op->done += got;
        if (op->done < op->length) ++retries;
      }
      if (!op->write && op->done == op->length && op->bounce >= 0) {
        std::memcpy(op->host, op->io, static_cast<size_t>(record_bytes_));
      }
    }

    lock.lock();
    stats_.retries += retries;
    if (op->done == op->length) {
      FinishOpLocked(op, absl::OkStatus());
    } else {
      FinishOpLocked(op, ErrorStatus(*op, res < 0 ? static_cast<int>(-res) : 0, op->done));
    }
  }
}

absl::StatusOr<bool> DiskTier::Poll(Ticket ticket) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = batches_.find(ticket);
  if (it == batches_.end()) {
    return absl::NotFoundError(absl::StrFormat("disk tier: unknown ticket %d", ticket));
  }
  return it->second->remaining == 0;
}

absl::Status DiskTier::Wait(Ticket ticket, std::vector<absl::Status>* per_op) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    // Looked up again after every wake-up: another thread may have waited for it.
    auto it = batches_.find(ticket);
    if (it == batches_.end()) {
      return absl::NotFoundError(absl::StrFormat("disk tier: unknown ticket %d", ticket));
    }
    if (it->second->remaining == 0) {
      std::unique_ptr<Batch> batch = std::move(it->second);
      batches_.erase(it);
      lock.unlock();
      absl::Status first;
      for (const absl::Status& s : batch->status) {
        if (!s.ok()) {
          first = s;
          break;
        }
      }
      if (per_op) *per_op = std::move(batch->status);
      return first;
    }
    done_cv_.wait(lock);
  }
}

absl::Status DiskTier::Write(absl::Span<const void* const> src, std::vector<int64_t>* records,
                             std::vector<absl::Status>* per_op) {
  absl::StatusOr<Ticket> t = WriteAsync(src, records);
  if (!t.ok()) return t.status();
  return Wait(*t, per_op);
}

absl::Status DiskTier::Read(absl::Span<const DiskReadOp> ops,
                            std::vector<absl::Status>* per_op) {
  absl::StatusOr<Ticket> t = ReadAsync(ops);
  if (!t.ok()) return t.status();
  return Wait(*t, per_op);
}

absl::Status DiskTier::Free(absl::Span<const int64_t> records) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < records.size(); ++i) {
    const int64_t r = records[i];
    if (r < 0 || r >= capacity_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("disk tier: free of record %d out of range [0, %d)", r, capacity_));
    }
  }
  // Mark as we go so that a record listed twice is caught; undo the marks on failure.
  size_t i = 0;
  absl::Status status;
  for (; i < records.size(); ++i) {
    const int64_t r = records[i];
    if (state_[r] != RecordState::kValid || readers_[r] != 0) {
      status = absl::FailedPreconditionError(absl::StrFormat(
          "disk tier: cannot free record %d: %s", r,
          state_[r] == RecordState::kFree      ? "not allocated (or listed twice)"
          : state_[r] == RecordState::kWriting ? "write in flight"
                                               : "read in flight"));
      break;
    }
    state_[r] = RecordState::kFree;
  }
  if (!status.ok()) {
    for (size_t j = 0; j < i; ++j) state_[records[j]] = RecordState::kValid;
    return status;
  }
  for (const int64_t r : records) free_.push_back(static_cast<int32_t>(r));
  return absl::OkStatus();
}

}  // namespace twl
