// Tachyon: the one interface kernels use to run in parallel. Framework-free.
//
// Kernels split their work into `n_tasks` independent tasks; the pool hands tasks out
// dynamically (an atomic counter), so a thread that is descheduled on a noisy machine
// does not hold up the others. `thread` is in [0, threads()) and indexes scratch().
#pragma once
#include <cstddef>
#include <cstdint>

namespace ty {

using TaskFn = void (*)(void* ctx, int64_t task, int thread);

class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual int threads() const = 0;
  // Runs fn(ctx, t, thread) for every t in [0, n_tasks); returns when all are done.
  // The calling thread takes part. Must not be called re-entrantly from inside a task.
  virtual void run(int64_t n_tasks, TaskFn fn, void* ctx) = 0;
  // Per-thread scratch memory, 64-byte aligned, at least `bytes` long. Valid until the
  // next scratch() call by the same thread with a larger size; contents are undefined.
  virtual void* scratch(int thread, size_t bytes) = 0;

  // Convenience: run a lambda (any callable taking (int64_t task, int thread)).
  template <class F>
  void for_each(int64_t n_tasks, F&& f) {
    run(n_tasks, [](void* c, int64_t t, int th) { (*static_cast<F*>(c))(t, th); }, &f);
  }
};

// A serial implementation, for tests and tools.
class SerialParallel final : public Parallel {
 public:
  ~SerialParallel() override { ::operator delete(buf_); }
  int threads() const override { return 1; }
  void run(int64_t n, TaskFn fn, void* ctx) override { for (int64_t t = 0; t < n; ++t) fn(ctx, t, 0); }
  void* scratch(int, size_t bytes) override {
    if (bytes > cap_) { ::operator delete(buf_); buf_ = ::operator new(bytes + 64); cap_ = bytes; }
    return (void*)(((uintptr_t)buf_ + 63) & ~(uintptr_t)63);
  }
 private:
  void* buf_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace ty
