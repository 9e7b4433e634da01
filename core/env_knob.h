// Measurement knobs read from the environment (TWL_*): the library's defaults
// stay in code, and an A/B run overrides one without rebuilding. Host only.
#pragma once

#include <cstdint>
#include <optional>

namespace twl {

// The integer value of environment variable `name` when it is set to a whole
// decimal integer in [lo, hi]; nothing when it is unset, malformed ("3x", "")
// or out of range, so that a mistyped knob falls back to the default instead of
// taking a partial value.
std::optional<int64_t> EnvInt(const char* name, int64_t lo, int64_t hi);

// A switch that is on by default: off only when `name` is set to "0".
bool EnvSwitchOn(const char* name);

}  // namespace twl
