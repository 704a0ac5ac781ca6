// Tachyon: float64 reference for the fused SwiGLU gate/up quantized GEMM and the grouped
// (MoE) quantized GEMM (driver section of native/cpu/kernels/qgemm.cpp). Built on
// ref::qgemm_ref; not an ISA variant; for tests only.
#pragma once
#include <cstdint>
#include <vector>

#include "ref/qgemm_ref.h"
#include "tachyon/quant.h"

namespace ty::ref {

// Per output element: the reference values and the a priori bounds a correct kernel meets
// (before the one rounding to the output dtype, which the caller adds).
struct QFusedRef {
  int64_t M = 0, N = 0;
  std::vector<double> spec;       // from the kernel's specification (A quantized per block)
  std::vector<double> exact;      // from A itself and the f32 dequantized weights
  std::vector<double> tol_spec;   // bound on |kernel(f32) - spec|
  std::vector<double> tol_exact;  // bound on |kernel(f32) - exact|
};

// Error model. A plain output y is a sum the kernel forms in f32 from nb block terms
// (+ min terms, bias, residual); qgemm_test's bound applies:
//   e(y) = 2^-22 (nb + 3) mag(y)      [mag: QGemmRef::mag]
// and vs the exact product e(y) + act_err(y). SwiGLU h = silu(g) u:
//   |dh| <= 1.1 |u| e(g) + |silu(g)| e(u) + 1.1 e(g) e(u)   (|silu'| <= 1.0999)
//         + 2^-20 |h|   (silu in f32: exp within 2 ulp, one add, one divide, one multiply:
//                        at most ~4 ulp; 2^-20 = 16 ulp leaves a factor 4)
//         + 1e-35       (the exp argument clamp, |silu(g)| < 1e-36 where it applies)
double silu(double x);
double plain_tol(int64_t nb, double mag);

// SwiGLU: g.A / a_dtype / M / lda as for qgemm; g.bias null or f32[2F] (gate then up);
// g.residual must be null; g.w is ignored (the weights come from the plain gate / up).
void qgemm_swiglu_ref(const QPlain& gate, const QPlain& up, const QGemmArgs& g, QFusedRef& out);

// Grouped: w_gate[e] (and w_up[e] for swiglu) are expert e's plain weights (w_up ignored
// for QEpilogue::none); a.w is ignored. out is [R, N] in assignment order.
void qgemm_grouped_ref(const std::vector<const QPlain*>& w_gate, const std::vector<const QPlain*>& w_up,
                       const QGroupedArgs& a, QFusedRef& out);

}  // namespace ty::ref
