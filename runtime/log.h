// Process-wide log sink of the library (C API: twl_set_log_callback). The library is quiet by
// default: only warnings and errors reach stderr unless TWL_VERBOSE=1 or a callback is set.
#pragma once

#include <string_view>

namespace twl {

enum class LogLevel : int { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3 };

using LogFn = void (*)(int level, const char* message, void* user_data);

// Delivers `message` at `level` to the callback (or stderr by default) when the level is
// enabled. Never throws; safe from any thread.
void Log(LogLevel level, std::string_view message) noexcept;
// True when a message at `level` would be delivered (to skip building expensive messages).
bool LogEnabled(LogLevel level) noexcept;
// fn == nullptr: the default stderr sink. Serialized with delivery, so once this returns the
// previous callback is not called again.
void SetLogCallback(LogFn fn, void* user_data, LogLevel max_level) noexcept;

}  // namespace twl
