// Tachyon: float64 reference for the FP8 GEMM (native/cpu/kernels/fp8gemm.cpp).
// Plain, obviously-correct loops; not an ISA variant; for tests only.
#pragma once
#include <cstdint>
#include <vector>

#include "tachyon/fp8.h"

namespace ty::ref {

struct Fp8GemmRef {
  int64_t M = 0, N = 0;
  // The kernel's specification in exact arithmetic, from the f32-dequantized weights
  // (fp8_dequantize): w8a16: A · Wᵀ; w8a8: sa[m] * qa · Wᵀ with the activations quantized
  // exactly as documented in tachyon/fp8.h (same f32 operations); + bias + residual.
  std::vector<double> exact;
  // Sum of the magnitudes of the terms (|sa * a * w| summed, + |bias| + |residual|): the
  // kernel's f32 rounding error is a small multiple of eps32 times this.
  std::vector<double> mag;
  // A · Wᵀ with the unquantized activations (+ bias + residual), to report the w8a8
  // activation quantization error; equal to `exact` for w8a16.
  std::vector<double> unquantized;
};

// Reads A (a_dtype, M x K, stride lda), bias, residual (c_dtype, stride ldr) from `g`;
// the weights come from the plain layout `w` (g.w is ignored). Call it before the kernel
// when the residual aliases C.
void fp8gemm_ref(const Fp8Plain& w, const Fp8GemmArgs& g, Fp8GemmRef& out);

}  // namespace ty::ref
