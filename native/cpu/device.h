// Tachyon runtime: the interface behind the GPU-style backends (`cuda`, `cuda-emu`).
//
// A runtime whose backend is not `cpu` owns a Device. Its tensors live in the device's memory
// (Buffer::space says which), its streams each own a DeviceStream, and the op entry points
// (native/cpu/ops.cpp) validate exactly as they do for the CPU, then route the kernel to the
// device from the stream thread. One implementation of this interface (native/cuda/launcher.cuh)
// serves both backends: nvcc compiles it against the CUDA runtime (native/cuda/backend.cu), and
// g++ compiles it against native/cuemu (native/cuda/emu.cpp), where "device" memory is host
// memory and a launch runs the kernel on fibers.
//
// Every entry point runs on a stream thread and throws ty::Error (nothing is launched when a
// launch check fails). Framework-free: nothing here knows about Node or CUDA.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "stream.h"
#include "tachyon/kernels.h"

namespace ty::cpu {

// A device's ordered queue (a cudaStream_t on `cuda`). Owned by one cpu::Stream.
class DeviceStream {
 public:
  virtual ~DeviceStream() = default;
  // Waits for everything launched on this stream; throws ty::Error for a failure found there
  // (an asynchronous CUDA fault).
  virtual void synchronize() = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual MemSpace space() const = 0;
  const char* name() const { return mem_space_name(space()); }
  // One line for doctor() / runtime.info(): device name, compute capability, memory.
  virtual std::string describe() const = 0;

  // Memory. allocate() throws ty::Error(OOM) naming the size; the buffer frees itself.
  virtual std::shared_ptr<Buffer> allocate(size_t bytes) = 0;
  virtual std::unique_ptr<DeviceStream> create_stream() = 0;
  // Copies ordered on `s` (host memory may be pageable; the call returns once `src` may be
  // reused, i.e. host→device copies are staged or synchronous).
  virtual void to_device(void* dst, const void* src, size_t bytes, DeviceStream& s) = 0;
  virtual void to_host(void* dst, const void* src, size_t bytes, DeviceStream& s) = 0;
  virtual void device_copy(void* dst, const void* src, size_t bytes, DeviceStream& s) = 0;
  // Synchronous host→device upload, for tensor creation on the JS thread.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;

  // Kernels: the argument structs are the CPU's (tachyon/kernels.h), already validated by the
  // op entry points; each launch helper still checks what its kernel needs.
  virtual void gemm(const GemmArgs&, DeviceStream&) = 0;
  virtual void binary(const BinaryArgs&, DeviceStream&) = 0;
  virtual void silu_mul(const SiluMulArgs&, DeviceStream&) = 0;
  virtual void rms_norm(const RmsNormArgs&, DeviceStream&) = 0;
  virtual void rope(const RopeArgs&, DeviceStream&) = 0;
  virtual void softmax(const SoftmaxArgs&, DeviceStream&) = 0;
  // ids out of range are reported as ty::Error(INVALID_ARG, arg "ids") after the launch.
  virtual void embedding(const EmbeddingArgs&, DeviceStream&) = 0;
  // Test hook (cuda-emu only): launches a kernel that breaks one CUDA rule on purpose
  // (kind: "barrier", "shuffle", "cp-async") so tests can prove the emulator's checks are live
  // inside the addon. Other backends throw UNSUPPORTED.
  virtual void selftest(const std::string& kind, DeviceStream&) = 0;
};

}  // namespace ty::cpu

namespace ty {
// Factories, defined where the backend is compiled in (native/cuda/emu.cpp, native/cuda/backend.cu);
// the binding supplies fallbacks that throw E_BACKEND with the reason otherwise.
// schedule: "forward" | "reverse" | "random:SEED" (cuemu's block and thread order).
std::shared_ptr<cpu::Device> make_cuda_emu_device(const std::string& schedule);
// Throws ty::Error(BACKEND) with the driver's reason when the device cannot be used.
std::shared_ptr<cpu::Device> make_cuda_device(int ordinal);
}  // namespace ty
