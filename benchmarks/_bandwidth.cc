// Streaming-read bandwidth of this machine: the memory bound of decoding.
//
// Every core (one thread each, or argv[1] threads) sums its share of a 2 GiB
// buffer with independent vector accumulators; the fastest of eight passes
// counts. Decoding a token reads every weight once, so bytes per step divided
// by this rate is the fastest a decode step can be. bench_6b.py compiles and
// runs it: g++ -O3 -march=native -pthread _bandwidth.cc -o bandwidth
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

typedef float f32x8 __attribute__((vector_size(32)));

static float sum_range(const f32x8* data, size_t count) {
  f32x8 a = {}, b = {}, c = {}, d = {};
  for (size_t i = 0; i + 4 <= count; i += 4) {
    a += data[i]; b += data[i + 1]; c += data[i + 2]; d += data[i + 3];
  }
  f32x8 s = (a + b) + (c + d);
  float total = 0.f;
  for (int i = 0; i < 8; ++i) total += s[i];
  return total;
}

int main(int argc, char** argv) {
  const size_t bytes = size_t(2) << 30;
  unsigned threads = argc > 1 ? unsigned(atoi(argv[1])) : std::max(1u, std::thread::hardware_concurrency());
  f32x8* data = static_cast<f32x8*>(aligned_alloc(64, bytes));
  std::memset(data, 0, bytes);
  const size_t vectors = bytes / sizeof(f32x8);
  double best = 1e30;
  volatile float sink = 0.f;
  for (int pass = 0; pass < 8; ++pass) {
    std::vector<float> sums(threads);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < threads; ++t)
      workers.emplace_back([&, t] {
        const size_t first = vectors * t / threads, last = vectors * (t + 1) / threads;
        sums[t] = sum_range(data + first, last - first);
      });
    for (auto& worker : workers) worker.join();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    sink = sink + sums[0];
  }
  std::printf("{\"threads\": %u, \"bytes\": %zu, \"seconds\": %.6f, \"gb_per_s\": %.2f}\n", threads, bytes, best,
              bytes / best / 1e9);
  free(data);
  return 0;
}
