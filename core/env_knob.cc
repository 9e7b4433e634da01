#include "core/env_knob.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace twl {

std::optional<int64_t> EnvInt(const char* name, int64_t lo, int64_t hi) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return std::nullopt;
  return int64_t(v);
}

bool EnvSwitchOn(const char* name) {
  const char* text = std::getenv(name);
  return !(text != nullptr && std::strcmp(text, "0") == 0);
}

}  // namespace twl
