// Tachyon: float64 reference for the FP8 GEMM. See fp8gemm_ref.h.
#include "ref/fp8gemm_ref.h"

#include <cmath>

namespace ty::ref {
namespace {

double load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
}

}  // namespace

void fp8gemm_ref(const Fp8Plain& w, const Fp8GemmArgs& g, Fp8GemmRef& out) {
  const int64_t M = g.M, N = w.N, K = w.K;
  out.M = M; out.N = N;
  out.exact.assign(M * N, 0); out.mag.assign(M * N, 0); out.unquantized.assign(M * N, 0);
  std::vector<float> wdq(N * K);
  fp8_dequantize(w, wdq.data(), K);
  std::vector<double> a(K), qa(K);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) a[k] = load(g.A, g.a_dtype, m * g.lda + k);
    double sa = 1;
    if (g.act == Fp8Act::w8a8) {
      // Per-token dynamic quantization, as specified in tachyon/fp8.h (f32 operations).
      float amax = 0;
      for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs((float)a[k]));
      const float inv = amax > 0 ? 448.0f / amax : 0.0f;
      sa = (double)(amax / 448.0f);
      for (int64_t k = 0; k < K; ++k) qa[k] = fp8e4m3_to_f32(f32_to_fp8e4m3((float)a[k] * inv));
    } else {
      qa = a;
    }
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, mag = 0, un = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double wd = wdq[n * K + k];
        s += qa[k] * wd;
        mag += std::fabs(qa[k] * wd);
        un += a[k] * wd;
      }
      s *= sa;
      mag *= std::fabs(sa);
      double extra = 0, extra_mag = 0;
      if (g.bias) { extra += g.bias[n]; extra_mag += std::fabs(g.bias[n]); }
      if (g.residual) {
        const double r = load(g.residual, g.c_dtype, m * g.ldr + n);
        extra += r; extra_mag += std::fabs(r);
      }
      out.exact[m * N + n] = s + extra;
      out.mag[m * N + n] = mag + extra_mag;
      out.unquantized[m * N + n] = un + extra;
    }
  }
}

}  // namespace ty::ref
