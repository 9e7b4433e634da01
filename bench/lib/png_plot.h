// Dependency-free PNG output for the benchmarks: an RGB canvas with a built-in 5x7 bitmap
// font, a PNG encoder (zlib stream with LZ77 + fixed-Huffman deflate, or stored blocks), and
// a small plotting layer (line / scatter series, linear or log axes, ticks, legend, title).
//
//   twl::bench::Plot p;
//   p.title = "error vs budget"; p.x_label = "kept tokens"; p.log_x = true;
//   p.AddSeries("Twilight", xs, ys);                     // line
//   p.AddSeries("Quest", xs2, ys2, twl::bench::Style::kScatter);
//   p.AddHLine(0.95, "p");                               // dashed reference line
//   absl::Status s = p.SavePng("out.png");
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace twl::bench {

// ---- Checksums (exposed for tests) -------------------------------------------------------
uint32_t Crc32(const uint8_t* data, size_t n, uint32_t crc = 0);
uint32_t Adler32(const uint8_t* data, size_t n, uint32_t adler = 1);

// zlib stream (RFC 1950) of `data`: with compress = true LZ77 matches coded with the fixed
// Huffman tables of RFC 1951, else stored blocks. Either is readable by any inflater.
std::vector<uint8_t> ZlibEncode(const uint8_t* data, size_t n, bool compress = true);

// PNG bytes of an 8-bit RGB image, rgb = [height][width][3].
std::vector<uint8_t> EncodePng(int width, int height, const std::vector<uint8_t>& rgb,
                               bool compress = true);
absl::Status WritePng(const std::string& path, int width, int height,
                      const std::vector<uint8_t>& rgb, bool compress = true);

// ---- Canvas ------------------------------------------------------------------------------
struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

class Image {
 public:
  Image(int width, int height, Rgb background = {255, 255, 255});
  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<uint8_t>& rgb() const { return rgb_; }

  void Set(int x, int y, Rgb c);  // clipped
  Rgb Get(int x, int y) const;
  void FillRect(int x0, int y0, int x1, int y1, Rgb c);  // inclusive corners
  // Line of the given pen width; dash > 0 draws dash-pixel-on / dash-pixel-off segments.
  void Line(int x0, int y0, int x1, int y1, Rgb c, int pen = 1, int dash = 0);
  void Disc(int cx, int cy, int radius, Rgb c);
  // Text with the 5x7 font in 6x8 cells times `scale`; (x, y) is the top-left corner.
  // vertical = true draws it rotated 90 degrees counter-clockwise, reading bottom-up,
  // with (x, y) the bottom-left corner.
  void Text(int x, int y, const std::string& s, Rgb c, int scale = 1, bool vertical = false);
  static int TextWidth(const std::string& s, int scale = 1) { return int(s.size()) * 6 * scale; }
  static int TextHeight(int scale = 1) { return 8 * scale; }

  absl::Status SavePng(const std::string& path) const {
    return WritePng(path, width_, height_, rgb_);
  }

 private:
  int width_, height_;
  std::vector<uint8_t> rgb_;
};

// ---- Plot ----------------------------------------------------------------------------------
enum class Style { kLine, kScatter, kLinePoints, kDashed };

struct Series {
  std::string name;
  std::vector<double> x, y;
  Style style = Style::kLine;
  Rgb color{0, 0, 0};
  bool auto_color = true;
};

class Plot {
 public:
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  int width = 900, height = 540;
  // Axis limits; NaN = fitted to the data (with a small margin on linear axes).
  double x_min = std::numeric_limits<double>::quiet_NaN();
  double x_max = std::numeric_limits<double>::quiet_NaN();
  double y_min = std::numeric_limits<double>::quiet_NaN();
  double y_max = std::numeric_limits<double>::quiet_NaN();

  // Points with a non-finite coordinate (or <= 0 on a log axis) are skipped.
  Series& AddSeries(const std::string& name, const std::vector<double>& xs,
                    const std::vector<double>& ys, Style style = Style::kLine);
  // Dashed horizontal reference line across the x range.
  void AddHLine(double y, const std::string& name);
  const std::vector<Series>& series() const { return series_; }

  Image Render() const;
  absl::Status SavePng(const std::string& path) const { return Render().SavePng(path); }

 private:
  std::vector<Series> series_;
  std::vector<std::pair<double, std::string>> hlines_;
};

// Tick positions and their labels for an axis over [lo, hi] (values in data units).
struct Ticks {
  std::vector<double> at;
  std::vector<std::string> label;
};
Ticks LinearTicks(double lo, double hi, int target = 6);
Ticks LogTicks(double lo, double hi);
// Short label of a tick value: "0.25", "1000", "1e+06", "-3".
std::string TickLabel(double v);

}  // namespace twl::bench
