// Conversion of host K/V input (FP16, BF16 or FP32) to the element type the cache stores
// (FP16, or BF16 under RuntimeConfig::kv_dtype).
#pragma once

#include <cstdint>

#include "core/half.h"
#include "runtime/runtime.h"

namespace twl {

// Bytes of one element of `dtype` (0 for an unknown dtype).
int32_t DTypeBytes(DType dtype);
bool IsValidDType(DType dtype);
// The element type the append kernels read for `dtype` (FP16 for an unknown dtype).
KvInputType InputType(DType dtype);

// dst[i] = fp16(src[i]) for n elements, round to nearest even (FP16 input is copied).
void ConvertToFp16(const void* src, DType dtype, int64_t n, fp16_t* dst);

// FP16 results -> the caller's dtype `to`, BF16 or FP32 (anything else is written as FP32).
void ConvertFromFp16(const fp16_t* src, DType to, int64_t n, void* dst);

// dst[i] = src[i] as the stored element type `kv` (kFp16 or kBf16), round to nearest even
// (input already of that type is copied).
void ConvertToKv(const void* src, DType dtype, int64_t n, DType kv, uint16_t* dst);

}  // namespace twl
