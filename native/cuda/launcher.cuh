// Tachyon CUDA backends: the one launcher layer shared by `cuda` and `cuda-emu`.
//
// Launcher<Base> implements the kernel half of cpu::Device (native/cpu/device.h) by calling the
// single-source kernels' launch helpers (native/cuda/kernels/*.cuh) and turning their Status into
// ty::Error. Base supplies what differs between the two backends:
//   - memory and queues (cpu::Device's allocate / create_stream / copies);
//   - `using Queue = ...`, a cpu::DeviceStream subclass with `stream_t handle()` and
//     `unsigned long long* error_slot(int i)` (kErrorWords device words per queue for kernels
//     that report bad data, like the embedding gather's out-of-range ids; see ErrorWord);
//   - `void* device_address(void* pinned_host) const` (where the device sees pinned host memory);
//   - `DeviceLimits limits() const` (the shared-memory limits the launch checks use) and
//     `QDeviceInfo device_info() const` (compute capability and SM count, for kernel choices);
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
enum ErrorWord : int { kWordEmbedding = 0, kWordKvAppend, kWordAttention, kWordKvCopy, kWordKvSwap, kWordQGrouped, kWordMoeCombine, kErrorWords };
// Per-queue scratch slots (cpu::DeviceStream::scratch).
// kScratchQgemm: W4A16 split-K partials; kScratchQgemmTickets: its tickets (zero at rest, see
// Launcher::q_w4_scratch); kScratchQgemmAct: quantized activations and grouped expert tables.
enum ScratchSlot : int { kScratchAttnWorkspace = 0, kScratchQgemm, kScratchSampling, kScratchQgemmTickets, kScratchQgemmAct };

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
    check_kv_later(s, kWordKvAppend, [=](int kind, int64_t index, int32_t value) {
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
    check_kv_later(s, kWordAttention, [](int kind, int64_t index, int32_t value) {
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
    check_kv_later(s, kWordKvCopy, [=](int, int64_t index, int32_t value) {
      throw Error(Code::INVALID_ARG, "Expected a block in [0, " + std::to_string(blocks) + ") for pairs[" + std::to_string(index / 2) +
                                         "][" + std::to_string(index % 2) + "] but received " + std::to_string(value),
                  "pairs");
    });
  }
  void kv_swap_blocks(const KvSwapArgs& a, cpu::DeviceStream& s) override {
    unsigned long long* w = arm(s, kWordKvSwap);
    KvSwapArgs d = a;
    d.host = this->device_address(a.host);
    this->run(a.out ? "kvSwapOut" : "kvSwapIn", s, [&](stream_t st) { launch_kv_swap_blocks(d, w, st, this->limits()).throw_if_error(); });
    const int64_t blocks = a.cache.blocks;
    check_kv_later(s, kWordKvSwap, [=](int, int64_t index, int32_t value) {
      throw Error(Code::INVALID_ARG, "Expected a block in [0, " + std::to_string(blocks) + ") for blocks[" + std::to_string(index) +
                                         "] but received " + std::to_string(value),
                  "blocks[" + std::to_string(index) + "]");
    });
  }
  size_t attention_plan_bytes(const AttentionPlan& p) const override { return cuda::attention_plan_bytes(p); }
  void attention_plan_pack(const AttentionPlan& p, void* dst) const override { attention_plan_pack_host(p, dst); }

  // ---- quantized GEMM family (owned by the qgemm work: keep edits inside this section) --------
  // Weights are in cpu::Device's device layout (device.h). Workspaces come from the queue's
  // scratch: quantized activations and expert tables from kScratchQgemmAct, W4A16 split-K partials
  // from kScratchQgemm and their tickets from kScratchQgemmTickets (q_w4_scratch).
  void qrepack_w4a16(const QPlain& p, void* out, size_t bytes) const override {
    size_t want = 0;
    w4a16_packed_size(p.fmt, p.N, p.K, &want).throw_if_error();
    if (want != cpu::Device::qdev_bytes(false, p.fmt, Fp8Format{}, p.N, p.K))  // the two size formulas drifted apart
      throw Error(Code::INTERNAL, "qpack: the W4A16 layout is " + std::to_string(want) + " bytes but cpu::Device::qdev_bytes says " +
                                      std::to_string(cpu::Device::qdev_bytes(false, p.fmt, Fp8Format{}, p.N, p.K)));
    if (bytes != want) throw Error(Code::INTERNAL, "qpack: W4A16 repack into " + std::to_string(bytes) + " bytes, not " + std::to_string(want));
    w4a16_repack_host(p, out, bytes).throw_if_error();
  }
  void qgemm(const QGemmArgs& g, cpu::DeviceStream& s) override {
    this->run("qmatmul", s, [&](stream_t st) {
      const QDeviceInfo di = this->device_info();
      const DeviceLimits lim = this->limits();
      switch (cpu::Device::qdev_kind(false, g.w.fmt)) {
        case cpu::Device::QDevKind::int8: {
          const size_t n = qgemm_int8_workspace(g.w.fmt, g.M, g.w.K);
          void* ws = s.scratch(*this, kScratchQgemmAct, n);
          launch_qgemm_int8(g, g.w.data + cpu::Device::qdev_scale_offset(g.w.N, g.w.K), ws, n, st, lim, di.sm).throw_if_error();
          return;
        }
        case cpu::Device::QDevKind::w4a16: {
          const W4Scratch w = q_w4_scratch(s, g.w.fmt, g.w.N, g.w.K, g.M, 0, di.sms, lim);
          q_tickets_guard(s, [&] { launch_w4a16_gemm(g, w, di.sms, st, lim).throw_if_error(); });
          return;
        }
        default: throw Error(Code::UNSUPPORTED, "qmatmul: no CUDA kernel for this weight format (q6k)", "format");
      }
    });
  }
  void fp8gemm(const Fp8GemmArgs& g, cpu::DeviceStream& s) override {
    this->run("qmatmul", s, [&](stream_t st) {
      const QDeviceInfo di = this->device_info();
      const size_t n = fp8gemm_workspace(g.act, g.M, g.w.K);
      void* ws = n ? s.scratch(*this, kScratchQgemmAct, n) : nullptr;
      const float* scales = reinterpret_cast<const float*>(g.w.data + cpu::Device::qdev_scale_offset(g.w.N, g.w.K));
      launch_fp8gemm(g, scales, ws, n, st, this->limits(), di.sm).throw_if_error();
    });
  }
  void qgemm_grouped(const QGroupedArgs& g, cpu::DeviceStream& s) override {
    const cpu::Device::QDevKind kind = cpu::Device::qdev_kind(false, g.fmt);
    if (kind != cpu::Device::QDevKind::w4a16 && kind != cpu::Device::QDevKind::int8)
      throw Error(Code::UNSUPPORTED, "qmatmulGrouped: no CUDA kernel for this weight format (q6k)", "format");
    const bool w4 = kind == cpu::Device::QDevKind::w4a16;
    unsigned long long* bad = arm(s, kWordQGrouped);
    this->run("qmatmulGrouped", s, [&](stream_t st) {
      const QDeviceInfo di = this->device_info();
      const DeviceLimits lim = this->limits();
      const size_t tb = (qgemm_expert_table_bytes(w4, g.E) + 255) & ~size_t(255);
      const size_t wsb = w4 ? 0 : qgemm_int8_grouped_workspace(g.fmt, g.T, g.R, g.K, g.E);
      char* base = static_cast<char*>(s.scratch(*this, kScratchQgemmAct, tb + wsb));
      QGroupedArgs d = g;
      d.w = q_upload_experts(s, w4, g.w, g.E, cpu::Device::qdev_scale_offset(g.N, g.K), base, tb);
      if (w4) {
        const W4Scratch w = q_w4_scratch(s, g.fmt, g.N, g.K, g.R, g.E, di.sms, lim);
        q_tickets_guard(s, [&] { launch_w4a16_grouped(d, bad, w, di.sms, st, lim).throw_if_error(); });
      } else {
        launch_qgemm_int8_grouped(d, base, base + tb, wsb, bad, st, lim, di.sm).throw_if_error();
      }
    });
    q_check_grouped_later(s);
  }
  void fp8gemm_grouped(const Fp8Format& f, Fp8Act act, const QGroupedArgs& g, cpu::DeviceStream& s) override {
    unsigned long long* bad = arm(s, kWordQGrouped);
    this->run("qmatmulGrouped", s, [&](stream_t st) {
      const QDeviceInfo di = this->device_info();
      const size_t tb = (qgemm_expert_table_bytes(false, g.E) + 255) & ~size_t(255);
      const size_t wsb = fp8gemm_grouped_workspace(act, g.T, g.R, g.K, g.E);
      char* base = static_cast<char*>(s.scratch(*this, kScratchQgemmAct, tb + wsb));
      QGroupedArgs d = g;
      d.w = q_upload_experts(s, false, g.w, g.E, cpu::Device::qdev_scale_offset(g.N, g.K), base, tb);
      launch_fp8gemm_grouped(f, act, d, base, base + tb, wsb, bad, st, this->limits(), di.sm).throw_if_error();
    });
    q_check_grouped_later(s);
  }
  void moe_combine(const cpu::Device::MoeCombineArgs& a, cpu::DeviceStream& s) override {
    unsigned long long* bad = arm(s, kWordMoeCombine);
    this->run("moeCombine", s, [&](stream_t st) {
      launch_moe_combine(a.y_dtype, a.tokens, a.k, a.n, a.rows, a.y, a.slot, a.weights, a.accumulate, a.out, bad, st, this->limits())
          .throw_if_error();
    });
    const int64_t rows = a.rows;
    check_later(s, kWordMoeCombine, [rows](unsigned long long word) {
      int64_t i = 0;
      int32_t v = 0;
      moe_fault_decode(word, &i, &v);
      throw Error(Code::INVALID_ARG, "Expected slot values in [0, " + std::to_string(rows) + ") but slot[" + std::to_string(i) + "] is " +
                                         std::to_string(v) + " (found on the device by a moeCombine since the last completion point)",
                  "slot");
    });
  }

  // W4A16 split-K scratch. The tickets (one u32 per output tile) must be zero before a launch and
  // every complete launch leaves them zero, so they are zeroed once, in stream order, whenever
  // the slot may hold bytes no launch has zeroed: the first time a launch on this queue needs more
  // ticket bytes than any before it (the slot may then have been reallocated) and after a failed
  // launch or a grouped routing fault. The bookkeeping is per stream thread: a thread drives one
  // queue for its whole life and dies with it, so a new queue can never inherit stale state.
  struct QTickets {
    const cpu::DeviceStream* queue = nullptr;
    size_t zeroed = 0;
  };
  static QTickets& q_tickets(const cpu::DeviceStream& s) {
    thread_local QTickets t;
    if (t.queue != &s) t = QTickets{&s, 0};
    return t;
  }
  W4Scratch q_w4_scratch(cpu::DeviceStream& s, const QuantFormat& f, int64_t N, int64_t K, int64_t rows, int64_t experts, int sms,
                         const DeviceLimits& lim) {
    W4Scratch w;
    w4a16_workspace(f, N, K, rows, experts, sms, lim, &w.ticket_bytes, &w.partial_bytes).throw_if_error();
    if (w.ticket_bytes == 0) return w;  // no split-K
    w.partials = s.scratch(*this, kScratchQgemm, w.partial_bytes);
    w.tickets = static_cast<unsigned*>(s.scratch(*this, kScratchQgemmTickets, w.ticket_bytes));
    QTickets& t = q_tickets(s);
    if (w.ticket_bytes > t.zeroed) {
      const std::vector<unsigned char> zero(w.ticket_bytes, 0);
      this->to_device(w.tickets, zero.data(), zero.size(), s);
      t.zeroed = w.ticket_bytes;
    }
    return w;
  }
  template <class F>
  void q_tickets_guard(cpu::DeviceStream& s, F&& launch) {
    try {
      launch();
    } catch (...) {
      q_tickets(s).zeroed = 0;  // a launch that failed part-way may have left tickets taken
      throw;
    }
  }
  // Uploads the expert table (HOST array w of E pointers) into `dst` (tb device bytes) in stream order.
  const uint8_t* const* q_upload_experts(cpu::DeviceStream& s, bool w4, const uint8_t* const* w, int64_t E, int64_t scale_off, void* dst,
                                         size_t tb) {
    std::vector<unsigned char> table(tb, 0);
    qgemm_expert_table_host(w4, w, E, scale_off, table.data());
    this->to_device(dst, table.data(), tb, s);
    return static_cast<const uint8_t* const*>(dst);
  }
  // Grouped routing faults, raised as the CPU's qgemm_grouped_check raises them.
  void q_check_grouped_later(cpu::DeviceStream& s) {
    cpu::DeviceStream* sp = &s;
    check_later(s, kWordQGrouped, [sp](unsigned long long word) {
      int kind = 0;
      int64_t i = 0;
      qgroup_fault_decode(word, &kind, &i);
      q_tickets(*sp).zeroed = 0;  // (runs on the stream thread) re-zero before the next split-K launch
      const std::string at = std::to_string(i);
      const char* since = " (found on the device by a qmatmulGrouped since the last completion point)";
      if (kind == 2)
        throw Error(Code::INVALID_ARG, "Expected rows values in [0, T) (the rows of a) but rows[" + at + "] is outside it" + since, "rows");
      if (kind == 1)
        throw Error(Code::INVALID_ARG, "Expected offsets with offsets[0] = 0, non-decreasing, and offsets[E] = R (the length of rows), "
                                       "but offsets[" + at + "] breaks it" + std::string(since), "offsets");
      throw Error(Code::INTERNAL, "qmatmulGrouped: expert " + at + " has rows but no device weights" + since, "w");
    });
  }

  // ---- sampling family (owned by the sampling work: keep edits inside this section) -----------
  // One launch for every row; the parameters go up and the results come back through the queue's
  // sampling scratch: [fault word u64][tokens i32 x rows][logprobs f32 x rows] (the block the
  // host reads back in one copy), then the parameter rows at the next 16 bytes. The fault word is
  // returned with the tokens rather than raised: a bad row of logits is the caller's data (the
  // TS op words it as the cpu backend does) and must not poison a stream other requests share.
  void sample(const cpu::Device::SampleOpArgs& a, void* out, cpu::DeviceStream& s) override {
    if (a.rows < 0 || a.rows > INT32_MAX)
      throw Error(Code::INVALID_ARG, "sample: " + std::to_string(a.rows) + " rows is outside [0, 2^31)", "logits");
    const size_t out_bytes = cpu::Device::sample_out_bytes(a.rows, a.logprob);
    const size_t poff = (out_bytes + 15) / 16 * 16;
    std::vector<SampleParamRow> host;
    if (a.params) {
      host.resize(size_t(a.rows));
      for (int64_t i = 0; i < a.rows; ++i) {
        const cpu::Device::SampleRowParams& p = a.params[i];
        host[size_t(i)] = SampleParamRow{p.temperature, p.top_p, p.min_p, p.u, p.top_k, 0};
      }
      sample_params_host_check(host.data(), a.rows).throw_if_error();
    }
    const size_t pbytes = host.size() * sizeof(SampleParamRow);
    char* base = static_cast<char*>(s.scratch(*this, kScratchSampling, poff + pbytes));
    const unsigned long long none = ~0ull;
    this->to_device(base, &none, sizeof none, s);
    if (pbytes) this->to_device(base + poff, host.data(), pbytes, s);
    auto* err = reinterpret_cast<unsigned long long*>(base);
    auto* token = reinterpret_cast<int32_t*>(base + 8);
    float* logprob = a.logprob ? reinterpret_cast<float*>(base + 8 + 4 * size_t(a.rows)) : nullptr;
    const SampleParamRow* params = pbytes ? reinterpret_cast<const SampleParamRow*>(base + poff) : nullptr;
    this->run("sample", s, [&](stream_t st) {
      launch_sample(a.dtype, a.rows, a.vocab, a.logits, params, token, logprob, err, st, this->limits()).throw_if_error();
    });
    this->to_host(out, base, out_bytes, s);
    s.synchronize();
  }

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
  // (the device is idle by then) and calls on_fault(word), which throws, when it holds a fault
  // (every family's "no fault" value is ~0).
  template <class OnFault>
  void check_later(cpu::DeviceStream& s, ErrorWord i, OnFault on_fault) {
    if (s.deferred(i)) return;
    unsigned long long* w = static_cast<Queue&>(s).error_slot(i);
    cpu::DeviceStream* sp = &s;
    s.defer(i, [this, sp, w, on_fault] {
      unsigned long long got = ~0ull;
      this->to_host(&got, w, sizeof got, *sp);
      sp->synchronize();
      if (got != ~0ull) on_fault(got);
    });
  }
  // The same for the KV family's words: raise(kind, index, value) (kv.cuh's KvFault).
  template <class Raise>
  void check_kv_later(cpu::DeviceStream& s, ErrorWord i, Raise raise) {
    check_later(s, i, [raise](unsigned long long word) {
      int kind = 0;
      int64_t index = 0;
      int32_t value = 0;
      if (kv_fault_decode(word, &kind, &index, &value)) raise(kind, index, value);
    });
  }

};

}  // namespace cuda
}  // namespace ty
