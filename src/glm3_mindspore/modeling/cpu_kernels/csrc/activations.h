// Activations as MindSpore hands them to the small ops (layer_ops.cc,
// attention.cc): float32, float16 or bfloat16, named by the dtype string of
// the ops.Custom call, read and written one value at a time in fp32.
#pragma once

#include <cstdint>
#include <cstring>

#include "formats.h"

namespace glm3 {

enum class Act { Unknown, F32, F16, BF16 };

inline Act act_type(const char* dtype) {
  if (std::strcmp(dtype, "float32") == 0) return Act::F32;
  if (std::strcmp(dtype, "float16") == 0) return Act::F16;
  if (std::strcmp(dtype, "bfloat16") == 0) return Act::BF16;
  return Act::Unknown;
}

inline int act_bytes(Act type) { return type == Act::F32 ? 4 : 2; }

inline float load_value(const void* p, Act type, int64_t i) {
  if (type == Act::F32) return static_cast<const float*>(p)[i];
  const uint16_t bits = static_cast<const uint16_t*>(p)[i];
  return type == Act::F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

inline void store_value(void* p, Act type, int64_t i, float v) {
  if (type == Act::F32) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = type == Act::F16 ? f32_to_f16(v) : f32_to_bf16(v);
}

// VL values from element i on, as fp32 lanes.
inline vf load_vector(const void* p, Act type, int64_t i) {
  if (type == Act::F32) return load_f32(static_cast<const float*>(p) + i);
  if (type == Act::F16) return load_f16(static_cast<const uint16_t*>(p) + i);
  return load_bf16(static_cast<const uint16_t*>(p) + i);
}

inline int64_t leading_rows(int ndim, const int64_t* shape) {
  int64_t rows = 1;
  for (int d = 0; d + 1 < ndim; ++d) rows *= shape[d];
  return rows;
}

}  // namespace glm3
