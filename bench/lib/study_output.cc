#include "lib/study_output.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "lib/tool_flags.h"

namespace twl::bench {

void RequireStudyOutputDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir, ec)) {
    tools::ToolFlagError(absl::StrCat("--out: cannot create directory ", dir,
                                      ec ? ": " + ec.message() : std::string()));
  }
  const std::string probe = dir + "/.twl_write_check";
  const bool writable = static_cast<bool>(std::ofstream(probe));
  std::filesystem::remove(probe, ec);
  if (!writable) tools::ToolFlagError(absl::StrCat("--out: cannot write in ", dir));
}

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
