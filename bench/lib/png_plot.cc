// PNG encoder, canvas and plot rendering for bench/ (see png_plot.h). No external library:
// deflate is LZ77 (hash chains, 32 KiB window) with the fixed Huffman code, which shrinks
// mostly-white plots ~50x; stored blocks are kept as the simple, obviously-correct fallback.
#include "lib/png_plot.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_format.h"

namespace twl::bench {
namespace {

// ---- CRC-32 (IEEE, reflected) table ----
std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[n] = c;
  }
  return t;
}

// Bits written least-significant first, as deflate requires.
class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>* out) : out_(out) {}
  void Put(uint32_t value, int nbits) {
    acc_ |= uint64_t(value) << count_;
    count_ += nbits;
    while (count_ >= 8) {
      out_->push_back(uint8_t(acc_));
      acc_ >>= 8;
      count_ -= 8;
    }
  }
  // Huffman codes are defined most-significant bit first: reverse before packing.
  void PutCode(uint32_t code, int nbits) {
    uint32_t r = 0;
    for (int i = 0; i < nbits; ++i) r |= ((code >> i) & 1u) << (nbits - 1 - i);
    Put(r, nbits);
  }
  void Flush() {
    if (count_ > 0) out_->push_back(uint8_t(acc_));
    acc_ = 0;
    count_ = 0;
  }

 private:
  std::vector<uint8_t>* out_;
  uint64_t acc_ = 0;
  int count_ = 0;
};

constexpr int kLenBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                              31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr int kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                               2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr int kDistBase[30] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                               33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                               1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr int kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

// Fixed literal/length code of RFC 1951 section 3.2.6.
void PutLitLen(BitWriter& bw, int sym) {
  if (sym < 144) {
    bw.PutCode(0x30 + sym, 8);
  } else if (sym < 256) {
    bw.PutCode(0x190 + (sym - 144), 9);
  } else if (sym < 280) {
    bw.PutCode(sym - 256, 7);
  } else {
    bw.PutCode(0xC0 + (sym - 280), 8);
  }
}

void PutMatch(BitWriter& bw, int length, int distance) {
  int li = 28;
  while (kLenBase[li] > length) --li;
  PutLitLen(bw, 257 + li);
  if (kLenExtra[li]) bw.Put(length - kLenBase[li], kLenExtra[li]);
  int di = 29;
  while (kDistBase[di] > distance) --di;
  bw.PutCode(di, 5);
  if (kDistExtra[di]) bw.Put(distance - kDistBase[di], kDistExtra[di]);
}

void DeflateFixed(const uint8_t* data, size_t n, std::vector<uint8_t>* out) {
  constexpr int kWindow = 32768, kHashBits = 15, kMaxChain = 48, kMinMatch = 3, kMaxMatch = 258;
  std::vector<int32_t> head(1 << kHashBits, -1), prev(kWindow, -1);
  auto hash = [&](size_t i) {
    const uint32_t v = uint32_t(data[i]) | uint32_t(data[i + 1]) << 8 | uint32_t(data[i + 2]) << 16;
    return (v * 2654435761u) >> (32 - kHashBits);
  };
  auto insert = [&](size_t i) {
    if (i + kMinMatch > n) return;
    const uint32_t h = hash(i);
    prev[i % kWindow] = head[h];
    head[h] = int32_t(i);
  };
  BitWriter bw(out);
  bw.Put(1, 1);  // BFINAL
  bw.Put(1, 2);  // BTYPE = 01: fixed Huffman
  size_t i = 0;
  while (i < n) {
    int best_len = 0, best_dist = 0;
    if (i + kMinMatch <= n) {
      int32_t cand = head[hash(i)];
      const size_t max_len = std::min<size_t>(kMaxMatch, n - i);
      for (int chain = 0; cand >= 0 && chain < kMaxChain; ++chain) {
        const size_t dist = i - size_t(cand);
        if (dist == 0 || dist > size_t(kWindow - 1)) break;
        size_t len = 0;
        while (len < max_len && data[cand + len] == data[i + len]) ++len;
        if (int(len) > best_len) {
          best_len = int(len);
          best_dist = int(dist);
          if (len == max_len) break;
        }
        const int32_t next = prev[cand % kWindow];
        if (next >= cand) break;  // slot reused by a newer position: chain ended
        cand = next;
      }
    }
    if (best_len >= kMinMatch) {
      PutMatch(bw, best_len, best_dist);
      for (int k = 0; k < best_len; ++k) insert(i + k);
      i += best_len;
    } else {
      PutLitLen(bw, data[i]);
      insert(i);
      ++i;
    }
  }
  PutLitLen(bw, 256);  // end of block
  bw.Flush();
}

void DeflateStored(const uint8_t* data, size_t n, std::vector<uint8_t>* out) {
  size_t pos = 0;
  do {
    const size_t len = std::min<size_t>(65535, n - pos);
    const bool final = pos + len == n;
    out->push_back(final ? 1 : 0);  // BFINAL, BTYPE = 00, padding to the byte
    out->push_back(uint8_t(len));
    out->push_back(uint8_t(len >> 8));
    out->push_back(uint8_t(~len));
    out->push_back(uint8_t(~len >> 8));
    out->insert(out->end(), data + pos, data + pos + len);
    pos += len;
  } while (pos < n);
}

void PutBe32(std::vector<uint8_t>* out, uint32_t v) {
  out->push_back(uint8_t(v >> 24));
  out->push_back(uint8_t(v >> 16));
  out->push_back(uint8_t(v >> 8));
  out->push_back(uint8_t(v));
}

void PutChunk(std::vector<uint8_t>* out, const char type[4], const std::vector<uint8_t>& data) {
  PutBe32(out, uint32_t(data.size()));
  const size_t start = out->size();
  out->insert(out->end(), type, type + 4);
  out->insert(out->end(), data.begin(), data.end());
  PutBe32(out, Crc32(out->data() + start, out->size() - start));
}

// ---- 5x7 font: 7 rows per glyph, bit 4 = leftmost column; ASCII 32..126. ----
constexpr uint8_t kFont[95][7] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04},  // !
    {0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00},  // "
    {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A},  // #
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04},  // $
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},  // %
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D},  // &
    {0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00},  // '
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02},  // (
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},  // )
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00},  // *
    {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00},  // +
    {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08},  // ,
    {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00},  // -
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C},  // .
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},  // /
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E},  // 0
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},  // 1
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F},  // 2
    {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},  // 3
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02},  // 4
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},  // 5
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E},  // 6
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},  // 7
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E},  // 8
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},  // 9
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00},  // :
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},  // ;
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02},  // <
    {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},  // =
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08},  // >
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04},  // ?
    {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E},  // @
    {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // A
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},  // B
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E},  // C
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},  // D
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F},  // E
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},  // F
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F},  // G
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // H
    {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},  // I
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},  // J
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},  // K
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},  // L
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11},  // M
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},  // N
    {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // O
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},  // P
    {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D},  // Q
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},  // R
    {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E},  // S
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // T
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // U
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},  // V
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A},  // W
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},  // X
    {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04},  // Y
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},  // Z
    {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E},  // [
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00},  // backslash
    {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E},  // ]
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00},  // ^
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F},  // _
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00},  // `
    {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F},  // a
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E},  // b
    {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E},  // c
    {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F},  // d
    {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E},  // e
    {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08},  // f
    {0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // g
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11},  // h
    {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E},  // i
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C},  // j
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12},  // k
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},  // l
    {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11},  // m
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11},  // n
    {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E},  // o
    {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10},  // p
    {0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01},  // q
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10},  // r
    {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E},  // s
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06},  // t
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D},  // u
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04},  // v
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A},  // w
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11},  // x
    {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // y
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F},  // z
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02},  // {
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // |
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08},  // }
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00},  // ~
};

// Lower-case letters with descenders, drawn two rows lower than the 7-row cell so that
// they reach into the line gap (rows 2..8 of the 8-row cell).
struct Descender {
  char ch;
  uint8_t rows[7];
};
constexpr Descender kDescenders[4] = {
    {'g', {0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
    {'p', {0x1E, 0x11, 0x11, 0x11, 0x1E, 0x10, 0x10}},
    {'q', {0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x01}},
    {'y', {0x11, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
};

// Distinct series colours (a colour-blind-friendly qualitative palette).
constexpr Rgb kPalette[10] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                              {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
                              {188, 189, 34},  {23, 190, 207}};

}  // namespace

uint32_t Crc32(const uint8_t* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  uint32_t c = crc ^ 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t Adler32(const uint8_t* data, size_t n, uint32_t adler) {
  uint32_t a = adler & 0xFFFFu, b = adler >> 16;
  constexpr uint32_t kMod = 65521;
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, 5552);  // largest run without uint32 overflow
    for (size_t i = 0; i < chunk; ++i) {
      a += data[i];
      b += a;
    }
    a %= kMod;
    b %= kMod;
    data += chunk;
    n -= chunk;
  }
  return (b << 16) | a;
}

std::vector<uint8_t> ZlibEncode(const uint8_t* data, size_t n, bool compress) {
  std::vector<uint8_t> out = {0x78, 0x01};  // deflate, 32 KiB window, no dictionary
  if (compress) {
    DeflateFixed(data, n, &out);
  } else {
    DeflateStored(data, n, &out);
  }
  PutBe32(&out, Adler32(data, n));
  return out;
}

std::vector<uint8_t> EncodePng(int width, int height, const std::vector<uint8_t>& rgb,
                               bool compress) {
  // Scanlines with filter type 0 (none).
  std::vector<uint8_t> raw;
  raw.reserve(size_t(height) * (size_t(width) * 3 + 1));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    const uint8_t* row = rgb.data() + size_t(y) * width * 3;
    raw.insert(raw.end(), row, row + size_t(width) * 3);
  }
  std::vector<uint8_t> png = {137, 80, 78, 71, 13, 10, 26, 10};
  std::vector<uint8_t> ihdr;
  PutBe32(&ihdr, uint32_t(width));
  PutBe32(&ihdr, uint32_t(height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, RGB, deflate, filter 0, no interlace
  PutChunk(&png, "IHDR", ihdr);
  PutChunk(&png, "IDAT", ZlibEncode(raw.data(), raw.size(), compress));
  PutChunk(&png, "IEND", {});
  return png;
}

absl::Status WritePng(const std::string& path, int width, int height,
                      const std::vector<uint8_t>& rgb, bool compress) {
  if (width <= 0 || height <= 0 || rgb.size() != size_t(width) * height * 3) {
    return absl::InvalidArgumentError(
        absl::StrFormat("WritePng: %dx%d image needs %d bytes, got %d", width, height,
                        int64_t(width) * height * 3, rgb.size()));
  }
  const std::vector<uint8_t> png = EncodePng(width, height, rgb, compress);
  std::ofstream f(path, std::ios::binary);
  if (!f) return absl::UnavailableError("WritePng: cannot open " + path);
  f.write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
  if (!f) return absl::UnavailableError("WritePng: write failed for " + path);
  return absl::OkStatus();
}

// ---- Image ----
Image::Image(int width, int height, Rgb bg)
    : width_(std::max(1, width)), height_(std::max(1, height)) {
  rgb_.resize(size_t(width_) * height_ * 3);
  for (size_t i = 0; i < rgb_.size(); i += 3) {
    rgb_[i] = bg.r;
    rgb_[i + 1] = bg.g;
    rgb_[i + 2] = bg.b;
  }
}

void Image::Set(int x, int y, Rgb c) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  uint8_t* p = &rgb_[(size_t(y) * width_ + x) * 3];
  p[0] = c.r;
  p[1] = c.g;
  p[2] = c.b;
}

Rgb Image::Get(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return {};
  const uint8_t* p = &rgb_[(size_t(y) * width_ + x) * 3];
  return {p[0], p[1], p[2]};
}

void Image::FillRect(int x0, int y0, int x1, int y1, Rgb c) {
  if (x0 > x1) std::swap(x0, x1);
  if (y0 > y1) std::swap(y0, y1);
  for (int y = std::max(0, y0); y <= std::min(height_ - 1, y1); ++y)
    for (int x = std::max(0, x0); x <= std::min(width_ - 1, x1); ++x) Set(x, y, c);
}

void Image::Line(int x0, int y0, int x1, int y1, Rgb c, int pen, int dash) {
  // Bresenham; the pen is a pen x pen square centred on each step.
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
  const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy, step = 0;
  const int lo = -(pen - 1) / 2, hi = pen / 2;
  for (;;) {
    if (dash <= 0 || (step / dash) % 2 == 0) {
      for (int oy = lo; oy <= hi; ++oy)
        for (int ox = lo; ox <= hi; ++ox) Set(x0 + ox, y0 + oy, c);
    }
    if (x0 == x1 && y0 == y1) break;
    ++step;
    const int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

void Image::Disc(int cx, int cy, int r, Rgb c) {
  for (int y = -r; y <= r; ++y)
    for (int x = -r; x <= r; ++x)
      if (x * x + y * y <= r * r + r) Set(cx + x, cy + y, c);
}

void Image::Text(int x, int y, const std::string& s, Rgb c, int scale, bool vertical) {
  for (size_t i = 0; i < s.size(); ++i) {
    int ch = static_cast<unsigned char>(s[i]);
    if (ch < 32 || ch > 126) ch = '?';
    const uint8_t* glyph = kFont[ch - 32];
    int drop = 0;
    for (const Descender& d : kDescenders)
      if (d.ch == ch) {
        glyph = d.rows;
        drop = 2;
      }
    for (int row = 0; row < 7; ++row) {
      for (int col = 0; col < 5; ++col) {
        if (!((glyph[row] >> (4 - col)) & 1u)) continue;
        // Glyph-space pixel (gx, gy) from the cell's top-left corner.
        const int gx = int(i) * 6 * scale + col * scale, gy = (row + drop) * scale;
        for (int a = 0; a < scale; ++a)
          for (int b = 0; b < scale; ++b) {
            if (vertical) {
              // Rotate 90 degrees counter-clockwise: text runs upwards from (x, y).
              Set(x + gy + b, y - (gx + a), c);
            } else {
              Set(x + gx + a, y + gy + b, c);
            }
          }
      }
    }
  }
}

// ---- Ticks ----
std::string TickLabel(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  std::string s;
  if (a >= 1e5 || a < 1e-3) {
    s = absl::StrFormat("%.3g", v);  // e.g. 1e+06, 2.5e-05
  } else {
    s = absl::StrFormat("%.6f", v);
    // Trim trailing zeros of the fixed representation.
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
    // Keep at most 4 significant digits.
    std::string g = absl::StrFormat("%.4g", v);
    if (g.find('e') == std::string::npos && g.size() < s.size()) s = g;
  }
  return s;
}

Ticks LinearTicks(double lo, double hi, int target) {
  Ticks t;
  if (!(hi > lo)) {
    t.at.push_back(lo);
    t.label.push_back(TickLabel(lo));
    return t;
  }
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  const double first = std::ceil(lo / step - 1e-9) * step;
  for (double v = first; v <= hi + step * 1e-9; v += step) {
    const double snapped = std::fabs(v) < step * 1e-9 ? 0.0 : v;
    t.at.push_back(snapped);
    t.label.push_back(TickLabel(snapped));
  }
  return t;
}

Ticks LogTicks(double lo, double hi) {
  Ticks t;
  if (!(lo > 0) || !(hi > lo)) return LinearTicks(lo, hi);
  const int e0 = int(std::floor(std::log10(lo) + 1e-9));
  const int e1 = int(std::ceil(std::log10(hi) - 1e-9));
  // Few decades: label 1-2-5 steps too.
  const bool fine = e1 - e0 <= 2;
  for (int e = e0; e <= e1; ++e) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m != 1.0 && !fine) continue;
      const double v = m * std::pow(10.0, e);
      if (v < lo * (1 - 1e-9) || v > hi * (1 + 1e-9)) continue;
      t.at.push_back(v);
      t.label.push_back(TickLabel(v));
    }
  }
  if (t.at.size() < 2) return LinearTicks(lo, hi);
  return t;
}

// ---- Plot ----
Series& Plot::AddSeries(const std::string& name, const std::vector<double>& xs,
                        const std::vector<double>& ys, Style style) {
  Series s;
  s.name = name;
  const size_t n = std::min(xs.size(), ys.size());
  s.x.assign(xs.begin(), xs.begin() + n);
  s.y.assign(ys.begin(), ys.begin() + n);
  s.style = style;
  s.color = kPalette[series_.size() % 10];
  series_.push_back(std::move(s));
  return series_.back();
}

void Plot::AddHLine(double y, const std::string& name) { hlines_.emplace_back(y, name); }

Image Plot::Render() const {
  Image img(width, height);
  const Rgb black{0, 0, 0}, grid{225, 225, 225}, gray{90, 90, 90};

  auto usable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!log_x || x > 0) && (!log_y || y > 0);
  };
  // Data range.
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (const Series& s : series_)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!usable(s.x[i], s.y[i])) continue;
      xlo = std::min(xlo, s.x[i]);
      xhi = std::max(xhi, s.x[i]);
      ylo = std::min(ylo, s.y[i]);
      yhi = std::max(yhi, s.y[i]);
    }
  for (const auto& [y, name] : hlines_) {
    if (!std::isfinite(y) || (log_y && y <= 0)) continue;
    ylo = std::min(ylo, y);
    yhi = std::max(yhi, y);
  }
  if (!(xlo <= xhi)) {  // no data: a unit range
    xlo = log_x ? 1 : 0;
    xhi = log_x ? 10 : 1;
  }
  if (!(ylo <= yhi)) {
    ylo = log_y ? 1 : 0;
    yhi = log_y ? 10 : 1;
  }
  auto widen = [](double& lo, double& hi, bool log) {
    if (log) {
      if (hi <= lo) lo /= 2, hi *= 2;
      return;
    }
    if (hi <= lo) {
      const double d = lo == 0 ? 1 : std::fabs(lo) * 0.1;
      lo -= d, hi += d;
      return;
    }
    const double m = (hi - lo) * 0.04;
    lo -= m, hi += m;
  };
  widen(xlo, xhi, log_x);
  widen(ylo, yhi, log_y);
  if (std::isfinite(x_min)) xlo = x_min;
  if (std::isfinite(x_max)) xhi = x_max;
  if (std::isfinite(y_min)) ylo = y_min;
  if (std::isfinite(y_max)) yhi = y_max;

  const Ticks xt = log_x ? LogTicks(xlo, xhi) : LinearTicks(xlo, xhi);
  const Ticks yt = log_y ? LogTicks(ylo, yhi) : LinearTicks(ylo, yhi);

  // Layout: the legend sits right of the plot area so it never hides data.
  int legend_w = 0;
  std::vector<std::pair<std::string, const Series*>> entries;
  for (const Series& s : series_)
    if (!s.name.empty()) entries.emplace_back(s.name, &s);
  for (const auto& [y, name] : hlines_)
    if (!name.empty()) entries.emplace_back(name, nullptr);
  for (const auto& e : entries) legend_w = std::max(legend_w, Image::TextWidth(e.first) + 30);
  int ytick_w = 0;
  for (const std::string& l : yt.label) ytick_w = std::max(ytick_w, Image::TextWidth(l));
  const int left = 22 + ytick_w + 10, right = width - 15 - (legend_w ? legend_w + 10 : 0);
  const int top = title.empty() ? 15 : 40, bottom = height - 45;
  if (right - left < 40 || bottom - top < 40) return img;

  auto tx = [&](double x) {
    const double f = log_x ? (std::log10(x) - std::log10(xlo)) / (std::log10(xhi) - std::log10(xlo))
                           : (x - xlo) / (xhi - xlo);
    return left + int(std::lround(f * (right - left)));
  };
  auto ty = [&](double y) {
    const double f = log_y ? (std::log10(y) - std::log10(ylo)) / (std::log10(yhi) - std::log10(ylo))
                           : (y - ylo) / (yhi - ylo);
    return bottom - int(std::lround(f * (bottom - top)));
  };

  // Grid, ticks, labels.
  for (size_t i = 0; i < xt.at.size(); ++i) {
    const int x = tx(xt.at[i]);
    if (x < left || x > right) continue;
    img.Line(x, top, x, bottom, grid);
    img.Line(x, bottom, x, bottom + 4, black);
    img.Text(x - Image::TextWidth(xt.label[i]) / 2, bottom + 8, xt.label[i], black);
  }
  for (size_t i = 0; i < yt.at.size(); ++i) {
    const int y = ty(yt.at[i]);
    if (y < top || y > bottom) continue;
    img.Line(left, y, right, y, grid);
    img.Line(left - 4, y, left, y, black);
    img.Text(left - 7 - Image::TextWidth(yt.label[i]), y - 3, yt.label[i], black);
  }
  img.Line(left, top, left, bottom, black);
  img.Line(left, bottom, right, bottom, black);
  img.Line(right, top, right, bottom, black);
  img.Line(left, top, right, top, black);

  if (!title.empty())
    img.Text((left + right) / 2 - Image::TextWidth(title, 2) / 2, 12, title, black, 2);
  if (!x_label.empty())
    img.Text((left + right) / 2 - Image::TextWidth(x_label) / 2, bottom + 24, x_label, black);
  if (!y_label.empty())
    img.Text(6, (top + bottom) / 2 + Image::TextWidth(y_label) / 2, y_label, black, 1, true);

  // Clip drawing to the plot area by drawing on a copy and pasting the inner rectangle.
  Image layer = img;
  for (const auto& [y, name] : hlines_) {
    if (!std::isfinite(y) || (log_y && y <= 0)) continue;
    layer.Line(left, ty(y), right, ty(y), gray, 1, 6);
  }
  for (const Series& s : series_) {
    const bool lines = s.style != Style::kScatter;
    const bool points = s.style == Style::kScatter || s.style == Style::kLinePoints;
    const int dash = s.style == Style::kDashed ? 6 : 0;
    int px = 0, py = 0;
    bool have_prev = false;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!usable(s.x[i], s.y[i])) {
        have_prev = false;  // a gap breaks the line
        continue;
      }
      const int x = tx(s.x[i]), y = ty(s.y[i]);
      if (lines && have_prev) layer.Line(px, py, x, y, s.color, 2, dash);
      if (points) layer.Disc(x, y, s.style == Style::kScatter ? 2 : 3, s.color);
      px = x, py = y, have_prev = true;
    }
  }
  for (int y = top + 1; y < bottom; ++y)
    for (int x = left + 1; x < right; ++x) img.Set(x, y, layer.Get(x, y));

  // Legend.
  int ly = top + 4;
  const int lx = right + 12;
  for (const auto& [name, s] : entries) {
    if (s == nullptr) {
      img.Line(lx, ly + 3, lx + 20, ly + 3, gray, 1, 4);
    } else {
      if (s->style != Style::kScatter)
        img.Line(lx, ly + 3, lx + 20, ly + 3, s->color, 2, s->style == Style::kDashed ? 5 : 0);
      if (s->style == Style::kScatter || s->style == Style::kLinePoints)
        img.Disc(lx + 10, ly + 3, 3, s->color);
    }
    img.Text(lx + 26, ly, name, black);
    ly += 14;
  }
  return img;
}

}  // namespace twl::bench
