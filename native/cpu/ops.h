// Tachyon CPU backend: tensors, the runtime core, and op entry points.
//
// Everything here is framework-free. Each op_* function validates its arguments on the
// caller's thread (throwing ty::Error with a message that names the argument, the
// expected value and what was received), then enqueues the kernel on the stream. The
// Node binding (native/napi) only converts JS values into these types.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "device.h"
#include "isa.h"
#include "pool.h"
#include "stream.h"
#include "tachyon/dtype.h"
#include "tachyon/kernels.h"

namespace ty::cpu {

constexpr int kMaxDims = 8;

struct Tensor {
  std::shared_ptr<Buffer> buf;  // null once disposed
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  int64_t numel() const;
  std::string shape_str() const;
};

// Checks a shape from an untrusted source: 0..kMaxDims dims, each in [0, 2^40], total
// bytes representable. `arg` names it in errors.
int64_t check_shape(const std::vector<int64_t>& shape, DType dtype, const char* arg);
std::shared_ptr<Tensor> make_tensor(DType dtype, std::vector<int64_t> shape);

struct RuntimeCore {
  RuntimeCore(int threads, Isa isa, std::shared_ptr<Device> device = nullptr)
      : pool(threads), isa(isa), device(std::move(device)) {}
  ThreadPool pool;
  Isa isa;
  std::shared_ptr<Device> device;  // null on the cpu backend
  MemSpace space() const { return device ? device->space() : MemSpace::host; }
  const char* backend() const { return mem_space_name(space()); }
};
using Core = std::shared_ptr<RuntimeCore>;

// Device backends (cuda, cuda-emu): after the same validation as the CPU, the kernel runs on the
// runtime's Device from the stream thread. Returns false on the cpu backend. `keep` holds the
// tensors alive until the launch is queued (on cuda a freed buffer is safe afterwards: cudaFree
// waits for the device).
inline bool device_enqueue(const Core& rt, Stream& s, const char* op, std::vector<std::shared_ptr<Tensor>> keep,
                           std::function<void(Device&, DeviceStream&)> launch) {
  if (!rt->device) return false;
  DeviceStream* ds = s.device();
  if (!ds) throw Error(Code::INTERNAL, std::string(op) + ": the stream has no device queue", "stream");
  s.enqueue(op, [rt, keep = std::move(keep), launch = std::move(launch), ds] { launch(*rt->device, *ds); });
  return true;
}
using T = std::shared_ptr<Tensor>;

// Elementwise and friends. `out` is allocated by the caller with the right shape/dtype;
// validation checks it.
struct GemmOpts { bool b_trans = true; float alpha = 1.f, beta = 0.f; };
void op_gemm(const Core&, Stream&, const T& a, const T& b, const T& bias, const T& out, GemmOpts o);
void op_binary(const Core&, Stream&, BinaryOp op, const T& a, const T& b, const T& out);
void op_silu_mul(const Core&, Stream&, const T& gate, const T& up, const T& out);
void op_rms_norm(const Core&, Stream&, const T& x, const T& weight, float eps, const T& out);
void op_rope(const Core&, Stream&, const T& x, const T& positions, int64_t rot_dim, float freq_base,
             float freq_scale, bool neox);
void op_softmax(const Core&, Stream&, const T& x, float scale, const T& out);
void op_embedding(const Core&, Stream&, const T& table, const T& ids, const T& out);
void op_copy(const Core&, Stream&, const T& src, const T& dst);  // same dtype & numel
// Roofline probe: writes {work, seconds} as two f64 into `result` (u8[16]).
void op_probe(const Core&, Stream&, int kind, int64_t iters, const T& buf, const T& result);

}  // namespace ty::cpu
