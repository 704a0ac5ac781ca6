// Tachyon `cuda-emu` backend: the CUDA launcher and kernels (native/cuda/launcher.cuh), compiled
// by the host compiler against native/cuemu. "Device" memory is host memory tagged cuda-emu, a
// queue is a plain object (cuemu launches are synchronous), and a kernel that breaks a CUDA rule
// (divergent barrier, shuffle mask, ...) fails its op with E_INTERNAL naming the kernel, block,
// threads and source line, instead of hanging or corrupting memory as it might on a GPU.
//
// Built into the addon whenever the CUDA headers are present (cuda_fp16.h & co. are used on the
// host too), with or without a GPU, with or without nvcc's device compilation.
#include <cstring>
#include <mutex>
#include <vector>

#include "../cpu/ops.h"
#include "launcher.cuh"

namespace ty {
namespace cuda {
namespace {

// Kernels that break one rule each, for selftest(): the jest suite proves with them that the
// emulator's checks are live inside the addon, not only in the standalone drivers.
__global__ void selftest_barrier(float* out) {
  if (threadIdx.x < 32) __syncthreads();  // the second warp never arrives: divergent barrier
  out[threadIdx.x] = 1.f;
}
__global__ void selftest_shuffle(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);  // mask names lanes that are not here
  out[threadIdx.x] = v;
}
// out[0..31] = 0..31, then out[32+i] = out[i] through shared memory with cp.async. Without the
// wait the shared row is still poisoned (0xFF bytes: NaN) when it is read.
template <bool Wait>
__global__ void selftest_cp_async(float* out) {
  __shared__ __align__(16) float row[32];
  const int i = threadIdx.x;
  out[i] = float(i);
  __syncthreads();
  ptx::cp_async_ca<4>(&row[i], &out[i]);
  ptx::cp_async_commit();
  if (Wait) ptx::cp_async_wait<0>();
  __syncthreads();
  out[32 + i] = row[i];
}

struct EmuQueue final : cpu::DeviceStream {
  void synchronize() override {}  // launches complete before they return
  stream_t handle() { return stream_t(); }
  unsigned long long* error_slot(int i = 0) { return &slot[i]; }
  unsigned long long slot[kErrorWords] = {};
};

class EmuBase : public cpu::Device {
 public:
  using Queue = EmuQueue;
  EmuBase(cuemu::Schedule sched, int arch) : sched_(sched), arch_(arch) {
    // The opt-in shared-memory limit of the emulated arch (sm_89: 99 KiB; sm_80 / sm_90: 227).
    lim_.smem_optin = size_t(arch == 89 ? 99 : 227) << 10;
  }

  cpu::MemSpace space() const override { return cpu::MemSpace::cuda_emu; }
  std::string describe() const override {
    return "cuemu: the CUDA execution model on the CPU (one fiber per CUDA thread), schedule " + cuemu::schedule_name(sched_) +
           ", as sm_" + std::to_string(arch_) + " (48 KiB shared memory per block, " + std::to_string(lim_.smem_optin >> 10) +
           " KiB opt-in; 8 SMs for work partitions)";
  }
  // A small device of 8 SMs: plans split work as they would for it (split-KV and split-K paths
  // stay exercised without making emulated launches large).
  int parallelism() const override { return 8; }
  std::shared_ptr<cpu::Buffer> allocate(size_t bytes) override {
    auto b = cpu::Buffer::allocate(bytes);
    b->space = cpu::MemSpace::cuda_emu;
    return b;
  }
  std::shared_ptr<cpu::Buffer> allocate_pinned(size_t bytes) override {
    auto b = cpu::Buffer::allocate(bytes);
    b->pinned = true;  // host memory: the emulated device addresses it directly
    return b;
  }
  void* device_address(void* p) const { return p; }
  std::unique_ptr<cpu::DeviceStream> create_stream() override { return std::make_unique<EmuQueue>(); }
  void to_device(void* dst, const void* src, size_t n, cpu::DeviceStream&) override { copy(dst, src, n); }
  void to_host(void* dst, const void* src, size_t n, cpu::DeviceStream&) override { copy(dst, src, n); }
  void device_copy(void* dst, const void* src, size_t n, cpu::DeviceStream&) override { copy(dst, src, n); }
  void upload(void* dst, const void* src, size_t n) override { copy(dst, src, n); }

  DeviceLimits limits() const { return lim_; }
  // 8 SMs: split-K and grouped tiling engage on the small shapes the parity tests use.
  QDeviceInfo device_info() const { return QDeviceInfo{arch_, 8}; }

  // cuemu's schedule and worker pool are process-wide, so launches from different streams (and
  // runtimes with different schedules) take turns; each applies its own runtime's order.
  template <class F>
  void run(const char* op, cpu::DeviceStream&, F&& launch) {
    static std::mutex mu;
    std::lock_guard<std::mutex> lk(mu);
    cuemu::set_schedule(sched_);
    try {
      launch(stream_t());
    } catch (const cuemu::Error& e) {
      throw Error(Code::INTERNAL, std::string("cuda-emu: ") + op + " broke a CUDA rule: " + e.what());
    }
  }

  void selftest(const std::string& kind, cpu::DeviceStream& s) override {
    std::vector<float> buf(64, 0.f);  // "device" memory the kernels write (launches are synchronous)
    float* out = buf.data();
    run("selftest", s, [&](stream_t) {
      if (kind == "barrier") cuemu::launch_named("selftest_barrier", selftest_barrier, dim3(1), dim3(64), 0, out);
      else if (kind == "shuffle") cuemu::launch_named("selftest_shuffle", selftest_shuffle, dim3(1), dim3(32), 0, out);
      else if (kind == "cp-async") cuemu::launch_named("selftest_cp_async", selftest_cp_async<false>, dim3(1), dim3(32), 0, out);
      else if (kind == "cp-async-ok") cuemu::launch_named("selftest_cp_async", selftest_cp_async<true>, dim3(1), dim3(32), 0, out);
      else throw Error(Code::INVALID_ARG, "Expected one of barrier, shuffle, cp-async, cp-async-ok for kind but received '" + kind + "'", "kind");
    });
    // The cp.async kernels pass or fail through their data: a poisoned row reads back as NaN.
    for (int i = 0; i < 32; ++i)
      if (!(buf[32 + i] == float(i)))
        throw Error(Code::INTERNAL, "cuda-emu: selftest_cp_async read shared memory before its cp.async landed (element " +
                                        std::to_string(i) + " is still poisoned)");
  }

 private:
  static void copy(void* dst, const void* src, size_t n) {
    if (n) std::memcpy(dst, src, n);
  }
  cuemu::Schedule sched_;
  int arch_;
  DeviceLimits lim_;
};

}  // namespace
}  // namespace cuda

std::shared_ptr<cpu::Device> make_cuda_emu_device(const std::string& schedule, int arch) {
  if (arch != 80 && arch != 89 && arch != 90)
    throw Error(Code::INVALID_ARG, "Expected 80, 89 or 90 for arch but received " + std::to_string(arch), "arch");
  cuemu::Schedule s;
  if (schedule.empty() || schedule == "forward") s.order = cuemu::Order::Forward;
  else if (schedule == "reverse") s.order = cuemu::Order::Reverse;
  else if (schedule.rfind("random:", 0) == 0) {
    const std::string seed = schedule.substr(7);
    char* end = nullptr;
    const unsigned long long v = std::strtoull(seed.c_str(), &end, 10);
    if (seed.empty() || *end != '\0')
      throw Error(Code::INVALID_ARG, "Expected random:SEED with a decimal SEED for schedule but received '" + schedule + "'", "schedule");
    s.order = cuemu::Order::Random;
    s.seed = v;
  } else {
    throw Error(Code::INVALID_ARG, "Expected forward, reverse or random:SEED for schedule but received '" + schedule + "'", "schedule");
  }
  return std::make_shared<cuda::Launcher<cuda::EmuBase>>(s, arch);
}

}  // namespace ty
