#include "pool.h"

#include <chrono>
#include <cstdlib>
#include <new>

#if defined(__x86_64__)
#include <immintrin.h>
#define TY_PAUSE() _mm_pause()
#else
#define TY_PAUSE() std::this_thread::yield()
#endif

namespace ty::cpu {

// How long an idle worker spins before parking. Back-to-back kernels arrive within
// microseconds during a forward pass; ~50 µs of spinning covers that gap.
static constexpr int kSpinIters = 20000;
// Then it yields this many times (letting a descheduled thread run) before it parks.
static constexpr int kYieldIters = 64;
static constexpr uint64_t kClosed = 1ull << 31;
static constexpr uint64_t kActive = kClosed - 1;

ThreadPool::ThreadPool(int threads) : n_(threads < 1 ? 1 : threads), scratch_(n_) {
  workers_.reserve(n_ - 1);
  for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(park_mu_);
    stop_.store(true);
    gen_.fetch_add(1);
  }
  park_cv_.notify_all();
  for (auto& t : workers_) t.join();
  for (auto& s : scratch_) std::free(s.raw);
}

void ThreadPool::work(int thread) {
  for (;;) {
    int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
    if (t >= n_tasks_) break;
    fn_(ctx_, t, thread);
  }
}

void ThreadPool::worker(int id) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g;
    int spins = 0;
    while ((g = gen_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinIters) { TY_PAUSE(); continue; }
      if (spins < kSpinIters + kYieldIters) { std::this_thread::yield(); continue; }
      std::unique_lock<std::mutex> lk(park_mu_);
      parked_.fetch_add(1);
      park_cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
      parked_.fetch_sub(1);
    }
    seen = g;
    if (stop_.load()) return;
    // Join job g unless the caller already closed it (it then ran every task itself).
    uint64_t st = state_.load(std::memory_order_acquire);
    bool joined = false;
    while ((st >> 32) == (g & 0xffffffffu) && !(st & kClosed)) {
      if (state_.compare_exchange_weak(st, st + 1, std::memory_order_acq_rel)) {
        joined = true;
        break;
      }
    }
    if (!joined) continue;
    work(id);
    state_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::run(int64_t n_tasks, TaskFn fn, void* ctx) {
  if (n_tasks <= 0) return;
  std::lock_guard<std::mutex> guard(run_mu_);
  if (n_ == 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(ctx, t, 0);
    return;
  }
  fn_ = fn;
  ctx_ = ctx;
  n_tasks_ = n_tasks;
  next_.store(0, std::memory_order_relaxed);
  const uint64_t g = gen_.load(std::memory_order_relaxed) + 1;
  state_.store((g & 0xffffffffu) << 32, std::memory_order_relaxed);
  {
    // Publishing under the park mutex closes the lost-wake-up window for parked workers.
    std::lock_guard<std::mutex> lk(park_mu_);
    gen_.fetch_add(1, std::memory_order_release);
  }
  if (parked_.load() > 0) park_cv_.notify_all();
  work(0);
  // Every task is claimed: close the job so late workers skip it, then wait for those inside
  // (each finishing one task). Spin briefly, then yield: a worker inside may be descheduled.
  state_.fetch_or(kClosed, std::memory_order_acq_rel);
  for (int spins = 0; (state_.load(std::memory_order_acquire) & kActive) != 0;) {
    if (++spins < kSpinIters) TY_PAUSE();
    else std::this_thread::yield();
  }
}

void* ThreadPool::scratch(int thread, size_t bytes) {
  Scratch& s = scratch_[thread];
  if (bytes > s.cap) {
    std::free(s.raw);
    s.raw = std::malloc(bytes + 64);
    if (!s.raw) { s.cap = 0; s.aligned = nullptr; throw std::bad_alloc(); }
    s.aligned = (void*)(((uintptr_t)s.raw + 63) & ~(uintptr_t)63);
    s.cap = bytes;
  }
  return s.aligned;
}

}  // namespace ty::cpu
