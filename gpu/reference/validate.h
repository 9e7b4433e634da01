// Shape and argument checks shared by every stage (CPU reference and kernel launchers):
// each returns InvalidArgument with a message naming the offending field.
#pragma once

#include "absl/status/status.h"
#include "gpu/stage_views.h"

namespace twl {

absl::Status ValidateGeometry(const PageGeometry& g);
// Checks counts and strides; with check_host_data also seq_len and page ids (host pointers).
absl::Status ValidateBatch(const PageGeometry& g, const BatchView& b, bool check_host_data);
absl::Status ValidateP(float p);

}  // namespace twl
