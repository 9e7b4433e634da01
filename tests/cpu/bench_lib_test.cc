// Tests of the benchmarks' output support (bench/lib/png_plot, bench/lib/table): checksums
// against published check values, the zlib stream decoded by an independent minimal inflater
// (stored + fixed-Huffman blocks) written here, PNG chunk structure, plot rendering, and the
// table's text/CSV/JSON forms.
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "lib/png_plot.h"
#include "lib/table.h"

namespace twl::bench {
namespace {

// ---- A minimal inflater (RFC 1951 stored and fixed-Huffman blocks), for checking only ----
class BitReader {
 public:
  BitReader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool Bit(uint32_t* b) {
    if (pos_ >= n_ * 8) return false;
    *b = (p_[pos_ / 8] >> (pos_ % 8)) & 1u;
    ++pos_;
    return true;
  }
  bool Bits(int count, uint32_t* v) {  // LSB first
    *v = 0;
    for (int i = 0; i < count; ++i) {
      uint32_t b;
      if (!Bit(&b)) return false;
      *v |= b << i;
    }
    return true;
  }
  bool Code(int count, uint32_t* v) {  // Huffman codes: MSB first
    *v = 0;
    for (int i = 0; i < count; ++i) {
      uint32_t b;
      if (!Bit(&b)) return false;
      *v = (*v << 1) | b;
    }
    return true;
  }
  void AlignByte() { pos_ = (pos_ + 7) / 8 * 8; }
  size_t byte_pos() const { return pos_ / 8; }

 private:
  const uint8_t* p_;
  size_t n_, pos_ = 0;
};

bool Inflate(const std::vector<uint8_t>& z, std::vector<uint8_t>* out) {
  static const int kLenBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                   31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
  static const int kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                    2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
  static const int kDistBase[30] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                    33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                    1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
  static const int kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                     6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
  if (z.size() < 6 || (z[0] * 256 + z[1]) % 31 != 0 || (z[0] & 0x0F) != 8) return false;
  size_t base = 2;  // byte offset of the reader's start in z
  BitReader br(z.data() + base, z.size() - 6);
  uint32_t final_block = 0;
  while (!final_block) {
    uint32_t type;
    if (!br.Bits(1, &final_block) || !br.Bits(2, &type)) return false;
    if (type == 0) {
      br.AlignByte();
      const size_t at = base + br.byte_pos();
      if (at + 4 > z.size()) return false;
      const uint32_t len = z[at] | z[at + 1] << 8, nlen = z[at + 2] | z[at + 3] << 8;
      if ((len ^ 0xFFFFu) != nlen || at + 4 + len > z.size()) return false;
      out->insert(out->end(), z.begin() + long(at + 4), z.begin() + long(at + 4 + len));
      base = at + 4 + len;
      br = BitReader(z.data() + base, z.size() - 4 - base);
      continue;
    }
    if (type != 1) return false;  // dynamic Huffman is never produced by ZlibEncode
    for (;;) {
      uint32_t code, sym;
      if (!br.Code(7, &code)) return false;
      if (code <= 23) {
        sym = 256 + code;
      } else {
        uint32_t b;
        if (!br.Code(1, &b)) return false;
        code = code << 1 | b;
        if (code >= 0x30 && code <= 0xBF) {
          sym = code - 0x30;
        } else if (code >= 0xC0 && code <= 0xC7) {
          sym = 280 + code - 0xC0;
        } else {
          if (!br.Code(1, &b)) return false;
          code = code << 1 | b;
          if (code < 0x190) return false;
          sym = 144 + code - 0x190;
        }
      }
      if (sym < 256) {
        out->push_back(uint8_t(sym));
        continue;
      }
      if (sym == 256) break;
      const int li = int(sym) - 257;
      if (li >= 29) return false;
      uint32_t extra, dcode, dextra;
      if (!br.Bits(kLenExtra[li], &extra) || !br.Code(5, &dcode) || dcode >= 30 ||
          !br.Bits(kDistExtra[dcode], &dextra))
        return false;
      const size_t len = size_t(kLenBase[li]) + extra, dist = size_t(kDistBase[dcode]) + dextra;
      if (dist > out->size()) return false;
      for (size_t i = 0; i < len; ++i) out->push_back((*out)[out->size() - dist]);
    }
  }
  const size_t n = z.size();
  const uint32_t adler = uint32_t(z[n - 4]) << 24 | z[n - 3] << 16 | z[n - 2] << 8 | z[n - 1];
  return adler == Adler32(out->data(), out->size());
}

uint32_t Be32(const std::vector<uint8_t>& b, size_t at) {
  return uint32_t(b[at]) << 24 | b[at + 1] << 16 | b[at + 2] << 8 | b[at + 3];
}

TEST(PngPlot, ChecksumsMatchPublishedCheckValues) {
  const std::string s = "123456789";
  EXPECT_EQ(Crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0xCBF43926u);
  const std::string w = "Wikipedia";
  EXPECT_EQ(Adler32(reinterpret_cast<const uint8_t*>(w.data()), w.size()), 0x11E60398u);
  // Incremental use gives the same value as one call.
  const uint32_t part = Crc32(reinterpret_cast<const uint8_t*>(s.data()), 4);
  EXPECT_EQ(Crc32(reinterpret_cast<const uint8_t*>(s.data()) + 4, 5, part), 0xCBF43926u);
}

TEST(PngPlot, ZlibStreamsInflateToTheInput) {
  std::mt19937 rng(123);
  // Runs (long matches), random bytes (literals) and sizes around the stored block limit.
  for (size_t n :
       {size_t(0), size_t(1), size_t(300), size_t(65535), size_t(65536), size_t(200000)}) {
    std::vector<uint8_t> data(n);
    for (size_t i = 0; i < n; ++i)
      data[i] = (i / 97) % 3 == 0 ? uint8_t(rng()) : uint8_t((i * 7) % 13);
    for (bool compress : {false, true}) {
      const std::vector<uint8_t> z = ZlibEncode(data.data(), data.size(), compress);
      std::vector<uint8_t> back;
      ASSERT_TRUE(Inflate(z, &back)) << "n=" << n << " compress=" << compress;
      EXPECT_EQ(back, data) << "n=" << n << " compress=" << compress;
      if (compress && n >= 65536) {
        EXPECT_LT(z.size(), n / 2) << "repetitive data compresses";
      }
    }
  }
}

TEST(PngPlot, PngHasValidChunksAndPixels) {
  const int w = 37, h = 11;  // odd sizes
  std::vector<uint8_t> rgb(size_t(w) * h * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t(i * 31 + 7);
  const std::vector<uint8_t> png = EncodePng(w, h, rgb);
  const std::vector<uint8_t> sig = {137, 80, 78, 71, 13, 10, 26, 10};
  ASSERT_TRUE(std::equal(sig.begin(), sig.end(), png.begin()));
  size_t at = 8;
  std::vector<std::string> types;
  std::vector<uint8_t> idat;
  while (at + 12 <= png.size()) {
    const uint32_t len = Be32(png, at);
    const std::string type(png.begin() + long(at + 4), png.begin() + long(at + 8));
    ASSERT_LE(at + 12 + len, png.size());
    EXPECT_EQ(Crc32(png.data() + at + 4, len + 4), Be32(png, at + 8 + len)) << type;
    if (type == "IHDR") {
      EXPECT_EQ(Be32(png, at + 8), uint32_t(w));
      EXPECT_EQ(Be32(png, at + 12), uint32_t(h));
      EXPECT_EQ(png[at + 16], 8);  // bit depth
      EXPECT_EQ(png[at + 17], 2);  // RGB
    }
    if (type == "IDAT")
      idat.insert(idat.end(), png.begin() + long(at + 8), png.begin() + long(at + 8 + len));
    types.push_back(type);
    at += 12 + len;
  }
  EXPECT_EQ(at, png.size());
  EXPECT_EQ(types, (std::vector<std::string>{"IHDR", "IDAT", "IEND"}));
  std::vector<uint8_t> raw;
  ASSERT_TRUE(Inflate(idat, &raw));
  ASSERT_EQ(raw.size(), size_t(h) * (1 + 3 * w));
  for (int y = 0; y < h; ++y) {
    EXPECT_EQ(raw[size_t(y) * (1 + 3 * w)], 0) << "filter type none";
    for (int x = 0; x < 3 * w; ++x)
      ASSERT_EQ(raw[size_t(y) * (1 + 3 * w) + 1 + x], rgb[size_t(y) * 3 * w + x]);
  }
  EXPECT_FALSE(WritePng("/nonexistent-dir/x.png", w, h, rgb).ok());
  EXPECT_EQ(WritePng("/tmp/x.png", w, h + 1, rgb).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PngPlot, TicksCoverTheRange) {
  const Ticks lin = LinearTicks(0.0, 1.0);
  ASSERT_GE(lin.at.size(), 3u);
  EXPECT_DOUBLE_EQ(lin.at.front(), 0.0);
  EXPECT_NEAR(lin.at.back(), 1.0, 1e-12);
  const Ticks lg = LogTicks(1.0, 1000.0);
  EXPECT_EQ(lg.label, (std::vector<std::string>{"1", "10", "100", "1000"}));
  EXPECT_EQ(TickLabel(0.25), "0.25");
  EXPECT_EQ(TickLabel(1e6), "1e+06");
}

TEST(PngPlot, PlotDrawsEverySeriesInItsColour) {
  Plot p;
  p.title = "t";
  p.log_x = true;
  Series& a = p.AddSeries("a", {1, 10, 100}, {0.1, 0.5, 0.9});
  a.color = {250, 0, 0};
  Series& b = p.AddSeries("b", {1, 10, 100, -5, NAN}, {0.9, 0.5, 0.1, 1, 1}, Style::kScatter);
  b.color = {0, 0, 250};
  p.AddHLine(0.5, "half");
  const Image img = p.Render();
  int red = 0, blue = 0;
  for (int y = 0; y < img.height(); ++y)
    for (int x = 0; x < img.width(); ++x) {
      const Rgb c = img.Get(x, y);
      red += c.r == 250 && c.g == 0 && c.b == 0;
      blue += c.r == 0 && c.g == 0 && c.b == 250;
    }
  EXPECT_GT(red, 200);  // a line across most of the plot
  EXPECT_GT(blue, 20);  // three discs + legend
  // An empty plot still renders (unit axes), and a tiny one does not crash.
  Plot empty;
  EXPECT_EQ(empty.Render().width(), empty.width);
  Plot tiny;
  tiny.width = 10;
  tiny.height = 10;
  tiny.AddSeries("x", {1}, {1});
  EXPECT_EQ(tiny.Render().height(), 10);
}

TEST(Table, TextCsvAndJsonAgree) {
  Table t({"method", "p", "n"});
  t.AddRow({"a,\"b\"", 0.95, 3});
  t.AddRow({"c", Cell(NAN), int64_t(-1)});
  t.AddRow({"short"});  // padded
  EXPECT_EQ(t.num_rows(), 3u);
  EXPECT_EQ(t.ToCsv(), "method,p,n\n\"a,\"\"b\"\"\",0.95,3\nc,nan,-1\nshort,,\n");
  const std::string json = t.ToJson();
  EXPECT_NE(json.find("\"method\": \"a,\\\"b\\\"\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"p\": null"), std::string::npos) << json;
  EXPECT_NE(json.find("\"n\": -1"), std::string::npos) << json;
  const std::string text = t.ToText();
  // Every line of the text form has the same width.
  size_t width = text.find('\n');
  for (size_t at = 0; at < text.size();) {
    const size_t end = text.find('\n', at);
    EXPECT_EQ(end - at, width);
    at = end + 1;
  }
  const std::vector<double> p = t.Column("p");
  ASSERT_EQ(p.size(), 3u);
  EXPECT_NEAR(p[0], 0.95, 1e-6);
  EXPECT_TRUE(std::isnan(p[1]));
  EXPECT_TRUE(t.Column("missing").empty());
}

}  // namespace
}  // namespace twl::bench
