#include "lib/study_output.h"

#include <filesystem>
#include <system_error>

namespace twl::bench {

absl::Status WriteStudyOutputs(const std::string& dir, const std::string& stem,
                               const Table& table, const Plot& plot) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);  // a failure shows in the writes below
  const std::string base = dir + "/" + stem;
  for (absl::Status s : {table.WriteCsv(base + ".csv"), table.WriteJson(base + ".json"),
                         plot.SavePng(base + ".png")}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace twl::bench
