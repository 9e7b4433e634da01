// The one place where the C++ world's errors become C API status codes: absl::Status codes,
// exceptions, and the API's own tagged errors (file I/O, corrupt files) that absl has no
// code for.
#pragma once

#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "twilight.h"

namespace twl::api {

// Errors absl has no code for are carried as an absl::Status plus a payload naming the
// twl_status; ToTwlStatus honours the payload first.
absl::Status TaggedError(twl_status code, absl::string_view message);
inline absl::Status IoError(absl::string_view message) {
  return TaggedError(TWL_IO_ERROR, message);
}
inline absl::Status CorruptData(absl::string_view message) {
  return TaggedError(TWL_CORRUPT_DATA, message);
}
inline absl::Status Unsupported(absl::string_view message) {
  return TaggedError(TWL_UNSUPPORTED, message);
}

twl_status ToTwlStatus(const absl::Status& status);

// The integer a C caller stored in an enum. C allows any int there; C++ makes loading a value
// outside the enumerators' range undefined, so the library reads the bytes instead.
template <typename Enum>
int32_t EnumValue(const Enum& e) {
  static_assert(sizeof(Enum) == sizeof(int32_t), "C API enums are 32-bit");
  int32_t v;
  std::memcpy(&v, &e, sizeof(v));
  return v;
}

}  // namespace twl::api
