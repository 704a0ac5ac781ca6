// Tachyon CPU backend: declarations of the quantized ISA-variant kernels.
// (Kept apart from kernels.h while issue 3 is in progress; the lead may fold these lines
// into native/cpu/kernels.h.) Defined in native/cpu/kernels/qgemm.cpp.
#pragma once
#include "isa.h"
#include "tachyon/quant.h"

// C = A · Wᵀ (+ bias) (+ residual) with int8 / int4 repacked weights. See tachyon/quant.h.
TY_DECLARE_VARIANTS(void, qgemm, (const ty::QGemmArgs&, ty::Parallel&))
