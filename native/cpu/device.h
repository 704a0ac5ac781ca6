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
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "stream.h"
#include "tachyon/attention.h"
#include "tachyon/kernels.h"

namespace ty::cpu {

// A device's ordered queue (a cudaStream_t on `cuda`). Owned by one cpu::Stream.
class Device;
class DeviceStream {
 public:
  virtual ~DeviceStream() = default;
  // Waits for everything launched on this stream; throws ty::Error for a failure found there
  // (an asynchronous CUDA fault).
  virtual void synchronize() = 0;

  // What cpu::Stream calls at every completion point: synchronize(), then the deferred checks
  // (in order; the first that throws fails the completion point, and the rest are dropped).
  // Kernels that find bad data on the device (a KV slot out of range) report it through a
  // device word; reading it back right after the launch would stall the GPU once per layer, so
  // the launcher registers a check here instead and the error surfaces at the next completion
  // point, the same way an asynchronous CUDA fault does (nothing outside the operands is
  // touched in between: the kernels skip what they report).
  void complete() {
    std::vector<std::pair<int, std::function<void()>>> checks;
    checks.swap(deferred_);
    synchronize();
    for (auto& c : checks) c.second();
  }
  // One pending check per key (an op family's error word): true when `key` already has one.
  bool deferred(int key) const {
    for (auto& c : deferred_)
      if (c.first == key) return true;
    return false;
  }
  void defer(int key, std::function<void()> check) {
    if (!deferred(key)) deferred_.emplace_back(key, std::move(check));
  }

  // Grow-only device scratch owned by the queue (split-KV partials, GEMM split-K workspace,
  // uploaded plans). Ops on one queue run in order, so one op's scratch is free for the next;
  // a buffer replaced by a larger one is freed behind the running kernels (cudaFree waits).
  void* scratch(Device& d, int slot, size_t bytes);

 private:
  std::vector<std::pair<int, std::function<void()>>> deferred_;
  std::shared_ptr<Buffer> scratch_[8];
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

  // ---- paged KV cache and attention (native/cuda/ops_attention.cu) ---------------------------
  // The argument structs are the CPU's with device pointers; `plan` is the host plan (the
  // launcher uploads it with its page table once per plan and device, see PlanDevice below).
  virtual void kv_append(const KvAppendArgs&, DeviceStream&) = 0;
  virtual void attention(const AttentionPlan& plan, const void* plan_device, const AttentionArgs&, DeviceStream&) = 0;
  virtual void attention_merge(const AttentionMergeArgs&, DeviceStream&) = 0;
  // `pairs` is a device array; `host_pairs` is the same n pairs on the host, already checked
  // with kv_copy_blocks_check.
  virtual void kv_copy_blocks(const KvCopyBlocksArgs&, DeviceStream&) = 0;
  // Bytes of the device copy of a plan (AttnWork items, merges, kvLen, qoIndptr) and the packing.
  virtual size_t attention_plan_bytes(const AttentionPlan&) const = 0;
  virtual void attention_plan_pack(const AttentionPlan&, void* host_dst) const = 0;

  // ---- quantized GEMM (native/cuda/ops_qgemm.cu) ---------------------------------------------

  // ---- sampling (native/cuda/ops_sampling.cu) ------------------------------------------------

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
