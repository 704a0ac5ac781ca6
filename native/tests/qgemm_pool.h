// Test/bench helper: a small std::thread pool implementing ty::Parallel. Tasks are handed
// out through an atomic counter (like the runtime's pool); idle workers spin for a while
// before sleeping, so back-to-back kernel calls do not pay a futex wake-up each.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "tachyon/parallel.h"

namespace ty {

class ThreadPool final : public Parallel {
 public:
  explicit ThreadPool(int n) : n_(n), bufs_(n, nullptr), caps_(n, 0) {
    for (int i = 1; i < n; ++i) th_.emplace_back([this, i] { worker(i); });
  }
  ~ThreadPool() override {
    { std::lock_guard<std::mutex> l(mu_); stop_ = true; gen_.fetch_add(1); }
    cv_.notify_all();
    for (auto& t : th_) t.join();
    for (void* b : bufs_) ::operator delete(b);
  }
  int threads() const override { return n_; }
  void run(int64_t n, TaskFn fn, void* ctx) override {
    if (n_ == 1 || n <= 1) { for (int64_t t = 0; t < n; ++t) fn(ctx, t, 0); return; }
    {
      std::lock_guard<std::mutex> l(mu_);
      fn_ = fn; ctx_ = ctx; n_tasks_ = n; next_.store(0); busy_.store(n_ - 1);
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    drain(0);
    while (busy_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  }
  void* scratch(int t, size_t bytes) override {
    if (bytes > caps_[t]) { ::operator delete(bufs_[t]); bufs_[t] = ::operator new(bytes + 64); caps_[t] = bytes; }
    return (void*)(((uintptr_t)bufs_[t] + 63) & ~(uintptr_t)63);
  }

 private:
  void drain(int th) {
    for (;;) {
      int64_t t = next_.fetch_add(1);
      if (t >= n_tasks_) return;
      fn_(ctx_, t, th);
    }
  }
  void worker(int i) {
    uint64_t seen = 0;
    for (;;) {
      int spins = 0;
      while (gen_.load(std::memory_order_acquire) == seen && ++spins < (1 << 16)) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return gen_.load() != seen; });
        seen = gen_.load();
        if (stop_) return;
      }
      drain(i);
      busy_.fetch_sub(1, std::memory_order_release);
    }
  }
  int n_;
  std::vector<std::thread> th_;
  std::vector<void*> bufs_;
  std::vector<size_t> caps_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  bool stop_ = false;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int> busy_{0};
};

}  // namespace ty
