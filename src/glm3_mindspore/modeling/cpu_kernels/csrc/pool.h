// A small worker pool for the kernels, and parallel_ranges to split work over it.
//
// Why not OpenMP: its idle workers spin after each parallel region, and on a
// 2-core host that spinning takes the cores from MindSpore's own kernels
// between our calls. Here idle workers sleep on a condition variable.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace glm3 {

// Runs part(0..parts-1) on the calling thread and parts-1 sleeping workers,
// one call each, and returns when all are done. One job at a time.
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

// Splits [0, count) into contiguous chunks that the threads take in turn and
// runs range(first, last) for each. Not one fixed share per thread: a worker
// that wakes late, or shares its core with another thread (MindSpore's own, a
// neighbour's), takes fewer chunks, and the call ends when the work does.
template <typename F>
inline void parallel_ranges(int64_t count, F range) {
  WorkerPool& pool = WorkerPool::instance();
  const int64_t parts = std::min<int64_t>(pool.parts(), std::max<int64_t>(count, 1));
  if (parts <= 1) {
    range(0, count);
    return;
  }
  const int64_t chunks = std::min<int64_t>(count, parts * 16);
  std::atomic<int64_t> next{0};
  pool.run([&](int) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;)
      range(count * c / chunks, count * (c + 1) / chunks);
  });
}

}  // namespace glm3
