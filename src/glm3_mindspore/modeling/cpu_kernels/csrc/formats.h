// Vectors of the host's native width and the weight formats the kernels read.
//
// A weight is a matrix W [N, K] stored row by row (PyTorch's Linear layout) in
// one of five formats; each format type reads VL consecutive values of a row
// as fp32 lanes, so the products never hold a widened copy of a weight:
//   float32, float16, bfloat16   as stored;
//   int8    values q [N, K] and one float16 scale per row:      w = q * scale[n];
//   int4    two values a byte (element 2i in the low nibble of byte i, both
//           two's complement), rows padded to whole groups, and one float16
//           scale per group of G values of a row:               w = q * scale[n, k / G].
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace glm3 {

// Lanes per vector: 16 with AVX-512, else 8 (two 128-bit registers on NEON).
// GLM3_VL may force either, so the 16-lane code is tested on AVX2 hosts too.
#if !defined(GLM3_VL)
#if defined(__AVX512F__)
#define GLM3_VL 16
#else
#define GLM3_VL 8
#endif
#endif
constexpr int VL = GLM3_VL;
static_assert(VL == 8 || VL == 16, "GLM3_VL must be 8 or 16");

// Whole 512-bit vectors: the widening loads below and the 8-row tile of the
// products. A macro, because the preprocessor cannot read VL (a constexpr:
// "#if VL == 16" is always false, which once compiled AVX-512 hosts' 16-bit
// and int8 loads as pairs of 256-bit halves through the stack, 4x slower).
#if GLM3_VL == 16 && defined(__AVX512F__)
#define GLM3_AVX512 1
#else
#define GLM3_AVX512 0
#endif

typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));
typedef uint32_t vu __attribute__((vector_size(4 * VL)));
typedef uint16_t vh __attribute__((vector_size(2 * VL)));
typedef int8_t vb __attribute__((vector_size(VL)));

inline vf load_f32(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store_f32(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf broadcast(float s) { return s - vf{}; }  // exact (s - 0 is s, also for -0.0), so it folds to a splat

inline float sum_lanes(vf v) {
  float s = 0.f;
  for (int i = 0; i < VL; ++i) s += v[i];
  return s;
}

inline float f16_to_f32(uint16_t bits) { _Float16 h; std::memcpy(&h, &bits, 2); return static_cast<float>(h); }
inline uint16_t f32_to_f16(float v) { _Float16 h = static_cast<_Float16>(v); uint16_t bits; std::memcpy(&bits, &h, 2); return bits; }
inline float bf16_to_f32(uint16_t bits) { uint32_t u = static_cast<uint32_t>(bits) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline uint16_t f32_to_bf16(float v) {  // round to nearest even, as MindSpore's cast does; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return static_cast<uint16_t>((u >> 16) | ((u & 0xFFFFu) ? 0x40u : 0u));
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline vf load_f16(const uint16_t* p) {
#if defined(__F16C__)
  vf out;
#if GLM3_AVX512
  __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  std::memcpy(&out, &v, sizeof out);
#else
  for (int i = 0; i < VL / 8; ++i) {
    __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * i)));
    std::memcpy(reinterpret_cast<char*>(&out) + 32 * i, &v, 32);
  }
#endif
  return out;
#else
  vf out;
  for (int i = 0; i < VL; ++i) out[i] = f16_to_f32(p[i]);
  return out;
#endif
}

inline vf load_bf16(const uint16_t* p) {  // bf16 is the top half of an fp32
#if defined(__AVX2__)  // one widening load per 8 lanes (GCC's generic code takes three shuffles)
  vu bits;
#if GLM3_AVX512
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  std::memcpy(&bits, &wide, sizeof bits);
#else
  for (int i = 0; i < VL / 8; ++i) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * i)));
    std::memcpy(reinterpret_cast<char*>(&bits) + 32 * i, &wide, 32);
  }
#endif
  bits = bits << 16;
#else
  vh h; std::memcpy(&h, p, sizeof h);
  vu bits = __builtin_convertvector(h, vu) << 16;
#endif
  vf v; std::memcpy(&v, &bits, sizeof v); return v;
}

inline vf load_i8(const int8_t* p) {
#if defined(__AVX2__)  // GCC widens a byte vector lane by lane; the sign-extending load does it at once
  vi v;
#if GLM3_AVX512
  __m512i wide = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  std::memcpy(&v, &wide, sizeof v);
#else
  for (int i = 0; i < VL / 8; ++i) {
    __m256i wide = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * i)));
    std::memcpy(reinterpret_cast<char*>(&v) + 32 * i, &wide, 32);
  }
#endif
  return __builtin_convertvector(v, vf);
#else
  vb b; std::memcpy(&b, p, sizeof b);
  return __builtin_convertvector(__builtin_convertvector(b, vi), vf);
#endif
}

// VL int4 values from VL / 2 bytes: each lane takes the 32-bit word holding its
// value, shifts the value's nibble to the top and shifts back arithmetically.
inline vf load_i4(const uint8_t* p) {
  uint32_t words[VL / 8];
  std::memcpy(words, p, sizeof words);
  vi v;
  if constexpr (VL == 8) {
    v = vi{} + static_cast<int32_t>(words[0]);
  } else {
    for (int i = 0; i < VL; ++i) v[i] = static_cast<int32_t>(words[i / 8]);
  }
  vi shift;
  for (int i = 0; i < VL; ++i) shift[i] = 28 - 4 * (i % 8);
  return __builtin_convertvector((v << shift) >> 28, vf);
}

inline int i4_at(const uint8_t* row, int64_t k) {
  const int nibble = (row[k / 2] >> (4 * (k % 2))) & 0xF;
  return nibble >= 8 ? nibble - 16 : nibble;
}

// ---------------------------------------------------------------------------
// Weight formats. Each has: load(n, k) -> VL unscaled values of row n from k
// (k a multiple of VL); at(n, k) -> one unscaled value; address(n, k) -> where
// value k of row n is stored (for prefetching; the ungrouped formats also say
// how many values a cache line holds, kPerLine); and its scaling:
// kGrouped formats scale each group of `group` values by group_scale(n, g),
// kRowScaled formats scale a whole row by row_scale(n).

struct DenseF32 {
  static constexpr int64_t kPerLine = 16;  // values in a 64-byte cache line
  static constexpr bool kGrouped = false, kRowScaled = false;
  const float* w; int64_t K;
  vf load(int64_t n, int64_t k) const { return load_f32(w + n * K + k); }
  const void* address(int64_t n, int64_t k) const { return w + n * K + k; }
  float at(int64_t n, int64_t k) const { return w[n * K + k]; }
  float row_scale(int64_t) const { return 1.f; }
};

struct DenseF16 {
  static constexpr int64_t kPerLine = 32;  // values in a 64-byte cache line
  static constexpr bool kGrouped = false, kRowScaled = false;
  const uint16_t* w; int64_t K;
  vf load(int64_t n, int64_t k) const { return load_f16(w + n * K + k); }
  const void* address(int64_t n, int64_t k) const { return w + n * K + k; }
  float at(int64_t n, int64_t k) const { return f16_to_f32(w[n * K + k]); }
  float row_scale(int64_t) const { return 1.f; }
};

struct DenseBF16 {
  static constexpr int64_t kPerLine = 32;  // values in a 64-byte cache line
  static constexpr bool kGrouped = false, kRowScaled = false;
  const uint16_t* w; int64_t K;
  vf load(int64_t n, int64_t k) const { return load_bf16(w + n * K + k); }
  const void* address(int64_t n, int64_t k) const { return w + n * K + k; }
  float at(int64_t n, int64_t k) const { return bf16_to_f32(w[n * K + k]); }
  float row_scale(int64_t) const { return 1.f; }
};

struct Int8Rows {
  static constexpr int64_t kPerLine = 64;  // values in a 64-byte cache line
  static constexpr bool kGrouped = false, kRowScaled = true;
  const int8_t* w; const uint16_t* scale; int64_t K;
  vf load(int64_t n, int64_t k) const { return load_i8(w + n * K + k); }
  const void* address(int64_t n, int64_t k) const { return w + n * K + k; }
  float at(int64_t n, int64_t k) const { return static_cast<float>(w[n * K + k]); }
  float row_scale(int64_t n) const { return f16_to_f32(scale[n]); }
};

struct Int4Rows {
  static constexpr bool kGrouped = true, kRowScaled = false;
  const uint8_t* w; const uint16_t* scale; int64_t K, row_bytes, groups, group;
  vf load(int64_t n, int64_t k) const { return load_i4(w + n * row_bytes + (k >> 1)); }  // k >= 0
  const void* address(int64_t n, int64_t k) const { return w + n * row_bytes + (k >> 1); }
  float at(int64_t n, int64_t k) const { return static_cast<float>(i4_at(w + n * row_bytes, k)); }
  float group_scale(int64_t n, int64_t g) const { return f16_to_f32(scale[n * groups + g]); }
  float row_scale(int64_t) const { return 1.f; }
};

}  // namespace glm3
