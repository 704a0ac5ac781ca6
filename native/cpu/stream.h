// Tachyon CPU backend: buffers and streams (framework-free; see DESIGN.md section 2).
//
// A Stream is a worker thread draining a FIFO of closures, like a cudaStream_t. Ops are
// validated on the caller's thread, then enqueued; the caller returns at once. A kernel
// that throws poisons the stream: every later op is skipped and every later completion
// reports the first error, until reset().
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "tachyon/error.h"

namespace ty::cpu {

// Where a buffer's bytes live. `cuda_emu` memory is host memory, but it is tagged like device
// memory so that mixing backends fails on the emulator exactly as it would on a GPU.
enum class MemSpace : uint8_t { host = 0, cuda = 1, cuda_emu = 2 };
inline const char* mem_space_name(MemSpace s) {
  return s == MemSpace::cuda ? "cuda" : s == MemSpace::cuda_emu ? "cuda-emu" : "cpu";
}

class DeviceStream;

// A block of host memory, 64-byte aligned when owned. External buffers wrap memory owned
// by someone else (a JS ArrayBuffer); `release` runs when the last reference goes away,
// on whatever thread that happens.
struct Buffer {
  void* data = nullptr;
  size_t bytes = 0;
  bool external = false;
  bool mapped = false;  // owned, from mmap (page aligned)
  bool pinned = false;  // page-locked host memory a device can address (Device::allocate_pinned)
  MemSpace space = MemSpace::host;  // device buffers are made by a Device (device.h)
  std::function<void()> release;

  static std::shared_ptr<Buffer> allocate(size_t bytes);  // throws ty::Error(OOM)
  static std::shared_ptr<Buffer> wrap(void* data, size_t bytes, std::function<void()> release);
  ~Buffer();
};

// Outcome of the work before a completion point.
struct StreamStatus {
  bool ok = true;
  Code code = Code::INTERNAL;
  std::string message, op, arg;
};

class Stream {
 public:
  using Job = std::function<void()>;
  using Done = std::function<void(const StreamStatus&)>;

  explicit Stream(std::string name);
  ~Stream();  // drains the queue, then joins the worker
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Enqueue a kernel. `op` names it for error reports.
  void enqueue(const char* op, Job job);
  // Enqueue a completion point: `done` runs on the stream thread after everything before
  // it, with the stream's status (ok, or the poisoning error). `job` (may be empty) runs
  // first if the stream is healthy — e.g. the copy behind tensor.read().
  void enqueue_done(Job job, Done done);
  // Clears the poisoned state (for ops enqueued after this call).
  void reset();
  // Blocks the calling thread until the queue is empty (for finalizers / tools).
  void drain();
  size_t pending() const;
  // Device backends: the device queue this stream drives. Every completion point
  // synchronizes it before reporting, so a read or synchronize() sees device work finished.
  void attach(std::unique_ptr<DeviceStream> ds);
  DeviceStream* device() const { return dev_.get(); }

 private:
  struct Item { const char* op; Job job; Done done; bool reset; };
  void loop();

  std::string name_;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Item> q_;
  bool busy_ = false, stop_ = false;
  StreamStatus status_;  // touched only on the stream thread
  std::unique_ptr<DeviceStream> dev_;
  std::thread th_;
};

}  // namespace ty::cpu
