// Without CUDA the device conversions of dtype_convert_device.h are unavailable (the C API
// rejects device memory on the CPU backend before reaching them).
#include "runtime/dtype_convert_device.h"

#if !TWL_HAVE_CUDA
namespace twl {

absl::Status DeviceConvert(int32_t, const void*, DType, void*, DType, int64_t, void*) {
  return absl::UnavailableError("built without CUDA");
}
absl::StatusOr<void*> DeviceScratchAlloc(int32_t, size_t, void*) {
  return absl::UnavailableError("built without CUDA");
}
void DeviceScratchFree(int32_t, void*, void*) {}
void* LegacyDefaultStream() { return nullptr; }

}  // namespace twl
#endif
