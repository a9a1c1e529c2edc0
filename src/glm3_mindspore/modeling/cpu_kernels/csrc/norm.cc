// RmsNorm: upstream's RMSNorm for inference on CPU in one op. In a decode step
// the portable version is eight MindSpore ops a norm (casts, square, mean,
// rsqrt, two products), each a separate CPU kernel launch for 4096 values;
// this reads x once for the statistics and once for the result.
//
// y = (w * (x * rsqrt(mean(x^2) + eps))) in x's dtype, statistics and scaling
// in fp32 as upstream computes them.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "formats.h"
#include "pool.h"

namespace glm3 {

static size_t dtype_code(const char* dtype) {  // 0 unknown, 1 float32, 2 float16, 3 bfloat16
  if (std::strcmp(dtype, "float32") == 0) return 1;
  if (std::strcmp(dtype, "float16") == 0) return 2;
  if (std::strcmp(dtype, "bfloat16") == 0) return 3;
  return 0;
}

static inline float value_at(const void* p, size_t code, int64_t i) {
  if (code == 1) return static_cast<const float*>(p)[i];
  const uint16_t bits = static_cast<const uint16_t*>(p)[i];
  return code == 2 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

static inline uint16_t f32_to_bf16(float v) {  // round to nearest even, as MindSpore's cast does
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return static_cast<uint16_t>((u >> 16) | ((u & 0xFFFFu) ? 0x40u : 0u));
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static void norm_rows(const void* x, size_t x_code, const float* w, float eps, int64_t first, int64_t last,
                      int64_t H, void* y) {
  for (int64_t m = first; m < last; ++m) {
    const int64_t base = m * H;
    float r;
    if (x_code == 1) {
      const float* row = static_cast<const float*>(x) + base;
      vf acc = {};
      const int64_t hv = H / VL * VL;
      for (int64_t k = 0; k < hv; k += VL) { const vf v = load_f32(row + k); acc += v * v; }
      float sum = sum_lanes(acc);
      for (int64_t k = hv; k < H; ++k) sum += row[k] * row[k];
      r = 1.f / std::sqrt(sum / static_cast<float>(H) + eps);
      float* out = static_cast<float*>(y) + base;
      for (int64_t k = 0; k < H; ++k) out[k] = w[k] * (row[k] * r);
      continue;
    }
    float sum = 0.f;
    for (int64_t k = 0; k < H; ++k) { const float v = value_at(x, x_code, base + k); sum += v * v; }
    r = 1.f / std::sqrt(sum / static_cast<float>(H) + eps);
    uint16_t* out = static_cast<uint16_t*>(y) + base;
    for (int64_t k = 0; k < H; ++k) {
      const float v = w[k] * (value_at(x, x_code, base + k) * r);
      out[k] = x_code == 2 ? f32_to_f16(v) : f32_to_bf16(v);
    }
  }
}

}  // namespace glm3

using namespace glm3;

// Inputs x [..., H] (float32, float16 or bfloat16), weight [H] (any of those),
// eps float32 [1]; output like x. 1 = bad shapes, 2 = bad dtypes.
extern "C" int RmsNorm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                       void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 4 || ndims[0] < 1 || ndims[1] != 1 || ndims[2] != 1) return 1;
  const int64_t H = shapes[0][ndims[0] - 1];
  if (shapes[1][0] != H || H <= 0) return 1;
  const size_t x_code = dtype_code(dtypes[0]), w_code = dtype_code(dtypes[1]);
  if (x_code == 0 || w_code == 0 || std::strcmp(dtypes[2], "float32") != 0) return 2;
  int64_t rows = 1;
  for (int d = 0; d + 1 < ndims[0]; ++d) rows *= shapes[0][d];
  std::vector<float> w(H);
  for (int64_t k = 0; k < H; ++k) w[k] = value_at(params[1], w_code, k);
  const float eps = *static_cast<const float*>(params[2]);
  if (rows * H < (1 << 16)) {  // a decode step's few rows: waking the other thread costs more
    norm_rows(params[0], x_code, w.data(), eps, 0, rows, H, params[3]);
  } else {
    parallel_ranges(rows, [&](int64_t first, int64_t last) {
      norm_rows(params[0], x_code, w.data(), eps, first, last, H, params[3]);
    });
  }
  return 0;
}
