// Tachyon: float64 reference for the quantized GEMM (native/cpu/kernels/qgemm.cpp).
// Plain, obviously-correct loops; not an ISA variant; for tests only.
#pragma once
#include <cstdint>
#include <vector>

#include "tachyon/quant.h"

namespace ty::ref {

struct QGemmRef {
  int64_t M = 0, N = 0;
  // A · dequantize(W)ᵀ + bias + residual, in f64, from the f32-dequantized weights.
  std::vector<double> exact;
  // The kernel's specification in exact arithmetic: A replaced by its per-row, per-block
  // int8 quantization (sa * q), weights as code * scale (+ min), + bias + residual.
  // K-quants: per super-block sa * (d * sum_j sc_j*dot_j - dmin * sum_j m_j*sum_j(qa)).
  std::vector<double> spec;
  // Sum of the magnitudes of the f32 terms the kernel adds up (per output); the kernel's
  // own rounding error is a small multiple of eps32 times this.
  std::vector<double> mag;
  // A priori bound on |spec - exact| from activation rounding: sum over blocks of
  // (sa/2) * sum|w|, plus 2^-22 * sum|a*w| for the f32 dequantized weights.
  std::vector<double> act_err;
};

// Reads A (a_dtype, M x K, stride lda), bias, residual (c_dtype, stride ldr) from `g`;
// the weights come from the plain layout `w` (g.w is ignored). Call it before the kernel
// when the residual aliases C.
void qgemm_ref(const QPlain& w, const QGemmArgs& g, QGemmRef& out);

}  // namespace ty::ref
