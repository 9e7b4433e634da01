// twl_sequence_save / twl_sequence_restore: a sequence's K/V of every layer (FP16, or BF16
// under kv_dtype) to a file and back, built on Runtime::ReadKv and Runtime::Append (so it
// works for every backend).
//
// File format, version 1 (FP16 elements) or 2 (same layout, element type 1 = BF16: a library
// that reads only version 1 refuses it as a newer format instead of misreading it), all
// integers little-endian:
//   header (64 bytes)
//     0  char[8] magic "TWLKVSEQ"        36 u32 k_bits      (informational)
//     8  u32 format_version = 1 or 2     40 u32 element type (0 = FP16, 1 = BF16: version 2)
//    12  u32 header_bytes = 64           44 u32 0x01020304  (byte-order check)
//    16  u32 num_layers                  48 u64 file_bytes  (whole file)
//    20  u32 num_kv_heads                56 u32 reserved = 0
//    24  u32 head_dim                    60 u32 CRC-32C of bytes 0..59
//    28  u32 chunk_tokens
//    32  u32 page_size   (informational)
//   layer table: u32 length[num_layers], then u32 CRC-32C of the table
//   per layer, per chunk of c = min(chunk_tokens, tokens left) tokens:
//     K [c][num_kv_heads][head_dim], V [c][num_kv_heads][head_dim] of the element type,
//     u32 CRC-32C of K+V
// Restore into a runtime whose kv_dtype differs from the file's element type is refused
// (TWL_INVALID_ARGUMENT, like another model shape): converting would silently round.
// The file size follows from the header and table, so truncation is detected before any data
// is read. Restore checks everything in a first pass and only then creates the sequence; the
// second pass checks each chunk's CRC again (the file may change in between) and undoes the
// sequence on any failure. Chunks bound the memory restore needs.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "api/crc32c.h"
#include "api/handle.h"
#include "twilight.h"

namespace twl::api {
namespace {

constexpr char kMagic[8] = {'T', 'W', 'L', 'K', 'V', 'S', 'E', 'Q'};
constexpr uint32_t kFormatVersion = 2;  // the newest this library writes and reads
constexpr uint32_t kHeaderBytes = 64;
constexpr uint32_t kByteOrderCheck = 0x01020304u;
constexpr uint32_t kChunkTokens = 1024;         // written by this library
constexpr uint32_t kMaxChunkTokens = 1u << 20;  // accepted from a file

struct Header {
  uint32_t format_version = kFormatVersion;
  uint32_t num_layers = 0, num_kv_heads = 0, head_dim = 0;
  uint32_t chunk_tokens = kChunkTokens;
  uint32_t page_size = 0, k_bits = 0;
  uint32_t element_type = 0;
  uint64_t file_bytes = 0;
};

void PutU32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void PutU64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint32_t GetU32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}
uint64_t GetU64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

void EncodeHeader(const Header& h, unsigned char out[kHeaderBytes]) {
  std::memset(out, 0, kHeaderBytes);
  std::memcpy(out, kMagic, 8);
  PutU32(out + 8, h.format_version);
  PutU32(out + 12, kHeaderBytes);
  PutU32(out + 16, h.num_layers);
  PutU32(out + 20, h.num_kv_heads);
  PutU32(out + 24, h.head_dim);
  PutU32(out + 28, h.chunk_tokens);
  PutU32(out + 32, h.page_size);
  PutU32(out + 36, h.k_bits);
  PutU32(out + 40, h.element_type);
  PutU32(out + 44, kByteOrderCheck);
  PutU64(out + 48, h.file_bytes);
  PutU32(out + 60, Crc32c(0, out, 60));
}

// Bytes of one token's K (or V) for all KV heads.
uint64_t TokenBytes(const Header& h) { return uint64_t(h.num_kv_heads) * h.head_dim * 2; }

// Whole-file size implied by the header and table; 0 if it overflows (then corrupt).
uint64_t FileBytes(const Header& h, const std::vector<uint32_t>& lengths) {
  const uint64_t token = TokenBytes(h);
  unsigned __int128 total = kHeaderBytes + 4ull * lengths.size() + 4;
  for (uint32_t len : lengths) {
    const uint64_t chunks = (uint64_t(len) + h.chunk_tokens - 1) / h.chunk_tokens;
    total += (unsigned __int128)len * token * 2 + chunks * 4;
  }
  if (total > std::numeric_limits<int64_t>::max()) return 0;
  return static_cast<uint64_t>(total);
}

// fopen/fclose with RAII; `remove_on_close` for the temporary file of a save.
class File {
 public:
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (f_ != nullptr) std::fclose(f_);
    if (!remove_path_.empty()) std::remove(remove_path_.c_str());
  }
  FILE* get() const { return f_; }
  void Reset(FILE* f) { f_ = f; }
  void RemoveOnClose(std::string path) { remove_path_ = std::move(path); }
  void KeepFile() { remove_path_.clear(); }
  // Closes now, reporting a failed flush.
  bool Close() {
    FILE* f = f_;
    f_ = nullptr;
    return f == nullptr || std::fclose(f) == 0;
  }

 private:
  FILE* f_ = nullptr;
  std::string remove_path_;
};

absl::Status Errno(absl::string_view what, const std::string& path) {
  return IoError(absl::StrCat(what, " '", path, "': ", std::strerror(errno)));
}

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

absl::Status Write(FILE* f, const void* data, size_t n, const std::string& path) {
  if (n != 0 && std::fwrite(data, 1, n, f) != n) return Errno("cannot write", path);
  return absl::OkStatus();
}

// Reads exactly n bytes; a short read is corruption (the size was checked up front, so the file
// shrank) unless the stream reports an I/O error.
absl::Status Read(FILE* f, void* data, size_t n, const std::string& path) {
  if (n != 0 && std::fread(data, 1, n, f) != n) {
    if (std::ferror(f)) return Errno("cannot read", path);
    return CorruptData(absl::StrCat("'", path, "' is truncated"));
  }
  return absl::OkStatus();
}

// OK when path does not exist or is a regular file (not followed if it is a symbolic link).
absl::Status CheckReplaceable(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return Errno("cannot inspect", path);
  }
  if (!S_ISREG(st.st_mode)) {
    return IoError(absl::StrCat("'", path, "' exists and is not a regular file (",
                                FileKind(st.st_mode), "): not replaced"));
  }
  return absl::OkStatus();
}

// Opens a save file for reading without blocking (a FIFO would block in open until a writer
// comes) and only if it is a regular file (a FIFO, device or directory is refused).
absl::Status OpenForRestore(const std::string& path, File* file) {
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const absl::Status s = Errno("cannot inspect", path);
    close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return IoError(
        absl::StrCat("'", path, "' is not a regular file (", FileKind(st.st_mode), ")"));
  }
  // Regular files ignore O_NONBLOCK; cleared anyway so the stream sees plain blocking reads.
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  file->Reset(fdopen(fd, "rb"));
  if (file->get() == nullptr) {
    const absl::Status s = Errno("cannot open", path);
    close(fd);
    return s;
  }
  return absl::OkStatus();
}

absl::Status SaveSequence(twl_runtime* rt, twl_seq_id seq, const std::string& path) {
  const twl_runtime_config& cfg = rt->config;
  Header h;
  h.num_layers = uint32_t(cfg.num_layers);
  h.num_kv_heads = uint32_t(cfg.num_kv_heads);
  h.head_dim = uint32_t(cfg.head_dim);
  h.page_size = uint32_t(cfg.page_size);
  h.k_bits = uint32_t(cfg.k_bits);
  h.element_type = cfg.kv_dtype == TWL_DTYPE_BF16 ? 1u : 0u;
  h.format_version = h.element_type == 1 ? 2u : 1u;  // FP16 files stay readable by version-1 readers
  std::vector<uint32_t> lengths(h.num_layers);
  {
    std::lock_guard<std::mutex> lock(rt->mu);
    for (uint32_t l = 0; l < h.num_layers; ++l) {
      absl::StatusOr<int32_t> len = rt->runtime->SequenceLength(seq, int32_t(l));
      if (!len.ok()) return len.status();
      lengths[l] = uint32_t(*len);
    }
  }
  h.file_bytes = FileBytes(h, lengths);

  // rename() replaces whatever is at path: refuse anything but a regular file (or nothing),
  // so that saving to /dev/null, a FIFO, a symbolic link or a directory changes nothing.
  if (absl::Status s = CheckReplaceable(path); !s.ok()) return s;
  // Write beside the destination, then rename: an existing file survives any failure.
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return Errno("cannot create a temporary file beside", path);
  File file;
  file.RemoveOnClose(tmp);
  file.Reset(fdopen(fd, "wb"));
  if (file.get() == nullptr) {
    close(fd);
    return Errno("cannot open", tmp);
  }

  unsigned char header[kHeaderBytes];
  EncodeHeader(h, header);
  if (absl::Status s = Write(file.get(), header, sizeof(header), tmp); !s.ok()) return s;
  std::vector<unsigned char> table(4 * lengths.size() + 4);
  for (size_t l = 0; l < lengths.size(); ++l) PutU32(table.data() + 4 * l, lengths[l]);
  PutU32(table.data() + 4 * lengths.size(), Crc32c(0, table.data(), 4 * lengths.size()));
  if (absl::Status s = Write(file.get(), table.data(), table.size(), tmp); !s.ok()) return s;

  const uint64_t token_elems = uint64_t(h.num_kv_heads) * h.head_dim;
  std::vector<twl::fp16_t> k, v;
  for (uint32_t l = 0; l < h.num_layers; ++l) {
    {
      std::lock_guard<std::mutex> lock(rt->mu);
      if (absl::Status s = rt->runtime->ReadKv(seq, int32_t(l), &k, &v); !s.ok()) return s;
    }
    if (k.size() != lengths[l] * token_elems || v.size() != k.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("sequence ", seq, " changed during the save (layer ", l, " now has ",
                       k.size() / token_elems, " tokens, had ", lengths[l], ")"));
    }
    for (uint32_t t0 = 0; t0 < lengths[l]; t0 += h.chunk_tokens) {
      const uint32_t c = std::min(h.chunk_tokens, lengths[l] - t0);
      const size_t bytes = size_t(c) * token_elems * 2;
      const twl::fp16_t* kc = k.data() + size_t(t0) * token_elems;
      const twl::fp16_t* vc = v.data() + size_t(t0) * token_elems;
      unsigned char crc[4];
      PutU32(crc, Crc32c(Crc32c(0, kc, bytes), vc, bytes));
      if (absl::Status s = Write(file.get(), kc, bytes, tmp); !s.ok()) return s;
      if (absl::Status s = Write(file.get(), vc, bytes, tmp); !s.ok()) return s;
      if (absl::Status s = Write(file.get(), crc, 4, tmp); !s.ok()) return s;
    }
  }
  if (std::fflush(file.get()) != 0) return Errno("cannot write", tmp);
  if (fsync(fileno(file.get())) != 0) return Errno("cannot sync", tmp);
  if (!file.Close()) return Errno("cannot close", tmp);
  if (absl::Status s = CheckReplaceable(path); !s.ok()) return s;  // again: it may have changed
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return Errno("cannot rename to", path);
  file.KeepFile();
  return absl::OkStatus();
}

// Header + table checks: everything that can be known without reading the data.
absl::Status ReadLayout(FILE* f, const std::string& path, const twl_runtime_config& cfg, Header* h,
                        std::vector<uint32_t>* lengths) {
  if (std::fseek(f, 0, SEEK_END) != 0) return Errno("cannot seek", path);
  const long size = std::ftell(f);
  if (size < 0) return Errno("cannot size", path);
  std::rewind(f);
  if (uint64_t(size) < kHeaderBytes) {
    return CorruptData(
        absl::StrCat("'", path, "' is ", size, " bytes: too short for a Twilight sequence file"));
  }
  unsigned char header[kHeaderBytes];
  if (absl::Status s = Read(f, header, sizeof(header), path); !s.ok()) return s;
  if (std::memcmp(header, kMagic, 8) != 0) {
    return CorruptData(absl::StrCat("'", path, "' is not a Twilight sequence file"));
  }
  if (GetU32(header + 60) != Crc32c(0, header, 60)) {
    return CorruptData(absl::StrCat("'", path, "': header checksum mismatch"));
  }
  h->format_version = GetU32(header + 8);
  if (h->format_version > kFormatVersion) {
    return Unsupported(absl::StrCat("'", path, "' has format version ", h->format_version,
                                    "; this library reads up to ", kFormatVersion));
  }
  h->num_layers = GetU32(header + 16);
  h->num_kv_heads = GetU32(header + 20);
  h->head_dim = GetU32(header + 24);
  h->chunk_tokens = GetU32(header + 28);
  h->page_size = GetU32(header + 32);
  h->k_bits = GetU32(header + 36);
  h->element_type = GetU32(header + 40);
  h->file_bytes = GetU64(header + 48);
  // Element type 1 (BF16) exists from version 2 on.
  if (h->format_version == 0 || GetU32(header + 12) != kHeaderBytes ||
      GetU32(header + 44) != kByteOrderCheck || h->element_type > 1 ||
      (h->element_type == 1 && h->format_version < 2) || h->chunk_tokens == 0 ||
      h->chunk_tokens > kMaxChunkTokens) {
    return CorruptData(absl::StrCat("'", path, "': inconsistent header"));
  }
  if (h->num_layers != uint32_t(cfg.num_layers) || h->num_kv_heads != uint32_t(cfg.num_kv_heads) ||
      h->head_dim != uint32_t(cfg.head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' was saved for ", h->num_layers, " layers x ", h->num_kv_heads,
                     " KV heads x head_dim ", h->head_dim, "; this runtime has ", cfg.num_layers,
                     " x ", cfg.num_kv_heads, " x ", cfg.head_dim));
  }
  const uint32_t want_type = cfg.kv_dtype == TWL_DTYPE_BF16 ? 1u : 0u;
  if (h->element_type != want_type) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path, "' holds ", h->element_type == 1 ? "BF16" : "FP16",
        " K/V; this runtime stores ", want_type == 1 ? "BF16" : "FP16",
        " (kv_dtype): restore into a runtime of the same kv_dtype"));
  }
  std::vector<unsigned char> table(4ull * h->num_layers + 4);
  if (uint64_t(size) < kHeaderBytes + table.size()) {
    return CorruptData(absl::StrCat("'", path, "' is truncated (layer table)"));
  }
  if (absl::Status s = Read(f, table.data(), table.size(), path); !s.ok()) return s;
  if (GetU32(table.data() + 4ull * h->num_layers) !=
      Crc32c(0, table.data(), 4ull * h->num_layers)) {
    return CorruptData(absl::StrCat("'", path, "': layer table checksum mismatch"));
  }
  lengths->resize(h->num_layers);
  for (uint32_t l = 0; l < h->num_layers; ++l) {
    (*lengths)[l] = GetU32(table.data() + 4ull * l);
    if ((*lengths)[l] > uint32_t(std::numeric_limits<int32_t>::max())) {
      return CorruptData(absl::StrCat("'", path, "': layer ", l, " length out of range"));
    }
  }
  const uint64_t expected = FileBytes(*h, *lengths);
  if (expected == 0 || expected != h->file_bytes || uint64_t(size) != expected) {
    return CorruptData(absl::StrCat("'", path, "' is ", size, " bytes, its header says ",
                                    h->file_bytes, " and its layer table implies ", expected,
                                    " (truncated or corrupted)"));
  }
  return absl::OkStatus();
}

// Visits every chunk in file order, checking its CRC; `fn(layer, k, v, tokens)` may stop the
// walk by returning an error.
template <typename Fn>
absl::Status ForEachChunk(FILE* f, const std::string& path, const Header& h,
                          const std::vector<uint32_t>& lengths, Fn&& fn) {
  const uint64_t token_elems = uint64_t(h.num_kv_heads) * h.head_dim;
  std::vector<twl::fp16_t> k, v;
  for (uint32_t l = 0; l < h.num_layers; ++l) {
    for (uint32_t t0 = 0, chunk = 0; t0 < lengths[l]; t0 += h.chunk_tokens, ++chunk) {
      const uint32_t c = std::min(h.chunk_tokens, lengths[l] - t0);
      k.resize(size_t(c) * token_elems);
      v.resize(k.size());
      const size_t bytes = k.size() * 2;
      unsigned char crc[4];
      if (absl::Status s = Read(f, k.data(), bytes, path); !s.ok()) return s;
      if (absl::Status s = Read(f, v.data(), bytes, path); !s.ok()) return s;
      if (absl::Status s = Read(f, crc, 4, path); !s.ok()) return s;
      if (GetU32(crc) != Crc32c(Crc32c(0, k.data(), bytes), v.data(), bytes)) {
        return CorruptData(
            absl::StrCat("'", path, "': checksum mismatch in layer ", l, " chunk ", chunk));
      }
      if (absl::Status s = fn(l, k.data(), v.data(), c); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status RestoreSequence(twl_runtime* rt, const std::string& path, twl_seq_id* out) {
  File file;
  if (absl::Status s = OpenForRestore(path, &file); !s.ok()) return s;
  Header h;
  std::vector<uint32_t> lengths;
  if (absl::Status s = ReadLayout(file.get(), path, rt->config, &h, &lengths); !s.ok()) {
    return s;
  }
  const long data_start = std::ftell(file.get());
  // Pass 1: every checksum, before anything changes.
  absl::Status scan = ForEachChunk(
      file.get(), path, h, lengths,
      [](uint32_t, const twl::fp16_t*, const twl::fp16_t*, uint32_t) { return absl::OkStatus(); });
  if (!scan.ok()) return scan;
  if (std::fseek(file.get(), data_start, SEEK_SET) != 0) return Errno("cannot seek", path);

  // Pass 2: create and fill; undo on any failure.
  twl_seq_id seq = TWL_INVALID_SEQ_ID;
  {
    std::lock_guard<std::mutex> lock(rt->mu);
    absl::StatusOr<twl::SeqId> created = rt->runtime->CreateSequence();
    if (!created.ok()) return created.status();
    seq = *created;
  }
  absl::Status fill = ForEachChunk(
      file.get(), path, h, lengths,
      [&](uint32_t layer, const twl::fp16_t* k, const twl::fp16_t* v, uint32_t tokens) {
        std::lock_guard<std::mutex> lock(rt->mu);
        // The file's element type is the runtime's kv_dtype (ReadLayout): stored unchanged.
        return rt->runtime->Append(seq, int32_t(layer), int32_t(tokens), k, v,
                                   h.element_type == 1 ? twl::DType::kBf16 : twl::DType::kFp16,
                                   twl::MemSpace::kHost);
      });
  if (!fill.ok()) {
    std::lock_guard<std::mutex> lock(rt->mu);
    (void)rt->runtime->FreeSequence(seq);  // the sequence was never visible to the caller
    return fill;
  }
  *out = seq;
  return absl::OkStatus();
}

absl::Status CheckPath(const char* path) {
  if (path == nullptr || path[0] == '\0') {
    return absl::InvalidArgumentError("path must be a non-empty string");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace twl::api

extern "C" {

twl_status twl_sequence_save(twl_runtime* rt, twl_seq_id seq, const char* path) noexcept {
  return twl::api::Guard(rt, "twl_sequence_save", [&]() -> absl::Status {
    if (absl::Status s = twl::api::CheckHandle(rt); !s.ok()) return s;
    if (absl::Status s = twl::api::CheckPath(path); !s.ok()) return s;
    return twl::api::SaveSequence(rt, seq, path);
  });
}

twl_status twl_sequence_restore(twl_runtime* rt, const char* path, twl_seq_id* out) noexcept {
  if (out != nullptr) *out = TWL_INVALID_SEQ_ID;
  return twl::api::Guard(rt, "twl_sequence_restore", [&]() -> absl::Status {
    if (absl::Status s = twl::api::CheckHandle(rt); !s.ok()) return s;
    if (absl::Status s = twl::api::CheckPath(path); !s.ok()) return s;
    if (out == nullptr) return absl::InvalidArgumentError("out is NULL");
    return twl::api::RestoreSequence(rt, path, out);
  });
}

}  // extern "C"
