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
    // src is the caller's buffer, at any address: element loads go through memcpy.
    case DType::kBf16:
      for (int64_t i = 0; i < n; ++i) dst[i] = FloatToHalf(Bf16ToFloat(LoadU16(src, i)));
      return;
    case DType::kFp32:
      for (int64_t i = 0; i < n; ++i) dst[i] = FloatToHalf(LoadF32(src, i));
      return;
  }
}

void ConvertToKv(const void* src, DType dtype, int64_t n, DType kv, uint16_t* dst) {
  if (kv != DType::kBf16) {
    ConvertToFp16(src, dtype, n, dst);
    return;
  }
  switch (dtype) {
    case DType::kBf16:
      std::memcpy(dst, src, size_t(n) * sizeof(bf16_t));
      return;
    case DType::kFp16:  // every FP16 value is a float: one rounding, to BF16
      for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBf16(HalfToFloat(LoadU16(src, i)));
      return;
    case DType::kFp32:
      for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBf16(LoadF32(src, i));
      return;
  }
}

KvInputType InputType(DType t) {
  switch (t) {
    case DType::kBf16:
      return KvInputType::kBf16;
    case DType::kFp32:
      return KvInputType::kFp32;
    default:
      return KvInputType::kFp16;
  }
}

void ConvertFromFp16(const fp16_t* src, DType to, int64_t n, void* dst) {
  if (to == DType::kBf16) {
    bf16_t* d = static_cast<bf16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = FloatToBf16(HalfToFloat(src[i]));
  } else {
    float* d = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = HalfToFloat(src[i]);
  }
}

}  // namespace twl
