// Tachyon: float64 reference for the fused SwiGLU and grouped quantized GEMM. See
// qgemm_fused_ref.h.
#include "ref/qgemm_fused_ref.h"

#include <cmath>
#include <cstring>

namespace ty::ref {

double silu(double x) { return x / (1.0 + std::exp(-x)); }
double plain_tol(int64_t nb, double mag) { return std::ldexp(mag, -22) * (double)(nb + 3); }

namespace {

void plain_ref(const QPlain& w, const QGemmArgs& g, QFusedRef& out) {
  QGemmRef r;
  qgemm_ref(w, g, r);
  const int64_t nb = q_num_blocks(w.fmt, w.K);
  out.M = g.M; out.N = w.N;
  out.spec = r.spec; out.exact = r.exact;
  out.tol_spec.resize(r.mag.size()); out.tol_exact.resize(r.mag.size());
  for (size_t i = 0; i < r.mag.size(); ++i) {
    out.tol_spec[i] = plain_tol(nb, r.mag[i]);
    out.tol_exact[i] = out.tol_spec[i] + r.act_err[i];
  }
}

double swiglu_tol(double g, double u, double eg, double eu) {
  const double h = silu(g) * u;
  return 1.1 * std::fabs(u) * eg + std::fabs(silu(g)) * eu + 1.1 * eg * eu + std::ldexp(std::fabs(h), -20) + 1e-35;
}

}  // namespace

void qgemm_swiglu_ref(const QPlain& gate, const QPlain& up, const QGemmArgs& g, QFusedRef& out) {
  const int64_t F = gate.N, M = g.M;
  QGemmArgs gg = g;
  gg.residual = nullptr;
  gg.epilogue = QEpilogue::none;
  QGemmRef rg, ru;
  gg.bias = g.bias;
  qgemm_ref(gate, gg, rg);
  gg.bias = g.bias ? g.bias + F : nullptr;
  qgemm_ref(up, gg, ru);
  const int64_t nb = q_num_blocks(gate.fmt, gate.K);
  out.M = M; out.N = F;
  out.spec.resize(M * F); out.exact.resize(M * F); out.tol_spec.resize(M * F); out.tol_exact.resize(M * F);
  for (int64_t i = 0; i < M * F; ++i) {
    const double eg = plain_tol(nb, rg.mag[i]), eu = plain_tol(nb, ru.mag[i]);
    out.spec[i] = silu(rg.spec[i]) * ru.spec[i];
    out.exact[i] = silu(rg.exact[i]) * ru.exact[i];
    out.tol_spec[i] = swiglu_tol(rg.spec[i], ru.spec[i], eg, eu);
    out.tol_exact[i] = swiglu_tol(rg.exact[i], ru.exact[i], eg + rg.act_err[i], eu + ru.act_err[i]);
  }
}

void qgemm_grouped_ref(const std::vector<const QPlain*>& w_gate, const std::vector<const QPlain*>& w_up,
                       const QGroupedArgs& a, QFusedRef& out) {
  const int64_t R = a.R, N = a.N, K = a.K;
  const bool sw = a.epilogue == QEpilogue::swiglu;
  out.M = R; out.N = N;
  out.spec.assign(R * N, 0); out.exact.assign(R * N, 0); out.tol_spec.assign(R * N, 0); out.tol_exact.assign(R * N, 0);
  const size_t es = dtype_bytes(a.a_dtype, 1);
  for (int64_t e = 0; e < a.E; ++e) {
    const int64_t mb = a.offsets[e], n = a.offsets[e + 1] - mb;
    if (n == 0) continue;
    std::vector<uint8_t> A((size_t)(n * K) * es);  // the expert's rows, gathered
    for (int64_t j = 0; j < n; ++j)
      std::memcpy(&A[(size_t)(j * K) * es], static_cast<const uint8_t*>(a.A) + (size_t)(a.rows[mb + j] * a.lda) * es, (size_t)K * es);
    QGemmArgs g;
    g.a_dtype = a.a_dtype; g.M = n; g.A = A.data(); g.lda = K;
    g.c_dtype = a.c_dtype;
    g.bias = a.bias ? a.bias + e * a.ldb : nullptr;
    QFusedRef r;
    if (sw) qgemm_swiglu_ref(*w_gate[e], *w_up[e], g, r);
    else plain_ref(*w_gate[e], g, r);
    for (int64_t i = 0; i < n * N; ++i) {
      out.spec[mb * N + i] = r.spec[i];
      out.exact[mb * N + i] = r.exact[i];
      out.tol_spec[mb * N + i] = r.tol_spec[i];
      out.tol_exact[mb * N + i] = r.tol_exact[i];
    }
  }
}

}  // namespace ty::ref
