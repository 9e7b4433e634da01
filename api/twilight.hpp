// twilight.hpp: C++17 convenience over the C API (twilight.h): owning handles with
// std::unique_ptr deleters and a move-only sequence that frees itself. Header-only; it adds no
// symbol to the library and changes no rule of the C API (statuses, threads, ownership).
#ifndef TWILIGHT_HPP_
#define TWILIGHT_HPP_

#include <memory>
#include <utility>

#include "twilight.h"

namespace twilight {

struct RuntimeDeleter {
  void operator()(twl_runtime* rt) const noexcept { twl_runtime_free(rt); }
};
using RuntimePtr = std::unique_ptr<twl_runtime, RuntimeDeleter>;

// Creates a runtime; null on failure with *status set (message: twl_runtime_last_error(NULL)).
inline RuntimePtr CreateRuntime(const twl_runtime_config& config,
                                twl_status* status = nullptr) noexcept {
  twl_runtime* rt = nullptr;
  const twl_status s = twl_runtime_create(&config, &rt);
  if (status != nullptr) *status = s;
  return RuntimePtr(rt);
}

// A sequence owned by this object: freed (twl_sequence_free) when it goes out of scope.
// The runtime must outlive it.
class Sequence {
 public:
  Sequence() noexcept = default;
  Sequence(twl_runtime* rt, twl_seq_id id) noexcept : rt_(rt), id_(id) {}
  Sequence(Sequence&& other) noexcept
      : rt_(std::exchange(other.rt_, nullptr)), id_(std::exchange(other.id_, TWL_INVALID_SEQ_ID)) {}
  Sequence& operator=(Sequence&& other) noexcept {
    if (this != &other) {
      reset();
      rt_ = std::exchange(other.rt_, nullptr);
      id_ = std::exchange(other.id_, TWL_INVALID_SEQ_ID);
    }
    return *this;
  }
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;
  ~Sequence() { reset(); }

  // Creates a sequence in rt; an empty Sequence on failure with *status set.
  static Sequence Create(twl_runtime* rt, twl_status* status = nullptr) noexcept {
    twl_seq_id id = TWL_INVALID_SEQ_ID;
    const twl_status s = twl_sequence_create(rt, &id);
    if (status != nullptr) *status = s;
    return s == TWL_OK ? Sequence(rt, id) : Sequence();
  }
  // Forks this sequence; an empty Sequence on failure with *status set.
  Sequence Fork(twl_status* status = nullptr) const noexcept {
    twl_seq_id id = TWL_INVALID_SEQ_ID;
    const twl_status s = twl_sequence_fork(rt_, id_, &id);
    if (status != nullptr) *status = s;
    return s == TWL_OK ? Sequence(rt_, id) : Sequence();
  }

  twl_seq_id id() const noexcept { return id_; }
  twl_runtime* runtime() const noexcept { return rt_; }
  explicit operator bool() const noexcept { return rt_ != nullptr; }

  // Gives up ownership: the caller frees the id.
  twl_seq_id release() noexcept {
    rt_ = nullptr;
    return std::exchange(id_, TWL_INVALID_SEQ_ID);
  }
  void reset() noexcept {
    if (rt_ != nullptr) twl_sequence_free(rt_, id_);
    rt_ = nullptr;
    id_ = TWL_INVALID_SEQ_ID;
  }

  twl_status Append(int32_t layer, int32_t n, const void* k, const void* v, twl_dtype dtype,
                    twl_memory_space space = TWL_MEMORY_HOST) const noexcept {
    return twl_sequence_append(rt_, id_, layer, n, k, v, dtype, space);
  }
  twl_status Length(int32_t layer, int32_t* out) const noexcept {
    return twl_sequence_length(rt_, id_, layer, out);
  }
  twl_status Save(const char* path) const noexcept { return twl_sequence_save(rt_, id_, path); }

 private:
  twl_runtime* rt_ = nullptr;
  twl_seq_id id_ = TWL_INVALID_SEQ_ID;
};

// twl_append_batch with C++ defaults (host input, the runtime's own stream).
inline twl_status AppendBatch(twl_runtime* rt, int32_t layer, const twl_seq_id* seqs,
                              const int32_t* counts, int32_t num_seqs, const void* k,
                              const void* v, twl_dtype dtype,
                              twl_memory_space space = TWL_MEMORY_HOST,
                              void* stream = nullptr) noexcept {
  return twl_append_batch(rt, layer, seqs, counts, num_seqs, k, v, dtype, space, stream);
}

}  // namespace twilight

#endif  // TWILIGHT_HPP_
