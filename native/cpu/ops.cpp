#include "ops.h"
#include "validate.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>

#include "kernels.h"

namespace ty::cpu {

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string Tensor::shape_str() const {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

static std::string shape_str(const std::vector<int64_t>& v) {
  Tensor t;
  t.shape = v;
  return t.shape_str();
}

int64_t check_shape(const std::vector<int64_t>& shape, DType dtype, const char* arg) {
  if (shape.size() > (size_t)kMaxDims)
    throw Error(Code::SHAPE, std::string("Expected at most 8 dimensions for ") + arg + " but received " +
                                 std::to_string(shape.size()), arg);
  const int64_t kMaxDim = (int64_t)1 << 40;
  long double total = 1;
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0 || shape[i] > kMaxDim)
      throw Error(Code::SHAPE, std::string("Expected a non-negative integer no larger than 2^40 for ") + arg + "[" +
                                   std::to_string(i) + "] but received " + std::to_string(shape[i]), arg);
    total *= (long double)shape[i];
    n *= shape[i];
    if (total > (long double)((int64_t)1 << 50))
      throw Error(Code::OOM, std::string("Shape ") + shape_str(shape) + " of " + arg + " is too large", arg);
  }
  if (dtype == DType::int4 && !shape.empty() && shape.back() % 2 != 0)
    throw Error(Code::SHAPE, std::string("Expected an even last dimension for int4 tensor ") + arg + " but received " +
                                 std::to_string(shape.back()), arg);
  return n;
}

std::shared_ptr<Tensor> make_tensor(DType dtype, std::vector<int64_t> shape) {
  int64_t n = check_shape(shape, dtype, "shape");
  auto t = std::make_shared<Tensor>();
  t->dtype = dtype;
  t->shape = std::move(shape);
  t->buf = Buffer::allocate(dtype_bytes(dtype, n));
  return t;
}

// ---- ops ----

// What the device GEMM kernels take (tensor cores): f16/bf16 operands with B stored [N, K].
static void need_device_gemm(const Core& rt, const T& a, GemmOpts o) {
  if (a->dtype != DType::f16 && a->dtype != DType::bf16)
    throw Error(Code::DTYPE, std::string("Expected f16 or bf16 for dtype of a on backend ") + rt->backend() +
                                 " (the tensor-core GEMM) but received " + dtype_name(a->dtype), "a");
  if (!o.b_trans)
    throw Error(Code::UNSUPPORTED, std::string("Expected transB = true (b stored [N, K]) on backend ") + rt->backend() +
                                       "; b stored [K, N] is not implemented there", "transB");
}

void op_gemm(const Core& rt, Stream& s, const T& a, const T& b, const T& bias, const T& out, GemmOpts o) {
  need(a, "a"); need(b, "b"); need(out, "out");
  need_float(a, "a"); need_float(out, "out");
  if (b->dtype != a->dtype)
    throw Error(Code::DTYPE, std::string("Expected ") + dtype_name(a->dtype) + " (the dtype of a) for dtype of b but received " +
                                 dtype_name(b->dtype), "b");
  need_rank(a, 2, kMaxDims, "a");
  need_rank(b, 2, 2, "b");
  int64_t K = a->shape.back();
  int64_t M = 1;
  for (size_t i = 0; i + 1 < a->shape.size(); ++i) M *= a->shape[i];
  int64_t N = o.b_trans ? b->shape[0] : b->shape[1];
  int64_t Kb = o.b_trans ? b->shape[1] : b->shape[0];
  if (Kb != K)
    throw Error(Code::SHAPE, std::string("Expected b.shape[") + (o.b_trans ? "1" : "0") + "] (K) to be " + std::to_string(K) +
                                 " (a.shape[-1]) but received " + std::to_string(Kb), "b");
  std::vector<int64_t> want(a->shape.begin(), a->shape.end() - 1);
  want.push_back(N);
  if (out->shape != want)
    throw Error(Code::SHAPE, "Expected shape " + shape_str(want) + " for out but received " + out->shape_str(), "out");
  need_finite(o.alpha, "alpha"); need_finite(o.beta, "beta");
  if (bias) {
    need(bias, "bias"); need_dtype(bias, DType::f32, "bias");
    if (bias->numel() != N || bias->shape.size() != 1)
      throw Error(Code::SHAPE, "Expected shape [" + std::to_string(N) + "] for bias but received " + bias->shape_str(), "bias");
  }
  if (rt->device) need_device_gemm(rt, a, o);
  if (M == 0 || N == 0) return;
  GemmArgs g{a->dtype, out->dtype, M, N, K, a->buf->data, K, b->buf->data, o.b_trans ? K : N, o.b_trans,
             out->buf->data, N, bias ? (const float*)bias->buf->data : nullptr, o.alpha, o.beta};
  if (device_enqueue(rt, s, "matmul", {a, b, bias, out}, [g](Device& d, DeviceStream& q) { d.gemm(g, q); })) return;
  auto fn = TY_DISPATCH(rt->isa, gemm);
  s.enqueue("matmul", [rt, a, b, bias, out, g, fn] {
    if (g.K == 0) {
      // Rare edge: no reduction. Handle here so kernels never see K = 0.
      for (int64_t m = 0; m < g.M; ++m)
        for (int64_t n = 0; n < g.N; ++n) {
          float v = 0.f;
          if (g.beta != 0.f) {
            if (g.c_dtype == DType::f32) v = g.beta * ((float*)g.C)[m * g.ldc + n];
            else if (g.c_dtype == DType::f16) v = g.beta * f16_to_f32(((uint16_t*)g.C)[m * g.ldc + n]);
            else v = g.beta * bf16_to_f32(((uint16_t*)g.C)[m * g.ldc + n]);
          }
          if (g.bias) v += g.bias[n];
          if (g.c_dtype == DType::f32) ((float*)g.C)[m * g.ldc + n] = v;
          else if (g.c_dtype == DType::f16) ((uint16_t*)g.C)[m * g.ldc + n] = f32_to_f16(v);
          else ((uint16_t*)g.C)[m * g.ldc + n] = f32_to_bf16(v);
        }
      return;
    }
    fn(g, rt->pool);
  });
}

void op_binary(const Core& rt, Stream& s, BinaryOp op, const T& a, const T& b, const T& out) {
  need(a, "a"); need(b, "b"); need(out, "out");
  need_float(a, "a");
  need_dtype(b, a->dtype, "b"); need_dtype(out, a->dtype, "out");
  need_same_shape(out, a, "out", "a");
  int64_t rows, cols;
  rows_cols(a, &rows, &cols);
  bool bcast = false;
  if (b->shape != a->shape) {
    if (b->numel() == cols && (b->shape.size() == 1 || (b->shape.size() >= 1 && b->shape.back() == cols))) bcast = true;
    else
      throw Error(Code::SHAPE, "Expected shape " + a->shape_str() + " (the shape of a) or [" + std::to_string(cols) +
                                   "] (one row, broadcast) for b but received " + b->shape_str(), "b");
  }
  if (bcast && rows > 1 && out->buf == b->buf)
    throw Error(Code::INVALID_ARG, "Expected out not to alias the broadcast row b (it would be overwritten by row 0's result)", "out");
  if (a->numel() == 0) return;
  BinaryArgs g{op, a->dtype, rows, cols, a->buf->data, b->buf->data, bcast, out->buf->data};
  if (device_enqueue(rt, s, op == BinaryOp::add ? "add" : "mul", {a, b, out}, [g](Device& d, DeviceStream& q) { d.binary(g, q); })) return;
  auto fn = TY_DISPATCH(rt->isa, binary);
  s.enqueue(op == BinaryOp::add ? "add" : "mul", [rt, a, b, out, g, fn] { fn(g, rt->pool); });
}

void op_silu_mul(const Core& rt, Stream& s, const T& gate, const T& up, const T& out) {
  need(gate, "gate"); need(up, "up"); need(out, "out");
  need_float(gate, "gate");
  need_dtype(up, gate->dtype, "up"); need_dtype(out, gate->dtype, "out");
  need_same_shape(up, gate, "up", "gate"); need_same_shape(out, gate, "out", "gate");
  if (gate->numel() == 0) return;
  SiluMulArgs g{gate->dtype, gate->numel(), gate->buf->data, up->buf->data, out->buf->data};
  if (device_enqueue(rt, s, "siluMul", {gate, up, out}, [g](Device& d, DeviceStream& q) { d.silu_mul(g, q); })) return;
  auto fn = TY_DISPATCH(rt->isa, silu_mul);
  s.enqueue("siluMul", [rt, gate, up, out, g, fn] { fn(g, rt->pool); });
}

void op_rms_norm(const Core& rt, Stream& s, const T& x, const T& w, float eps, const T& out) {
  need(x, "x"); need(out, "out");
  need_float(x, "x"); need_dtype(out, x->dtype, "out");
  need_rank(x, 1, kMaxDims, "x");
  need_same_shape(out, x, "out", "x");
  if (!(eps >= 0.f) || !std::isfinite(eps))
    throw Error(Code::INVALID_ARG, "Expected a finite non-negative number for eps but received " + std::to_string(eps), "eps");
  int64_t rows, cols;
  rows_cols(x, &rows, &cols);
  if (w) {
    need(w, "weight"); need_dtype(w, DType::f32, "weight");
    if (w->shape.size() != 1 || w->shape[0] != cols)
      throw Error(Code::SHAPE, "Expected shape [" + std::to_string(cols) + "] for weight but received " + w->shape_str(), "weight");
  }
  if (x->numel() == 0) return;
  RmsNormArgs g{x->dtype, rows, cols, x->buf->data, w ? (const float*)w->buf->data : nullptr, eps, out->buf->data};
  if (device_enqueue(rt, s, "rmsNorm", {x, w, out}, [g](Device& d, DeviceStream& q) { d.rms_norm(g, q); })) return;
  auto fn = TY_DISPATCH(rt->isa, rms_norm);
  s.enqueue("rmsNorm", [rt, x, w, out, g, fn] { fn(g, rt->pool); });
}

void op_rope(const Core& rt, Stream& s, const T& x, const T& pos, int64_t rot_dim, float base, float scale, bool neox) {
  need(x, "x"); need(pos, "positions");
  need_float(x, "x"); need_dtype(pos, DType::i32, "positions");
  need_rank(x, 3, 3, "x");
  int64_t tokens = x->shape[0], heads = x->shape[1], hd = x->shape[2];
  if (pos->shape.size() != 1 || pos->shape[0] != tokens)
    throw Error(Code::SHAPE, "Expected shape [" + std::to_string(tokens) + "] (x.shape[0]) for positions but received " +
                                 pos->shape_str(), "positions");
  if (rot_dim < 0) rot_dim = hd;
  if (rot_dim % 2 != 0 || rot_dim > hd || rot_dim == 0)
    throw Error(Code::INVALID_ARG, "Expected an even integer in [2, " + std::to_string(hd) + "] for rotaryDim but received " +
                                       std::to_string(rot_dim), "rotaryDim");
  if (!(base > 0.f) || !std::isfinite(base))
    throw Error(Code::INVALID_ARG, "Expected a finite positive number for freqBase but received " + std::to_string(base), "freqBase");
  if (!(scale > 0.f) || !std::isfinite(scale))
    throw Error(Code::INVALID_ARG, "Expected a finite positive number for freqScale but received " + std::to_string(scale), "freqScale");
  if (x->numel() == 0) return;
  RopeArgs g{x->dtype, tokens, heads, hd, rot_dim, x->buf->data, (const int32_t*)pos->buf->data, base, scale, neox};
  if (device_enqueue(rt, s, "rope", {x, pos}, [g](Device& d, DeviceStream& q) { d.rope(g, q); })) return;
  auto fn = TY_DISPATCH(rt->isa, rope);
  s.enqueue("rope", [rt, x, pos, g, fn] { fn(g, rt->pool); });
}

void op_softmax(const Core& rt, Stream& s, const T& x, float scale, const T& out) {
  need(x, "x"); need(out, "out");
  need_float(x, "x"); need_dtype(out, x->dtype, "out");
  need_rank(x, 1, kMaxDims, "x");
  need_same_shape(out, x, "out", "x");
  need_finite(scale, "scale");
  int64_t rows, cols;
  rows_cols(x, &rows, &cols);
  if (x->numel() == 0) return;
  SoftmaxArgs g{x->dtype, rows, cols, x->buf->data, scale, out->buf->data};
  if (device_enqueue(rt, s, "softmax", {x, out}, [g](Device& d, DeviceStream& q) { d.softmax(g, q); })) return;
  auto fn = TY_DISPATCH(rt->isa, softmax);
  s.enqueue("softmax", [rt, x, out, g, fn] { fn(g, rt->pool); });
}

void op_embedding(const Core& rt, Stream& s, const T& table, const T& ids, const T& out) {
  need(table, "table"); need(ids, "ids"); need(out, "out");
  need_float(table, "table"); need_dtype(ids, DType::i32, "ids"); need_float(out, "out");
  need_rank(table, 2, 2, "table");
  int64_t vocab = table->shape[0], dim = table->shape[1], tokens = ids->numel();
  std::vector<int64_t> want(ids->shape);
  want.push_back(dim);
  if (out->shape != want)
    throw Error(Code::SHAPE, "Expected shape " + shape_str(want) + " for out but received " + out->shape_str(), "out");
  // ids are checked inside the kernel, in stream order: reading them here would race
  // with queued ops that write them (and on CUDA they live on the device). A bad id
  // poisons the stream with E_INVALID_ARG naming `ids`.
  if (tokens == 0 || dim == 0) return;
  EmbeddingArgs g{table->dtype, out->dtype, vocab, dim, tokens, table->buf->data, (const int32_t*)ids->buf->data,
                  out->buf->data};
  if (device_enqueue(rt, s, "embedding", {table, ids, out}, [g](Device& d, DeviceStream& q) { d.embedding(g, q); })) return;
  auto fn = TY_DISPATCH(rt->isa, embedding);
  s.enqueue("embedding", [rt, table, ids, out, g, fn] {
    const int32_t* idv = g.ids;
    for (int64_t t = 0; t < g.tokens; ++t)
      if (idv[t] < 0 || idv[t] >= g.vocab)
        throw Error(Code::INVALID_ARG, "Token id " + std::to_string(idv[t]) + " at index " + std::to_string(t) +
                                           " is outside [0, " + std::to_string(g.vocab) + ")", "ids");
    fn(g, rt->pool);
  });
}

static float load_f(DType d, const void* p, int64_t i) {
  switch (d) {
    case DType::f32: return ((const float*)p)[i];
    case DType::f16: return f16_to_f32(((const uint16_t*)p)[i]);
    default: return bf16_to_f32(((const uint16_t*)p)[i]);
  }
}

void op_copy(const Core& rt, Stream& s, const T& src, const T& dst) {
  need(src, "src"); need(dst, "dst");
  if (src->numel() != dst->numel())
    throw Error(Code::SHAPE, "Expected " + std::to_string(src->numel()) + " elements (the size of src) for dst but received " +
                                 std::to_string(dst->numel()), "dst");
  if (src->dtype != dst->dtype) { need_float(src, "src"); need_float(dst, "dst"); }
  int64_t n = src->numel();
  if (rt->device && src->dtype != dst->dtype)
    throw Error(Code::UNSUPPORTED, std::string("Expected dst to have src's dtype (") + dtype_name(src->dtype) + ") on backend " +
                                       rt->backend() + " (dtype conversion is not implemented there) but received " +
                                       dtype_name(dst->dtype), "dst");
  if (n == 0) return;
  if (device_enqueue(rt, s, "copy", {src, dst}, [src, dst, n](Device& d, DeviceStream& q) {
        d.device_copy(dst->buf->data, src->buf->data, dtype_bytes(src->dtype, n), q);
      }))
    return;
  s.enqueue("copy", [rt, src, dst, n] {
    if (src->dtype == dst->dtype) { std::memcpy(dst->buf->data, src->buf->data, dtype_bytes(src->dtype, n)); return; }
    DType sd = src->dtype, dd = dst->dtype;
    const void* sp = src->buf->data;
    void* dp = dst->buf->data;
    int64_t chunk = 1 << 16, tasks = (n + chunk - 1) / chunk;
    rt->pool.for_each(tasks, [&](int64_t t, int) {
      int64_t lo = t * chunk, hi = std::min(n, lo + chunk);
      for (int64_t i = lo; i < hi; ++i) {
        float v = load_f(sd, sp, i);
        if (dd == DType::f32) ((float*)dp)[i] = v;
        else if (dd == DType::f16) ((uint16_t*)dp)[i] = f32_to_f16(v);
        else ((uint16_t*)dp)[i] = f32_to_bf16(v);
      }
    });
  });
}

void op_probe(const Core& rt, Stream& s, int kind, int64_t iters, const T& buf, const T& result) {
  need(result, "result");
  if (result->buf->bytes < 16)
    throw Error(Code::SHAPE, "Expected at least 16 bytes for result but received " + std::to_string(result->buf->bytes), "result");
  if (kind < 0 || kind > 3)
    throw Error(Code::INVALID_ARG, "Expected 0, 1, 2 or 3 for kind but received " + std::to_string(kind), "kind");
  if (iters < 1 || iters > ((int64_t)1 << 40))
    throw Error(Code::INVALID_ARG, "Expected a positive integer for iters but received " + std::to_string(iters), "iters");
  if (kind == 0) need(buf, "buf");
  auto fn = TY_DISPATCH(rt->isa, probe);
  s.enqueue("probe", [rt, kind, iters, buf, result, fn] {
    std::vector<double> sink(rt->pool.threads() * 8, 0.0);
    ProbeArgs p{kind, iters, buf ? buf->buf->data : nullptr, buf ? (int64_t)buf->buf->bytes : 0, sink.data()};
    auto t0 = std::chrono::steady_clock::now();
    double work = fn(p, rt->pool);
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double r[2] = {work, sec};
    std::memcpy(result->buf->data, r, 16);
  });
}

}  // namespace ty::cpu
