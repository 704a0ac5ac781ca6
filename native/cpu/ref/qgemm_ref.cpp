// Tachyon: float64 reference for the quantized GEMM. See qgemm_ref.h.
#include "ref/qgemm_ref.h"

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
double load_s(const void* p, DType t, int64_t i) {
  return t == DType::f16 ? f16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
// Code of element (n, k) of the plain layout.
int code(const QPlain& w, int64_t n, int64_t k) {
  if (w.fmt.kind == QKind::int8) return static_cast<const int8_t*>(w.q)[n * w.K + k];
  const uint8_t b = static_cast<const uint8_t*>(w.q)[n * (w.K / 2) + k / 2];
  int v = (k % 2) ? b >> 4 : b & 15;
  if (!w.fmt.asym && v >= 8) v -= 16;
  return v;
}

// K-quants: activations quantized per 256-element super-block; per super-block b
//   spec += sa_b * (d_b * sum_j sc_j * dot_j  -  dmin_b * sum_j m_j * S_j)     (q6k: no mins)
// with dot_j = sum over sub-block j of code * qa and S_j = sum over sub-block j of qa.
void kq_ref(const QPlain& w, const QGemmArgs& g, QGemmRef& out) {
  const int64_t M = g.M, N = w.N, K = w.K;
  const bool q4 = w.fmt.kind == QKind::q4k;
  const int64_t SL = q4 ? 32 : 16, ns = K / SL, nsb = K / 256, per = 256 / SL;
  std::vector<float> wdq(N * K);
  dequantize(w, wdq.data(), K);
  std::vector<double> a(K), qa(K), sa(nsb);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) a[k] = load(g.A, g.a_dtype, m * g.lda + k);
    for (int64_t b = 0; b < nsb; ++b) {
      float amax = 0;
      for (int64_t k = b * 256; k < (b + 1) * 256; ++k) amax = std::fmax(amax, (float)std::fabs(a[k]));
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      sa[b] = (double)(amax / 127.0f);
      for (int64_t k = b * 256; k < (b + 1) * 256; ++k) qa[k] = std::nearbyint((float)a[k] * inv);
    }
    for (int64_t n = 0; n < N; ++n) {
      double ex = 0, sp = 0, mag = 0, ae = 0;
      for (int64_t b = 0; b < nsb; ++b) {
        const double d = f16_to_f32(static_cast<const uint16_t*>(w.super_d)[n * nsb + b]);
        const double dmin = q4 ? f16_to_f32(static_cast<const uint16_t*>(w.super_dmin)[n * nsb + b]) : 0.0;
        double isum = 0, msum = 0, sabsw = 0;
        for (int64_t j = b * per; j < (b + 1) * per; ++j) {
          double dot = 0, S = 0;
          for (int64_t k = j * SL; k < (j + 1) * SL; ++k) {
            int code;
            if (q4) {
              const uint8_t byte = static_cast<const uint8_t*>(w.q)[n * (K / 2) + k / 2];
              code = (k % 2) ? byte >> 4 : byte & 15;
            } else {
              code = static_cast<const int8_t*>(w.q)[n * K + k];
            }
            dot += code * qa[k];
            S += qa[k];
            const double wd = wdq[n * K + k];
            ex += a[k] * wd;
            sabsw += std::fabs(wd);
            ae += std::ldexp(std::fabs(a[k] * wd), -22);
          }
          if (q4) {
            isum += static_cast<const uint8_t*>(w.scales)[n * ns + j] * dot;
            msum += static_cast<const uint8_t*>(w.mins)[n * ns + j] * S;
          } else {
            isum += static_cast<const int8_t*>(w.scales)[n * ns + j] * dot;
          }
        }
        const double t1 = sa[b] * d * isum, t2 = sa[b] * dmin * msum;
        sp += t1 - t2;
        mag += std::fabs(t1) + std::fabs(t2);
        ae += 0.5 * sa[b] * sabsw * (1 + 1e-6);
      }
      double extra = 0, extra_mag = 0;
      if (g.bias) { extra += g.bias[n]; extra_mag += std::fabs(g.bias[n]); }
      if (g.residual) {
        const double r = load(g.residual, g.c_dtype, m * g.ldr + n);
        extra += r; extra_mag += std::fabs(r);
      }
      out.exact[m * N + n] = ex + extra;
      out.spec[m * N + n] = sp + extra;
      out.mag[m * N + n] = mag + extra_mag;
      out.act_err[m * N + n] = ae;
    }
  }
}

}  // namespace

void qgemm_ref(const QPlain& w, const QGemmArgs& g, QGemmRef& out) {
  const int64_t M = g.M, N = w.N, K = w.K;
  if (q_is_kquant(w.fmt.kind)) {
    out.M = M; out.N = N;
    out.exact.assign(M * N, 0); out.spec.assign(M * N, 0);
    out.mag.assign(M * N, 0); out.act_err.assign(M * N, 0);
    kq_ref(w, g, out);
    return;
  }
  const bool asym = w.fmt.kind == QKind::int4 && w.fmt.asym;
  const int64_t G = w.fmt.group > 0 ? w.fmt.group : K, nb = K / G;
  out.M = M; out.N = N;
  out.exact.assign(M * N, 0); out.spec.assign(M * N, 0);
  out.mag.assign(M * N, 0); out.act_err.assign(M * N, 0);

  std::vector<float> wdq(N * K);  // f32 dequantized weights
  dequantize(w, wdq.data(), K);
  std::vector<double> wq(N * K), sc(N * nb), mn(N * nb, 0.0);  // codes, scales, mins
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) wq[n * K + k] = code(w, n, k);
    for (int64_t b = 0; b < nb; ++b) {
      sc[n * nb + b] = load_s(w.scales, w.fmt.scale_dtype, n * nb + b);
      if (asym) mn[n * nb + b] = load_s(w.mins, w.fmt.scale_dtype, n * nb + b);
    }
  }

  std::vector<double> a(K), qa(K), sa(nb), sa_err(nb), sum(nb);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) a[k] = load(g.A, g.a_dtype, m * g.lda + k);
    // Activation quantization, as specified in tachyon/quant.h.
    for (int64_t b = 0; b < nb; ++b) {
      float amax = 0;
      for (int64_t k = b * G; k < (b + 1) * G; ++k) amax = std::fmax(amax, (float)std::fabs(a[k]));
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      // f16 weight scales: the activation scale is rounded to f16 too (tachyon/quant.h)
      sa[b] = w.fmt.scale_dtype == DType::f16 ? (double)f16_to_f32(f32_to_f16(amax / 127.0f)) : (double)(amax / 127.0f);
      // |a - qa*sa| <= sa32/2 + 127*|sa32 - sa| (the second term: the f16 rounding of sa)
      sa_err[b] = 0.5 * (double)(amax / 127.0f) + 127.0 * std::fabs((double)(amax / 127.0f) - sa[b]);
      sum[b] = 0;
      for (int64_t k = b * G; k < (b + 1) * G; ++k) {
        qa[k] = std::nearbyint((float)a[k] * inv);
        sum[b] += qa[k];
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      double ex = 0, sp = 0, mag = 0, ae = 0;
      for (int64_t b = 0; b < nb; ++b) {
        double dot = 0, sabsw = 0;
        for (int64_t k = b * G; k < (b + 1) * G; ++k) {
          const double wd = wdq[n * K + k];
          ex += a[k] * wd;
          dot += qa[k] * wq[n * K + k];
          sabsw += std::fabs(wd);
          ae += std::ldexp(std::fabs(a[k] * wd), -22);
        }
        const double t1 = sa[b] * sc[n * nb + b] * dot, t2 = sa[b] * sum[b] * mn[n * nb + b];
        sp += t1 + t2;
        mag += std::fabs(t1) + std::fabs(t2);
        ae += sa_err[b] * sabsw * (1 + 1e-6);
      }
      double extra = 0, extra_mag = 0;
      if (g.bias) { extra += g.bias[n]; extra_mag += std::fabs(g.bias[n]); }
      if (g.residual) {
        const double r = load(g.residual, g.c_dtype, m * g.ldr + n);
        extra += r; extra_mag += std::fabs(r);
      }
      out.exact[m * N + n] = ex + extra;
      out.spec[m * N + n] = sp + extra;
      out.mag[m * N + n] = mag + extra_mag;
      out.act_err[m * N + n] = ae;
    }
  }
}

}  // namespace ty::ref
