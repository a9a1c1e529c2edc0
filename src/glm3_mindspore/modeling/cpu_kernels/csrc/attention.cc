// Attention over the static KV cache in one op, for inference on CPU.
//
// A decode step's attention is, in portable ops (reference_ops.apply_rotary,
// StaticCache.update, reference_ops.attention), some forty MindSpore CPU
// kernel launches per layer for a few hundred kilobytes of work; here it is
// one call that
//   1. turns the new keys by the rotary angles and writes them, and the new
//      values, into the cache at each token's slot (in place: the cache
//      buffers are parameters, and the op is declared to write memory);
//   2. turns the queries and, per head, reads the slots the bias allows
//      (head h reads key/value group h / (H / G)), softmax in fp32, and
//      writes the context in [R, S, H * D], the layout the dense layer reads.
// Masked slots are skipped (their softmax weight is exactly 0 in the
// reference); a query that may read no slot gets the mean of all values, the
// reference's uniform distribution.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "activations.h"
#include "pool.h"

namespace glm3 {

struct Shapes {
  int64_t R, S, H, G, D, half, B, L, K;
};

// Rotate the first 2 * half values of a head in interleaved pairs (upstream's
// apply_rotary_pos_emb); the rest pass through. `in` is read in `type`.
static void rotate_head(const void* in, Act type, int64_t at, const float* cos, const float* sin, int64_t half,
                        int64_t D, float* out) {
  for (int64_t i = 0; i < half; ++i) {
    const float x0 = load_value(in, type, at + 2 * i), x1 = load_value(in, type, at + 2 * i + 1);
    out[2 * i] = x0 * cos[i] - x1 * sin[i];
    out[2 * i + 1] = x1 * cos[i] + x0 * sin[i];
  }
  for (int64_t j = 2 * half; j < D; ++j) out[j] = load_value(in, type, at + j);
}

static void write_cache(const void* mixed, Act type, const float* cos, const float* sin, const int32_t* slots,
                        const int32_t* rows, const Shapes& d, void* key_cache, void* value_cache, Act cache_type) {
  std::vector<float> turned(d.D);
  const int64_t width = (d.H + 2 * d.G) * d.D;
  for (int64_t r = 0; r < d.R; ++r)
    for (int64_t s = 0; s < d.S; ++s) {
      const int64_t token = r * d.S + s, slot = slots[token], b = rows[r];
      for (int64_t g = 0; g < d.G; ++g) {
        const int64_t at = ((b * d.G + g) * d.L + slot) * d.D;
        rotate_head(mixed, type, token * width + (d.H + g) * d.D, cos + token * d.half, sin + token * d.half,
                    d.half, d.D, turned.data());
        for (int64_t j = 0; j < d.D; ++j) {
          store_value(key_cache, cache_type, at + j, turned[j]);
          store_value(value_cache, cache_type, at + j, load_value(mixed, type, token * width + (d.H + d.G + g) * d.D + j));
        }
      }
    }
}

static float dot(const float* q, const void* cache, Act type, int64_t at, int64_t D) {
  const int64_t dv = D / VL * VL;
  vf acc = {};
  for (int64_t j = 0; j < dv; j += VL) acc += load_f32(q + j) * load_vector(cache, type, at + j);
  float sum = sum_lanes(acc);
  for (int64_t j = dv; j < D; ++j) sum += q[j] * load_value(cache, type, at + j);
  return sum;
}

static void add_scaled(float* out, float p, const void* cache, Act type, int64_t at, int64_t D) {
  const int64_t dv = D / VL * VL;
  const vf pv = broadcast(p);
  for (int64_t j = 0; j < dv; j += VL) store_f32(out + j, load_f32(out + j) + pv * load_vector(cache, type, at + j));
  for (int64_t j = dv; j < D; ++j) out[j] += p * load_value(cache, type, at + j);
}

// Heads [first, last) of the flattened (row, head) pairs, every query of each.
static void attend_heads(int64_t first, int64_t last, const void* mixed, Act type, const float* cos, const float* sin,
                         const int32_t* rows, const float* bias, const Shapes& d, const void* key_cache,
                         const void* value_cache, Act cache_type, void* context) {
  std::vector<float> q(d.D), out(d.D), scores(d.K);
  std::vector<int32_t> readable(d.K);
  const int64_t width = (d.H + 2 * d.G) * d.D, per_group = d.H / d.G;
  const float scale = 1.f / std::sqrt(static_cast<float>(d.D));
  for (int64_t unit = first; unit < last; ++unit) {
    const int64_t r = unit / d.H, h = unit % d.H, b = rows[r], g = h / per_group;
    const int64_t base = (b * d.G + g) * d.L * d.D;  // slot 0 of this row and group
    for (int64_t s = 0; s < d.S; ++s) {
      const int64_t token = r * d.S + s;
      rotate_head(mixed, type, token * width + h * d.D, cos + token * d.half, sin + token * d.half, d.half, d.D,
                  q.data());
      for (int64_t j = 0; j < d.D; ++j) q[j] *= scale;
      const float* allowed = bias + token * d.K;
      int64_t count = 0;
      float top = -INFINITY;
      for (int64_t k = 0; k < d.K; ++k) {
        if (allowed[k] < -1e30f) continue;
        const float score = dot(q.data(), key_cache, cache_type, base + k * d.D, d.D) + allowed[k];
        readable[count] = static_cast<int32_t>(k);
        scores[count++] = score;
        top = std::max(top, score);
      }
      std::fill(out.begin(), out.end(), 0.f);
      if (count == 0) {  // nothing readable: the reference's softmax is uniform over every slot
        for (int64_t k = 0; k < d.K; ++k) add_scaled(out.data(), 1.f / d.K, value_cache, cache_type, base + k * d.D, d.D);
      } else {
        float total = 0.f;
        for (int64_t i = 0; i < count; ++i) total += (scores[i] = std::exp(scores[i] - top));
        const float norm = 1.f / total;
        for (int64_t i = 0; i < count; ++i)
          add_scaled(out.data(), scores[i] * norm, value_cache, cache_type, base + readable[i] * d.D, d.D);
      }
      for (int64_t j = 0; j < d.D; ++j) store_value(context, type, token * d.H * d.D + h * d.D + j, out[j]);
    }
  }
}

}  // namespace glm3

using namespace glm3;

// ops.Custom(func_type="aot"): inputs then the output; 1 = bad shapes, 2 = bad dtypes, 3 = a slot or row
// outside the cache.
// Inputs: mixed [R, S, (H + 2G) * D] (the fused projection), cos and sin float32 [R, S, 1, half], key and
// value caches [B, G, L, D], slots int32 [R, S], rows int32 [R] (the cache row of each input row), bias
// float32 [R, 1, 1, S, K] with K <= L (0 where a query may read a slot); output context [R, S, H * D].
extern "C" int CachedAttention(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                               void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 9 || ndims[0] != 3 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 4 || ndims[4] != 4 ||
      ndims[5] != 2 || ndims[6] != 1 || ndims[7] != 5 || ndims[8] != 3)
    return 1;
  Shapes d;
  d.R = shapes[0][0]; d.S = shapes[0][1];
  d.B = shapes[3][0]; d.G = shapes[3][1]; d.L = shapes[3][2]; d.D = shapes[3][3];
  d.half = shapes[1][3]; d.K = shapes[7][4];
  if (d.G <= 0 || d.D <= 0 || shapes[0][2] % d.D != 0) return 1;
  d.H = shapes[0][2] / d.D - 2 * d.G;
  if (d.H <= 0 || d.H % d.G != 0 || 2 * d.half > d.D || d.K > d.L || d.K <= 0) return 1;
  for (int i = 1; i <= 2; ++i)
    if (shapes[i][0] != d.R || shapes[i][1] != d.S || shapes[i][2] != 1) return 1;
  for (int i = 0; i < 4; ++i)
    if (shapes[4][i] != shapes[3][i]) return 1;
  if (shapes[5][0] != d.R || shapes[5][1] != d.S || shapes[6][0] != d.R || shapes[7][0] != d.R ||
      shapes[7][3] != d.S || shapes[8][0] != d.R || shapes[8][1] != d.S || shapes[8][2] != d.H * d.D)
    return 1;
  const Act type = act_type(dtypes[0]), cache_type = act_type(dtypes[3]);
  if (type == Act::Unknown || cache_type == Act::Unknown || act_type(dtypes[4]) != cache_type ||
      act_type(dtypes[8]) != type || std::strcmp(dtypes[1], "float32") != 0 || std::strcmp(dtypes[2], "float32") != 0 ||
      std::strcmp(dtypes[5], "int32") != 0 || std::strcmp(dtypes[6], "int32") != 0 ||
      std::strcmp(dtypes[7], "float32") != 0)
    return 2;
  const auto* cos = static_cast<const float*>(params[1]);
  const auto* sin = static_cast<const float*>(params[2]);
  const auto* slots = static_cast<const int32_t*>(params[5]);
  const auto* rows = static_cast<const int32_t*>(params[6]);
  const auto* bias = static_cast<const float*>(params[7]);
  for (int64_t r = 0; r < d.R; ++r) {
    if (rows[r] < 0 || rows[r] >= d.B) return 3;
    for (int64_t s = 0; s < d.S; ++s)
      if (slots[r * d.S + s] < 0 || slots[r * d.S + s] >= d.L) return 3;
  }
  write_cache(params[0], type, cos, sin, slots, rows, d, params[3], params[4], cache_type);
  const int64_t units = d.R * d.H;
  auto run = [&](int64_t first, int64_t last) {
    attend_heads(first, last, params[0], type, cos, sin, rows, bias, d, params[3], params[4], cache_type, params[8]);
  };
  if (units * d.S * d.K * d.D < (1 << 18)) run(0, units);  // too little to wake the other thread for
  else parallel_ranges(units, run);
  return 0;
}
