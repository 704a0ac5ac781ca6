// Tachyon CPU backend: declarations of the quantized ISA-variant kernels.
// (Kept apart from kernels.h while issue 3 is in progress; the lead may fold these lines
// into native/cpu/kernels.h.) Defined in native/cpu/kernels/qgemm.cpp.
#pragma once
#include "isa.h"
#include "tachyon/fp8.h"
#include "tachyon/quant.h"

// C = A · Wᵀ (+ bias) (+ residual) with int8 / int4 repacked weights. See tachyon/quant.h.
TY_DECLARE_VARIANTS(void, qgemm, (const ty::QGemmArgs&, ty::Parallel&))
// Grouped (mixture-of-experts) quantized GEMM, plain or SwiGLU epilogue. See tachyon/quant.h
// (QGroupedArgs). Defined at the end of native/cpu/kernels/qgemm.cpp.
TY_DECLARE_VARIANTS(void, qgemm_grouped, (const ty::QGroupedArgs&, ty::Parallel&))
// h[i] = silu(g[i]) * u[i] with exactly the arithmetic of the swiglu epilogue (for tests).
TY_DECLARE_VARIANTS(void, qgemm_swiglu_apply, (const float* g, const float* u, float* h, int64_t n))

// C = A · Wᵀ (+ bias) (+ residual) with fp8 (e4m3 / e5m2) repacked weights, W8A16 or W8A8.
// See tachyon/fp8.h. Defined in native/cpu/kernels/fp8gemm.cpp.
TY_DECLARE_VARIANTS(void, fp8gemm, (const ty::Fp8GemmArgs&, ty::Parallel&))
