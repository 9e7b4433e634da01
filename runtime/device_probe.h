// Why no GPU backend can be used, for the Runtime's backend choice (kAuto) and its
// messages; no CUDA types here.
#pragma once

#include <string>

namespace twl {

// "no GPU found; built without CUDA", "no GPU found", or "" when a device is visible.
std::string NoGpuReason();

}  // namespace twl
