// Tachyon: FP8 weight formats (e4m3 / e5m2 codes with f32 scales) — quantize /
// dequantize, plain <-> repacked, and argument validation. Not an ISA variant: runs once
// at load. Byte layouts: docs/formats.md ("FP8") and native/include/tachyon/fp8.h.
#include "tachyon/fp8.h"

#include <cmath>
#include <cstring>
#include <string>

#include "tachyon/error.h"

namespace ty {
namespace {

bool is_fp8(DType t) { return t == DType::fp8e4m3 || t == DType::fp8e5m2; }

// Spacing of the fp8 grid at code b (the value of one unit in the last place).
double fp8_step(DType t, uint8_t b) {
  const int e4 = t == DType::fp8e5m2 ? 0 : 1;
  const int e = e4 ? (b >> 3) & 15 : (b >> 2) & 31;
  const int bias = e4 ? 7 : 15, mbits = e4 ? 3 : 2;
  return std::ldexp(1.0, (e == 0 ? 1 : e) - bias - mbits);
}

std::string shape_str(int64_t N, int64_t K) {
  return "(N=" + std::to_string(N) + ", K=" + std::to_string(K) + ")";
}

}  // namespace

const char* fp8_format_error(const Fp8Format& f, int64_t N, int64_t K) {
  if (!is_fp8(f.dtype)) return "fp8 weights: dtype must be fp8e4m3 or fp8e5m2";
  if (f.scale != Fp8Scale::tensor && f.scale != Fp8Scale::channel && f.scale != Fp8Scale::block128)
    return "fp8 weights: scale granularity must be tensor (0), channel (1) or block128 (2)";
  if (N < 1 || K < 1) return "fp8 weights: N and K must be positive";
  if (N > ((int64_t)1 << 24) || K > ((int64_t)1 << 24)) return "fp8 weights: N and K must be <= 16777216";
  return nullptr;
}

void fp8_format_check(const Fp8Format& f, int64_t N, int64_t K, const char* arg) {
  const char* e = fp8_format_error(f, N, K);
  if (!e) return;
  Code c = Code::INVALID_ARG;
  if (std::strstr(e, "dtype")) c = Code::DTYPE;
  if (std::strstr(e, "positive") || std::strstr(e, "<=")) c = Code::SHAPE;
  throw Error(c, std::string(e) + " " + shape_str(N, K), arg);
}

QuantStats fp8_quantize(const float* w, int64_t ldw, const Fp8Plain& out) {
  const Fp8Format& f = out.fmt;
  fp8_format_check(f, out.N, out.K);
  const int64_t N = out.N, K = out.K;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      if (!std::isfinite(w[n * ldw + k]))
        throw Error(Code::INVALID_ARG, "fp8 quantize: weight (" + std::to_string(n) + ", " + std::to_string(k) +
                                           ") is not finite", "weights");
  const float fmax = fp8_max(f.dtype);
  // 1. scales: amax per granule.
  const int64_t ns = fp8_num_scales(f, N, K);
  for (int64_t i = 0; i < ns; ++i) out.scales[i] = 0.0f;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      float& s = out.scales[fp8_scale_index(f, K, n, k)];
      s = std::fmax(s, std::fabs(w[n * ldw + k]));
    }
  for (int64_t i = 0; i < ns; ++i) {
    const float amax = out.scales[i];
    float s = amax > 0 ? amax / fmax : 1.0f;
    if (s == 0.0f) s = std::ldexp(1.0f, -149);  // amax / fmax underflowed
    out.scales[i] = s;
  }
  // 2. codes.
  QuantStats st;
  double sum_sq = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const float x = w[n * ldw + k];
      const float s = out.scales[fp8_scale_index(f, K, n, k)];
      const float q = x / s;
      const uint8_t c = f32_to_fp8(f.dtype, q);
      out.codes[n * K + k] = c;
      const float d = fp8_to_f32(f.dtype, c) * s;
      const double err = (double)d - (double)x;
      const double ae = std::fabs(err);
      sum_sq += err * err;
      st.max_abs_err = std::fmax(st.max_abs_err, ae);
      if (std::fabs(q) > fmax) ++st.clamped;
      const double step = fp8_step(f.dtype, c) * std::fabs((double)s);
      if (step > 0) st.max_err_step = std::fmax(st.max_err_step, ae / step);
    }
  st.rms_err = std::sqrt(sum_sq / (double)(N * K));
  return st;
}

void fp8_dequantize(const Fp8Plain& in, float* w, int64_t ldw) {
  fp8_format_check(in.fmt, in.N, in.K);
  const int64_t N = in.N, K = in.K;
  float lut[256];
  for (int i = 0; i < 256; ++i) lut[i] = fp8_to_f32(in.fmt.dtype, (uint8_t)i);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      w[n * ldw + k] = lut[in.codes[n * K + k]] * in.scales[fp8_scale_index(in.fmt, K, n, k)];
}

void fp8_repack(const Fp8Plain& in, uint8_t* out) {
  const Fp8Format& f = in.fmt;
  fp8_format_check(f, in.N, in.K);
  const int64_t N = in.N, K = in.K, ns = fp8_num_scales(f, N, K);
  for (int64_t i = 0; i < ns; ++i)
    if (!std::isfinite(in.scales[i]))
      throw Error(Code::INVALID_ARG, "fp8 repack: scale " + std::to_string(i) + " is not finite", "scales");
  const Fp8PackedLayout L = fp8_packed_layout(f, N, K);
  std::memset(out, 0, L.total);
  for (int64_t p = 0; p < L.panels; ++p) {
    uint8_t* P = out + p * L.panel_bytes;
    const int64_t n0 = p * kFp8Panel;
    const int64_t nc = N - n0 < kFp8Panel ? N - n0 : kFp8Panel;
    for (int64_t c = 0; c < nc; ++c) {
      const uint8_t* row = in.codes + (n0 + c) * K;
      for (int64_t k = 0; k < K; ++k) P[fp8_code_pos(f.dtype, k, (int)c)] = fp8_stored_byte(f.dtype, row[k]);
    }
    float* S = reinterpret_cast<float*>(P + L.scale_off);
    if (f.scale == Fp8Scale::block128) {
      const int64_t br = n0 / kFp8Block;
      for (int64_t b = 0; b < L.nkb; ++b) S[b] = in.scales[br * L.nkb + b];
    } else {
      for (int64_t c = 0; c < nc; ++c) S[c] = in.scales[f.scale == Fp8Scale::tensor ? 0 : n0 + c];
    }
  }
}

void fp8_unpack(const Fp8Packed& in, const Fp8Plain& out) {
  const Fp8Format& f = in.fmt;
  fp8_format_check(f, in.N, in.K);
  const int64_t N = in.N, K = in.K;
  const Fp8PackedLayout L = fp8_packed_layout(f, N, K);
  for (int64_t p = 0; p < L.panels; ++p) {
    const uint8_t* P = in.data + p * L.panel_bytes;
    const int64_t n0 = p * kFp8Panel;
    const int64_t nc = N - n0 < kFp8Panel ? N - n0 : kFp8Panel;
    for (int64_t c = 0; c < nc; ++c) {
      uint8_t* row = out.codes + (n0 + c) * K;
      for (int64_t k = 0; k < K; ++k) row[k] = fp8_stored_byte(f.dtype, P[fp8_code_pos(f.dtype, k, (int)c)]);
    }
    float S[kFp8Panel];
    const float* Sp = reinterpret_cast<const float*>(P + L.scale_off);
    if (f.scale == Fp8Scale::block128) {
      if (n0 % kFp8Block == 0) {
        const int64_t br = n0 / kFp8Block;
        for (int64_t b = 0; b < L.nkb; ++b) std::memcpy(&out.scales[br * L.nkb + b], Sp + b, 4);
      }
    } else {
      std::memcpy(S, Sp, sizeof S);
      if (f.scale == Fp8Scale::tensor) { if (p == 0) out.scales[0] = S[0]; }
      else for (int64_t c = 0; c < nc; ++c) out.scales[n0 + c] = S[c];
    }
  }
}

void fp8gemm_check(const Fp8GemmArgs& a, int64_t K_of_A) {
  fp8_format_check(a.w.fmt, a.w.N, a.w.K, "w");
  auto fail = [](Code c, const std::string& m, const char* arg) { throw Error(c, "fp8gemm: " + m, arg); };
  auto act = [](DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; };
  if (!a.w.data) fail(Code::INVALID_ARG, "weights have no data", "w");
  if (((uintptr_t)a.w.data & 63) != 0) fail(Code::INVALID_ARG, "repacked weights must be 64-byte aligned", "w");
  if (a.act != Fp8Act::w8a16 && a.act != Fp8Act::w8a8)
    fail(Code::INVALID_ARG, "activation mode must be w8a16 (0) or w8a8 (1)", "a");
  if (K_of_A != a.w.K)
    fail(Code::SHAPE, "a has K=" + std::to_string(K_of_A) + " but the weights have K=" + std::to_string(a.w.K), "a");
  if (!act(a.a_dtype)) fail(Code::DTYPE, std::string("expected f32, f16 or bf16 for a but received ") + dtype_name(a.a_dtype), "a");
  if (!act(a.c_dtype)) fail(Code::DTYPE, std::string("expected f32, f16 or bf16 for out but received ") + dtype_name(a.c_dtype), "out");
  if (a.M < 1) fail(Code::SHAPE, "expected positive integer for M but received " + std::to_string(a.M), "a");
  if (!a.A) fail(Code::INVALID_ARG, "a must not be null", "a");
  if (!a.C) fail(Code::INVALID_ARG, "out must not be null", "out");
  if (a.lda < a.w.K) fail(Code::SHAPE, "lda (" + std::to_string(a.lda) + ") < K (" + std::to_string(a.w.K) + ")", "a");
  if (a.ldc < a.w.N) fail(Code::SHAPE, "ldc (" + std::to_string(a.ldc) + ") < N (" + std::to_string(a.w.N) + ")", "out");
  if (a.residual && a.ldr < a.w.N) fail(Code::SHAPE, "ldr (" + std::to_string(a.ldr) + ") < N", "residual");
  if (a.residual && a.residual != a.C) {
    // Partial overlap between residual and C is not supported (exact alias is).
    const char* r0 = static_cast<const char*>(a.residual);
    const char* c0 = static_cast<const char*>(a.C);
    const size_t es = dtype_bytes(a.c_dtype, 1);
    const char* r1 = r0 + ((a.M - 1) * a.ldr + a.w.N) * es;
    const char* c1 = c0 + ((a.M - 1) * a.ldc + a.w.N) * es;
    if (r0 < c1 && c0 < r1) fail(Code::INVALID_ARG, "residual overlaps out without being out", "residual");
  }
  if (a.residual == a.C && a.residual && a.ldr != a.ldc)
    fail(Code::INVALID_ARG, "residual aliases out with a different row stride", "residual");
  if (a.bias) {
    const char* b0 = reinterpret_cast<const char*>(a.bias);
    const char* b1 = b0 + a.w.N * 4;
    const char* c0 = static_cast<const char*>(a.C);
    const char* c1 = c0 + ((a.M - 1) * a.ldc + a.w.N) * dtype_bytes(a.c_dtype, 1);
    if (b0 < c1 && c0 < b1) fail(Code::INVALID_ARG, "bias overlaps out", "bias");
  }
}

}  // namespace ty
