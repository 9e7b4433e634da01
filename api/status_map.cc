// absl::Status -> twl_status, chosen by what the C caller should do next (see twilight.h),
// plus the static name of every code.
#include "api/status_map.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/types/optional.h"
#include "runtime/disk_io_status.h"

namespace twl::api {
namespace {

constexpr absl::string_view kPayloadUrl = "twilight.api/twl_status";

}  // namespace

absl::Status TaggedError(twl_status code, absl::string_view message) {
  // The absl code is only a fallback for readers that ignore the payload.
  absl::StatusCode fallback = absl::StatusCode::kUnknown;
  switch (code) {
    case TWL_IO_ERROR:
      fallback = absl::StatusCode::kUnavailable;
      break;
    case TWL_CORRUPT_DATA:
      fallback = absl::StatusCode::kDataLoss;
      break;
    case TWL_UNSUPPORTED:
      fallback = absl::StatusCode::kUnimplemented;
      break;
    default:
      break;
  }
  absl::Status status(fallback, message);
  status.SetPayload(kPayloadUrl, absl::Cord(std::to_string(static_cast<int>(code))));
  return status;
}

twl_status ToTwlStatus(const absl::Status& status) {
  if (status.ok()) return TWL_OK;
  if (absl::optional<absl::Cord> tag = status.GetPayload(kPayloadUrl)) {
    int code = 0;
    if (absl::SimpleAtoi(std::string(*tag), &code) && code > TWL_OK && code <= TWL_INTERNAL) {
      return static_cast<twl_status>(code);
    }
  }
  // The disk tier failed to read or write a page (whatever absl code the tier chose).
  if (twl::IsDiskIoError(status)) return TWL_IO_ERROR;
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return TWL_OK;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
      return TWL_INVALID_ARGUMENT;  // the call itself is wrong
    case absl::StatusCode::kNotFound:
      return TWL_NOT_FOUND;  // an unknown sequence id
    case absl::StatusCode::kResourceExhausted:
      return TWL_CAPACITY_EXHAUSTED;  // a fixed pool is full: free sequences, retry
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return TWL_UNAVAILABLE;  // no GPU / device busy: retry later or another backend
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
      // Aborted is a conflicting concurrent change (two appends to one sequence at once):
      // like a failed precondition, the caller must order its calls.
      return TWL_FAILED_PRECONDITION;
    case absl::StatusCode::kUnimplemented:
      return TWL_UNSUPPORTED;
    case absl::StatusCode::kDataLoss:
      return TWL_CORRUPT_DATA;
    case absl::StatusCode::kPermissionDenied:
      return TWL_IO_ERROR;  // only files are guarded by permissions here
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnauthenticated:
    default:
      return TWL_INTERNAL;
  }
}

}  // namespace twl::api

extern "C" const char* twl_status_string(twl_status status) noexcept {
  switch (twl::api::EnumValue(status)) {
    case TWL_OK:
      return "TWL_OK";
    case TWL_INVALID_ARGUMENT:
      return "TWL_INVALID_ARGUMENT";
    case TWL_NOT_FOUND:
      return "TWL_NOT_FOUND";
    case TWL_OUT_OF_MEMORY:
      return "TWL_OUT_OF_MEMORY";
    case TWL_CAPACITY_EXHAUSTED:
      return "TWL_CAPACITY_EXHAUSTED";
    case TWL_UNAVAILABLE:
      return "TWL_UNAVAILABLE";
    case TWL_FAILED_PRECONDITION:
      return "TWL_FAILED_PRECONDITION";
    case TWL_IO_ERROR:
      return "TWL_IO_ERROR";
    case TWL_CORRUPT_DATA:
      return "TWL_CORRUPT_DATA";
    case TWL_UNSUPPORTED:
      return "TWL_UNSUPPORTED";
    case TWL_INTERNAL:
      return "TWL_INTERNAL";
    default:
      return "TWL_UNKNOWN_STATUS";
  }
}
