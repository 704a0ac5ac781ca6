// Tachyon CPU backend: quantized-weight ops (see qops.h).
//
// Whole-tensor conversions (quantize, dequantize, pack, unpack, import) run on the compute
// pool in chunks of whole 16-channel panels: the packed bytes of rows [n0, n0 + rows) are
// exactly the panels n0/16 .. of the full tensor, so every chunk is an independent
// call of the framework-free functions in quant.cpp on its own rows.
#include "qops.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "qkernels.h"
#include "validate.h"

namespace ty::cpu {
namespace {

void need_format(const WeightFormat& f, int64_t N, int64_t K) {
  if (f.gate_up && f.fp8)
    throw Error(Code::UNSUPPORTED, "Fused gate/up weights are integer formats only (not fp8)", "format");
  const char* e = f.fp8 ? fp8_format_error(f.f8, N, K) : q_format_error(f.q, N, K);
  if (!e) return;
  Code c = Code::INVALID_ARG;
  if (std::strstr(e, "divide") || std::strstr(e, "positive") || std::strstr(e, "<=")) c = Code::SHAPE;
  throw Error(c, std::string("Invalid quantized format for weights of shape [") + std::to_string(N) + ", " +
                     std::to_string(K) + "]: " + e, "format");
}

void need_plain_layout(const WeightFormat& f, const char* op) {
  if (f.gate_up)
    throw Error(Code::UNSUPPORTED, std::string(op) + " does not take a fused gate/up tensor: use the separate gate and up tensors",
                "format");
}

void need_packed(const T& packed, const WeightFormat& f, int64_t N, int64_t K, const char* arg, bool device = false) {
  need(packed, arg);
  need_dtype(packed, DType::u8, arg);
  const size_t want = packed_bytes(f, N, K, device);
  if (packed->buf->bytes != want)
    throw Error(Code::SHAPE, std::string("Expected ") + std::to_string(want) + " bytes (the packed size of the format for [" +
                                 std::to_string(N) + ", " + std::to_string(K) + "]) for " + arg + " but received " +
                                 std::to_string(packed->buf->bytes), arg);
  if (((uintptr_t)packed->buf->data & 63) != 0)
    throw Error(Code::INVALID_ARG, std::string("Expected 64-byte aligned memory for ") + arg +
                                       " (allocate it with the runtime, not from a JS array)", arg);
}

void need_shape(const T& t, std::vector<int64_t> want, const char* arg) {
  if (t->shape != want) {
    std::string s = "[";
    for (size_t i = 0; i < want.size(); ++i) s += (i ? ", " : "") + std::to_string(want[i]);
    throw Error(Code::SHAPE, "Expected shape " + s + "] for " + arg + " but received " + t->shape_str(), arg);
  }
}

// Device kernels that keep the activations in 16 bits (W4A16, fp8 W8A16) take f16 / bf16 only.
void need_act16(const T& a, const char* kernel) {
  if (a->dtype != DType::f16 && a->dtype != DType::bf16)
    throw Error(Code::UNSUPPORTED, std::string("The device's ") + kernel + " kernel takes f16 or bf16 activations but a is " +
                                       dtype_name(a->dtype) + " (cast it first)", "a");
}

// Packed bytes of one 16-channel panel (both families use 16-channel panels).
int64_t panel_bytes(const WeightFormat& f, int64_t K) {
  static_assert(kQPanel == kFp8Panel, "one panel width");
  return f.fp8 ? fp8_packed_layout(f.f8, kFp8Panel, K).panel_bytes : q_packed_layout(f.q, kQPanel, K).panel_bytes;
}

// Rows per chunk: whole panels (and whole scale granules: 128 rows for fp8 block scales,
// all rows for one per-tensor scale), about 1 MiB of packed bytes.
int64_t chunk_rows(const WeightFormat& f, int64_t N, int64_t K) {
  if (f.fp8 && f.f8.scale == Fp8Scale::tensor) return N;
  const int64_t unit = f.fp8 && f.f8.scale == Fp8Scale::block128 ? kFp8Block : kQPanel;
  const int64_t units = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, panel_bytes(f, K) * (unit / kQPanel)));
  return std::min<int64_t>(N, units * unit);
}

// Plain layout of `rows` rows: views of caller tensors, or owned scratch.
struct Plain {
  QPlain q;
  Fp8Plain f8;
};
struct PlainBuf {
  std::vector<uint8_t> q, s, m, sd, sdm;
  Plain p;
  PlainBuf(const WeightFormat& f, int64_t rows, int64_t K) {
    if (f.fp8) {
      q.resize(fp8_plain_code_bytes(rows, K));
      s.resize(fp8_plain_scale_bytes(f.f8, rows, K));
      p.f8.fmt = f.f8; p.f8.N = rows; p.f8.K = K;
      p.f8.codes = q.data(); p.f8.scales = reinterpret_cast<float*>(s.data());
      return;
    }
    q.resize(q_plain_q_bytes(f.q, rows, K));
    s.resize(q_plain_scale_bytes(f.q, rows, K));
    m.resize(q_plain_min_bytes(f.q, rows, K));
    sd.resize(q_plain_super_bytes(f.q, rows, K));
    if (f.q.kind == QKind::q4k) sdm.resize(q_plain_super_bytes(f.q, rows, K));
    p.q.fmt = f.q; p.q.N = rows; p.q.K = K;
    p.q.q = q.data(); p.q.scales = s.data(); p.q.mins = m.empty() ? nullptr : m.data();
    p.q.super_d = sd.empty() ? nullptr : sd.data();
    p.q.super_dmin = sdm.empty() ? nullptr : sdm.data();
  }
};

// The family's functions on one chunk.
QuantStats quantize_rows(const WeightFormat& f, const float* w, int64_t K, const Plain& p) {
  return f.fp8 ? fp8_quantize(w, K, p.f8) : quantize(w, K, p.q);
}
void dequantize_rows(const WeightFormat& f, const Plain& p, float* w, int64_t K) {
  if (f.fp8) fp8_dequantize(p.f8, w, K);
  else dequantize(p.q, w, K);
}
void repack_rows(const WeightFormat& f, const Plain& p, uint8_t* out) {
  if (f.fp8) fp8_repack(p.f8, out);
  else q_repack(p.q, out);
}
void unpack_rows(const WeightFormat& f, const uint8_t* packed, int64_t rows, int64_t K, const Plain& p) {
  if (f.fp8) fp8_unpack(Fp8Packed{f.f8, rows, K, packed}, p.f8);
  else q_unpack(QPacked{f.q, rows, K, packed}, p.q);
}

// Runs fn(n0, rows) over panel-aligned row chunks on the pool. Errors thrown by a chunk
// are re-thrown on the stream thread (first one wins) after all chunks finish.
template <class F>
void for_chunks(ThreadPool& pool, const WeightFormat& f, int64_t N, int64_t K, F&& fn) {
  const int64_t cr = chunk_rows(f, N, K), tasks = (N + cr - 1) / cr;
  std::mutex mu;
  std::exception_ptr err;
  pool.for_each(tasks, [&](int64_t t, int) {
    const int64_t n0 = t * cr, rows = std::min(cr, N - n0);
    try {
      fn(n0, rows);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu);
      if (!err) err = std::current_exception();
    }
  });
  if (err) std::rethrow_exception(err);
}

size_t panel_offset(const WeightFormat& f, int64_t n0, int64_t K) {
  return (size_t)(n0 / kQPanel) * (size_t)panel_bytes(f, K);
}

}  // namespace

size_t packed_bytes(const WeightFormat& f, int64_t N, int64_t K, bool device) {
  need_format(f, N, K);
  if (device) {
    const size_t b = f.gate_up ? 0 : Device::qdev_bytes(f.fp8, f.q, f.f8, N, K);
    if (b == 0)
      throw Error(Code::UNSUPPORTED, std::string("The device backends (cuda, cuda-emu) have no kernel for ") +
                                         (f.gate_up ? "fused gate/up weights (use separate gate and up tensors)"
                                                    : "q6k weights (use q4k, int4, int8 or fp8)"), "format");
    return b;
  }
  if (f.gate_up) return q_gate_up_layout(f.q, N, K).total;
  return f.fp8 ? fp8_packed_layout(f.f8, N, K).total : q_packed_layout(f.q, N, K).total;
}

void op_quantize(const Core& rt, Stream& s, const T& w, const WeightFormat& f, const T& packed, const T& stats) {
  need_plain_layout(f, "quantize");
  need(w, "weights");
  need_dtype(w, DType::f32, "weights");
  need_rank(w, 2, 2, "weights");
  const int64_t N = w->shape[0], K = w->shape[1];
  need_format(f, N, K);
  need_packed(packed, f, N, K, "out");
  if (stats) {
    need(stats, "stats");
    if (stats->buf->bytes < 32)
      throw Error(Code::SHAPE, "Expected at least 32 bytes for stats but received " + std::to_string(stats->buf->bytes), "stats");
  }
  s.enqueue("quantize", [rt, w, f, packed, stats, N, K] {
    std::mutex mu;
    QuantStats all;
    double sum_sq = 0;
    for_chunks(rt->pool, f, N, K, [&](int64_t n0, int64_t rows) {
      PlainBuf pb(f, rows, K);
      QuantStats st = quantize_rows(f, static_cast<const float*>(w->buf->data) + n0 * K, K, pb.p);
      repack_rows(f, pb.p, static_cast<uint8_t*>(packed->buf->data) + panel_offset(f, n0, K));
      std::lock_guard<std::mutex> lk(mu);
      all.max_abs_err = std::max(all.max_abs_err, st.max_abs_err);
      all.max_err_step = std::max(all.max_err_step, st.max_err_step);
      all.clamped += st.clamped;
      sum_sq += st.rms_err * st.rms_err * (double)(rows * K);
    });
    all.rms_err = std::sqrt(sum_sq / (double)(N * K));
    if (stats) {
      double r[4] = {all.max_abs_err, all.rms_err, all.max_err_step, (double)all.clamped};
      std::memcpy(stats->buf->data, r, 32);
    }
  });
}

void op_dequantize(const Core& rt, Stream& s, const T& packed, const WeightFormat& f, int64_t N, int64_t K, const T& out) {
  need_plain_layout(f, "dequantize");
  need_format(f, N, K);
  need_packed(packed, f, N, K, "weights");
  need(out, "out");
  need_dtype(out, DType::f32, "out");
  need_shape(out, {N, K}, "out");
  s.enqueue("dequantize", [rt, packed, f, N, K, out] {
    for_chunks(rt->pool, f, N, K, [&](int64_t n0, int64_t rows) {
      PlainBuf pb(f, rows, K);
      unpack_rows(f, static_cast<const uint8_t*>(packed->buf->data) + panel_offset(f, n0, K), rows, K, pb.p);
      dequantize_rows(f, pb.p, static_cast<float*>(out->buf->data) + n0 * K, K);
    });
  });
}

namespace {
// The plain tensors' expected dtypes and shapes (see PlainTensors in qops.h).
void need_part(const T& t, bool wanted, DType dt, std::vector<int64_t> shape, const char* arg, const char* why) {
  if (!wanted) {
    if (t) throw Error(Code::INVALID_ARG, std::string("Expected no ") + arg + " (" + why + ") but received a Tensor", arg);
    return;
  }
  if (!t) throw Error(Code::INVALID_ARG, std::string("Expected a Tensor for ") + arg + " but received nothing", arg);
  need(t, arg);
  need_dtype(t, dt, arg);
  need_shape(t, std::move(shape), arg);
}
void need_plain(const WeightFormat& f, int64_t N, int64_t K, const PlainTensors& p) {
  if (f.fp8) {
    const int64_t nkb = (K + kFp8Block - 1) / kFp8Block, nnb = (N + kFp8Block - 1) / kFp8Block;
    need_part(p.codes, true, f.f8.dtype, {N, K}, "codes", "");
    need_part(p.scales, true, DType::f32,
              f.f8.scale == Fp8Scale::tensor ? std::vector<int64_t>{1}
              : f.f8.scale == Fp8Scale::channel ? std::vector<int64_t>{N}
                                                : std::vector<int64_t>{nnb, nkb}, "scales", "");
    for (auto [t, arg] : {std::pair<const T&, const char*>{p.mins, "mins"}, {p.super_d, "superD"}, {p.super_dmin, "superDmin"}})
      need_part(t, false, DType::u8, {}, arg, "fp8 has none");
    return;
  }
  const QuantFormat& q = f.q;
  const bool i4 = q.kind == QKind::int4 || q.kind == QKind::q4k;
  const bool kq = q_is_kquant(q.kind);
  need_part(p.codes, true, i4 ? DType::u8 : DType::int8, {N, i4 ? K / 2 : K}, "codes", "");
  if (kq) {
    const int64_t ns = K / q_sub_len(q), nsb = K / kQSuper;
    need_part(p.scales, true, q.kind == QKind::q4k ? DType::u8 : DType::int8, {N, ns}, "scales", "");
    need_part(p.mins, q.kind == QKind::q4k, DType::u8, {N, ns}, "mins", "q6k has none");
    need_part(p.super_d, true, DType::f16, {N, nsb}, "superD", "");
    need_part(p.super_dmin, q.kind == QKind::q4k, DType::f16, {N, nsb}, "superDmin", "q6k has none");
    return;
  }
  const int64_t nb = q_num_blocks(q, K);
  need_part(p.scales, true, q.scale_dtype, {N, nb}, "scales", "");
  need_part(p.mins, q.kind == QKind::int4 && q.asym, q.scale_dtype, {N, nb}, "mins", "the format is symmetric");
  need_part(p.super_d, false, DType::f16, {}, "superD", "not a K-quant");
  need_part(p.super_dmin, false, DType::f16, {}, "superDmin", "not a K-quant");
}
uint8_t* rows_of(const T& t, int64_t n0, int64_t N) {
  // Every plain part is [N, ...] row-major: row n0 starts at n0/N of its bytes.
  return t ? static_cast<uint8_t*>(t->buf->data) + (size_t)(t->buf->bytes / (size_t)N) * (size_t)n0 : nullptr;
}
// Views of rows [n0, n0 + rows) of the plain tensors (chunks are whole scale granules).
Plain plain_view(const WeightFormat& f, int64_t N, int64_t n0, int64_t rows, int64_t K, const PlainTensors& t) {
  Plain p;
  if (f.fp8) {
    p.f8.fmt = f.f8; p.f8.N = rows; p.f8.K = K;
    p.f8.codes = static_cast<uint8_t*>(t.codes->buf->data) + (size_t)n0 * K;
    const int64_t s0 = f.f8.scale == Fp8Scale::tensor ? 0
                       : f.f8.scale == Fp8Scale::channel ? n0
                                                         : (n0 / kFp8Block) * ((K + kFp8Block - 1) / kFp8Block);
    p.f8.scales = static_cast<float*>(t.scales->buf->data) + s0;
    return p;
  }
  p.q.fmt = f.q; p.q.N = rows; p.q.K = K;
  p.q.q = rows_of(t.codes, n0, N);
  p.q.scales = rows_of(t.scales, n0, N);
  p.q.mins = rows_of(t.mins, n0, N);
  p.q.super_d = rows_of(t.super_d, n0, N);
  p.q.super_dmin = rows_of(t.super_dmin, n0, N);
  return p;
}
}  // namespace

namespace {
// Rows [n0, n0 + rows) of a plain tensor set in host memory (every part is [N, ...] row-major).
QPlain plain_rows(const QPlain& p, int64_t n0, int64_t rows) {
  QPlain v = p;
  v.N = rows;
  auto at = [&](void* b, size_t bytes) -> void* { return b ? static_cast<uint8_t*>(b) + bytes / (size_t)p.N * (size_t)n0 : nullptr; };
  v.q = at(p.q, q_plain_q_bytes(p.fmt, p.N, p.K));
  v.scales = at(p.scales, q_plain_scale_bytes(p.fmt, p.N, p.K));
  v.mins = at(p.mins, q_plain_min_bytes(p.fmt, p.N, p.K));
  v.super_d = at(p.super_d, q_plain_super_bytes(p.fmt, p.N, p.K));
  v.super_dmin = at(p.super_dmin, q_plain_super_bytes(p.fmt, p.N, p.K));
  return v;
}

// qpack on a device runtime: writes the device layout (cpu::Device in device.h).
//  - int8 / fp8: the layout is the plain parts side by side, so it is assembled on the device
//    (two device copies; the padding is zeroed so the bytes are reproducible).
//  - int4 / q4k: the W4A16 kernel's fragment tiles. The plain parts are downloaded on the stream,
//    repacked on the host (whole 16-channel panels in parallel on the pool, with the kernel
//    header's own w4a16_repack, which its driver checks bit for bit) and uploaded: one PCIe round
//    trip of the 4-bit weights at load time, and no second implementation of the layout.
void qpack_device(const Core& rt, Stream& s, const PlainTensors& plain, const WeightFormat& f, int64_t N, int64_t K, const T& packed) {
  const size_t total = packed->buf->bytes;
  if (Device::qdev_kind(f.fp8, f.q) != Device::QDevKind::w4a16) {
    const size_t off = (size_t)Device::qdev_scale_offset(N, K);
    device_enqueue(rt, s, "qpack", {plain.codes, plain.scales, packed}, [plain, packed, off, total](Device& d, DeviceStream& q) {
      uint8_t* dst = static_cast<uint8_t*>(packed->buf->data);
      const size_t cb = plain.codes->buf->bytes, sb = plain.scales->buf->bytes;
      const std::vector<uint8_t> zero(std::max(off - cb, total - off - sb), 0);
      d.device_copy(dst, plain.codes->buf->data, cb, q);
      if (off > cb) d.to_device(dst + cb, zero.data(), off - cb, q);
      d.device_copy(dst + off, plain.scales->buf->data, sb, q);
      if (total > off + sb) d.to_device(dst + off + sb, zero.data(), total - off - sb, q);
    });
    return;
  }
  device_enqueue(rt, s, "qpack", {plain.codes, plain.scales, plain.mins, plain.super_d, plain.super_dmin, packed},
                 [rt, plain, f, N, K, packed, total](Device& d, DeviceStream& q) {
                   PlainBuf h(f, N, K);
                   auto down = [&](std::vector<uint8_t>& v, const T& t) {
                     if (t && !v.empty()) d.to_host(v.data(), t->buf->data, v.size(), q);
                   };
                   down(h.q, plain.codes);
                   down(h.s, plain.scales);
                   down(h.m, plain.mins);
                   down(h.sd, plain.super_d);
                   down(h.sdm, plain.super_dmin);
                   q.synchronize();
                   std::vector<uint8_t> out(total);
                   const size_t per_panel = total / (size_t)((N + kQPanel - 1) / kQPanel);
                   for_chunks(rt->pool, f, N, K, [&](int64_t n0, int64_t rows) {
                     const size_t o = (size_t)(n0 / kQPanel) * per_panel;
                     const size_t n = (size_t)((rows + kQPanel - 1) / kQPanel) * per_panel;
                     d.qrepack_w4a16(plain_rows(h.p.q, n0, rows), out.data() + o, n);
                   });
                   d.to_device(packed->buf->data, out.data(), total, q);  // returns once `out` may be freed
                 });
}
}  // namespace

void op_qpack(const Core& rt, Stream& s, const PlainTensors& plain, const WeightFormat& f, int64_t N, int64_t K,
              const T& packed) {
  need_plain_layout(f, "qpack");
  need_format(f, N, K);
  need_plain(f, N, K, plain);
  need_packed(packed, f, N, K, "out", rt->device != nullptr);
  if (rt->device) return qpack_device(rt, s, plain, f, N, K, packed);
  s.enqueue("qpack", [rt, plain, f, N, K, packed] {
    for_chunks(rt->pool, f, N, K, [&](int64_t n0, int64_t rows) {
      repack_rows(f, plain_view(f, N, n0, rows, K, plain), static_cast<uint8_t*>(packed->buf->data) + panel_offset(f, n0, K));
    });
  });
}

void op_qunpack(const Core& rt, Stream& s, const T& packed, const WeightFormat& f, int64_t N, int64_t K,
                const PlainTensors& plain) {
  need_plain_layout(f, "qunpack");
  need_format(f, N, K);
  need_packed(packed, f, N, K, "weights");
  need_plain(f, N, K, plain);
  s.enqueue("qunpack", [rt, plain, f, N, K, packed] {
    for_chunks(rt->pool, f, N, K, [&](int64_t n0, int64_t rows) {
      unpack_rows(f, static_cast<const uint8_t*>(packed->buf->data) + panel_offset(f, n0, K), rows, K,
                  plain_view(f, N, n0, rows, K, plain));
    });
  });
}

void op_gguf_import(const Core& rt, Stream& s, int32_t type, const T& blocks, int64_t N, int64_t K, const T& packed) {
  WeightFormat f;
  f.q = gguf_native_format(type);  // throws E_UNSUPPORTED naming "type"
  need_format(f, N, K);
  need(blocks, "blocks");
  need_dtype(blocks, DType::u8, "blocks");
  const size_t row = gguf_row_bytes(type, K);
  if (blocks->buf->bytes != row * (size_t)N)
    throw Error(Code::SHAPE, "Expected " + std::to_string(row * (size_t)N) + " bytes of ggml type " + std::to_string(type) +
                                 " blocks for [" + std::to_string(N) + ", " + std::to_string(K) + "] but received " +
                                 std::to_string(blocks->buf->bytes), "blocks");
  need_packed(packed, f, N, K, "out");
  s.enqueue("ggufImport", [rt, type, blocks, f, N, K, packed, row] {
    for_chunks(rt->pool, f, N, K, [&](int64_t n0, int64_t rows) {
      PlainBuf pb(f, rows, K);
      gguf_import(type, static_cast<const uint8_t*>(blocks->buf->data) + (size_t)n0 * row, row * (size_t)rows, rows, K, pb.p.q);
      q_repack(pb.p.q, static_cast<uint8_t*>(packed->buf->data) + panel_offset(f, n0, K));
    });
  });
}

void op_qmatmul(const Core& rt, Stream& s, const T& a, const T& packed, const WeightFormat& f, int64_t N, int64_t K,
                const T& bias, const T& residual, const T& out) {
  need(a, "a");
  need_float(a, "a");
  need_rank(a, 1, kMaxDims, "a");
  need_format(f, N, K);
  need_packed(packed, f, N, K, "weights", rt->device != nullptr);
  if (a->shape.back() != K)
    throw Error(Code::SHAPE, "Expected a.shape[-1] to be " + std::to_string(K) + " (K of the weights) but received " +
                                 std::to_string(a->shape.back()), "a");
  need(out, "out");
  need_float(out, "out");
  std::vector<int64_t> want(a->shape.begin(), a->shape.end() - 1);
  want.push_back(N);
  need_shape(out, want, "out");
  if (bias) {
    need(bias, "bias");
    need_dtype(bias, DType::f32, "bias");
    need_shape(bias, {f.gate_up ? 2 * N : N}, "bias");
  }
  if (residual && f.gate_up)
    throw Error(Code::UNSUPPORTED, "No residual with the fused gate/up (SwiGLU) epilogue", "residual");
  if (residual) {
    need(residual, "residual");
    need_dtype(residual, out->dtype, "residual");
    need_shape(residual, want, "residual");
    if (residual->buf != out->buf && residual->buf->data == out->buf->data)
      throw Error(Code::INVALID_ARG, "residual aliases out through a different tensor", "residual");
  }
  const int64_t M = out->numel() / N;
  if (M == 0) return;
  if (f.fp8) {
    Fp8GemmArgs g;
    g.w = Fp8Packed{f.f8, N, K, static_cast<const uint8_t*>(packed->buf->data)};
    g.a_dtype = a->dtype;
    g.act = f.act;
    g.M = M;
    g.A = a->buf->data;
    g.lda = K;
    g.c_dtype = out->dtype;
    g.C = out->buf->data;
    g.ldc = N;
    g.bias = bias ? static_cast<const float*>(bias->buf->data) : nullptr;
    g.residual = residual ? residual->buf->data : nullptr;
    g.ldr = N;
    fp8gemm_check(g, K);
    if (rt->device) {
      if (f.act == Fp8Act::w8a16) need_act16(a, "fp8 W8A16");
      device_enqueue(rt, s, "qmatmul", {a, packed, bias, residual, out}, [g](Device& d, DeviceStream& q) { d.fp8gemm(g, q); });
      return;
    }
    auto fn = TY_DISPATCH(rt->isa, fp8gemm);
    s.enqueue("qmatmul", [rt, a, packed, bias, residual, out, g, fn] { fn(g, rt->pool); });
    return;
  }
  QGemmArgs g;
  g.epilogue = f.gate_up ? QEpilogue::swiglu : QEpilogue::none;
  g.w = QPacked{f.q, N, K, static_cast<const uint8_t*>(packed->buf->data)};
  g.a_dtype = a->dtype;
  g.M = M;
  g.A = a->buf->data;
  g.lda = K;
  g.c_dtype = out->dtype;
  g.C = out->buf->data;
  g.ldc = N;
  g.bias = bias ? static_cast<const float*>(bias->buf->data) : nullptr;
  g.residual = residual ? residual->buf->data : nullptr;
  g.ldr = N;
  qgemm_check(g, K);  // the kernel's own contract, checked once more here
  if (rt->device) {
    if (Device::qdev_kind(false, f.q) == Device::QDevKind::w4a16) need_act16(a, "W4A16");
    device_enqueue(rt, s, "qmatmul", {a, packed, bias, residual, out}, [g](Device& d, DeviceStream& q) { d.qgemm(g, q); });
    return;
  }
  auto fn = TY_DISPATCH(rt->isa, qgemm);
  s.enqueue("qmatmul", [rt, a, packed, bias, residual, out, g, fn] { fn(g, rt->pool); });
}

void op_fuse_gate_up(const Core& rt, Stream& s, const T& gate, const T& up, const WeightFormat& fin, int64_t F, int64_t K,
                     const T& out) {
  WeightFormat f = fin;
  f.gate_up = false;
  need_format(f, F, K);
  if (f.fp8) throw Error(Code::UNSUPPORTED, "Fused gate/up weights are integer formats only (not fp8)", "format");
  need_packed(gate, f, F, K, "gate");
  need_packed(up, f, F, K, "up");
  WeightFormat fo = f;
  fo.gate_up = true;
  need_packed(out, fo, F, K, "out");
  s.enqueue("fuseGateUp", [rt, gate, up, f, F, K, out] {
    for_chunks(rt->pool, f, F, K, [&](int64_t n0, int64_t rows) {
      PlainBuf pg(f, rows, K), pu(f, rows, K);
      unpack_rows(f, static_cast<const uint8_t*>(gate->buf->data) + panel_offset(f, n0, K), rows, K, pg.p);
      unpack_rows(f, static_cast<const uint8_t*>(up->buf->data) + panel_offset(f, n0, K), rows, K, pu.p);
      q_repack_gate_up(pg.p.q, pu.p.q, static_cast<uint8_t*>(out->buf->data) + 2 * panel_offset(f, n0, K));
    });
  });
}

void op_qmatmul_grouped(const Core& rt, Stream& s, const T& a, const std::vector<T>& experts, const WeightFormat& f,
                        int64_t N, int64_t K, const T& rows, const T& offsets, const T& bias, const T& out) {
  need(a, "a");
  need_float(a, "a");
  need_rank(a, 2, 2, "a");
  need_format(f, N, K);
  const bool dev = rt->device != nullptr;
  // (the device backends have fp8 grouped kernels; the CPU has none)
  if (f.fp8 && !dev) throw Error(Code::UNSUPPORTED, "Grouped (MoE) matmul takes integer formats only (not fp8)", "format");
  if (experts.empty()) throw Error(Code::INVALID_ARG, "Expected at least one expert", "experts");
  for (size_t e = 0; e < experts.size(); ++e) {
    const std::string arg = "experts[" + std::to_string(e) + "]";
    need_packed(experts[e], f, N, K, arg.c_str(), dev);
  }
  if (a->shape[1] != K)
    throw Error(Code::SHAPE, "Expected a.shape[1] to be " + std::to_string(K) + " (K of the experts) but received " +
                                 std::to_string(a->shape[1]), "a");
  need(rows, "rows");
  need_dtype(rows, DType::i32, "rows");
  need_rank(rows, 1, 1, "rows");
  need(offsets, "offsets");
  need_dtype(offsets, DType::i32, "offsets");
  const int64_t E = (int64_t)experts.size(), R = rows->shape[0], T_ = a->shape[0];
  need_shape(offsets, {E + 1}, "offsets");
  need(out, "out");
  need_float(out, "out");
  need_shape(out, {R, N}, "out");
  if (bias) {
    need(bias, "bias");
    need_dtype(bias, DType::f32, "bias");
    need_shape(bias, {E, f.gate_up ? 2 * N : N}, "bias");
  }
  auto ptrs = std::make_shared<std::vector<const uint8_t*>>();
  for (auto& t : experts) ptrs->push_back(static_cast<const uint8_t*>(t->buf->data));
  QGroupedArgs g;
  g.fmt = f.q;
  g.N = N;
  g.K = K;
  g.E = E;
  g.epilogue = f.gate_up ? QEpilogue::swiglu : QEpilogue::none;
  g.a_dtype = a->dtype;
  g.T = T_;
  g.A = a->buf->data;
  g.lda = K;
  g.R = R;
  g.rows = static_cast<const int32_t*>(rows->buf->data);
  g.offsets = static_cast<const int32_t*>(offsets->buf->data);
  g.c_dtype = out->dtype;
  g.C = out->buf->data;
  g.ldc = N;
  g.bias = bias ? static_cast<const float*>(bias->buf->data) : nullptr;
  g.ldb = bias ? bias->shape[1] : 0;
  if (dev) {
    // rows / offsets are checked by the kernels on the device (reported at the next completion
    // point with the CPU's code and argument).
    if (f.fp8 ? f.act == Fp8Act::w8a16 : Device::qdev_kind(false, f.q) == Device::QDevKind::w4a16)
      need_act16(a, f.fp8 ? "fp8 W8A16" : "W4A16");
    std::vector<T> keep(experts);
    for (const T& t : {a, rows, offsets, bias, out}) keep.push_back(t);
    const bool fp8 = f.fp8;
    const Fp8Format f8 = f.f8;
    const Fp8Act act = f.act;
    device_enqueue(rt, s, "qmatmulGrouped", std::move(keep), [g, ptrs, fp8, f8, act](Device& d, DeviceStream& q) mutable {
      g.w = ptrs->data();
      if (fp8) d.fp8gemm_grouped(f8, act, g, q);
      else d.qgemm_grouped(g, q);
    });
    return;
  }
  auto fn = TY_DISPATCH(rt->isa, qgemm_grouped);
  auto keep = std::make_shared<std::vector<T>>(experts);
  // rows / offsets are data, possibly still being written by queued ops: they are checked
  // on the stream, right before the kernel reads them (never on the JS thread).
  s.enqueue("qmatmulGrouped", [rt, a, keep, ptrs, rows, offsets, bias, out, g, fn]() mutable {
    g.w = ptrs->data();
    qgemm_grouped_check(g, g.K);
    if (g.R > 0) fn(g, rt->pool);
  });
}

void op_moe_combine(const Core& rt, Stream& s, const T& y, const T& slot, const T& weights, int64_t k, bool accumulate,
                    const T& out) {
  need(y, "y");
  need_float(y, "y");
  need_rank(y, 2, 2, "y");
  need(out, "out");
  need_dtype(out, DType::f32, "out");
  need_rank(out, 2, 2, "out");
  const int64_t R = y->shape[0], N = y->shape[1], T_ = out->shape[0];
  if (out->shape[1] != N)
    throw Error(Code::SHAPE, "Expected out.shape[1] to be " + std::to_string(N) + " (y.shape[1]) but received " +
                                 std::to_string(out->shape[1]), "out");
  need(slot, "slot");
  need_dtype(slot, DType::i32, "slot");
  need_shape(slot, {T_ * k}, "slot");
  need(weights, "weights");
  need_dtype(weights, DType::f32, "weights");
  need_shape(weights, {T_ * k}, "weights");
  if (out->buf == y->buf) throw Error(Code::INVALID_ARG, "Expected out not to alias y", "out");
  if (T_ == 0 || N == 0) return;
  const DType ydt = y->dtype;
  if (rt->device) {
    // slot values are device data: checked by the kernel, reported at the next completion point
    Device::MoeCombineArgs m;
    m.y_dtype = ydt;
    m.tokens = T_;
    m.k = k;
    m.n = N;
    m.rows = R;
    m.y = y->buf->data;
    m.slot = static_cast<const int32_t*>(slot->buf->data);
    m.weights = static_cast<const float*>(weights->buf->data);
    m.accumulate = accumulate;
    m.out = static_cast<float*>(out->buf->data);
    device_enqueue(rt, s, "moeCombine", {y, slot, weights, out}, [m](Device& d, DeviceStream& q) { d.moe_combine(m, q); });
    return;
  }
  s.enqueue("moeCombine", [rt, y, slot, weights, out, k, accumulate, R, N, T_, ydt] {
    const int32_t* sl = static_cast<const int32_t*>(slot->buf->data);
    for (int64_t i = 0; i < T_ * k; ++i)
      if (sl[i] < 0 || sl[i] >= R)
        throw Error(Code::INVALID_ARG, "Expected slot values in [0, " + std::to_string(R) + ") but slot[" + std::to_string(i) +
                                           "] is " + std::to_string(sl[i]), "slot");
    const float* w = static_cast<const float*>(weights->buf->data);
    float* o = static_cast<float*>(out->buf->data);
    const void* yd = y->buf->data;
    rt->pool.for_each(T_, [&](int64_t t, int) {
      float* orow = o + t * N;
      if (!accumulate)
        for (int64_t n = 0; n < N; ++n) orow[n] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float wt = w[t * k + j];
        const int64_t r = sl[t * k + j];
        if (ydt == DType::f32) {
          const float* yr = static_cast<const float*>(yd) + r * N;
          for (int64_t n = 0; n < N; ++n) orow[n] += wt * yr[n];
        } else {
          const uint16_t* yr = static_cast<const uint16_t*>(yd) + r * N;
          if (ydt == DType::f16)
            for (int64_t n = 0; n < N; ++n) orow[n] += wt * f16_to_f32(yr[n]);
          else
            for (int64_t n = 0; n < N; ++n) orow[n] += wt * bf16_to_f32(yr[n]);
        }
      }
    });
  });
}

}  // namespace ty::cpu
