// Tachyon: non-variant parts of the fused SwiGLU gate/up GEMM and the grouped (MoE)
// quantized GEMM: the gate/up repacking and argument validation. Kernels: the driver
// section at the end of native/cpu/kernels/qgemm.cpp. Layouts: tachyon/quant.h.
#include <cstring>
#include <string>
#include <vector>

#include "tachyon/error.h"
#include "tachyon/quant.h"

namespace ty {
namespace {

[[noreturn]] void fail(Code c, const char* who, const std::string& m, const char* arg) {
  throw Error(c, std::string(who) + ": " + m, arg);
}
bool same_fmt(const QuantFormat& a, const QuantFormat& b) {
  return a.kind == b.kind && a.group == b.group && a.asym == b.asym && a.scale_dtype == b.scale_dtype;
}
bool act_dtype(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

}  // namespace

void q_repack_gate_up(const QPlain& gate, const QPlain& up, uint8_t* out) {
  q_format_check(gate.fmt, gate.N, gate.K);
  if (!same_fmt(gate.fmt, up.fmt))
    fail(Code::INVALID_ARG, "q_repack_gate_up", "gate and up must have the same quantized format", "up");
  if (gate.N != up.N || gate.K != up.K)
    fail(Code::SHAPE, "q_repack_gate_up", "gate [" + std::to_string(gate.N) + ", " + std::to_string(gate.K) +
         "] and up [" + std::to_string(up.N) + ", " + std::to_string(up.K) + "] differ", "up");
  const QPackedLayout L = q_packed_layout(gate.fmt, gate.N, gate.K);
  std::vector<uint8_t> tmp(L.total);
  const QPlain* src[2] = {&gate, &up};
  for (int h = 0; h < 2; ++h) {
    q_repack(*src[h], tmp.data());
    for (int64_t p = 0; p < L.panels; ++p)
      std::memcpy(out + (2 * p + h) * L.panel_bytes, tmp.data() + p * L.panel_bytes, (size_t)L.panel_bytes);
  }
}

void q_unpack_gate_up(const QPacked& in, const QPlain& gate, const QPlain& up) {
  const QPackedLayout L = q_packed_layout(in.fmt, in.N, in.K);
  std::vector<uint8_t> tmp(L.total);
  const QPlain* dst[2] = {&gate, &up};
  for (int h = 0; h < 2; ++h) {
    for (int64_t p = 0; p < L.panels; ++p)
      std::memcpy(tmp.data() + p * L.panel_bytes, in.data + (2 * p + h) * L.panel_bytes, (size_t)L.panel_bytes);
    QPacked one = in;
    one.data = tmp.data();
    q_unpack(one, *dst[h]);
  }
}

void qgemm_grouped_check(const QGroupedArgs& a, int64_t K_of_A) {
  const char* who = "qgemm_grouped";
  q_format_check(a.fmt, a.N, a.K);
  if (a.epilogue != QEpilogue::none && a.epilogue != QEpilogue::swiglu)
    fail(Code::INVALID_ARG, who, "unknown epilogue " + std::to_string((int)a.epilogue), "epilogue");
  if (K_of_A != a.K)
    fail(Code::SHAPE, who, "A has K=" + std::to_string(K_of_A) + " but the weights have K=" + std::to_string(a.K), "A");
  if (a.E < 1) fail(Code::SHAPE, who, "expected a positive number of experts but received " + std::to_string(a.E), "E");
  if (a.T < 1) fail(Code::SHAPE, who, "expected a positive number of rows of A (T) but received " + std::to_string(a.T), "T");
  if (a.T > INT32_MAX || a.R > INT32_MAX) fail(Code::SHAPE, who, "T and R must fit in int32", a.T > INT32_MAX ? "T" : "R");
  if (a.R < 0) fail(Code::SHAPE, who, "expected R >= 0 but received " + std::to_string(a.R), "R");
  if (!act_dtype(a.a_dtype))
    fail(Code::DTYPE, who, std::string("expected f32, f16 or bf16 for A but received ") + dtype_name(a.a_dtype), "A");
  if (!act_dtype(a.c_dtype))
    fail(Code::DTYPE, who, std::string("expected f32, f16 or bf16 for C but received ") + dtype_name(a.c_dtype), "C");
  if (!a.A) fail(Code::INVALID_ARG, who, "A must not be null", "A");
  if (a.lda < a.K) fail(Code::SHAPE, who, "lda (" + std::to_string(a.lda) + ") < K (" + std::to_string(a.K) + ")", "lda");
  if (!a.offsets) fail(Code::INVALID_ARG, who, "offsets must not be null", "offsets");
  if (!a.w) fail(Code::INVALID_ARG, who, "the weight pointer array must not be null", "w");
  if (a.offsets[0] != 0) fail(Code::INVALID_ARG, who, "offsets[0] must be 0 but is " + std::to_string(a.offsets[0]), "offsets");
  for (int64_t e = 0; e < a.E; ++e) {
    if (a.offsets[e + 1] < a.offsets[e])
      fail(Code::INVALID_ARG, who, "offsets must be non-decreasing (offsets[" + std::to_string(e + 1) + "] = " +
           std::to_string(a.offsets[e + 1]) + " < offsets[" + std::to_string(e) + "] = " + std::to_string(a.offsets[e]) + ")", "offsets");
    if (a.offsets[e + 1] > a.offsets[e]) {
      if (!a.w[e]) fail(Code::INVALID_ARG, who, "expert " + std::to_string(e) + " has rows but no weights", "w");
      if (((uintptr_t)a.w[e] & 63) != 0)
        fail(Code::INVALID_ARG, who, "repacked weights of expert " + std::to_string(e) + " must be 64-byte aligned", "w");
    }
  }
  if (a.offsets[a.E] != a.R)
    fail(Code::INVALID_ARG, who, "offsets[E] = " + std::to_string(a.offsets[a.E]) + " must equal R = " + std::to_string(a.R), "offsets");
  if (a.R == 0) return;
  if (!a.rows) fail(Code::INVALID_ARG, who, "rows must not be null", "rows");
  for (int64_t i = 0; i < a.R; ++i)
    if (a.rows[i] < 0 || a.rows[i] >= a.T)
      fail(Code::INVALID_ARG, who, "rows[" + std::to_string(i) + "] = " + std::to_string(a.rows[i]) +
           " is outside [0, T = " + std::to_string(a.T) + ")", "rows");
  if (!a.C) fail(Code::INVALID_ARG, who, "C must not be null", "C");
  if (a.ldc < a.N) fail(Code::SHAPE, who, "ldc (" + std::to_string(a.ldc) + ") < N (" + std::to_string(a.N) + ")", "ldc");
  const int64_t nb = a.epilogue == QEpilogue::swiglu ? 2 * a.N : a.N;
  if (a.bias && a.ldb < nb)
    fail(Code::SHAPE, who, "ldb (" + std::to_string(a.ldb) + ") < " + std::to_string(nb) + " bias values per expert", "ldb");
  // A and C must not overlap (A is fully quantized before C is written, so it would be
  // harmless, but it is always a caller bug).
  {
    const char* a0 = static_cast<const char*>(a.A);
    const char* a1 = a0 + ((a.T - 1) * a.lda + a.K) * dtype_bytes(a.a_dtype, 1);
    const char* c0 = static_cast<const char*>(a.C);
    const char* c1 = c0 + ((a.R - 1) * a.ldc + a.N) * dtype_bytes(a.c_dtype, 1);
    if (a0 < c1 && c0 < a1) fail(Code::INVALID_ARG, who, "C overlaps A", "C");
  }
}

}  // namespace ty
