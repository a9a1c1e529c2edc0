// CPU kernels MindSpore lacks, called as ahead-of-time `ops.Custom` kernels
// (see cpu_kernels.py).
//
// SmallBatchLinear: y = x W^T for a few rows of x, the linear layers of
// token-by-token decoding.
// Decoding one token multiplies a handful of activation rows by every weight
// matrix, so its speed is the rate at which the weights stream from memory.
// This kernel reads each weight row once, accumulates in fp32 and splits the
// output features over OpenMP threads. It reads fp32, fp16 and bf16 weights
// directly, so a bf16 checkpoint decodes without an fp32 copy of its weights.
//
// Threads: a small pool of its own whose idle workers sleep on a condition
// variable. OpenMP's workers spin after each parallel region, and on a
// 2-core host that spinning took the cores from MindSpore's own kernels
// between matmuls (decode 30% slower on an 8-layer, 1024-wide model).
//
// Inputs x [M, K] and w [N, K], output y [M, N]; x and y are fp32 or fp16 (the
// same), w is fp32, fp16 or bf16.
//
// WidenToFloat32: a bf16 or fp16 tensor as fp32, at memory speed; for prompts
// of bf16 models, whose MatMul needs fp32 weights, MindSpore's CPU Cast from
// bf16 converts only about 0.3 G elements/s (0.4 s for one 4096 x 27392 weight).
//
// GatherRows: embedding lookup in a bf16 (or any 2- or 4-byte) table; inside a
// compiled graph MindSpore's CPU Gather has no bf16 kernel, and outside one a
// Gather on a 16-bit view of the table copies the whole table first.

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef _Float16 f16x16 __attribute__((vector_size(32)));

struct bf16 { uint16_t bits; };

// Sixteen consecutive values as fp32 lanes.
static inline f32x16 load16(const float* p) { f32x16 v; std::memcpy(&v, p, sizeof v); return v; }
static inline f32x16 load16(const _Float16* p) {
#if defined(__AVX512F__)
  __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  f32x16 out; std::memcpy(&out, &v, sizeof out); return out;
#elif defined(__F16C__)
  __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  f32x16 out; std::memcpy(&out, &lo, 32); std::memcpy(reinterpret_cast<char*>(&out) + 32, &hi, 32); return out;
#else
  f16x16 h; std::memcpy(&h, p, sizeof h);  // GCC converts lane by lane without F16C
  return __builtin_convertvector(h, f32x16);
#endif
}
static inline f32x16 load16(const bf16* p) {
  u16x16 h; std::memcpy(&h, p, sizeof h);
  u32x16 bits = __builtin_convertvector(h, u32x16) << 16;  // bf16 is the top half of an fp32
  f32x16 v; std::memcpy(&v, &bits, sizeof v); return v;
}

static inline float to_f32(float v) { return v; }
static inline float to_f32(_Float16 v) { return static_cast<float>(v); }
static inline float to_f32(bf16 v) {
  uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
  float f; std::memcpy(&f, &bits, sizeof f); return f;
}

static inline void store(float* p, float v) { *p = v; }
static inline void store(_Float16* p, float v) { *p = static_cast<_Float16>(v); }

static inline float sum_lanes(f32x16 v) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// Rows [n0, n0 + R) of y for MT rows of x: R weight rows stream once, each
// against every x row (x stays in L1).
template <int MT, int R, typename X, typename W>
static inline void tile(const X* x, const W* w, X* y, int64_t N, int64_t K, int64_t n0) {
  f32x16 acc[MT][R] = {};
  const W* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w + (n0 + r) * K;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    f32x16 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load16(rows[r] + k);
    for (int m = 0; m < MT; ++m) {
      f32x16 xv = load16(x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r] += xv * wv[r];
    }
  }
  for (int m = 0; m < MT; ++m) {
    for (int r = 0; r < R; ++r) {
      float s = sum_lanes(acc[m][r]);
      for (int64_t t = k; t < K; ++t) s += to_f32(x[m * K + t]) * to_f32(rows[r][t]);
      store(y + m * N + n0 + r, s);
    }
  }
}

// All rows of x against weight rows [n0, n0 + R), four x rows at a time.
template <int R, typename X, typename W>
static inline void column_block(const X* x, const W* w, X* y, int64_t M, int64_t N, int64_t K, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) tile<4, R>(x + m * K, w, y + m * N, N, K, n0);
  switch (M - m) {
    case 3: tile<3, R>(x + m * K, w, y + m * N, N, K, n0); break;
    case 2: tile<2, R>(x + m * K, w, y + m * N, N, K, n0); break;
    case 1: tile<1, R>(x + m * K, w, y + m * N, N, K, n0); break;
    default: break;
  }
}

// Runs part(0..parts-1) on the calling thread and parts-1 sleeping workers,
// one part each, and returns when all are done. One job at a time.
class WorkerPool {
 public:
  static WorkerPool& instance() {
    static WorkerPool* pool = new WorkerPool();  // never destroyed: workers may outlive static destructors
    if (pool->owner_ != getpid()) pool = new WorkerPool();  // after fork() the workers are gone; start anew
    return *pool;
  }

  int parts() const { return static_cast<int>(workers_.size()) + 1; }

  void run(const std::function<void(int)>& part) {
    std::lock_guard<std::mutex> one_job(job_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &part;
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    part(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  WorkerPool() : owner_(getpid()) {
    cpu_set_t cpus;
    int count = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    for (int i = 1; i < std::max(count, 1); ++i) workers_.emplace_back([this, i] { work(i); });
    for (auto& worker : workers_) worker.detach();
  }

  void work(int index) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
      }
      (*job)(index);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  pid_t owner_;
  std::vector<std::thread> workers_;
  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* job_ = nullptr;
  int pending_ = 0;
  uint64_t generation_ = 0;
};

// Splits [0, count) into one contiguous range per thread (at most count) and
// runs range(first, last, is_last_range) for each on the pool.
template <typename F>
static void parallel_ranges(int64_t count, F range) {
  WorkerPool& pool = WorkerPool::instance();
  const int parts = static_cast<int>(std::min<int64_t>(pool.parts(), std::max<int64_t>(count, 1)));
  auto part = [&](int index) {
    if (index < parts) range(count * index / parts, count * (index + 1) / parts, index == parts - 1);
  };
  if (parts > 1) pool.run(part);
  else part(0);
}

template <int R, typename X, typename W>
static void linear_blocked(const X* x, const W* w, X* y, int64_t M, int64_t N, int64_t K) {
  const int64_t blocks = N / R;
  parallel_ranges(blocks, [&](int64_t first, int64_t last, bool is_last) {
    for (int64_t b = first; b < last; ++b) column_block<R>(x, w, y, M, N, K, b * R);
    if (is_last)
      for (int64_t n = blocks * R; n < N; ++n) column_block<1>(x, w, y, M, N, K, n);
  });
}

// Eight weight rows per block suit one x row (more independent streams); four
// suit several (the accumulators must fit the registers).
template <typename X, typename W>
static void linear(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K) {
  const X* xs = static_cast<const X*>(x);
  const W* ws = static_cast<const W*>(w);
  X* ys = static_cast<X*>(y);
  if (M == 1) linear_blocked<8>(xs, ws, ys, M, N, K);
  else linear_blocked<4>(xs, ws, ys, M, N, K);
}

template <typename X>
static int linear_for_weight(const char* weight_dtype, void** params, int64_t M, int64_t N, int64_t K) {
  if (std::strcmp(weight_dtype, "float32") == 0) linear<X, float>(params[0], params[1], params[2], M, N, K);
  else if (std::strcmp(weight_dtype, "float16") == 0) linear<X, _Float16>(params[0], params[1], params[2], M, N, K);
  else if (std::strcmp(weight_dtype, "bfloat16") == 0) linear<X, bf16>(params[0], params[1], params[2], M, N, K);
  else return 2;
  return 0;
}

extern "C" int SmallBatchLinear(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 3 || ndims[0] != 2 || ndims[1] != 2 || shapes[0][1] != shapes[1][1]) return 1;
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[1][0];
  if (std::strcmp(dtypes[0], "float32") == 0) return linear_for_weight<float>(dtypes[1], params, M, N, K);
  if (std::strcmp(dtypes[0], "float16") == 0) return linear_for_weight<_Float16>(dtypes[1], params, M, N, K);
  return 2;
}

static size_t element_size(const char* dtype) {
  if (std::strcmp(dtype, "bfloat16") == 0 || std::strcmp(dtype, "float16") == 0) return 2;
  if (std::strcmp(dtype, "float32") == 0) return 4;
  return 0;
}

// out[i, :] = table[ids[i], :]; inputs table [V, H] and int32 ids of any shape.
extern "C" int GatherRows(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 3 || ndims[0] != 2 || std::strcmp(dtypes[1], "int32") != 0) return 1;
  const size_t row_bytes = static_cast<size_t>(shapes[0][1]) * element_size(dtypes[0]);
  if (row_bytes == 0) return 2;
  int64_t count = 1;
  for (int d = 0; d < ndims[1]; ++d) count *= shapes[1][d];
  const char* table = static_cast<const char*>(params[0]);
  const int32_t* ids = static_cast<const int32_t*>(params[1]);
  char* out = static_cast<char*>(params[2]);
  for (int64_t i = 0; i < count; ++i) {
    if (ids[i] < 0 || ids[i] >= shapes[0][0]) return 3;  // MindSpore raises on a non-zero return
    std::memcpy(out + i * row_bytes, table + static_cast<int64_t>(ids[i]) * row_bytes, row_bytes);
  }
  return 0;
}

template <typename T>
static void widen(const T* in, float* out, int64_t count) {
  const int64_t chunks = count / 16;
  parallel_ranges(chunks, [&](int64_t first, int64_t last, bool is_last) {
    for (int64_t c = first; c < last; ++c) {
      f32x16 v = load16(in + c * 16);
      std::memcpy(out + c * 16, &v, sizeof v);
    }
    if (is_last)
      for (int64_t i = chunks * 16; i < count; ++i) out[i] = to_f32(in[i]);
  });
}

// out = float32(in) for a bf16 or fp16 tensor of any shape.
extern "C" int WidenToFloat32(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                              void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 2 || std::strcmp(dtypes[1], "float32") != 0) return 1;
  int64_t count = 1;
  for (int d = 0; d < ndims[0]; ++d) count *= shapes[0][d];
  float* out = static_cast<float*>(params[1]);
  if (std::strcmp(dtypes[0], "bfloat16") == 0) widen(static_cast<const bf16*>(params[0]), out, count);
  else if (std::strcmp(dtypes[0], "float16") == 0) widen(static_cast<const _Float16*>(params[0]), out, count);
  else return 2;
  return 0;
}
