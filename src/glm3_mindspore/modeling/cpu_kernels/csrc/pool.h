// A small worker pool for the kernels, and parallel_ranges to split work over it.
//
// Why not OpenMP: its idle workers spin without bound after each parallel
// region, and on a 2-core host that spinning takes the cores from
// MindSpore's own kernels between our calls. Why not sleep at once either:
// waking a sleeping thread costs tens of microseconds on a virtual machine,
// as much as a whole small product, and a decode step makes a few hundred of
// our calls a few microseconds apart. So a worker that finishes a job spins
// for a short while (yielding its core to any other runnable thread), taking
// the next job at once if it comes, and only then sleeps.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace glm3 {

// One turn of a spin-wait: plain loads, not `pause`, which hypervisors may
// answer by descheduling a virtual CPU that runs it in a loop (pause-loop
// exiting); the barrier makes each turn load the atomics afresh.
inline void spin_once() { asm volatile("" ::: "memory"); }

// Runs part(0..parts-1) on the calling thread and parts-1 workers, one call
// each, and returns when all are done. One job at a time.
class WorkerPool {
 public:
  static constexpr auto kSpin = std::chrono::microseconds(300);  // how long an idle worker waits awake

  static WorkerPool& instance() {
    static WorkerPool* pool = new WorkerPool();  // never destroyed: workers may outlive static destructors
    if (pool->owner_ != getpid()) pool = new WorkerPool();  // after fork() the workers are gone; start anew
    return *pool;
  }

  int parts() const { return static_cast<int>(workers_.size()) + 1; }

  void run(const std::function<void(int)>& part) {
    std::lock_guard<std::mutex> one_job(job_mutex_);
    job_.store(&part, std::memory_order_relaxed);
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes job_ and pending_
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);  // a sleeper is inside wait() once we hold this
      wake_.notify_all();
    }
    part(0);
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins < 4096) spin_once();
      else sched_yield();  // a worker that lost its core: give it ours
    }
  }

 private:
  WorkerPool() : owner_(getpid()) {
    cpu_set_t cpus;
    int count = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    for (int i = 1; i < std::max(count, 1); ++i) workers_.emplace_back([this, i] { work(i); });
    for (auto& worker : workers_) worker.detach();
  }

  // The next generation after `seen`: spinning for kSpin, then asleep.
  uint64_t await(uint64_t seen) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (int spins = 1;; ++spins) {
      const uint64_t now = generation_.load(std::memory_order_acquire);
      if (now != seen) return now;
      spin_once();
      if (spins % 256 == 0) {
        if (std::chrono::steady_clock::now() > until) break;
        sched_yield();  // any other runnable thread on this core goes first
      }
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleeping_.fetch_add(1, std::memory_order_seq_cst);
    wake_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
    sleeping_.fetch_sub(1, std::memory_order_relaxed);
    return generation_.load(std::memory_order_acquire);
  }

  void work(int index) {
    uint64_t seen = 0;
    for (;;) {
      seen = await(seen);
      (*job_.load(std::memory_order_relaxed))(index);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  pid_t owner_;
  std::vector<std::thread> workers_;
  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_;
  std::atomic<const std::function<void(int)>*> job_{nullptr};
  std::atomic<int> pending_{0}, sleeping_{0};
  std::atomic<uint64_t> generation_{0};
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
