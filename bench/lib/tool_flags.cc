// The tools' shared flag parser (see tool_flags.h).
#include "lib/tool_flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace twl::tools {
namespace {

std::string g_tool = "tool";

absl::string_view Basename(absl::string_view path) {
  const size_t slash = path.find_last_of('/');
  return slash == absl::string_view::npos ? path : path.substr(slash + 1);
}

// The tool's own flags (defined in its main file), sorted by name.
std::vector<absl::CommandLineFlag*> ToolFlags(absl::string_view main_file) {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (Basename(flag->Filename()) == Basename(main_file)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](auto* a, auto* b) { return a->Name() < b->Name(); });
  return flags;
}

void PrintHelp(absl::string_view main_file, absl::string_view usage) {
  std::printf("%.*s\n\nflags (--name=value or --name value; defaults in brackets):\n",
              int(usage.size()), usage.data());
  for (absl::CommandLineFlag* f : ToolFlags(main_file)) {
    const std::string def = f->DefaultValue();
    std::string name(f->Name());
    std::replace(name.begin(), name.end(), '_', '-');
    std::printf("  --%-20s %s [%s]\n", name.c_str(), f->Help().c_str(),
                def.empty() ? "\"\"" : def.c_str());
  }
  std::printf("  --%-20s %s\n", "help", "this text");
}

}  // namespace

void ToolFlagError(const std::string& message) {
  std::fprintf(stderr, "%s: %s (see --help)\n", g_tool.c_str(), message.c_str());
  std::exit(2);
}

void RequireFlag(bool cond, absl::string_view flag, absl::string_view what) {
  if (cond) return;
  std::string name(flag);
  std::replace(name.begin(), name.end(), '_', '-');  // as --help spells it
  ToolFlagError(absl::StrCat("--", name, ": ", what));
}

void RequireWritableDir(absl::string_view flag, const std::string& dir) {
  std::string name(flag);
  std::replace(name.begin(), name.end(), '_', '-');
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir, ec)) {
    ToolFlagError(absl::StrCat("--", name, ": cannot create directory ", dir,
                               ec ? ": " + ec.message() : std::string()));
  }
  const std::string probe = dir + "/.twl_write_check";
  const bool writable = static_cast<bool>(std::ofstream(probe));
  std::filesystem::remove(probe, ec);
  if (!writable) ToolFlagError(absl::StrCat("--", name, ": cannot write in ", dir));
}

void ParseToolFlags(int argc, char** argv, absl::string_view main_file, absl::string_view usage) {
  if (argc > 0 && argv[0] != nullptr) g_tool = std::string(Basename(argv[0]));
  std::vector<absl::CommandLineFlag*> own = ToolFlags(main_file);
  auto find = [&](absl::string_view name) -> absl::CommandLineFlag* {
    for (absl::CommandLineFlag* f : own) {
      if (f->Name() == name) return f;
    }
    return nullptr;
  };
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help" || arg == "-help") {
      PrintHelp(main_file, usage);
      std::exit(0);
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      ToolFlagError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    arg.remove_prefix(2);
    absl::string_view name = arg, value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    // --page-size and --page_size are the same flag (absl names use underscores).
    std::string key(name);
    std::replace(key.begin(), key.end(), '-', '_');
    absl::CommandLineFlag* flag = find(key);
    if (flag == nullptr && !has_value && key.rfind("no_", 0) == 0) {
      // --no-name: a bool flag set to false.
      absl::CommandLineFlag* negated = find(key.substr(3));
      if (negated != nullptr && negated->IsOfType<bool>()) {
        std::string error;
        if (!negated->ParseFrom("false", &error)) ToolFlagError(error);
        continue;
      }
    }
    if (flag == nullptr) ToolFlagError(absl::StrCat("unknown flag --", name));
    if (!has_value) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        ToolFlagError(absl::StrCat("--", name, " needs a value"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      ToolFlagError(absl::StrCat("bad value '", value, "' for --", name, ": ", error));
    }
  }
}

std::vector<int32_t> IntListFlag(const std::vector<std::string>& items, absl::string_view flag,
                                 int64_t lo, int64_t hi) {
  std::vector<int32_t> out;
  for (const std::string& item : items) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(item, &v) || v < lo || v > hi) {
      ToolFlagError(absl::StrFormat("--%s: '%s' is not an integer in [%d, %d]", flag, item, lo,
                                    hi));
    }
    out.push_back(int32_t(v));
  }
  if (out.empty()) ToolFlagError(absl::StrCat("--", flag, ": needs at least one value"));
  return out;
}

std::vector<double> DoubleListFlag(const std::vector<std::string>& items, absl::string_view flag,
                                   double lo, double hi) {
  std::vector<double> out;
  for (const std::string& item : items) {
    double v = 0;
    if (!absl::SimpleAtod(item, &v) || !(v >= lo && v <= hi)) {  // NaN fails too
      ToolFlagError(absl::StrFormat("--%s: '%s' is not a number in [%g, %g]", flag, item, lo, hi));
    }
    out.push_back(v);
  }
  if (out.empty()) ToolFlagError(absl::StrCat("--", flag, ": needs at least one value"));
  return out;
}

BackendKind ParseBackendFlag(const std::string& value, absl::string_view flag) {
  if (value == "auto") return BackendKind::kAuto;
  if (value == "cpu") return BackendKind::kCpu;
  if (value == "gpu-hbm") return BackendKind::kGpuHbm;
  if (value == "gpu-offload") return BackendKind::kGpuOffload;
  ToolFlagError(absl::StrCat("--", flag, ": '", value, "' is not one of ", kBackendChoices));
}

const char* BackendFlagName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto:
      return "auto";
    case BackendKind::kCpu:
      return "cpu";
    case BackendKind::kGpuHbm:
      return "gpu-hbm";
    case BackendKind::kGpuOffload:
      return "gpu-offload";
  }
  return "?";
}

}  // namespace twl::tools
