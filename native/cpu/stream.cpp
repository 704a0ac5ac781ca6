#include "stream.h"

#include "device.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace ty::cpu {

// Refuse single allocations beyond this: a shape typo (or hostile input) must become
// E_OOM, not an attempt to reserve terabytes.
static constexpr size_t kMaxAlloc = (size_t)1 << 40;
static constexpr size_t kMmapMin = (size_t)1 << 20;

std::shared_ptr<Buffer> Buffer::allocate(size_t bytes) {
  if (bytes > kMaxAlloc)
    throw Error(Code::OOM, "Cannot allocate " + std::to_string(bytes) + " bytes: exceeds the 1 TiB per-tensor limit");
  auto b = std::make_shared<Buffer>();
  if (bytes >= kMmapMin) {
    // Large tensors get their own mapping: freed memory goes straight back to the OS
    // (glibc's adaptive mmap threshold otherwise parks multi-MiB tensors in the heap,
    // where a tensor freed on a stream thread is not reused and RSS only grows), and big
    // weight tensors can use transparent huge pages, which cut TLB misses in GEMV.
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error(Code::OOM, "Out of host memory allocating " + std::to_string(bytes) + " bytes");
#ifdef MADV_HUGEPAGE
    if (bytes >= ((size_t)8 << 20)) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    b->data = p;
    b->mapped = true;
  } else {
    size_t rounded = (bytes + 63) & ~(size_t)63;
    b->data = std::aligned_alloc(64, rounded ? rounded : 64);
    if (!b->data) throw Error(Code::OOM, "Out of host memory allocating " + std::to_string(bytes) + " bytes");
  }
  b->bytes = bytes;
  return b;
}

std::shared_ptr<Buffer> Buffer::wrap(void* data, size_t bytes, std::function<void()> release) {
  auto b = std::make_shared<Buffer>();
  b->data = data;
  b->bytes = bytes;
  b->external = true;
  b->release = std::move(release);
  return b;
}

Buffer::~Buffer() {
  if (release) {
    release();  // external memory, or a device allocation (device.h)
  } else if (external) {
  } else if (mapped) {
    munmap(data, bytes);
  } else {
    std::free(data);
  }
}

Stream::Stream(std::string name) : name_(std::move(name)) { th_ = std::thread([this] { loop(); }); }

Stream::~Stream() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  th_.join();
}

void Stream::attach(std::unique_ptr<DeviceStream> ds) {
  // Called right after construction, before anything is queued (the stream thread never
  // touches dev_ while the queue is empty).
  std::lock_guard<std::mutex> lk(mu_);
  dev_ = std::move(ds);
}

void Stream::enqueue(const char* op, Job job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(Item{op, std::move(job), nullptr, false});
  }
  cv_.notify_one();
}

void Stream::enqueue_done(Job job, Done done) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(Item{"read", std::move(job), std::move(done), false});
  }
  cv_.notify_one();
}

void Stream::reset() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(Item{"reset", nullptr, nullptr, true});
  }
  cv_.notify_one();
}

void Stream::drain() {
  std::unique_lock<std::mutex> lk(mu_);
  idle_cv_.wait(lk, [&] { return q_.empty() && !busy_; });
}

size_t Stream::pending() const {
  std::lock_guard<std::mutex> lk(mu_);
  return q_.size() + (busy_ ? 1 : 0);
}

void Stream::loop() {
  for (;;) {
    Item it;
    {
      std::unique_lock<std::mutex> lk(mu_);
      busy_ = false;
      if (q_.empty()) idle_cv_.notify_all();
      cv_.wait(lk, [&] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;  // stop requested and drained
      it = std::move(q_.front());
      q_.pop_front();
      busy_ = true;
    }
    if (it.reset) { status_ = StreamStatus{}; continue; }
    if (it.job && status_.ok) {
      try {
        it.job();
      } catch (const Error& e) {
        status_ = StreamStatus{false, e.code, e.what(), it.op, e.arg};
      } catch (const std::bad_alloc&) {
        status_ = StreamStatus{false, Code::OOM, "Out of memory inside a kernel", it.op};
      } catch (const std::exception& e) {
        status_ = StreamStatus{false, Code::INTERNAL, e.what(), it.op};
      }
    }
    if (it.done) {
      if (dev_) {
        // Device work before this point must be finished (or failed), and its deferred checks
        // run (a poisoned stream still drains them, so none outlives the failure).
        try {
          dev_->complete();
        } catch (const Error& e) {
          if (status_.ok) status_ = StreamStatus{false, e.code, e.what(), "synchronize", e.arg};
        }
      }
      it.done(status_);
    }
    it.job = nullptr;  // release captured buffers on the stream thread, promptly
    it.done = nullptr;
  }
}

}  // namespace ty::cpu

namespace ty::cpu {

void* DeviceStream::scratch(Device& d, int slot, size_t bytes) {
  if (slot < 0 || slot >= 8) throw Error(Code::INTERNAL, "DeviceStream::scratch: slot out of range");
  if (bytes == 0) return nullptr;
  std::shared_ptr<Buffer>& b = scratch_[slot];
  if (!b || b->bytes < bytes) {
    b.reset();  // free first: the old buffer's memory can serve the new one
    // Round up so a slowly growing size does not reallocate every step.
    size_t want = 256;
    while (want < bytes) want *= 2;
    b = d.allocate(want);
  }
  return b->data;
}

}  // namespace ty::cpu
