// One command-line parser for every tool (twl_demo, twl_kernels, twl_offload, twl_disk_tier):
// flags are ABSL_FLAG definitions in the tool's main file, parsed here through absl's flag
// reflection so that the tools share one behaviour:
//   --name=value or --name value; a bool flag alone (--name) is true; no prefix matching;
//   dashes and underscores in names are the same (--page-size = --page_size); --no-name sets
//   a bool flag to false;
//   -h / --help prints the usage and every flag of the tool with its default, exit 0;
//   an unknown flag, a missing or unparsable value, a positional argument: one line on stderr
//   saying which and why, exit 2 (ToolFlagError does the same for range checks in the tool).
// Backends are spelled as in the C API and the Python package: auto, cpu, gpu-hbm, gpu-offload.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/string_view.h"
#include "runtime/runtime.h"

namespace twl::tools {

// Parses argv into the tool's ABSL_FLAGs. `main_file` is __FILE__ of the tool's main (its flags
// are the ones listed by --help); `usage` is the text printed above the flag list.
void ParseToolFlags(int argc, char** argv, absl::string_view main_file, absl::string_view usage);

// "<tool>: <message> (see --help)" on stderr, exit 2. For checks of values after parsing.
[[noreturn]] void ToolFlagError(const std::string& message);

// Checks `cond` or exits with ToolFlagError("--<flag>: <what>").
void RequireFlag(bool cond, absl::string_view flag, absl::string_view what);
// Creates directory `dir` (the value of --<flag>) and checks that a file can be written in
// it, so that a tool refuses an unusable output directory before it spends minutes
// computing what it would write there (ToolFlagError with the reason otherwise).
void RequireWritableDir(absl::string_view flag, const std::string& dir);

// A comma-separated list flag (std::vector<std::string>) as integers, each in [lo, hi], at
// least one; anything else exits 2.
std::vector<int32_t> IntListFlag(const std::vector<std::string>& items, absl::string_view flag,
                                 int64_t lo, int64_t hi);

// The same for real numbers, each in [lo, hi].
std::vector<double> DoubleListFlag(const std::vector<std::string>& items, absl::string_view flag,
                                   double lo, double hi);

// "auto", "cpu", "gpu-hbm", "gpu-offload" -> BackendKind; anything else exits 2.
BackendKind ParseBackendFlag(const std::string& value, absl::string_view flag = "backend");
// The inverse, for printing.
const char* BackendFlagName(BackendKind kind);
// The accepted spellings, for help texts.
inline constexpr const char* kBackendChoices = "auto|cpu|gpu-hbm|gpu-offload";

}  // namespace twl::tools
