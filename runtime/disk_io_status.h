// Marks a status as a failed disk tier transfer, so that the C API can report it as an I/O
// error (TWL_IO_ERROR) whatever absl code the tier chose (DataLoss for a failed read,
// Internal for a failed write): for the caller both mean "the disk failed, nothing was lost,
// retry when it works again". "Disk tier full" stays ResourceExhausted and is not marked.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace twl {

inline constexpr absl::string_view kDiskIoPayloadUrl = "twilight.runtime/disk_io";

// `status` with `prefix` before its message, payloads kept (OK stays OK).
inline absl::Status PrefixStatus(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  absl::Status out(status.code(), absl::StrCat(prefix, status.message()));
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) {
    out.SetPayload(url, payload);
  });
  return out;
}

// `status` with "context: " before its message and, unless it is ResourceExhausted (disk
// tier full), the disk I/O mark. OK stays OK.
inline absl::Status DiskIoError(const absl::Status& status, absl::string_view context) {
  absl::Status out = PrefixStatus(status, absl::StrCat(context, ": "));
  if (!out.ok() && !absl::IsResourceExhausted(out)) {
    out.SetPayload(kDiskIoPayloadUrl, absl::Cord("1"));
  }
  return out;
}

inline bool IsDiskIoError(const absl::Status& status) {
  return status.GetPayload(kDiskIoPayloadUrl).has_value();
}

}  // namespace twl
