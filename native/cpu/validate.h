// Tachyon CPU backend: argument checks shared by the op entry points (ops.cpp, qops.cpp).
// Messages follow "Expected X for ARG but received Y"; every throw names the argument.
#pragma once
#include <cmath>
#include <string>

#include "ops.h"
#include "tachyon/error.h"

namespace ty::cpu {

inline void need(const T& t, const char* arg) {
  if (!t) throw Error(Code::INVALID_ARG, std::string("Expected a Tensor for ") + arg + " but received nothing", arg);
  if (!t->buf) throw Error(Code::DISPOSED, std::string("Tensor ") + arg + " has been disposed", arg);
}

inline bool is_float(DType d) { return d == DType::f32 || d == DType::f16 || d == DType::bf16; }

inline void need_float(const T& t, const char* arg) {
  if (!is_float(t->dtype))
    throw Error(Code::DTYPE, std::string("Expected f32, f16 or bf16 for dtype of ") + arg + " but received " +
                                 dtype_name(t->dtype), arg);
}

inline void need_dtype(const T& t, DType d, const char* arg) {
  if (t->dtype != d)
    throw Error(Code::DTYPE, std::string("Expected ") + dtype_name(d) + " for dtype of " + arg + " but received " +
                                 dtype_name(t->dtype), arg);
}

inline void need_rank(const T& t, size_t lo, size_t hi, const char* arg) {
  if (t->shape.size() < lo || t->shape.size() > hi) {
    std::string want = lo == hi ? std::to_string(lo) : std::to_string(lo) + " to " + std::to_string(hi);
    throw Error(Code::SHAPE, std::string("Expected ") + want + " dimensions for " + arg + " but received shape " +
                                 t->shape_str(), arg);
  }
}

inline void need_same_shape(const T& t, const T& ref, const char* arg, const char* ref_arg) {
  if (t->shape != ref->shape)
    throw Error(Code::SHAPE, std::string("Expected shape ") + ref->shape_str() + " (the shape of " + ref_arg + ") for " +
                                 arg + " but received " + t->shape_str(), arg);
}

inline void need_finite(float v, const char* arg) {
  if (!std::isfinite(v))
    throw Error(Code::INVALID_ARG, std::string("Expected a finite number for ") + arg + " but received " +
                                       std::to_string(v), arg);
}

// Rows x cols view of a tensor: all leading dims fold into rows.
inline void rows_cols(const T& t, int64_t* rows, int64_t* cols) {
  *cols = t->shape.empty() ? 1 : t->shape.back();
  *rows = *cols ? t->numel() / *cols : 0;
}

}  // namespace ty::cpu
