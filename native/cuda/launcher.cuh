// Tachyon CUDA backends: the one launcher layer shared by `cuda` and `cuda-emu`.
//
// Launcher<Base> implements the kernel half of cpu::Device (native/cpu/device.h) by calling the
// single-source kernels' launch helpers (native/cuda/kernels/*.cuh) and turning their Status into
// ty::Error. Base supplies what differs between the two backends:
//   - memory and queues (cpu::Device's allocate / create_stream / copies);
//   - `using Queue = ...`, a cpu::DeviceStream subclass with `stream_t handle()` and
//     `unsigned long long* error_slot(int i)` (kErrorWords device words per queue for kernels
//     that report bad data, like the embedding gather's out-of-range ids; see ErrorWord);
//   - `DeviceLimits limits() const` (the shared-memory limits the launch checks use);
//   - `void run(const char* op, cpu::DeviceStream&, F&& launch)`: makes the device current (cuda)
//     or takes the emulator's launch lock and applies the runtime's schedule order (cuda-emu),
//     then calls launch(stream_t).
// nvcc compiles this file in native/cuda/backend.cu and g++ in native/cuda/emu.cpp, so both
// backends run exactly the same launch code and kernels.
#pragma once

#include <cstring>
#include <string>

#include "../cpu/device.h"
#include "kernels/elementwise.cuh"
#include "kernels/embedding.cuh"
#include "kernels/gemm_f16.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/softmax.cuh"
#include "launch.h"

namespace ty {
namespace cuda {

// The per-queue device words kernels report bad data through (one per op family, so a deferred
// check knows whose fault it reads).
enum ErrorWord : int { kWordEmbedding = 0, kWordKvAppend, kWordAttention, kWordKvCopy, kErrorWords };
// Per-queue scratch slots (cpu::DeviceStream::scratch).
enum ScratchSlot : int { kScratchAttnWorkspace = 0, kScratchQgemm, kScratchSampling };

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
  // ---- paged KV cache and attention ----------------------------------------------------------
  // Slots, pages and pairs are device data: the kernels skip what is out of range and report the
  // first fault through the op's error word, which is read at the next completion point (see
  // cpu::DeviceStream::complete) and raised with the CPU backend's code and argument.
  void kv_append(const KvAppendArgs& a, cpu::DeviceStream& s) override {
    unsigned long long* w = arm(s, kWordKvAppend);
    this->run("kvAppend", s, [&](stream_t st) { launch_kv_append(a, w, st, this->limits()).throw_if_error(); });
    const int kvHeads = a.cache.kvHeads;
    const int64_t nslots = int64_t(a.cache.blocks) * a.cache.blockSize;
    check_later(s, kWordKvAppend, [=](int kind, int64_t index, int32_t value) {
      if (kind == 1) {  // kKvFaultScale: index = kv * kvHeads + head, value = the scale's bits
        float f;
        std::memcpy(&f, &value, sizeof f);
        const std::string at = std::string(index / kvHeads ? "v" : "k") + " head " + std::to_string(index % kvHeads);
        throw Error(Code::INVALID_ARG, "Expected a positive finite fp8 scale in cache.scales (" + at +
                                           " of a layer appended to since the last completion point) but received " +
                                           std::to_string(f), "cache.scales");
      }
      throw Error(Code::INVALID_ARG, "Expected -1 or a slot in [0, " + std::to_string(nslots) + ") for slots[" + std::to_string(index) +
                                         "] but received " + std::to_string(value),
                  "slots[" + std::to_string(index) + "]");
    });
  }
  void attention(const AttentionPlan& plan, const void* plan_device, const AttentionArgs& a, cpu::DeviceStream& s) override {
    unsigned long long* w = arm(s, kWordAttention);
    AttentionArgs d = a;
    d.workspace = s.scratch(*this, kScratchAttnWorkspace, plan.workspaceBytes);
    this->run("attention", s, [&](stream_t st) { launch_attention(plan, plan_device, d, w, st, this->limits()).throw_if_error(); });
    // The page table was checked on the host when the plan was built (its device copy is the
    // plan's own), so a fault here means the device copy was overwritten: report it as internal.
    check_later(s, kWordAttention, [](int kind, int64_t index, int32_t value) {
      throw Error(Code::INTERNAL, std::string("attention: the device page table is inconsistent (") +
                                      (kind == 2 ? "sequence " : "indices[") + std::to_string(index) + (kind == 2 ? "" : "]") +
                                      ", value " + std::to_string(value) + ")");
    });
  }
  void attention_merge(const AttentionMergeArgs& a, cpu::DeviceStream& s) override {
    this->run("attentionMerge", s, [&](stream_t st) { launch_attention_merge(a, st, this->limits()).throw_if_error(); });
  }
  void kv_copy_blocks(const KvCopyBlocksArgs& a, cpu::DeviceStream& s) override {
    unsigned long long* w = arm(s, kWordKvCopy);
    this->run("kvCopyBlocks", s, [&](stream_t st) { launch_kv_copy_blocks(a, w, st, this->limits()).throw_if_error(); });
    const int64_t blocks = a.cache.blocks;
    check_later(s, kWordKvCopy, [=](int, int64_t index, int32_t value) {
      throw Error(Code::INVALID_ARG, "Expected a block in [0, " + std::to_string(blocks) + ") for pairs[" + std::to_string(index / 2) +
                                         "][" + std::to_string(index % 2) + "] but received " + std::to_string(value),
                  "pairs");
    });
  }
  size_t attention_plan_bytes(const AttentionPlan& p) const override { return cuda::attention_plan_bytes(p); }
  void attention_plan_pack(const AttentionPlan& p, void* dst) const override { attention_plan_pack_host(p, dst); }

  // ---- quantized GEMM family (owned by the qgemm work: keep edits inside this section) --------

  // ---- sampling family (owned by the sampling work: keep edits inside this section) -----------

  // ids live on the device, so the kernel checks them and lowers the queue's error word; the
  // host reads that word back (a synchronization) to raise the CPU backend's exact error.
  void embedding(const EmbeddingArgs& a, cpu::DeviceStream& s) override {
    Queue& q = static_cast<Queue&>(s);
    unsigned long long* w = q.error_slot(kWordEmbedding);
    const unsigned long long none = kEmbeddingNoError;
    this->to_device(w, &none, sizeof none, s);
    this->run("embedding", s, [&](stream_t st) { cuda::embedding(a, w, st, this->limits()).throw_if_error(); });
    unsigned long long got = none;
    this->to_host(&got, w, sizeof got, s);
    s.synchronize();
    int64_t token = 0;
    int32_t id = 0;
    if (embedding_bad(got, &token, &id))
      throw Error(Code::INVALID_ARG, "Token id " + std::to_string(id) + " at index " + std::to_string(token) + " is outside [0, " +
                                         std::to_string(a.vocab) + ")", "ids");
  }

 private:
  // A KV-family error word, reset to "no fault" in stream order by the first launch since the
  // last completion point (the word keeps the first fault until the deferred check reads it).
  unsigned long long* arm(cpu::DeviceStream& s, ErrorWord i) {
    unsigned long long* w = static_cast<Queue&>(s).error_slot(i);
    if (!s.deferred(i)) {
      const unsigned long long none = ~0ull;  // kKvNoError
      this->to_device(w, &none, sizeof none, s);
    }
    return w;
  }
  // Registers the check of word i for the next completion point (once): it reads the word back
  // (the device is idle by then) and calls raise(kind, index, value) on a fault.
  template <class Raise>
  void check_later(cpu::DeviceStream& s, ErrorWord i, Raise raise) {
    if (s.deferred(i)) return;
    unsigned long long* w = static_cast<Queue&>(s).error_slot(i);
    cpu::DeviceStream* sp = &s;
    s.defer(i, [this, sp, w, raise] {
      unsigned long long got = ~0ull;
      this->to_host(&got, w, sizeof got, *sp);
      sp->synchronize();
      int kind = 0;
      int64_t index = 0;
      int32_t value = 0;
      if (kv_fault_decode(got, &kind, &index, &value)) raise(kind, index, value);
    });
  }
};

}  // namespace cuda
}  // namespace ty
