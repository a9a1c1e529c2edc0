// y = x W^T for the linear layers of inference, reading W in its stored format
// (formats.h) so no widened copy of a weight is ever made.
//
// Two paths, chosen by the number of rows M of x:
//   streaming (M <= stream_max_rows, decoding): every weight row is read
//     once per call from memory and multiplied with all M rows of x while it
//     is in registers or L1; for one row the speed is the rate at which
//     weights stream, from two rows on the FMA rate of a register tile.
//   blocked (larger M, prompts): panels of W are converted to fp32 in a
//     per-thread buffer that stays in L2 and multiplied with packed panels of
//     x by a register-blocked micro-kernel; the speed is the FMA rate.
// Both accumulate in fp32; x and y are fp32, or fp16 converted at the edges.
// Where the best choice differs between CPUs (the crossover M, rows per block
// for one row of x), the values are measured when the library is first built
// (cpu_kernels/build.py) and set through glm3_configure.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <type_traits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "formats.h"
#include "pool.h"

namespace glm3 {

struct Tuning {
  int stream_max_rows = 8;    // largest M on the streaming path
  int rows_per_block_one = 4;  // weight rows per tile when M == 1 (2, 4 or 8)
};
static Tuning tuning;

// ----------------------------------------------------------------- streaming
// Rows of a weight are short (2-16 KB) and a tile reads a few at a time, too
// few bytes per stream for the hardware prefetchers to reach full speed
// (int4 decoding ran at half the memory bound without this): every step also
// asks for the same place R rows on, what the next tile reads.
template <int R, class F>
static inline void prefetch_next_rows(const F& f, int64_t n0, int64_t k) {
  for (int r = 0; r < R; ++r) __builtin_prefetch(f.address(n0 + R + r, k), 0, 3);
}

// out[m * ldo + r] += sum_k x[m, k] * w[n0 + r, k] over k in [k0, k1), for MT
// rows of x (stride K) and R weight rows. k0 is a multiple of the group size.
template <int MT, int R, class F>
static inline void stream_tile(const F& f, const float* x, int64_t K, int64_t n0, int64_t k0, int64_t k1,
                               float* out, int64_t ldo) {
  vf acc[MT][R] = {};
  float tail[MT][R] = {};
  if constexpr (F::kGrouped) {
    for (int64_t g0 = k0, g = k0 / f.group; g0 < k1; g0 += f.group, ++g) {
      const int64_t g1 = std::min(g0 + f.group, k1), gv = g0 + (g1 - g0) / VL * VL;
      float s[R];
      for (int r = 0; r < R; ++r) s[r] = f.group_scale(n0 + r, g);
      if constexpr (MT == 1) {  // scale once per group: one multiply per group instead of per vector
        vf part[R] = {};
        for (int64_t k = g0; k < gv; k += VL) {
          prefetch_next_rows<R>(f, n0, k);
          const vf xv = load_f32(x + k);
          for (int r = 0; r < R; ++r) part[r] += xv * f.load(n0 + r, k);
        }
        for (int r = 0; r < R; ++r) acc[0][r] += part[r] * s[r];
      } else {
        for (int64_t k = g0; k < gv; k += VL) {
          prefetch_next_rows<R>(f, n0, k);
          vf wv[R];
          for (int r = 0; r < R; ++r) wv[r] = f.load(n0 + r, k) * s[r];
          for (int m = 0; m < MT; ++m) {
            const vf xv = load_f32(x + m * K + k);
            for (int r = 0; r < R; ++r) acc[m][r] += xv * wv[r];
          }
        }
      }
      for (int64_t k = gv; k < g1; ++k)
        for (int r = 0; r < R; ++r) {
          const float wk = f.at(n0 + r, k) * s[r];
          for (int m = 0; m < MT; ++m) tail[m][r] += x[m * K + k] * wk;
        }
    }
  } else {
    const int64_t kv = k0 + (k1 - k0) / VL * VL;
    for (int64_t k = k0; k < kv; k += VL) {
      prefetch_next_rows<R>(f, n0, k);
      vf wv[R];
      for (int r = 0; r < R; ++r) wv[r] = f.load(n0 + r, k);
      for (int m = 0; m < MT; ++m) {
        const vf xv = load_f32(x + m * K + k);
        for (int r = 0; r < R; ++r) acc[m][r] += xv * wv[r];
      }
    }
    for (int64_t k = kv; k < k1; ++k)
      for (int r = 0; r < R; ++r) {
        const float wk = f.at(n0 + r, k);
        for (int m = 0; m < MT; ++m) tail[m][r] += x[m * K + k] * wk;
      }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) out[m * ldo + r] += (sum_lanes(acc[m][r]) + tail[m][r]) * f.row_scale(n0 + r);
}

// All rows of x against weight rows [n0, n0 + R), over k in [k0, k1): up to
// four rows of x at a time, so the tile's accumulators fit the registers.
template <int R, class F>
static inline void stream_block(const F& f, const float* x, int64_t M, int64_t N, int64_t K, int64_t n0,
                                int64_t k0, int64_t k1, float* y) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) stream_tile<4, (R > 2 ? 2 : R)>(f, x + m * K, K, n0, k0, k1, y + m * N + n0, N);
  switch (M - m) {
    case 3: stream_tile<3, (R > 2 ? 2 : R)>(f, x + m * K, K, n0, k0, k1, y + m * N + n0, N); break;
    case 2: stream_tile<2, (R > 4 ? 4 : R)>(f, x + m * K, K, n0, k0, k1, y + m * N + n0, N); break;
    case 1: stream_tile<1, R>(f, x + m * K, K, n0, k0, k1, y + m * N + n0, N); break;
    default: break;
  }
}

// The R-row blocks above split R into tiles of at most 2 or 4 rows for
// several rows of x; this walks a block in those tiles.
template <int R, class F>
static inline void stream_rows(const F& f, const float* x, int64_t M, int64_t N, int64_t K, int64_t n0,
                               int64_t k0, int64_t k1, float* y) {
  if (M == 1) { stream_block<R>(f, x, M, N, K, n0, k0, k1, y); return; }
  const int step = M >= 3 ? 2 : (R > 4 ? 4 : R);
  for (int r = 0; r < R; r += step) {
    if (step == 2) stream_block<2>(f, x, M, N, K, n0 + r, k0, k1, y);
    else stream_block<(R > 4 ? 4 : R)>(f, x, M, N, K, n0 + r, k0, k1, y);
  }
}

template <int R, class F>
static void stream_linear_r(const F& f, const float* x, int64_t M, int64_t N, int64_t K, float* y) {
  // Several rows of x: walk K in chunks, so that the rows' chunk of x and the
  // block's chunk of weights stay in L1 between the groups of x rows (each
  // weight streams from memory once).
  int64_t chunk = M == 1 ? K : 1024;
  if constexpr (F::kGrouped) chunk = M == 1 ? K : std::max<int64_t>(f.group, chunk / f.group * f.group);
  const int64_t blocks = N / R;
  parallel_ranges(blocks + (N % R ? 1 : 0), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < std::min(last, blocks); ++b)
      for (int64_t k0 = 0; k0 < K; k0 += chunk) stream_rows<R>(f, x, M, N, K, b * R, k0, std::min(K, k0 + chunk), y);
    if (last > blocks)  // the rows that do not fill a block
      for (int64_t n = blocks * R; n < N; ++n)
        for (int64_t k0 = 0; k0 < K; k0 += chunk) stream_block<1>(f, x, M, N, K, n, k0, std::min(K, k0 + chunk), y);
  });
}

// Several rows of x on an ungrouped format. The product is bound by the FMA
// rate, not by memory, so the tile is shaped for the registers: MT rows of x
// by R weight rows (4 x 3, or 2 x 4 for two rows: at most 12 accumulators, the
// weight vectors and the x vector in 16 registers; 8 x 3 in AVX-512's 32,
// see TILE_ROWS), each x vector loaded once
// for the R products, and one prefetch per cache line of the next tile's rows
// (one per vector, as the one-row tile does, takes load slots the products
// need). Each tile walks all of K: the rows of x stay in L2 and the weight
// rows stream end to end. Grouped formats (int4 without the int8-activation
// product) keep the one-row tiles above, in blocks of 2-4 rows.
template <int MT, int R, class F>
static inline void many_rows_tile(const F& f, const float* x, int64_t K, int64_t n0, float* y, int64_t N) {
  vf acc[MT][R] = {};
  const int64_t kv = K / VL * VL;
  for (int64_t k = 0; k < kv; k += VL) {
    if (k % F::kPerLine == 0)
      for (int r = 0; r < R; ++r) __builtin_prefetch(f.address(n0 + R + r, k), 0, 3);
    vf wv[R];
    for (int r = 0; r < R; ++r) wv[r] = f.load(n0 + r, k);
    for (int m = 0; m < MT; ++m) {
      vf xv = load_f32(x + m * K + k);
#if defined(__x86_64__) && ((GLM3_VL == 8 && defined(__AVX__)) || defined(__AVX512F__))
      __asm__("" : "+v"(xv));  // one register for the R products: GCC would fold a load into each
#endif
      for (int r = 0; r < R; ++r) acc[m][r] += xv * wv[r];
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) {
      float s = sum_lanes(acc[m][r]);
      for (int64_t k = kv; k < K; ++k) s += x[m * K + k] * f.at(n0 + r, k);
      y[m * N + n0 + r] = s * f.row_scale(n0 + r);
    }
}

// Rows of x a many-row tile takes: with AVX-512's 32 registers, 8 x 3
// accumulators fit beside the weight and x vectors, so each weight vector is
// converted once for eight rows; 16 registers hold a 4 x 3 tile.
#if GLM3_AVX512
constexpr int TILE_ROWS = 8;
#else
constexpr int TILE_ROWS = 4;
#endif

// All M rows of x against weight rows [n0, n0 + R): TILE_ROWS rows of x at a time.
template <int R, class F>
static inline void many_rows_block(const F& f, const float* x, int64_t M, int64_t N, int64_t K, int64_t n0, float* y) {
  int64_t m = 0;
  if constexpr (TILE_ROWS == 8)
    for (; m + 8 <= M; m += 8) many_rows_tile<8, R>(f, x + m * K, K, n0, y + m * N, N);
  for (; m + 4 <= M; m += 4) many_rows_tile<4, R>(f, x + m * K, K, n0, y + m * N, N);
  switch (M - m) {
    case 3: many_rows_tile<3, R>(f, x + m * K, K, n0, y + m * N, N); break;
    case 2: many_rows_tile<2, R>(f, x + m * K, K, n0, y + m * N, N); break;
    case 1: many_rows_tile<1, R>(f, x + m * K, K, n0, y + m * N, N); break;
    default: break;
  }
}

template <int R, class F>
static void many_rows_linear_r(const F& f, const float* x, int64_t M, int64_t N, int64_t K, float* y) {
  const int64_t blocks = N / R;
  parallel_ranges(blocks + (N % R ? 1 : 0), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < std::min(last, blocks); ++b) many_rows_block<R>(f, x, M, N, K, b * R, y);
    if (last > blocks)  // the rows that do not fill a block
      for (int64_t n = blocks * R; n < N; ++n) many_rows_block<1>(f, x, M, N, K, n, y);
  });
}

template <class F>
static void many_rows_linear(const F& f, const float* x, int64_t M, int64_t N, int64_t K, float* y) {
  if (M == 2) many_rows_linear_r<4>(f, x, M, N, K, y);
  else many_rows_linear_r<3>(f, x, M, N, K, y);
}

template <class F>
static void stream_linear(const F& f, const float* x, int64_t M, int64_t N, int64_t K, float* y) {
  if constexpr (!F::kGrouped) {
    if (M > 1) return many_rows_linear(f, x, M, N, K, y);
  }
  std::fill(y, y + M * N, 0.f);
  const int rows = M == 1 ? tuning.rows_per_block_one : 4;
  if (rows == 8) stream_linear_r<8>(f, x, M, N, K, y);
  else if (rows == 2) stream_linear_r<2>(f, x, M, N, K, y);
  else stream_linear_r<4>(f, x, M, N, K, y);
}

// ------------------------------------------- int4 weights x int8 activations
// Decoding int4 weights by converting each to fp32 costs four vector
// instructions per eight weights, which on two AVX2 cores is several times
// slower than memory delivers them. As llama.cpp's q4_0 x q8_0 product does,
// the rows of x are instead quantized to int8 in blocks of 32 (one fp32 scale
// a block), and the weights are multiplied a span at a time by byte-wise
// integer dot products (exact int32 sums inside a block), scaled and
// accumulated in fp32. A span is 64 weights (one 32-byte load, vpmaddubsw) on
// AVX2, 128 (one 64-byte load, AVX-512 VNNI's vpdpbusd, which also does the
// pairwise widening) where the CPU has it: about 1.2 and 0.5 instructions per
// eight weights.
// The nibbles are read unsigned (q + 8, flipping their sign bits); the
// 8 * sum(x) this adds is subtracted per group. Used for groups of a multiple
// of the span.
#if defined(__AVX2__)
constexpr int64_t AVX2_SPAN = 64;  // weights per 32-byte load: byte i of a span holds elements 2i and 2i + 1
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int64_t VNNI_SPAN = 128;  // weights per 64-byte load, laid out alike
#endif
constexpr int64_t XBLOCK = 32;  // activations per int8 scale

// Rows of x as the int4 product reads them: per span, the even elements' int8
// values (`even`), the odd ones' (`odd`), and the scale of each int32 lane's
// block (lane j of the product covers the span's elements 8j to 8j + 7).
// One per thread, reused: a decode step quantizes a few hundred rows.
struct QuantizedActivations {
  int64_t span = 0, spans = 0, groups = 0;
  std::vector<int8_t> even, odd;  // [M][spans][span / 2]
  std::vector<float> lane_scales;  // [M][spans][span / 8]
  std::vector<float> offsets;      // [M][groups]: 8 * sum over the group's blocks of scale * sum(q)
  const int8_t* even_at(int64_t m, int64_t s) const { return &even[(m * spans + s) * (span / 2)]; }
  const int8_t* odd_at(int64_t m, int64_t s) const { return &odd[(m * spans + s) * (span / 2)]; }
  const float* scales_at(int64_t m, int64_t s) const { return &lane_scales[(m * spans + s) * (span / 8)]; }
};

// One block of XBLOCK activations, `n` of them real (the rest read as 0):
// int8 values round(x / scale), scale = max|x| / 127, the even elements to
// `even` and the odd ones to `odd`. Returns the scale; `sum` gets the
// values' sum. In vectors: the scalar loop with its division and rounding
// per element took longer than a small product.
static inline float quantize_block(const float* x, int64_t n, int8_t* even, int8_t* odd, int& sum) {
  static_assert(XBLOCK % VL == 0, "a block is whole vectors");
#if GLM3_AVX512
  if (n == XBLOCK) {  // a whole block: two vectors, rounded by the conversion (to nearest, ties to even)
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const float scale = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b))) / 127.f;
    __m512i qa = _mm512_setzero_si512(), qb = _mm512_setzero_si512();
    if (scale > 0.f) {
      const __m512 divisor = _mm512_set1_ps(scale);
      qa = _mm512_cvtps_epi32(_mm512_div_ps(a, divisor));
      qb = _mm512_cvtps_epi32(_mm512_div_ps(b, divisor));
    }
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(even), _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(qa, evens, qb)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(odd), _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(qa, odds, qb)));
    sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    return scale;
  }
#endif
  constexpr int kVectors = XBLOCK / VL;
  float values[XBLOCK] = {};
  std::memcpy(values, x, n * sizeof(float));
  vf v[kVectors], largest = vf{};
  for (int i = 0; i < kVectors; ++i) {
    v[i] = load_f32(values + i * VL);
    const vf magnitude = v[i] < 0 ? -v[i] : v[i];
    largest = magnitude > largest ? magnitude : largest;
  }
  float amax = 0.f;
  for (int i = 0; i < VL; ++i) amax = std::max(amax, largest[i]);
  const float scale = amax / 127.f;
  int32_t q[XBLOCK] = {};
  if (scale > 0.f) {
    // |x / scale| <= 127: adding and taking away 1.5 * 2^23 rounds to the nearest integer,
    // ties to even, as nearbyint does in the default rounding mode
    const vf magic = broadcast(12582912.f), divisor = broadcast(scale);
    for (int i = 0; i < kVectors; ++i) {
      const vi rounded = __builtin_convertvector((v[i] / divisor + magic) - magic, vi);
      std::memcpy(q + i * VL, &rounded, sizeof rounded);
    }
  }
  sum = 0;
  for (int i = 0; i < XBLOCK / 2; ++i) {
    even[i] = static_cast<int8_t>(q[2 * i]);
    odd[i] = static_cast<int8_t>(q[2 * i + 1]);
    sum += q[2 * i] + q[2 * i + 1];
  }
  return scale;
}

static const QuantizedActivations& quantize_activations(const float* x, int64_t M, int64_t K, int64_t groups,
                                                        int64_t group, int64_t span) {
  thread_local QuantizedActivations q;
  q.span = span;
  q.groups = groups;
  q.spans = groups * group / span;
  q.even.resize(M * q.spans * span / 2);
  q.odd.resize(M * q.spans * span / 2);
  q.lane_scales.resize(M * q.spans * span / 8);
  q.offsets.assign(M * groups, 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t s = 0; s < q.spans; ++s)
      for (int64_t b = 0; b < span / XBLOCK; ++b) {
        const int64_t k0 = s * span + b * XBLOCK, at = (m * q.spans + s) * (span / 2) + b * (XBLOCK / 2);
        int sum;
        const float scale = quantize_block(x + m * K + std::min(k0, K), std::clamp<int64_t>(K - k0, 0, XBLOCK),
                                           q.even.data() + at, q.odd.data() + at, sum);
        float* lanes = q.lane_scales.data() + (m * q.spans + s) * (span / 8) + b * (XBLOCK / 8);
        std::fill(lanes, lanes + XBLOCK / 8, scale);
        q.offsets[m * groups + k0 / group] += 8.f * scale * static_cast<float>(sum);
      }
  return q;
}

// One span's integer product per instruction set: `nibbles` reads a span of
// weight bytes as unsigned even and odd elements, `dot` multiplies them by a
// row's int8 activations into fp32 int32-lane sums.
struct Avx2Product {
  static constexpr int64_t kSpan = AVX2_SPAN;
  using Floats = __m256;
  struct Nibbles { __m256i even, odd; };
  static Floats zero() { return _mm256_setzero_ps(); }
  static Floats broadcast(float v) { return _mm256_set1_ps(v); }
  static Floats load(const float* p) { return _mm256_loadu_ps(p); }
  static Floats fmadd(Floats a, Floats b, Floats c) { return _mm256_fmadd_ps(a, b, c); }
  static Nibbles nibbles(const uint8_t* span) {
    const __m256i low = _mm256_set1_epi8(0x0F), sign_bits = _mm256_set1_epi8(static_cast<char>(0x88));
    const __m256i bytes = _mm256_xor_si256(sign_bits, _mm256_loadu_si256(  // two's complement q -> q + 8
        reinterpret_cast<const __m256i*>(span)));
    return {_mm256_and_si256(bytes, low), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low)};
  }
  static Floats dot(const Nibbles& w, const int8_t* even, const int8_t* odd) {
    const __m256i pairs = _mm256_add_epi16(
        _mm256_maddubs_epi16(w.even, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(even))),
        _mm256_maddubs_epi16(w.odd, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd))));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  static float sum(Floats v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// AVX-512 VNNI: vpdpbusd sums the even and the odd elements' byte products
// straight into int32 lanes.
struct VnniProduct {
  static constexpr int64_t kSpan = VNNI_SPAN;
  using Floats = __m512;
  struct Nibbles { __m512i even, odd; };
  static Floats zero() { return _mm512_setzero_ps(); }
  static Floats broadcast(float v) { return _mm512_set1_ps(v); }
  static Floats load(const float* p) { return _mm512_loadu_ps(p); }
  static Floats fmadd(Floats a, Floats b, Floats c) { return _mm512_fmadd_ps(a, b, c); }
  static Nibbles nibbles(const uint8_t* span) {
    const __m512i low = _mm512_set1_epi8(0x0F), sign_bits = _mm512_set1_epi8(static_cast<char>(0x88));
    const __m512i bytes = _mm512_xor_si512(sign_bits, _mm512_loadu_si512(span));  // q -> q + 8
    return {_mm512_and_si512(bytes, low), _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low)};
  }
  static Floats dot(const Nibbles& w, const int8_t* even, const int8_t* odd) {
    const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.even, _mm512_loadu_si512(even));
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(sums, w.odd, _mm512_loadu_si512(odd)));
  }
  static float sum(Floats v) { return _mm512_reduce_add_ps(v); }
};
#endif

// y[m, n0 + r * stride] for MT rows of x and R weight rows (n0, n0 + stride,
// ...), over all of K. The next tile starts one row on when the rows are
// strided, R rows on when they are adjacent.
template <class P, int MT, int R>
static inline void int4_tile(const Int4Rows& f, const QuantizedActivations& q, int64_t m0, int64_t n0,
                             int64_t stride, float* y, int64_t N) {
  using Floats = typename P::Floats;
  const int64_t spans_per_group = f.group / P::kSpan;
  const int64_t next_tile = (stride == 1 ? R : 1) * f.row_bytes;
  Floats acc[MT][R];
  float offset[MT][R] = {};
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = P::zero();
  for (int64_t g = 0; g < f.groups; ++g) {
    Floats part[MT][R];
    for (int m = 0; m < MT; ++m)
      for (int r = 0; r < R; ++r) part[m][r] = P::zero();
    for (int64_t s = g * spans_per_group; s < (g + 1) * spans_per_group; ++s) {
      for (int r = 0; r < R; ++r) {
        const uint8_t* row = f.w + (n0 + r * stride) * f.row_bytes + s * (P::kSpan / 2);
        __builtin_prefetch(row + next_tile, 0, 3);  // as prefetch_next_rows: the next tile's bytes
        const typename P::Nibbles w = P::nibbles(row);
        for (int m = 0; m < MT; ++m)
          part[m][r] = P::fmadd(P::dot(w, q.even_at(m0 + m, s), q.odd_at(m0 + m, s)),
                                P::load(q.scales_at(m0 + m, s)), part[m][r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const float scale = f.group_scale(n0 + r * stride, g);
      const Floats scale_v = P::broadcast(scale);
      for (int m = 0; m < MT; ++m) {
        acc[m][r] = P::fmadd(part[m][r], scale_v, acc[m][r]);
        offset[m][r] += scale * q.offsets[(m0 + m) * q.groups + g];
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) y[(m0 + m) * N + n0 + r * stride] = P::sum(acc[m][r]) - offset[m][r];
}

// Tiles of up to four rows of x against R adjacent weight rows starting at n0.
template <class P, int R>
static void int4_rows(const Int4Rows& f, const QuantizedActivations& q, int64_t M, int64_t N, int64_t n0,
                      float* y) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) int4_tile<P, 4, (R > 2 ? 2 : R)>(f, q, m, n0, 1, y, N);
  switch (M - m) {
    case 3: int4_tile<P, 3, (R > 2 ? 2 : R)>(f, q, m, n0, 1, y, N); break;
    case 2: int4_tile<P, 2, (R > 2 ? 2 : R)>(f, q, m, n0, 1, y, N); break;
    case 1: int4_tile<P, 1, R>(f, q, m, n0, 1, y, N); break;
    default: break;
  }
}

// The span this CPU's int4 product uses for groups of `group` values (0: none).
static int64_t int8_activation_span(int64_t group) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  if (group % VNNI_SPAN == 0) return VNNI_SPAN;
#endif
  return group % AVX2_SPAN == 0 ? AVX2_SPAN : 0;
}

// One row of x (decoding) takes weight rows four at a time, one from each
// quarter of the weight: an int4 row is only 2 KB, and four rows next to
// each other make one short stream where four far apart make four, which the
// memory system serves faster. More rows of x take adjacent rows two at a time.
template <class P>
static void int4_linear_with(const Int4Rows& f, const QuantizedActivations& q, int64_t M, int64_t N, float* y) {
  if (M == 1) {
    const int64_t quarter = N / 4;
    parallel_ranges(quarter + (N % 4 ? 1 : 0), [&](int64_t first, int64_t last) {
      for (int64_t n = first; n < std::min(last, quarter); ++n) int4_tile<P, 1, 4>(f, q, 0, n, quarter, y, N);
      if (last > quarter)  // the rows that do not fill the quarters
        for (int64_t n = 4 * quarter; n < N; ++n) int4_rows<P, 1>(f, q, M, N, n, y);
    });
    return;
  }
  const int64_t blocks = N / 2;
  parallel_ranges(blocks + N % 2, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < std::min(last, blocks); ++b) int4_rows<P, 2>(f, q, M, N, 2 * b, y);
    if (last > blocks) int4_rows<P, 1>(f, q, M, N, N - 1, y);
  });
}

static void int4_linear(const Int4Rows& f, const float* x, int64_t M, int64_t N, int64_t K, float* y) {
  const int64_t span = int8_activation_span(f.group);
  const QuantizedActivations& q = quantize_activations(x, M, K, f.groups, f.group, span);
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  if (span == VnniProduct::kSpan) return int4_linear_with<VnniProduct>(f, q, M, N, y);
#endif
  int4_linear_with<Avx2Product>(f, q, M, N, y);
}
#endif

static bool uses_int8_activations(const Int4Rows& f) {
#if defined(__AVX2__)
  return int8_activation_span(f.group) != 0;
#else
  (void)f;
  return false;
#endif
}

// ------------------------------------------------------------------- blocked
constexpr int MR = VL == 8 ? 6 : 14;  // rows of x per micro-kernel (accumulators: MR x NV vectors)
constexpr int NV = 2;
constexpr int NR = NV * VL;           // weight rows (output features) per micro-kernel
constexpr int64_t KC = 256;           // depth of a packed panel
constexpr int64_t NC = 128;           // weight rows per thread block (a multiple of NR)

// c[i, :NR] += a[:, i] . b for MRt rows; a is [kc][MR], b is [kc][NR].
template <int MRt>
static inline void micro_kernel(const float* a, const float* b, float* c, int64_t ldc, int64_t kc) {
  vf acc[MRt][NV] = {};
  for (int64_t k = 0; k < kc; ++k) {
    vf bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load_f32(b + k * NR + v * VL);
    for (int i = 0; i < MRt; ++i) {
      const vf av = broadcast(a[k * MR + i]);
      for (int v = 0; v < NV; ++v) acc[i][v] += av * bv[v];
    }
  }
  for (int i = 0; i < MRt; ++i)
    for (int v = 0; v < NV; ++v) store_f32(c + i * ldc + v * VL, load_f32(c + i * ldc + v * VL) + acc[i][v]);
}

static void micro_kernel_rows(int rows, const float* a, const float* b, float* c, int64_t ldc, int64_t kc) {
  switch (rows) {
    case 1: micro_kernel<1>(a, b, c, ldc, kc); break;
    case 2: micro_kernel<2>(a, b, c, ldc, kc); break;
    case 3: micro_kernel<3>(a, b, c, ldc, kc); break;
    case 4: micro_kernel<4>(a, b, c, ldc, kc); break;
    case 5: micro_kernel<5>(a, b, c, ldc, kc); break;
    case 6: micro_kernel<6>(a, b, c, ldc, kc); break;
#if GLM3_VL == 16
    case 7: micro_kernel<7>(a, b, c, ldc, kc); break;
    case 8: micro_kernel<8>(a, b, c, ldc, kc); break;
    case 9: micro_kernel<9>(a, b, c, ldc, kc); break;
    case 10: micro_kernel<10>(a, b, c, ldc, kc); break;
    case 11: micro_kernel<11>(a, b, c, ldc, kc); break;
    case 12: micro_kernel<12>(a, b, c, ldc, kc); break;
    case 13: micro_kernel<13>(a, b, c, ldc, kc); break;
    case 14: micro_kernel<14>(a, b, c, ldc, kc); break;
#endif
    default: break;
  }
}

// out[c][r] = in[r][c] for an 8 x 8 tile (rows of `in` `in_stride` apart, of `out` `out_stride` apart).
static inline void transpose8x8(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
#if defined(__AVX__)
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * in_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
#else
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) out[j * out_stride + i] = in[i * in_stride + j];
#endif
}

// Weight rows [n0, n0 + NR) x k in [k0, k0 + kc), scaled, as fp32 [kc][NR]
// (rows past N are zero). The rows are converted along k first, then
// transposed in 8 x 8 tiles: element by element stores would cost more
// than the products.
template <class F>
static void pack_weight_panel(const F& f, int64_t N, int64_t n0, int64_t k0, int64_t kc, float* rows,
                              float* panel) {
  const int64_t stride = (kc + 7) / 8 * 8;  // rows[j] holds kc values, zero-padded to whole tiles
  for (int j = 0; j < NR; ++j) {
    float* row = rows + j * stride;
    const int64_t n = n0 + j;
    if (n >= N) {
      std::fill(row, row + stride, 0.f);
      continue;
    }
    const float scale = f.row_scale(n);
    const int64_t kv = kc / VL * VL;
    for (int64_t kk = 0; kk < kv; kk += VL) {
      float s = scale;
      if constexpr (F::kGrouped) s = f.group_scale(n, (k0 + kk) / f.group);
      store_f32(row + kk, f.load(n, k0 + kk) * s);
    }
    for (int64_t kk = kv; kk < kc; ++kk) {
      float s = scale;
      if constexpr (F::kGrouped) s = f.group_scale(n, (k0 + kk) / f.group);
      row[kk] = f.at(n, k0 + kk) * s;
    }
    std::fill(row + kc, row + stride, 0.f);
  }
  for (int64_t kk = 0; kk < kc; kk += 8) {
    if (kk + 8 <= kc) {
      for (int j = 0; j < NR; j += 8) transpose8x8(rows + j * stride + kk, stride, panel + kk * NR + j, NR);
    } else {  // the last, partial tile: only kc - kk rows of the panel exist
      for (int64_t k = kk; k < kc; ++k)
        for (int j = 0; j < NR; ++j) panel[k * NR + j] = rows[j * stride + k];
    }
  }
}

template <class F>
static void blocked_linear(const F& f, const float* x, int64_t M, int64_t N, int64_t K, float* y) {
  const int64_t row_groups = (M + MR - 1) / MR, m_padded = row_groups * MR;
  // x as panels [k block][row group][kc][MR], zero rows past M.
  std::unique_ptr<float[]> packed_x(new float[m_padded * K]);
  parallel_ranges(row_groups, [&](int64_t first, int64_t last) {
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      for (int64_t g = first; g < last; ++g) {
        float* panel = packed_x.get() + k0 * m_padded + g * kc * MR;
        for (int64_t kk = 0; kk < kc; ++kk)
          for (int i = 0; i < MR; ++i) {
            const int64_t m = g * MR + i;
            panel[kk * MR + i] = m < M ? x[m * K + k0 + kk] : 0.f;
          }
      }
    }
  });
  const int64_t blocks = (N + NC - 1) / NC;
  parallel_ranges(blocks, [&](int64_t first, int64_t last) {
    // per thread and kept: a thread takes several chunks of a call, and calls follow each other
    thread_local std::vector<float> panel_buffer, row_buffer, c_buffer;
    panel_buffer.resize(NC * KC);
    row_buffer.resize(NR * KC);
    c_buffer.resize(m_padded * NC);
    float* const panels = panel_buffer.data();
    float* const scratch = row_buffer.data();
    float* const c = c_buffer.data();
    for (int64_t b = first; b < last; ++b) {
      const int64_t n0 = b * NC, width = std::min(NC, N - n0), npanels = (width + NR - 1) / NR;
      std::fill(c, c + m_padded * NC, 0.f);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        for (int64_t p = 0; p < npanels; ++p)
          pack_weight_panel(f, N, n0 + p * NR, k0, kc, scratch, panels + p * kc * NR);
        const float* xs = packed_x.get() + k0 * m_padded;
        for (int64_t g = 0; g < row_groups; ++g) {
          const int rows = static_cast<int>(std::min<int64_t>(MR, M - g * MR));
          for (int64_t p = 0; p < npanels; ++p)
            micro_kernel_rows(rows, xs + g * kc * MR, panels + p * kc * NR, c + g * MR * NC + p * NR, NC, kc);
        }
      }
      for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * N + n0, c + m * NC, width * sizeof(float));
    }
  });
}

// ------------------------------------------------------------------ dispatch
enum class Path { Auto, Streaming, Blocked };

template <class F>
static void linear(const F& f, const float* x, int64_t M, int64_t N, int64_t K, float* y, Path path) {
  const bool streaming = path == Path::Streaming || (path == Path::Auto && M <= tuning.stream_max_rows);
#if defined(__AVX2__)
  if constexpr (std::is_same_v<F, Int4Rows>) {
    if (streaming && uses_int8_activations(f)) return int4_linear(f, x, M, N, K, y);
  }
#endif
  if (streaming) stream_linear(f, x, M, N, K, y);
  else blocked_linear(f, x, M, N, K, y);
}

// x (fp32 or fp16) in, y in x's dtype out; the products run in fp32.
template <class F>
static int run_linear(const F& f, const char* x_dtype, const void* x, int64_t M, int64_t N, int64_t K, void* y) {
  if (std::strcmp(x_dtype, "float32") == 0) {
    linear(f, static_cast<const float*>(x), M, N, K, static_cast<float*>(y), Path::Auto);
    return 0;
  }
  if (std::strcmp(x_dtype, "float16") != 0) return 2;
  std::vector<float> x32(M * K), y32(M * N);
  const uint16_t* xh = static_cast<const uint16_t*>(x);
  for (int64_t i = 0; i < M * K; ++i) x32[i] = f16_to_f32(xh[i]);
  linear(f, x32.data(), M, N, K, y32.data(), Path::Auto);
  uint16_t* yh = static_cast<uint16_t*>(y);
  for (int64_t i = 0; i < M * N; ++i) yh[i] = f32_to_f16(y32[i]);
  return 0;
}

}  // namespace glm3

using namespace glm3;

// ------------------------------------------------------- MindSpore entry points
// ops.Custom(func_type="aot") signature: inputs then the output in params.
// A non-zero return makes MindSpore raise: 1 = bad shapes, 2 = bad dtypes.

extern "C" int LinearDense(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                           void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 3 || ndims[0] != 2 || ndims[1] != 2 || shapes[0][1] != shapes[1][1]) return 1;
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[1][0];
  if (std::strcmp(dtypes[1], "float32") == 0)
    return run_linear(DenseF32{static_cast<const float*>(params[1]), K}, dtypes[0], params[0], M, N, K, params[2]);
  if (std::strcmp(dtypes[1], "float16") == 0)
    return run_linear(DenseF16{static_cast<const uint16_t*>(params[1]), K}, dtypes[0], params[0], M, N, K, params[2]);
  if (std::strcmp(dtypes[1], "bfloat16") == 0)
    return run_linear(DenseBF16{static_cast<const uint16_t*>(params[1]), K}, dtypes[0], params[0], M, N, K, params[2]);
  return 2;
}

// Inputs x [M, K], int8 q [N, K], float16 scale [N].
extern "C" int LinearInt8(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 4 || ndims[0] != 2 || ndims[1] != 2 || ndims[2] != 1) return 1;
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[1][0];
  if (shapes[1][1] != K || shapes[2][0] != N) return 1;
  if (std::strcmp(dtypes[1], "int8") != 0 || std::strcmp(dtypes[2], "float16") != 0) return 2;
  Int8Rows f{static_cast<const int8_t*>(params[1]), static_cast<const uint16_t*>(params[2]), K};
  return run_linear(f, dtypes[0], params[0], M, N, K, params[3]);
}

// Inputs x [M, K], uint8 packed q [N, groups * G / 2], float16 scale [N, groups];
// G = 2 * packed width / groups, a multiple of 16, and groups * G >= K.
extern "C" int LinearInt4(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 4 || ndims[0] != 2 || ndims[1] != 2 || ndims[2] != 2) return 1;
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[1][0], row_bytes = shapes[1][1];
  const int64_t groups = shapes[2][1];
  if (shapes[2][0] != N || groups <= 0 || (2 * row_bytes) % groups != 0) return 1;
  const int64_t group = 2 * row_bytes / groups;
  if (group % 16 != 0 || groups * group < K || (groups - 1) * group >= K) return 1;
  if (std::strcmp(dtypes[1], "uint8") != 0 || std::strcmp(dtypes[2], "float16") != 0) return 2;
  Int4Rows f{static_cast<const uint8_t*>(params[1]), static_cast<const uint16_t*>(params[2]), K, row_bytes, groups, group};
  return run_linear(f, dtypes[0], params[0], M, N, K, params[3]);
}

// ------------------------------------------------------------ tuning (ctypes)
extern "C" int glm3_vector_lanes() { return VL; }
extern "C" int glm3_avx512() { return GLM3_AVX512; }  // whole 512-bit loads and tiles compiled in
extern "C" int glm3_int4_span(int64_t group) {  // weights per integer product of int4 groups of `group`; 0: fp32
#if defined(__AVX2__)
  return static_cast<int>(int8_activation_span(group));
#else
  (void)group;
  return 0;
#endif
}

extern "C" void glm3_configure(int stream_max_rows, int rows_per_block_one) {
  tuning.stream_max_rows = std::max(0, stream_max_rows);
  tuning.rows_per_block_one = rows_per_block_one == 2 || rows_per_block_one == 8 ? rows_per_block_one : 4;
}

// Fastest of `repeats` calls, in seconds, of an fp32-x product with a random
// weight [N, K] in `format` (0 fp32, 1 fp16, 2 bf16, 3 int8, 4 int4 groups of
// 128) on the given path (1 streaming, 2 blocked) with the current tuning.
// Before each call the weight is flushed from every cache level (a server's
// last-level cache holds a whole 6B layer), so the call reads it from
// memory, as a decode step does.
extern "C" double glm3_time_linear(int format, int64_t M, int64_t N, int64_t K, int path, int repeats) {
  if (format < 0 || format > 4) return -1.0;
  const int64_t groups = (K + 127) / 128;
  const int64_t bytes_per_row[] = {4 * K, 2 * K, 2 * K, K, groups * 64};
  std::mt19937 rng(0);
  std::vector<float> x(M * K), y(M * N);
  for (auto& v : x) v = static_cast<float>(rng() % 1000) / 1000.f - 0.5f;
  std::vector<uint8_t> w(N * bytes_per_row[format]);
  // Bytes 0x30-0x3F: every 16- and 32-bit pattern they make is a normal number (fp16 and bf16
  // exponents well inside the range), so no product meets a denormal, which Intel cores
  // take a hundred times longer on than AMD's and would mislead the tuning.
  for (auto& v : w) v = static_cast<uint8_t>(0x30 | (rng() & 0x0F));
  std::vector<uint16_t> scale(N * groups, f32_to_f16(0.01f));
  const Path p = path == 1 ? Path::Streaming : Path::Blocked;
  double best = 1e30;
  for (int rep = 0; rep < repeats; ++rep) {
#if defined(__x86_64__) || defined(__i386__)
    for (size_t at = 0; at < w.size(); at += 64) _mm_clflush(w.data() + at);
    _mm_mfence();
#endif
    const auto start = std::chrono::steady_clock::now();
    switch (format) {
      case 0: linear(DenseF32{reinterpret_cast<const float*>(w.data()), K}, x.data(), M, N, K, y.data(), p); break;
      case 1: linear(DenseF16{reinterpret_cast<const uint16_t*>(w.data()), K}, x.data(), M, N, K, y.data(), p); break;
      case 2: linear(DenseBF16{reinterpret_cast<const uint16_t*>(w.data()), K}, x.data(), M, N, K, y.data(), p); break;
      case 3: linear(Int8Rows{reinterpret_cast<const int8_t*>(w.data()), scale.data(), K}, x.data(), M, N, K, y.data(), p); break;
      default: linear(Int4Rows{w.data(), scale.data(), K, groups * 64, groups, 128}, x.data(), M, N, K, y.data(), p); break;
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}
