// Tachyon CPU backend: the persistent compute pool.
//
// n-1 worker threads plus the calling thread. A job is published by bumping an atomic
// generation counter; workers spin on it for a short while (cheap wake-up between the
// back-to-back kernels of a forward pass) and then park on a condition variable so an
// idle runtime burns no CPU. Tasks are claimed from an atomic counter (dynamic
// scheduling). Workers join a job explicitly, and the caller closes the job once the task
// counter is exhausted: it then waits only for workers that joined (and are finishing a
// task), never for one that is descheduled and has not started. On an oversubscribed
// machine (other processes, the JS thread) that turns a wait of a whole time slice per
// kernel into none.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "tachyon/parallel.h"

namespace ty::cpu {

class ThreadPool final : public Parallel {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool() override;
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const override { return n_; }
  void run(int64_t n_tasks, TaskFn fn, void* ctx) override;
  void* scratch(int thread, size_t bytes) override;

 private:
  void worker(int id);
  void work(int thread);

  int n_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // serializes run() calls from different streams

  // Current job.
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_tasks_ = 0;
  alignas(64) std::atomic<int64_t> next_{0};
  // (job generation << 32) | closed bit (1 << 31) | workers inside the job (low 31 bits).
  alignas(64) std::atomic<uint64_t> state_{0};
  alignas(64) std::atomic<uint64_t> gen_{0};
  std::atomic<bool> stop_{false};

  std::mutex park_mu_;
  std::condition_variable park_cv_;
  std::atomic<int> parked_{0};

  struct Scratch { void* raw = nullptr; void* aligned = nullptr; size_t cap = 0; };
  std::vector<Scratch> scratch_;
};

}  // namespace ty::cpu
