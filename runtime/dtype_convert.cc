// Host-side dtype conversion of appended K/V (see dtype_convert.h).
#include "runtime/dtype_convert.h"

#include <cstring>

namespace twl {

int32_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
    case DType::kBf16:
      return 2;
    case DType::kFp32:
      return 4;
  }
  return 0;
}

bool IsValidDType(DType dtype) { return DTypeBytes(dtype) != 0; }

void ConvertToFp16(const void* src, DType dtype, int64_t n, fp16_t* dst) {
  switch (dtype) {
    case DType::kFp16:
      std::memcpy(dst, src, size_t(n) * sizeof(fp16_t));
      return;
    case DType::kBf16: {
      const bf16_t* s = static_cast<const bf16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = FloatToHalf(Bf16ToFloat(s[i]));
      return;
    }
    case DType::kFp32: {
      const float* s = static_cast<const float*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = FloatToHalf(s[i]);
      return;
    }
  }
}

}  // namespace twl
