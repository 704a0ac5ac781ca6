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
  // How many independent workers a work partition should fill (the SM count on cuda): what
  // attention_plan's `threads` should be for this device.
  virtual int parallelism() const = 0;

  // Memory. allocate() throws ty::Error(OOM) naming the size; the buffer frees itself.
  virtual std::shared_ptr<Buffer> allocate(size_t bytes) = 0;
  virtual std::unique_ptr<DeviceStream> create_stream() = 0;
  // Copies ordered on `s` (host memory may be pageable; the call returns once `src` may be
  // reused, i.e. host→device copies are staged or synchronous).
  virtual void to_device(void* dst, const void* src, size_t bytes, DeviceStream& s) = 0;
  virtual void to_host(void* dst, const void* src, size_t bytes, DeviceStream& s) = 0;
  virtual void device_copy(void* dst, const void* src, size_t bytes, DeviceStream& s) = 0;
  // Page-locked host memory the device can address (space host, pinned): the swap space of the
  // KV cache. cuda: cudaHostAlloc(mapped); cuda-emu: ordinary host memory.
  virtual std::shared_ptr<Buffer> allocate_pinned(size_t bytes) = 0;
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
  // Offload / reload (KvSwapArgs): `blocks` is a device array already checked on the host with
  // kv_swap_check; `host` is pinned host memory (allocate_pinned), read or written by the kernel.
  virtual void kv_swap_blocks(const KvSwapArgs&, DeviceStream&) = 0;
  // Bytes of the device copy of a plan (AttnWork items, merges, kvLen, qoIndptr) and the packing.
  virtual size_t attention_plan_bytes(const AttentionPlan&) const = 0;
  virtual void attention_plan_pack(const AttentionPlan&, void* host_dst) const = 0;

  // ---- quantized GEMM (native/cuda/ops_qgemm.cu) ---------------------------------------------
  // Packed quantized weights have a DEVICE layout: what qpack writes on a device runtime, what the
  // device kernels read, and what packedBytes(format, N, K, backend) sizes (the CPU's SIMD panels
  // are never used on a device). It is the same on every device:
  //   int4 (sym / asym) and q4k: the W4A16 kernel's mma-fragment tiles (w4a16_repack in
  //         native/cuda/kernels/gemm_w4a16.cuh), repacked on the host at load and uploaded;
  //   int8: the plain layout the W8A8 kernel reads: codes int8 [N][K] at byte 0, scales
  //         (scale_dtype) [N][nb] at qdev_scale_offset(N, K);
  //   fp8:  codes [N][K] at byte 0, the f32 scales (Fp8Plain order) at qdev_scale_offset(N, K).
  // int8 and fp8 are assembled on the device (two device copies of the plain parts).
  // q6k and fused gate/up tensors have no device kernel (QDevKind::none).
  enum class QDevKind { none, w4a16, int8, fp8 };
  static QDevKind qdev_kind(bool fp8, const QuantFormat& q) {
    if (fp8) return QDevKind::fp8;
    if (q.kind == QKind::int8) return QDevKind::int8;
    return q.kind == QKind::int4 || q.kind == QKind::q4k ? QDevKind::w4a16 : QDevKind::none;
  }
  static int64_t qdev_scale_offset(int64_t N, int64_t K) { return (N * K + 255) / 256 * 256; }
  // Bytes of the device layout of a VALID format (q_format_error / fp8_format_error passed); 0 for
  // QDevKind::none. The W4A16 size is w4a16_layout()'s, which the launcher checks it against.
  static size_t qdev_bytes(bool fp8, const QuantFormat& q, const Fp8Format& f8, int64_t N, int64_t K) {
    switch (qdev_kind(fp8, q)) {
      case QDevKind::fp8: return size_t(qdev_scale_offset(N, K)) + (size_t(fp8_num_scales(f8, N, K)) * 4 + 63) / 64 * 64;
      case QDevKind::int8: return size_t(qdev_scale_offset(N, K)) + (q_plain_scale_bytes(q, N, K) + 63) / 64 * 64;
      case QDevKind::w4a16: {  // panels of 16 channels x tiles of 128 of K, 1024 bytes of codes + meta each
        const int64_t meta = q.kind == QKind::q4k ? 192 : (128 / q.group) * 16 * (q.scale_dtype == DType::f32 ? 4 : 2) * (q.asym ? 2 : 1);
        return size_t((N + 15) / 16) * size_t((K + 127) / 128) * size_t(1024 + meta);
      }
      default: return 0;
    }
  }
  // The W4A16 repack, on the host: `plain` (host memory) -> `out` (host memory, qdev_bytes of the
  // plain's N rows). Rows [n0, n0 + r) with n0 a multiple of 16 are bytes [n0 / 16 * panel, ...) of
  // the whole tensor's layout, so a caller may repack whole panels in parallel.
  virtual void qrepack_w4a16(const QPlain& plain, void* out, size_t bytes) const = 0;
  // Quantized matmul (QGemmArgs / Fp8GemmArgs semantics) with device-layout weights at g.w.data:
  // int4 / q4k run the W4A16 kernel (f16 / bf16 activations, used as they are), int8 the W8A8
  // kernel (activations quantized per token and block exactly like the CPU), fp8 the e4m3
  // tensor-core kernel (w8a8 on sm_89+) or the W8A16 kernel (everything else).
  virtual void qgemm(const QGemmArgs&, DeviceStream&) = 0;
  virtual void fp8gemm(const Fp8GemmArgs&, DeviceStream&) = 0;
  // Grouped (MoE) matmul: g.w is a HOST array of E device pointers to device-layout weights (the
  // launcher uploads it). rows / offsets are device data: the kernels check them and the first
  // fault is raised at the next completion point as the CPU raises it (INVALID_ARG naming
  // "offsets" or "rows"); nothing outside the operands is touched. fp8 experts (the CPU has no fp8
  // grouped kernel) take the format and act separately.
  virtual void qgemm_grouped(const QGroupedArgs&, DeviceStream&) = 0;
  virtual void fp8gemm_grouped(const Fp8Format&, Fp8Act, const QGroupedArgs&, DeviceStream&) = 0;
  // MoE combine (op_moe_combine semantics, bit-exact): out[t] (+)= sum_j weights[t*k+j] *
  // y[slot[t*k+j]]. Slots are device data: one outside [0, rows) is raised at the next completion
  // point as INVALID_ARG naming "slot" (out's contents are then unspecified).
  struct MoeCombineArgs {
    DType y_dtype = DType::f32;
    int64_t tokens = 0, k = 0, n = 0, rows = 0;
    const void* y = nullptr;
    const int32_t* slot = nullptr;
    const float* weights = nullptr;
    bool accumulate = false;
    float* out = nullptr;
  };
  virtual void moe_combine(const MoeCombineArgs&, DeviceStream&) = 0;

  // ---- sampling (native/cuda/ops_sampling.cu) ------------------------------------------------
  // One token per row of contiguous logits [rows, vocab] (f32 / f16 / bf16, device memory,
  // vocab in [1, 2^21]), the semantics of lib/ops/sample-core.ts (kernels/sampling.cuh).
  // `params` (HOST memory, `rows` entries; null = argmax of every row): greedy when a row's
  // temperature is 0, else top-k -> temperature -> top-p -> min-p and the inverse-CDF draw at the
  // row's uniform u. Writes the results to HOST `out` and returns once they are there (a
  // synchronization; the caller needs the tokens on the host anyway): the fault word (u64: ~0 =
  // none, else row << 32 | kind << 24 | index, kind 1 NaN, 2 +Infinity, 3 all -Infinity, 4 a bad
  // parameter), i32 tokens [rows] (-1 for a bad row), then, with `logprob`, f32 logprobs [rows].
  // Bad logits are data, reported in the word (the stream stays healthy); bad params throw
  // ty::Error(INVALID_ARG) before anything is launched.
  struct SampleRowParams {
    double temperature = 1.0, top_p = 1.0, min_p = 0.0, u = 0.0;
    int32_t top_k = 0;  // 0 = off
  };
  struct SampleOpArgs {
    DType dtype = DType::f32;
    int64_t rows = 0, vocab = 0;
    const void* logits = nullptr;
    const SampleRowParams* params = nullptr;
    bool logprob = false;
  };
  static size_t sample_out_bytes(int64_t rows, bool logprob) { return 8 + size_t(rows) * (logprob ? 8 : 4); }
  virtual void sample(const SampleOpArgs&, void* out, DeviceStream&) = 0;

  // Test hook (cuda-emu only): launches a kernel that breaks one CUDA rule on purpose
  // (kind: "barrier", "shuffle", "cp-async") so tests can prove the emulator's checks are live
  // inside the addon. Other backends throw UNSUPPORTED.
  virtual void selftest(const std::string& kind, DeviceStream&) = 0;
};

}  // namespace ty::cpu

namespace ty {
// Factories, defined where the backend is compiled in (native/cuda/emu.cpp, native/cuda/backend.cu);
// the binding supplies fallbacks that throw E_BACKEND with the reason otherwise.
// schedule: "forward" | "reverse" | "random:SEED" (cuemu's block and thread order); arch: the
// compute capability the emulated device reports (80, 89 or 90: its kernel paths, e.g. fp8 mma
// from 89, and its shared-memory opt-in limit).
std::shared_ptr<cpu::Device> make_cuda_emu_device(const std::string& schedule, int arch);
// Throws ty::Error(BACKEND) with the driver's reason when the device cannot be used.
std::shared_ptr<cpu::Device> make_cuda_device(int ordinal);
}  // namespace ty
