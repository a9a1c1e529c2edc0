// Streaming-read bandwidth of this machine: the memory bound of decoding.
//
// Every core (one thread each, or argv[1] threads) sums its share of a 2 GiB
// buffer with eight independent vector accumulators. How many streams a core
// reads at once and how far ahead it prefetches change what the memory system
// delivers (a decode kernel reads several weight rows at once), so every
// combination is timed and the fastest pass of the best one counts. Decoding
// a token reads every weight once, so bytes per step divided by this rate is
// the fastest a decode step can be. bench_6b.py compiles and runs it:
//   g++ -O3 -march=native -pthread _bandwidth.cc -o bandwidth
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

typedef float f32x16 __attribute__((vector_size(64)));  // one cache line
constexpr size_t kLine = sizeof(f32x16);
constexpr size_t kStep = 4 * kLine;  // bytes each stream reads per iteration

// Sums `bytes` from `base` as `streams` equal parts read side by side,
// prefetching `ahead` bytes in front of each (0: hardware prefetch only).
static float sum_streams(const char* base, size_t bytes, int streams, size_t ahead) {
  size_t part = bytes / streams;
  part -= part % kStep;
  f32x16 acc[8] = {};
  for (size_t offset = 0; offset < part; offset += kStep) {
    for (int s = 0; s < streams; ++s) {
      const char* p = base + s * part + offset;
      if (ahead)
        for (size_t line = 0; line < kStep; line += kLine) __builtin_prefetch(p + ahead + line, 0, 3);
      const f32x16* v = reinterpret_cast<const f32x16*>(p);
      const int slot = (s * 4) & 7;
      acc[slot] += v[0];
      acc[slot + 1] += v[1];
      acc[slot + 2] += v[2];
      acc[slot + 3] += v[3];
    }
  }
  f32x16 total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  float sum = 0.f;
  for (int i = 0; i < 16; ++i) sum += total[i];
  return sum;
}

int main(int argc, char** argv) {
  const size_t bytes = size_t(2) << 30;
  const unsigned threads = argc > 1 ? unsigned(atoi(argv[1])) : std::max(1u, std::thread::hardware_concurrency());
  char* data = static_cast<char*>(aligned_alloc(size_t(2) << 20, bytes));
  std::memset(data, 1, bytes);  // touch every page; 1s keep the sums normal numbers
  volatile float sink = 0.f;
  double best = 1e30;
  int best_streams = 0;
  size_t best_ahead = 0;
  for (int streams : {1, 2, 4, 8, 16})
    for (size_t ahead : {size_t(0), size_t(1024), size_t(2048)})
      for (int pass = 0; pass < 3; ++pass) {
        std::vector<float> sums(threads);
        const auto start = std::chrono::steady_clock::now();
        std::vector<std::thread> workers;
        for (unsigned t = 0; t < threads; ++t)
          workers.emplace_back([&, t] {
            const size_t share = bytes / threads;
            sums[t] = sum_streams(data + t * share, share, streams, ahead);
          });
        for (auto& worker : workers) worker.join();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        sink = sink + sums[0];
        if (seconds < best) best = seconds, best_streams = streams, best_ahead = ahead;
      }
  std::printf(
      "{\"threads\": %u, \"bytes\": %zu, \"seconds\": %.6f, \"gb_per_s\": %.2f, \"streams_per_thread\": %d, "
      "\"prefetch_bytes\": %zu}\n",
      threads, bytes, best, bytes / best / 1e9, best_streams, best_ahead);
  free(data);
  return 0;
}
