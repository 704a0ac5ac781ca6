// Tachyon CUDA backends: the one launcher layer shared by `cuda` and `cuda-emu`.
//
// Launcher<Base> implements the kernel half of cpu::Device (native/cpu/device.h) by calling the
// single-source kernels' launch helpers (native/cuda/kernels/*.cuh) and turning their Status into
// ty::Error. Base supplies what differs between the two backends:
//   - memory and queues (cpu::Device's allocate / create_stream / copies);
//   - `using Queue = ...`, a cpu::DeviceStream subclass with `stream_t handle()` and
//     `unsigned long long* error_slot()` (one device word per queue for kernels that report
//     bad data, like the embedding gather's out-of-range ids);
//   - `DeviceLimits limits() const` (the shared-memory limits the launch checks use);
//   - `void run(const char* op, cpu::DeviceStream&, F&& launch)`: makes the device current (cuda)
//     or takes the emulator's launch lock and applies the runtime's schedule order (cuda-emu),
//     then calls launch(stream_t).
// nvcc compiles this file in native/cuda/backend.cu and g++ in native/cuda/emu.cpp, so both
// backends run exactly the same launch code and kernels.
#pragma once

#include <string>

#include "../cpu/device.h"
#include "kernels/elementwise.cuh"
#include "kernels/embedding.cuh"
#include "kernels/gemm_f16.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/softmax.cuh"

namespace ty {
namespace cuda {

template <class Base>
class Launcher final : public Base {
 public:
  using Base::Base;
  using Queue = typename Base::Queue;

  void gemm(const GemmArgs& a, cpu::DeviceStream& s) override {
    this->run("matmul", s, [&](stream_t st) { cuda::gemm(a, st, this->limits()).throw_if_error(); });
  }
  void binary(const BinaryArgs& a, cpu::DeviceStream& s) override {
    this->run(a.op == BinaryOp::add ? "add" : "mul", s,
              [&](stream_t st) { cuda::binary(a, st, this->limits()).throw_if_error(); });
  }
  void silu_mul(const SiluMulArgs& a, cpu::DeviceStream& s) override {
    this->run("siluMul", s, [&](stream_t st) { cuda::silu_mul(a, st, this->limits()).throw_if_error(); });
  }
  void rms_norm(const RmsNormArgs& a, cpu::DeviceStream& s) override {
    this->run("rmsNorm", s, [&](stream_t st) { cuda::rms_norm(a, st, this->limits()).throw_if_error(); });
  }
  void rope(const RopeArgs& a, cpu::DeviceStream& s) override {
    this->run("rope", s, [&](stream_t st) { cuda::rope(a, st, this->limits()).throw_if_error(); });
  }
  void softmax(const SoftmaxArgs& a, cpu::DeviceStream& s) override {
    this->run("softmax", s, [&](stream_t st) { cuda::softmax(a, st, this->limits()).throw_if_error(); });
  }
  // ids live on the device, so the kernel checks them and lowers the queue's error word; the
  // host reads that word back (a synchronization) to raise the CPU backend's exact error.
  void embedding(const EmbeddingArgs& a, cpu::DeviceStream& s) override {
    Queue& q = static_cast<Queue&>(s);
    const unsigned long long none = kEmbeddingNoError;
    this->to_device(q.error_slot(), &none, sizeof none, s);
    this->run("embedding", s, [&](stream_t st) { cuda::embedding(a, q.error_slot(), st, this->limits()).throw_if_error(); });
    unsigned long long got = none;
    this->to_host(&got, q.error_slot(), sizeof got, s);
    s.synchronize();
    int64_t token = 0;
    int32_t id = 0;
    if (embedding_bad(got, &token, &id))
      throw Error(Code::INVALID_ARG, "Token id " + std::to_string(id) + " at index " + std::to_string(token) + " is outside [0, " +
                                         std::to_string(a.vocab) + ")", "ids");
  }
};

}  // namespace cuda
}  // namespace ty
