#include "lib/study_output.h"

#include <cstdio>
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

int PrintAndWriteStudy(const std::string& tool, const std::string& dir, const std::string& stem,
                       const Table& table, const Plot& plot) {
  table.Print();
  if (absl::Status s = WriteStudyOutputs(dir, stem, table, plot); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", tool.c_str(), std::string(s.message()).c_str());
    return 1;
  }
  std::printf("wrote %s/%s.{csv,json,png}\n", dir.c_str(), stem.c_str());
  return 0;
}

}  // namespace twl::bench
