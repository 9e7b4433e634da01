// Result tables for the benchmarks: rows of named columns printed aligned to stdout, and the
// same rows written as CSV (one header line) and JSON (an array of objects, numbers as
// numbers, NaN/inf as null), so that one AddRow feeds the console, plots and later analysis.
//
//   twl::bench::Table t({"method", "p", "rel_err"});
//   t.AddRow({"twilight", 0.95, twl::bench::Cell(1.2e-3, 3)});
//   t.Print();  t.WriteCsv("out.csv");  t.WriteJson("out.json");
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace twl::bench {

// One table cell: text, or a number with its display precision (significant digits).
struct Cell {
  Cell(const char* s) : text(s) {}             // NOLINT: implicit by design
  Cell(std::string s) : text(std::move(s)) {}  // NOLINT
  Cell(int v) : Cell(int64_t(v)) {}            // NOLINT
  Cell(int64_t v);                             // NOLINT
  Cell(double v, int significant = 4);         // NOLINT
  Cell(float v, int significant = 4) : Cell(double(v), significant) {}  // NOLINT

  std::string text;  // what the console and the CSV show
  bool numeric = false;
  double value = 0.0;  // full precision, written to JSON
};

class Table {
 public:
  explicit Table(std::vector<std::string> columns);
  // A row with fewer cells than columns is padded with empty cells; extra cells are dropped.
  void AddRow(std::vector<Cell> row);

  const std::vector<std::string>& columns() const { return columns_; }
  const std::vector<std::vector<Cell>>& rows() const { return rows_; }
  size_t num_rows() const { return rows_.size(); }
  // Numeric column values of every row (NaN where a cell is not numeric); empty if no column.
  std::vector<double> Column(const std::string& name) const;

  // Aligned text: numbers right-aligned, text left-aligned, a rule under the header.
  std::string ToText() const;
  std::string ToCsv() const;
  std::string ToJson() const;
  void Print() const;  // ToText() to stdout, with a title line if set
  absl::Status WriteCsv(const std::string& path) const;
  absl::Status WriteJson(const std::string& path) const;

  std::string title;

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<Cell>> rows_;
};

// Writes `contents` to `path` (creating nothing but the file).
absl::Status WriteTextFile(const std::string& path, const std::string& contents);

}  // namespace twl::bench
