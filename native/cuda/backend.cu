// Tachyon `cuda` backend: device discovery, device memory, streams, and the shared launcher
// (native/cuda/launcher.cuh) compiled for the GPU.
//
// Linked against the static CUDA runtime, which loads libcuda.so lazily: a binary built with CUDA
// still loads and runs its CPU backend on a machine with no GPU and no driver, and
// make_cuda_device() then fails with E_BACKEND and the driver's reason.
//
// Stream model: every runtime stream (cpu::Stream, a host thread draining a FIFO) owns one
// non-blocking cudaStream_t. Ops launch asynchronously onto it from the stream thread; every
// completion point (read, synchronize, timestamp) synchronizes it first, so an asynchronous fault
// surfaces as that promise's KernelError (backend 'cuda') and poisons the stream like a CPU
// kernel error. Device memory is cudaMalloc'd; cudaFree waits for the device, so a tensor
// disposed while a kernel still reads it is safe.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "launcher.cuh"
#include "tachyon/cuda_probe.h"

extern "C" int ty_cuda_device_count(char* reason, size_t reason_len) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (reason && reason_len) std::snprintf(reason, reason_len, "%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    cudaGetLastError();  // clear the sticky error state
    return 0;
  }
  if (n == 0 && reason && reason_len) std::snprintf(reason, reason_len, "no CUDA device found");
  return n;
}

extern "C" const char* ty_cuda_archs(void) {
#ifdef TY_CUDA_ARCHS
  return TY_CUDA_ARCHS;
#else
  return "";
#endif
}

namespace ty {
namespace cuda {
namespace {

// CUDA error → ty::Error. Out-of-memory keeps its own code; everything else is E_BACKEND with
// the runtime's name for the error, so a user can search for it.
void check(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear non-sticky state so later calls are not blamed for this one
  const Code c = e == cudaErrorMemoryAllocation ? Code::OOM : Code::BACKEND;
  throw Error(c, "cuda: " + what + " failed: " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")");
}

struct CudaQueue final : cpu::DeviceStream {
  explicit CudaQueue(int dev) : dev(dev) {
    check(cudaSetDevice(dev), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    if (cudaMalloc(&slot, kErrorWords * sizeof(unsigned long long)) != cudaSuccess) {
      cudaStreamDestroy(s);
      check(cudaErrorMemoryAllocation, "cudaMalloc (stream error word)");
    }
  }
  ~CudaQueue() override {
    cudaSetDevice(dev);
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    cudaFree(slot);
  }
  void synchronize() override {
    check(cudaSetDevice(dev), "cudaSetDevice");
    check(cudaStreamSynchronize(s), "a kernel on this stream");
  }
  stream_t handle() { return s; }
  unsigned long long* error_slot(int i = 0) { return slot + i; }
  int dev;
  cudaStream_t s = nullptr;
  unsigned long long* slot = nullptr;
};

class CudaBase : public cpu::Device {
 public:
  using Queue = CudaQueue;
  explicit CudaBase(int dev) : dev_(dev) {
    check(cudaSetDevice(dev), "cudaSetDevice(" + std::to_string(dev) + ")");
    check(cudaGetDeviceProperties(&prop_, dev), "cudaGetDeviceProperties");
    if (prop_.major < 8)
      throw Error(Code::BACKEND, std::string("cuda: device ") + std::to_string(dev) + " (" + prop_.name + ") is sm_" +
                                     std::to_string(prop_.major * 10 + prop_.minor) +
                                     "; the kernels need sm_80 or newer (mma.sync bf16, cp.async, ldmatrix)");
    int optin = 0;
    check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    lim_.smem_optin = size_t(optin);
    lim_.smem_default = prop_.sharedMemPerBlock;
  }

  cpu::MemSpace space() const override { return cpu::MemSpace::cuda; }
  std::string describe() const override {
    return std::string(prop_.name) + " (sm_" + std::to_string(prop_.major * 10 + prop_.minor) + ", " +
           std::to_string(prop_.multiProcessorCount) + " SMs, " + std::to_string(prop_.totalGlobalMem >> 20) + " MiB)";
  }
  int parallelism() const override { return prop_.multiProcessorCount; }
  std::shared_ptr<cpu::Buffer> allocate(size_t bytes) override {
    check(cudaSetDevice(dev_), "cudaSetDevice");
    void* p = nullptr;
    if (bytes) {
      cudaError_t e = cudaMalloc(&p, bytes);
      if (e != cudaSuccess) {
        cudaGetLastError();
        throw Error(Code::OOM, "cuda: out of device memory allocating " + std::to_string(bytes) + " bytes on device " +
                                   std::to_string(dev_) + " (" + cudaGetErrorName(e) + ")");
      }
    }
    auto b = std::make_shared<cpu::Buffer>();
    b->data = p;
    b->bytes = bytes;
    b->space = cpu::MemSpace::cuda;
    const int dev = dev_;
    b->release = [dev, p] {
      if (!p) return;
      cudaSetDevice(dev);
      cudaFree(p);
    };
    return b;
  }
  std::shared_ptr<cpu::Buffer> allocate_pinned(size_t bytes) override {
    check(cudaSetDevice(dev_), "cudaSetDevice");
    void* p = nullptr;
    if (bytes) {
      // Mapped (the kernels read and write it over PCIe / NVLink-C2C) and portable (any context).
      cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable);
      if (e != cudaSuccess) {
        cudaGetLastError();
        throw Error(Code::OOM, "cuda: cannot allocate " + std::to_string(bytes) + " bytes of pinned host memory (" +
                                   cudaGetErrorName(e) + ")");
      }
    }
    auto b = std::make_shared<cpu::Buffer>();
    b->data = p;
    b->bytes = bytes;
    b->pinned = true;
    b->release = [p] {
      if (p) cudaFreeHost(p);
    };
    return b;
  }
  void* device_address(void* p) const {
    void* d = nullptr;
    check(cudaHostGetDevicePointer(&d, p, 0), "cudaHostGetDevicePointer");
    return d;
  }
  std::unique_ptr<cpu::DeviceStream> create_stream() override { return std::make_unique<CudaQueue>(dev_); }
  void to_device(void* dst, const void* src, size_t n, cpu::DeviceStream& s) override { copy(dst, src, n, cudaMemcpyHostToDevice, s); }
  void to_host(void* dst, const void* src, size_t n, cpu::DeviceStream& s) override { copy(dst, src, n, cudaMemcpyDeviceToHost, s); }
  void device_copy(void* dst, const void* src, size_t n, cpu::DeviceStream& s) override {
    copy(dst, src, n, cudaMemcpyDeviceToDevice, s);
  }
  void upload(void* dst, const void* src, size_t n) override {
    if (!n) return;
    check(cudaSetDevice(dev_), "cudaSetDevice");
    check(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice), "cudaMemcpy (upload)");
  }

  DeviceLimits limits() const { return lim_; }
  QDeviceInfo device_info() const {
    return QDeviceInfo{prop_.major * 10 + prop_.minor, prop_.multiProcessorCount > 0 ? prop_.multiProcessorCount : 1};
  }

  template <class F>
  void run(const char*, cpu::DeviceStream& s, F&& launch) {
    check(cudaSetDevice(dev_), "cudaSetDevice");  // the stream thread may not have it current
    launch(static_cast<CudaQueue&>(s).handle());
  }

  void selftest(const std::string&, cpu::DeviceStream&) override {
    throw Error(Code::UNSUPPORTED, "selftest kernels break CUDA rules on purpose and run only on cuda-emu", "kind");
  }

 private:
  void copy(void* dst, const void* src, size_t n, cudaMemcpyKind k, cpu::DeviceStream& s) {
    if (!n) return;
    check(cudaSetDevice(dev_), "cudaSetDevice");
    // Host memory is pageable: the runtime stages it, so src may be reused once this returns.
    check(cudaMemcpyAsync(dst, src, n, k, static_cast<CudaQueue&>(s).handle()), "cudaMemcpyAsync");
  }
  int dev_;
  cudaDeviceProp prop_{};
  DeviceLimits lim_;
};

}  // namespace
}  // namespace cuda

std::shared_ptr<cpu::Device> make_cuda_device(int ordinal) {
  char reason[256] = {0};
  const int n = ty_cuda_device_count(reason, sizeof reason);
  if (n == 0) throw Error(Code::BACKEND, std::string("no usable CUDA device: ") + reason);
  if (ordinal < 0 || ordinal >= n)
    throw Error(Code::INVALID_ARG, "Expected a device index in [0, " + std::to_string(n) + ") for device but received " +
                                       std::to_string(ordinal), "device");
  return std::make_shared<cuda::Launcher<cuda::CudaBase>>(ordinal);
}

}  // namespace ty
