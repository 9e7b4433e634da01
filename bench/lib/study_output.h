// A study tool's outputs in one place: its table as <dir>/<stem>.csv and .json and its plot as
// <dir>/<stem>.png, the directory created first (twl_threshold_drift,
// twl_coarse_study, twl_plane_study).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "lib/png_plot.h"
#include "lib/table.h"

namespace twl::bench {

absl::Status WriteStudyOutputs(const std::string& dir, const std::string& stem,
                               const Table& table, const Plot& plot);

// A study's last step: print the table, write its outputs (above), say where, and return the
// tool's exit code (1, with the reason on stderr, when a write failed).
int PrintAndWriteStudy(const std::string& tool, const std::string& dir, const std::string& stem,
                       const Table& table, const Plot& plot);

}  // namespace twl::bench
