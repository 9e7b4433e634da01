// Table formatting and CSV / JSON output (see table.h).
#include "lib/table.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_format.h"

namespace twl::bench {
namespace {

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace

Cell::Cell(int64_t v) : text(absl::StrFormat("%d", v)), numeric(true), value(double(v)) {}

Cell::Cell(double v, int significant) : numeric(true), value(v) {
  if (std::isnan(v)) {
    text = "nan";
  } else if (std::isinf(v)) {
    text = v > 0 ? "inf" : "-inf";
  } else {
    text = absl::StrFormat("%.*g", std::max(1, significant), v);
  }
}

Table::Table(std::vector<std::string> columns) : columns_(std::move(columns)) {}

void Table::AddRow(std::vector<Cell> row) {
  row.resize(columns_.size(), Cell(""));
  rows_.push_back(std::move(row));
}

std::vector<double> Table::Column(const std::string& name) const {
  const auto it = std::find(columns_.begin(), columns_.end(), name);
  if (it == columns_.end()) return {};
  const size_t c = size_t(it - columns_.begin());
  std::vector<double> out;
  out.reserve(rows_.size());
  for (const auto& r : rows_) out.push_back(r[c].numeric ? r[c].value : NAN);
  return out;
}

std::string Table::ToText() const {
  std::vector<size_t> w(columns_.size());
  for (size_t c = 0; c < columns_.size(); ++c) {
    w[c] = columns_[c].size();
    for (const auto& r : rows_) w[c] = std::max(w[c], r[c].text.size());
  }
  std::string out;
  for (size_t c = 0; c < columns_.size(); ++c) {
    // Header aligned like its column's first row.
    const bool right = !rows_.empty() && rows_[0][c].numeric;
    // (Two literal formats: clang checks absl format strings at compile time.)
    out += right ? absl::StrFormat("%*s", int(w[c]), columns_[c])
                 : absl::StrFormat("%-*s", int(w[c]), columns_[c]);
    if (c + 1 < columns_.size()) out += "  ";
  }
  out += "\n";
  size_t total = 0;
  for (size_t c = 0; c < w.size(); ++c) total += w[c] + (c + 1 < w.size() ? 2 : 0);
  out += std::string(total, '-') + "\n";
  for (const auto& r : rows_) {
    for (size_t c = 0; c < columns_.size(); ++c) {
      out += r[c].numeric ? absl::StrFormat("%*s", int(w[c]), r[c].text)
                          : absl::StrFormat("%-*s", int(w[c]), r[c].text);
      if (c + 1 < columns_.size()) out += "  ";
    }
    out += "\n";
  }
  return out;
}

std::string Table::ToCsv() const {
  std::string out;
  for (size_t c = 0; c < columns_.size(); ++c)
    out += CsvField(columns_[c]) + (c + 1 < columns_.size() ? "," : "\n");
  for (const auto& r : rows_) {
    for (size_t c = 0; c < columns_.size(); ++c) {
      // CSV keeps full precision for numbers so that it can be re-plotted exactly.
      const std::string field = r[c].numeric && std::isfinite(r[c].value)
                                    ? absl::StrFormat("%.9g", r[c].value)
                                    : r[c].text;
      out += CsvField(field) + (c + 1 < columns_.size() ? "," : "\n");
    }
  }
  return out;
}

std::string Table::ToJson() const {
  std::string out = "[\n";
  for (size_t i = 0; i < rows_.size(); ++i) {
    out += "  {";
    for (size_t c = 0; c < columns_.size(); ++c) {
      const Cell& cell = rows_[i][c];
      out += JsonString(columns_[c]) + ": ";
      if (cell.numeric) {
        out += std::isfinite(cell.value) ? absl::StrFormat("%.9g", cell.value) : "null";
      } else {
        out += JsonString(cell.text);
      }
      if (c + 1 < columns_.size()) out += ", ";
    }
    out += i + 1 < rows_.size() ? "},\n" : "}\n";
  }
  return out + "]\n";
}

void Table::Print() const {
  if (!title.empty()) std::printf("\n== %s ==\n", title.c_str());
  std::fputs(ToText().c_str(), stdout);
  std::fflush(stdout);
}

absl::Status WriteTextFile(const std::string& path, const std::string& contents) {
  std::ofstream f(path, std::ios::binary);
  if (!f) return absl::UnavailableError("cannot open " + path + " for writing");
  f << contents;
  if (!f) return absl::UnavailableError("write failed for " + path);
  return absl::OkStatus();
}

absl::Status Table::WriteCsv(const std::string& path) const { return WriteTextFile(path, ToCsv()); }
absl::Status Table::WriteJson(const std::string& path) const {
  return WriteTextFile(path, ToJson());
}

}  // namespace twl::bench
