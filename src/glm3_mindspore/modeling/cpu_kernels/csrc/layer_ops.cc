// The small operations of a layer, for inference on CPU, each in one op. In a
// decode step the portable versions (reference_ops) are several MindSpore CPU
// kernel launches for a few thousand values each (and float16's are slow
// ones); these read their input once and compute in fp32 as upstream does.
//   RmsNorm: y = w * (x * rsqrt(mean(x^2) + eps))     (eight ops)
//   SwiGlu:  y = silu(gate) * up, x = [gate | up]     (split, SiLU, product)
// Activations may be float32, float16 or bfloat16; results are in x's dtype.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activations.h"
#include "pool.h"

namespace glm3 {

// A decode step's few rows run on the calling thread: waking the other costs more.
template <class Rows>
static void over_rows(int64_t rows, int64_t values, Rows run) {
  if (values < (1 << 16)) run(0, rows);
  else parallel_ranges(rows, run);
}

static void norm_rows(const void* x, Act type, const float* w, float eps, int64_t first, int64_t last,
                      int64_t H, void* y) {
  for (int64_t m = first; m < last; ++m) {
    const int64_t base = m * H;
    float sum = 0.f;
    if (type == Act::F32) {
      const float* row = static_cast<const float*>(x) + base;
      vf acc = {};
      const int64_t hv = H / VL * VL;
      for (int64_t k = 0; k < hv; k += VL) { const vf v = load_f32(row + k); acc += v * v; }
      sum = sum_lanes(acc);
      for (int64_t k = hv; k < H; ++k) sum += row[k] * row[k];
    } else {
      for (int64_t k = 0; k < H; ++k) { const float v = load_value(x, type, base + k); sum += v * v; }
    }
    const float r = 1.f / std::sqrt(sum / static_cast<float>(H) + eps);
    for (int64_t k = 0; k < H; ++k) store_value(y, type, base + k, w[k] * (load_value(x, type, base + k) * r));
  }
}

static void swiglu_rows(const void* x, Act type, int64_t first, int64_t last, int64_t F, void* y) {
  for (int64_t m = first; m < last; ++m)
    for (int64_t k = 0; k < F; ++k) {
      const float gate = load_value(x, type, m * 2 * F + k), up = load_value(x, type, m * 2 * F + F + k);
      store_value(y, type, m * F + k, gate / (1.f + std::exp(-gate)) * up);
    }
}

}  // namespace glm3

using namespace glm3;

// ops.Custom(func_type="aot"): inputs then the output; 1 = bad shapes, 2 = bad dtypes.

// Inputs x [..., H], weight [H], eps float32 [1]; output like x.
extern "C" int RmsNorm(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                       void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 4 || ndims[0] < 1 || ndims[1] != 1 || ndims[2] != 1) return 1;
  const int64_t H = shapes[0][ndims[0] - 1];
  if (shapes[1][0] != H || H <= 0) return 1;
  const Act type = act_type(dtypes[0]), w_type = act_type(dtypes[1]);
  if (type == Act::Unknown || w_type == Act::Unknown || std::strcmp(dtypes[2], "float32") != 0) return 2;
  const int64_t rows = leading_rows(ndims[0], shapes[0]);
  thread_local std::vector<float> w32;  // kept between calls: every norm of every step comes through here
  w32.resize(H);
  for (int64_t k = 0; k < H; ++k) w32[k] = load_value(params[1], w_type, k);
  const float* w = w32.data();  // the workers' own thread_local copies are not this one
  const float eps = *static_cast<const float*>(params[2]);
  over_rows(rows, rows * H, [&](int64_t first, int64_t last) {
    norm_rows(params[0], type, w, eps, first, last, H, params[3]);
  });
  return 0;
}

// Input x [..., 2F]; output [..., F] like x.
extern "C" int SwiGlu(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                      void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 2 || ndims[0] < 1 || shapes[0][ndims[0] - 1] % 2 != 0) return 1;
  const Act type = act_type(dtypes[0]);
  if (type == Act::Unknown) return 2;
  const int64_t F = shapes[0][ndims[0] - 1] / 2, rows = leading_rows(ndims[0], shapes[0]);
  over_rows(rows, rows * F, [&](int64_t first, int64_t last) { swiglu_rows(params[0], type, first, last, F, params[1]); });
  return 0;
}
