// Tachyon CPU backend: plain float64 reference implementations of the kernels, for tests
// only (not ISA variants, never on a hot path). One declaration per kernel.
#pragma once
#include "tachyon/kernels.h"

namespace ty::ref {

// C = alpha * A·op(B) + beta * C + bias, summed in double, rounded once to c_dtype.
// Optional outputs ([M*N], row-major, leading dimension N): exact = the double result
// before rounding; mag = |alpha|·Σ_k|a_ik·b_kj| + |beta·C_ij| + |bias_j|, the magnitude
// that floating-point error bounds scale with. beta = 0 never reads C.
void gemm_ref(const GemmArgs& args, double* exact = nullptr, double* mag = nullptr);

}  // namespace ty::ref
